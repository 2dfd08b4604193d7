"""CLI choices are the library's registries: every key is offered and nothing else is."""

import argparse

import pytest

from diffptycho.cli import build_parser
from diffptycho.recon.align import METHODS
from diffptycho.recon.joint import SOLVERS
from diffptycho.recon.losses import LOSSES
from diffptycho.recon.ptycho import ENGINES
from diffptycho.recon.ptycho.geometry import PROPAGATIONS
from diffptycho.recon.tomo import ALGORITHMS


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _choices(command: str, option: str) -> list[str]:
    parser = _subcommands()[command]
    for action in parser._actions:
        if option in action.option_strings:
            return list(action.choices)
    raise AssertionError(f"{command} has no {option}")


@pytest.mark.parametrize(
    "command, option, registry",
    [
        ("ptycho", "--algorithm", ENGINES),
        ("ptycho", "--loss", LOSSES),
        ("ptycho", "--propagation", PROPAGATIONS),
        ("spectroptycho", "--engine", ENGINES),
        ("spectrotomo", "--engine", ENGINES),
        ("spectrotomo", "--tomo-algorithm", ALGORITHMS),
        ("spectrotomo", "--joint-solver", SOLVERS),
        ("tomo", "--algorithm", ALGORITHMS),
        ("align", "--algorithm", ALGORITHMS),
        ("align", "--method", METHODS),
    ],
)
def test_cli_choices_equal_the_registry(command, option, registry):
    assert sorted(_choices(command, option)) == sorted(registry)


def test_every_registry_has_keys():
    """The comparison above cannot pass vacuously."""
    for registry in (ENGINES, LOSSES, PROPAGATIONS, ALGORITHMS, SOLVERS, METHODS):
        assert len(registry) >= 2
