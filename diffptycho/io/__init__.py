"""File formats: CXI scans in, results HDF5 and checkpoints out (docs/file-formats.md)."""

from diffptycho.io.cxi import CXIFormatError, PtychoScan, read_cxi, read_cxi_truth, write_cxi
from diffptycho.io.results import (
    ResultsFormatError,
    load_checkpoint,
    read_results,
    save_checkpoint,
    write_results,
)

__all__ = [
    "CXIFormatError",
    "PtychoScan",
    "ResultsFormatError",
    "load_checkpoint",
    "read_cxi",
    "read_cxi_truth",
    "read_results",
    "save_checkpoint",
    "write_cxi",
    "write_results",
]
