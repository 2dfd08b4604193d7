"""Several processes (nodes, or one process per GPU) as one set of devices: ``jax.distributed``.

After :func:`initialize_distributed`, ``jax.devices()`` lists the devices of every process and
the meshes of :mod:`diffptycho.recon.sharding` and :mod:`diffptycho.recon.tomo.sharding` span
them all; the engines' ``shard_map`` collectives (``psum``, ``all_gather``, ``ppermute``)
then cross process boundaries (NCCL on GPUs, Gloo over TCP on CPUs). Nothing else changes:

- every process runs the same program on the same inputs: each reads the whole input file,
  and host arrays passed to a sharded computation are taken to be equal on every process
  (the mesh divides the arithmetic, not the memory of the data, as on one process);
- replicated results (the ptychography object and probe, a tomography volume split over
  angles) are complete on every process; a result split over the mesh (a volume split into
  y slabs) is gathered with :func:`to_host` before it is converted to NumPy;
- only process 0 should write files (:func:`is_main_process`); the command line sees to it.

Launch one process per node (CPU) or per GPU, e.g. with SLURM's ``srun``; see the page
"Several nodes (jax.distributed)" of the documentation for a batch script.

Examples:
    >>> process_count()
    1
    >>> is_main_process()
    True
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "Processes",
    "barrier",
    "initialize_distributed",
    "is_main_process",
    "process_count",
    "processes",
    "to_host",
]


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes of a run and their devices.

    Attributes:
        index: this process (0 … count − 1); process 0 writes the files.
        count: number of processes.
        local_devices: devices of this process.
        devices: devices of all processes (what a mesh over ``jax.devices()`` spans).
    """

    index: int
    count: int
    local_devices: int
    devices: int

    @property
    def main(self) -> bool:
        """True on process 0."""
        return self.index == 0


def processes() -> Processes:
    """The current :class:`Processes` (one process without :func:`initialize_distributed`).

    This initialises JAX's backend: call :func:`initialize_distributed` first.
    """
    return Processes(
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
    )


def process_count() -> int:
    """Number of processes (1 unless :func:`initialize_distributed` joined several)."""
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0, the one that writes files (always True on one process)."""
    return jax.process_index() == 0


def _check_coordinator(coordinator: str) -> None:
    host, sep, port = coordinator.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(
            f"coordinator={coordinator!r}: expected 'HOST:PORT' (process 0's host name or IP "
            "address and a free TCP port, e.g. 'node001:12345')"
        )


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    timeout_s: int = 300,
) -> Processes:
    """Join this process to the others of a run (``jax.distributed.initialize``).

    Call it in every process before anything else touches JAX's devices. Without arguments
    JAX reads them from the environment: SLURM (under ``srun``), Open MPI (under
    ``mpirun``), or ``JAX_COORDINATOR_ADDRESS`` for the coordinator. On CPUs the
    processes' collectives go through Gloo (``jax_cpu_collectives_implementation``), which
    is turned on here unless another implementation was chosen.

    Calling it again is harmless: it returns the processes already joined, after checking
    that the arguments given agree with them.

    Args:
        coordinator: ``"HOST:PORT"`` of process 0, where it listens for the others.
        num_processes: number of processes of the run (≥ 1).
        process_id: this process, 0 … ``num_processes`` − 1.
        local_device_ids: the local devices this process uses (default: all, or under
            SLURM / Open MPI with GPUs one per process).
        timeout_s: how long (s) to wait for every process to join; past it JAX ends the
            process (``DEADLINE_EXCEEDED``, no Python exception).

    Returns:
        The joined :class:`Processes`.

    Raises:
        ValueError: a malformed argument, arguments that disagree with a run already
            joined, or no argument and no cluster environment to read them from.
        RuntimeError: JAX already ran a computation (or listed its devices) in this
            process, or the coordination service failed.
    """
    if coordinator is not None:
        _check_coordinator(coordinator)
    if num_processes is not None and (isinstance(num_processes, bool) or num_processes < 1):
        raise ValueError(f"num_processes={num_processes!r}: expected an integer ≥ 1")
    if process_id is not None:
        if isinstance(process_id, bool) or process_id < 0:
            raise ValueError(f"process_id={process_id!r}: expected an integer ≥ 0")
        if num_processes is not None and process_id >= num_processes:
            raise ValueError(
                f"process_id={process_id}: expected 0 … {num_processes - 1} "
                f"(num_processes={num_processes})"
            )
    if jax.distributed.is_initialized():
        joined = processes()
        for name, given, actual in (
            ("num_processes", num_processes, joined.count),
            ("process_id", process_id, joined.index),
        ):
            if given is not None and given != actual:
                raise ValueError(
                    f"{name}={given}: this process already joined a run with "
                    f"{name}={actual}; jax.distributed can be initialised once per process"
                )
        return joined
    previous = jax.config.jax_cpu_collectives_implementation
    if previous is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=timeout_s,
        )
    except RuntimeError as err:
        # a process that did not join keeps its collectives: Gloo without a distributed
        # client crashed later multi-device computations of the same process (segfault)
        jax.config.update("jax_cpu_collectives_implementation", previous)
        if "before any JAX" in str(err) or "backend" in str(err).lower():
            raise RuntimeError(
                "initialize_distributed: JAX already used this process's devices (a "
                "computation, jax.devices(), a device_put, ...); call it first, before "
                "anything else touches JAX"
            ) from err
        raise RuntimeError(
            f"initialize_distributed: joining failed (coordinator="
            f"{coordinator or os.environ.get('JAX_COORDINATOR_ADDRESS')!r}, "
            f"num_processes={num_processes}, process_id={process_id}, timeout {timeout_s} s): "
            f"{err}"
        ) from err
    except ValueError as err:
        jax.config.update("jax_cpu_collectives_implementation", previous)
        if coordinator is None and num_processes is None and process_id is None:
            raise ValueError(
                "initialize_distributed: no cluster environment found to read the processes "
                "from (SLURM under srun, Open MPI under mpirun); pass coordinator='HOST:PORT', "
                f"num_processes and process_id (jax: {err})"
            ) from err
        raise ValueError(f"initialize_distributed: {err}") from err
    return processes()


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
    """Every JAX array of ``tree`` as a NumPy array, gathered from all processes if needed.

    ``np.asarray`` cannot read an array split over devices of other processes (e.g. a
    volume split into y slabs over a multi-process mesh); this gathers it (a collective:
    every process must call it with arrays of the same sharding). Replicated arrays are
    read from a local copy, other leaves are returned unchanged.

    Examples:
        >>> import jax.numpy as jnp
        >>> to_host({"a": jnp.ones(2), "b": "text"})
        {'a': array([1., 1.], dtype=float32), 'b': 'text'}
    """

    def leaf(x: Any) -> Any:
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(leaf, tree)
