"""Checkpoints of long runs: whole solver states saved beside the output, resumed exactly.

A :class:`Checkpoint` ties a file (by default ``OUT.ckpt.h5`` beside ``OUT.h5``, see
:func:`checkpoint_path`) to a **fingerprint** of what the run depends on — input files (path,
size, modification time) and every setting that changes the result. Saving stores named
pytrees (model, solver state with its optax state, shuffle keys and counters, best model …)
leaf by leaf through :func:`~diffptycho.io.results.save_checkpoint` (atomic: the file on disk
is always absent, the previous checkpoint or the complete new one). Loading needs a template
of each tree (a freshly built model and ``solver.init(model)``), whose structure and static
parts are reused; a checkpoint whose fingerprint, tree structure, shapes or dtypes differ is
refused with an error naming the file.

For a :func:`~diffptycho.recon.solve.solve` run::

    ckpt = Checkpoint(checkpoint_path(output), fingerprint(settings, files=[data]))
    resume = ckpt.load_snapshot(model, solver.init(model)) if args.resume else None
    model, history = solve(model, solver, data, n, resume=resume,
                           checkpoint=ckpt.save_snapshot, checkpoint_every=every)
    ... write results ...
    ckpt.remove()

Loops of their own store their state with :meth:`Checkpoint.save` / :meth:`Checkpoint.load`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from diffptycho.io.results import ResultsFormatError, load_checkpoint, save_checkpoint
from diffptycho.recon.distributed import to_host
from diffptycho.recon.solve import Snapshot

__all__ = [
    "Checkpoint",
    "CheckpointMismatchError",
    "checkpoint_path",
    "file_identity",
    "fingerprint",
    "resume_hint",
]

SUFFIX = ".ckpt.h5"
"""Checkpoint files are named after the output: ``OUT.h5`` → ``OUT.ckpt.h5``."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a run with other inputs or settings."""


def checkpoint_path(output: str | os.PathLike[str]) -> str:
    """The checkpoint file of a results file: ``OUT.h5`` → ``OUT.ckpt.h5`` (same folder).

    Examples:
        >>> checkpoint_path("runs/scan7.h5")
        'runs/scan7.ckpt.h5'
    """
    return os.path.splitext(os.fspath(output))[0] + SUFFIX


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies an input file cheaply: absolute path, size in bytes and mtime in ns.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = os.fspath(path)
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(settings: Mapping[str, Any], files: Sequence[str | os.PathLike[str]] = ()) -> str:
    """SHA-256 of the settings (JSON, sorted keys) and the identity of the input files.

    Args:
        settings: every option that changes the result (not the iteration count, which a
            resumed run may raise, nor display options).
        files: input files (see :func:`file_identity`).

    Returns:
        A hex digest.

    Examples:
        >>> fingerprint({"algorithm": "raar"}) == fingerprint({"algorithm": "raar"})
        True
        >>> fingerprint({"algorithm": "raar"}) == fingerprint({"algorithm": "dm"})
        False
    """
    payload = {"settings": dict(settings), "files": [file_identity(f) for f in files]}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resume_hint(argv: Sequence[str] | None = None) -> str:
    """The command line that resumes this process's run (``… --resume``)."""
    import shlex
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return "diffptycho " + " ".join(shlex.quote(a) for a in args)


def _is_leaf_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct | np.generic)


def _flatten(name: str, tree: Any) -> dict[str, np.ndarray]:
    leaves = jtu.tree_flatten_with_path(eqx.filter(tree, _is_leaf_array))[0]
    out = {}
    for path, leaf in leaves:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[name + jtu.keystr(path)] = np.asarray(to_host(leaf))
    return out


