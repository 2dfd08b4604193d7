"""``diffptycho inspect FILE``: what a file holds and which commands can take it.

::

    diffptycho inspect DATA.cxi          # scans, energies, angles (and their source), detector
    diffptycho inspect OUT.h5 --json     # the same as JSON

The summary itself is :func:`diffptycho.io.inspect.describe`.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``inspect`` sub-command on an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "inspect",
        help="summarise a CXI, results, checkpoint, projections, Data Exchange or STXM file",
        description="Print what a file holds (shapes, units, energies, angles and where they "
        "were read from, what is missing) and which diffptycho commands can take it. Reads "
        "metadata only, never the frames.",
    )
    p.add_argument("file", help="the file to describe")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``diffptycho inspect``; exit status 0, or 2 when the file has unreadable entries."""
    from diffptycho.io.inspect import describe, describe_dict

    info = describe_dict(args.file)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False, default=str))
    else:
        print(describe(args.file))
    if info.get("unreadable entries"):
        print(
            f"diffptycho inspect: error: {args.file}: {len(info['unreadable entries'])} "
            "unreadable entr(y/ies), listed above with what to fix",
            file=sys.stderr,
        )
        return 2
    return 0
