"""The command line's persistent compilation cache: where it lives, how it is turned off."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffptycho import _runtime
from diffptycho.cli import build_parser


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFPTYCHO_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _runtime.compilation_cache_dir() == tmp_path / "xdg" / "diffptycho" / "jax"
    monkeypatch.setenv("DIFFPTYCHO_CACHE_DIR", str(tmp_path / "mine"))
    assert _runtime.compilation_cache_dir() == tmp_path / "mine" / "jax"


def test_no_cache_variable_turns_it_off(monkeypatch, tmp_path):
    for value, off in (("1", True), ("yes", True), ("0", False), ("", False), ("false", False)):
        monkeypatch.setenv("DIFFPTYCHO_NO_CACHE", value)
        assert _runtime.cache_disabled() is off
    monkeypatch.setenv("DIFFPTYCHO_NO_CACHE", "1")
    assert _runtime.enable_compilation_cache(tmp_path) is None
    assert not any(tmp_path.iterdir())


def test_cli_flag_parses():
    args = build_parser().parse_args(["--no-compile-cache", "inspect", "x.cxi"])
    assert args.no_compile_cache
    assert not build_parser().parse_args(["inspect", "x.cxi"]).no_compile_cache


@pytest.mark.slow  # a fresh interpreter importing jax: ~3 s alone, 11 s on a loaded machine
def test_compiled_code_lands_in_the_cache_without_importing_jax_early(tmp_path):
    # a fresh interpreter: the cache is set up before jax is imported, as the CLI does it
    script = textwrap.dedent(
        """
        import sys
        from diffptycho._runtime import enable_compilation_cache
        path = enable_compilation_cache()
        assert "jax" not in sys.modules, "enabling the cache imported jax"
        import jax, jax.numpy as jnp
        x = jnp.ones((64, 64))
        jax.jit(lambda a: jnp.fft.fft2(a @ a.T).real.sum())(x).block_until_ready()
        print(path)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
    env |= {"DIFFPTYCHO_CACHE_DIR": str(tmp_path), "DIFFPTYCHO_NO_CACHE": ""}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # however fast the compile was
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    cache = Path(out.stdout.strip())
    assert cache == tmp_path / "jax"
    assert any(cache.iterdir()), "no compiled executable was written"
