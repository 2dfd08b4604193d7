"""What the experiments share: their results tables, composition RMSE and peak memory.

Imported by the scripts beside it (a script's folder is first on ``sys.path`` when it runs).
"""

from __future__ import annotations

import json
import os
import resource

import numpy as np


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(out_dir: str, args, rows: list[dict], text: str, **extra) -> None:
    """Print the Markdown ``text`` and write ``results.json`` and ``results.md`` in ``out_dir``.

    Args:
        out_dir: output folder (must exist).
        args: the parsed command line (stored as ``args`` in the JSON).
        rows: the table's rows (stored as ``rows``).
        text: the Markdown table.
        **extra: further JSON-serialisable entries of ``results.json``.
    """
    print(text)
    payload = {"args": vars(args), "rows": rows, **extra}
    write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(payload, indent=1))
    write_text_atomic(os.path.join(out_dir, "results.md"), text + "\n")


def composition_rmse(estimate: np.ndarray, truth: np.ndarray) -> float:
    """RMSE of the volume fractions over the truly occupied voxels (both species)."""
    occupied = truth.sum(0) > 0.5
    return float(np.sqrt(np.mean((estimate - truth)[:, occupied] ** 2)))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    VmHWM belongs to the process image and starts afresh at exec, unlike ``ru_maxrss``,
    which a child started by fork + exec inherits from its (larger) parent on Linux.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
