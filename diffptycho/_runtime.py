"""Process-wide JAX set-up for the command line: the persistent compilation cache.

Compiling the jitted engine steps costs seconds per command; XLA's persistent compilation
cache keeps the compiled executables on disk so a second run of the same command (same
shapes, same jax version) loads them instead. The settings go through JAX's environment
variables when jax is not imported yet, so importing this module (and the CLI) stays free of
jax; when jax is already imported they go through ``jax.config``.

Turn it off with ``DIFFPTYCHO_NO_CACHE=1`` or ``diffptycho --no-compile-cache``; move it with
``DIFFPTYCHO_CACHE_DIR``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MIN_COMPILE_SECONDS = 0.05
"""Compilations faster than this (s) are not written to the cache (JAX's default is 1 s,
which would skip most of ours: a ptychography step compiles in 0.1–1 s on CPU)."""


def compilation_cache_dir() -> Path:
    """Where the compiled executables go.

    ``$DIFFPTYCHO_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/diffptycho/jax``, else
    ``~/.cache/diffptycho/jax`` (``~/Library/Caches/diffptycho/jax`` on macOS,
    ``%LOCALAPPDATA%/diffptycho/jax`` on Windows).

    Examples:
        >>> compilation_cache_dir().name
        'jax'
    """
    if os.environ.get("DIFFPTYCHO_CACHE_DIR"):
        return Path(os.environ["DIFFPTYCHO_CACHE_DIR"]).expanduser() / "jax"
    if os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path.home() / ".cache"
    return base / "diffptycho" / "jax"


def cache_disabled() -> bool:
    """True when ``DIFFPTYCHO_NO_CACHE`` is set to anything but ``""``, ``0``, ``false``, ``no``."""
    return os.environ.get("DIFFPTYCHO_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache (unless ``DIFFPTYCHO_NO_CACHE`` is set).

    Settings the user already gave through JAX's own variables (``JAX_COMPILATION_CACHE_DIR``,
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``) win. A cache directory that cannot be
    created leaves the cache off: a slower start, never a failed command.

    Args:
        path: cache directory (default: :func:`compilation_cache_dir`).

    Returns:
        The cache directory in use, or None when the cache stays off.
    """
    if cache_disabled():
        return None
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or path or compilation_cache_dir()
    directory = Path(directory).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    settings = {
        "jax_compilation_cache_dir": str(directory),
        "jax_persistent_cache_min_compile_time_secs": float(
            os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", MIN_COMPILE_SECONDS)
        ),
    }
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:  # read by jax when it is first imported; keeps the CLI's start free of jax
        for name, value in settings.items():
            os.environ[name.upper()] = str(value)
    return directory


__all__ = [
    "MIN_COMPILE_SECONDS",
    "cache_disabled",
    "compilation_cache_dir",
    "enable_compilation_cache",
]