def _unflatten(path: str, name: str, like: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    dynamic, static = eqx.partition(like, _is_leaf_array)
    leaves_with_path, treedef = jtu.tree_flatten_with_path(dynamic)
    values = []
    for key_path, template in leaves_with_path:
        key = name + jtu.keystr(key_path)
        if key not in arrays:
            raise CheckpointMismatchError(
                f"{path}: checkpoint has no array {key!r}; it was written by a run with "
                "another model or solver — start again without --resume or delete the file"
            )
        value = arrays[key]
        is_key = jnp.issubdtype(template.dtype, jax.dtypes.prng_key)
        abstract = isinstance(template, jax.ShapeDtypeStruct)
        if is_key:  # keys are stored as their key data: (*shape, impl-specific trailing axes)
            shape_ok = tuple(value.shape[: len(template.shape)]) == tuple(template.shape)
            expected = f"PRNG key{list(template.shape)}"
        else:
            shape_ok = tuple(value.shape) == tuple(template.shape)
            shape_ok = shape_ok and np.dtype(value.dtype) == np.dtype(template.dtype)
            expected = f"{np.dtype(template.dtype)}{list(template.shape)}"
        if not shape_ok:
            raise CheckpointMismatchError(
                f"{path}: array {key!r} is {value.dtype}{list(value.shape)} in the "
                f"checkpoint but {expected} in this run; start again without --resume or "
                "delete the file"
            )
        arr = jnp.asarray(value)
        if is_key:
            impl = None if abstract else jax.random.key_impl(template)
            arr = jax.random.wrap_key_data(arr, impl=impl)
        values.append(arr)
    return eqx.combine(jtu.tree_unflatten(treedef, values), static)


class Checkpoint:
    """A run's checkpoint file and the fingerprint that must match to resume from it.

    Attributes:
        path: the checkpoint file.
        fingerprint: see :func:`fingerprint`.
        every: iterations between checkpoints (0: only when stopped by a signal).

    Examples:
        >>> import os, tempfile, jax.numpy as jnp
        >>> ckpt = Checkpoint(os.path.join(tempfile.mkdtemp(), "r.ckpt.h5"), "abc")
        >>> ckpt.save({"x": {"a": jnp.arange(3.0)}}, {"n": 2}, iteration=5)
        >>> trees, arrays, meta, it = ckpt.load({"x": {"a": jnp.zeros(3)}})
        >>> trees["x"]["a"].tolist(), meta["n"], it
        ([0.0, 1.0, 2.0], 2, 5)
    """

    def __init__(self, path: str | os.PathLike[str], fingerprint: str, every: int = 0):
        if every < 0:
            raise ValueError(f"--checkpoint-every {every}: expected ≥ 0 iterations (0: never)")
        self.path = os.fspath(path)
        self.fingerprint = fingerprint
        self.every = int(every)

    def exists(self) -> bool:
        """True when the checkpoint file is there."""
        return os.path.exists(self.path)

    def save(
        self,
        trees: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
        *,
        iteration: int,
        arrays: Mapping[str, Any] | None = None,
    ) -> None:
        """Write named pytrees, extra arrays and JSON metadata atomically.

        Args:
            trees: ``{name: pytree}``; their array leaves are stored (static parts are not:
                they come from the template at :meth:`load`).
            meta: JSON-serialisable metadata.
            iteration: completed iterations (the checkpoint's ``step``).
            arrays: extra ``{name: array}`` of any shape (e.g. loss histories).
        """
        leaves: dict[str, np.ndarray] = {}
        for name, tree in trees.items():
            if tree is not None:
                leaves.update(_flatten(f"tree:{name}", tree))
        for name, value in (arrays or {}).items():
            leaves[f"array:{name}"] = np.asarray(to_host(value))
        full_meta = {
            "fingerprint": self.fingerprint,
            "trees": [n for n, t in trees.items() if t is not None],
            "meta": dict(meta or {}),
        }
        save_checkpoint(self.path, leaves, step=int(iteration), meta=full_meta)

    def load(
        self, like: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any], int]:
        """Read the checkpoint, checking its fingerprint and shapes against this run.

        Args:
            like: ``{name: template}`` for every tree to read; a tree the checkpoint does not
                hold is left out of the result.

        Returns:
            ``(trees, arrays, meta, iteration)``.

        Raises:
            FileNotFoundError: no checkpoint at :attr:`path`.
            CheckpointMismatchError: the checkpoint belongs to another run (other inputs or
                settings) or its arrays do not fit the templates.
        """
        if not self.exists():
            raise FileNotFoundError(
                f"{self.path}: no checkpoint to resume from; run without --resume (add "
                "--checkpoint-every N to write one)"
            )
        try:
            leaves, step, full_meta = load_checkpoint(self.path)
        except ResultsFormatError as err:
            raise CheckpointMismatchError(str(err)) from err
        if full_meta.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatchError(
                f"{self.path}: this checkpoint was written by a run with other inputs or "
                "settings (input files, their size or date, or options that change the "
                "result); rerun with the same command line, or start again without --resume"
            )
        stored = set(full_meta.get("trees", []))
        trees = {
            name: _unflatten(self.path, f"tree:{name}", template, leaves)
            for name, template in like.items()
            if name in stored
        }
        arrays = {k[len("array:") :]: v for k, v in leaves.items() if k.startswith("array:")}
        return trees, arrays, dict(full_meta.get("meta", {})), step

    def save_snapshot(self, snapshot: Snapshot, **extra_trees: Any) -> None:
        """Save a :class:`~diffptycho.recon.solve.Snapshot` (pass as ``solve(checkpoint=…)``)."""
        self.save(
            {**snapshot.trees(), **extra_trees},
            snapshot.meta(),
            iteration=snapshot.iteration,
            arrays=snapshot.arrays(),
        )

    def load_snapshot(self, model: Any, state: Any, **extra_like: Any) -> Snapshot:
        """The :class:`~diffptycho.recon.solve.Snapshot` saved here.

        Args:
            model: a model of the run's shape (e.g. the starting model); also the template
                of a kept best model.
            state: a solver state of the run's shape (``solver.init(model)``, or
                ``eqx.filter_eval_shape(solver.init, model)`` to avoid computing it).
            extra_like: templates of further trees saved with :meth:`save_snapshot`; they
                are returned as the snapshot's ``extra`` attribute.
        """
        like = {"model": model, "state": state, "best_model": model, **extra_like}
        trees, arrays, meta, _ = self.load(like)
        snap = Snapshot.restore(trees, arrays, meta)
        snap.extra = {k: trees[k] for k in extra_like if k in trees}
        return snap

    def remove(self) -> None:
        """Delete the checkpoint (once the run's results are written)."""
        if self.exists():
            os.remove(self.path)
