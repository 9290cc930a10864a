"""``scanctl sweep SPEC --out DIR``: a protocol sweep on a Dask cluster (docs/sweep.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scanctl.cli_common import EXIT_LIMITS, EXIT_OK
from scanctl.errors import ScanctlError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a protocol sweep: many simulated scans, one results table",
                       description="Run every point of a sweep spec (docs/sweep.md) through the scan session, on "
                                   "a Dask cluster; points already in DIR are not rerun. Writes DIR/results.csv "
                                   "and DIR/plots/. Exit 0: every point completed; 1: some did not, or "
                                   "interrupted; 2: bad input.")
    p.add_argument("spec", help="sweep spec (.toml)")
    p.add_argument("--out", required=True, metavar="DIR", help="the sweep's directory (new, or a sweep's to resume)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://HOST:8786 (default: a local "
                                                          "cluster on this machine's cores)")
    p.add_argument("--workers", type=_positive, metavar="N", help="workers of the local cluster (default: the cores)")
    p.add_argument("--max-points", type=_positive, metavar="N", help="allow more points than the default 10,000")
    p.set_defaults(func=cmd_sweep)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def cmd_sweep(args: argparse.Namespace) -> int:
    from scanctl.sweep.runner import run_sweep
    from scanctl.sweep.spec import DEFAULT_MAX_POINTS, load_spec

    if args.scheduler is not None and args.workers is not None:
        raise ScanctlError("--workers is for the local cluster; a --scheduler's cluster has its own workers")
    spec = load_spec(args.spec, args.max_points or DEFAULT_MAX_POINTS)
    summary = run_sweep(spec, args.out, scheduler=args.scheduler, workers=args.workers)
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(summary.outcomes.items())) or "none run"
    print(f"{args.spec}: {summary.points} points: {summary.stored_before} already done, {summary.computed} run "
          f"({outcomes}) in {summary.wall_s:.1f} s")
    print(f"wrote {', '.join(str(f) for f in summary.files[:3])}"
          + (f" and {len(summary.files) - 3} plots" if len(summary.files) > 3 else ""))
    if summary.interrupted:
        print("scanctl: interrupted: the finished points are kept; run the same command to go on", file=sys.stderr)
        return 130
    return EXIT_OK if summary.all_completed else EXIT_LIMITS
