"""Counts on the command line are checked by argparse, and outputs before any work."""

import pytest

from diffptycho.cli import main


@pytest.mark.parametrize(
    "argv, option",
    [
        (["simulate", "lfp", "-o", "x.cxi", "--size", "0"], "--size"),
        (["simulate", "lfp", "-o", "x.cxi", "--angles", "-2"], "--angles"),
        (["simulate", "lfp", "-o", "x.cxi", "--oversample", "0"], "--oversample"),
        (["simulate", "lfp", "-o", "x.cxi", "--oversample", "1.5"], "--oversample"),
        (["align", "p.h5", "-o", "a.h5", "-n", "0"], "--iterations"),
        (["align", "p.h5", "-o", "a.h5", "--loops", "0"], "--loops"),
        (["align", "p.h5", "-o", "a.h5", "--steps", "-1"], "--steps"),
    ],
)
def test_non_positive_counts_are_refused_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--no-compile-cache", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and ("must be ≥ 1" in err or "is not an integer" in err)


def test_spectrotomo_checks_its_output_directory_first(tmp_path, capsys):
    out = tmp_path / "missing" / "out.h5"
    code = main(["--no-compile-cache", "spectrotomo", str(tmp_path / "none.cxi"), "-o", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--output" in err and "does not exist" in err and "none.cxi" not in err
