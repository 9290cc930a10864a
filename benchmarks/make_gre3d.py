"""Generate a large 3D GRE Pulseq file with pypulseq and time how long that takes.

Example::

    python benchmarks/make_gre3d.py --blocks 256000 --out /tmp/gre3d.seq

The sequence comes from :func:`tests.pulseq_factory.gre3d` (4 blocks per TR), so ``--blocks`` is turned into
``n_pe1 * n_pe2 = blocks / 4`` phase-encoding steps. The file is the reference input for the scanctl
reader benchmarks.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.pulseq_factory import gre3d  # noqa: E402

BLOCKS_PER_TR = 4


def split_trs(n_tr: int) -> tuple[int, int]:
    """Split ``n_tr`` into ``(n_pe1, n_pe2)``, ``n_pe1 * n_pe2 == n_tr``, ``n_pe1 >= n_pe2``, as square as
    possible (64,000 -> 256 x 250)."""
    for n_pe2 in range(math.isqrt(n_tr), 0, -1):
        if n_tr % n_pe2 == 0:
            return n_tr // n_pe2, n_pe2
    raise ValueError(f"cannot split {n_tr} TRs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=256_000, help="number of blocks (default: 256000)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gre3d.seq"), help="output .seq file")
    parser.add_argument("--n-read", type=int, default=64, help="read-out samples per TR (default: 64)")
    parser.add_argument("--pe1", type=int, help="lines per partition (default: derived from --blocks)")
    parser.add_argument("--pe2", type=int, help="partitions (default: derived from --blocks)")
    parser.add_argument("--no-labels", action="store_true", help="omit the LIN/PAR labels")
    parser.add_argument(
        "--no-check-timing",
        action="store_true",
        help="skip the check_timing() pass that seq.write() runs by default (it dominates the write time)",
    )
    args = parser.parse_args(argv)
    if args.blocks < BLOCKS_PER_TR:
        parser.error(f"--blocks must be at least {BLOCKS_PER_TR}")
    if (args.pe1 is None) != (args.pe2 is None):
        parser.error("give both --pe1 and --pe2, or neither")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pe1 is not None:
        n_pe1, n_pe2 = args.pe1, args.pe2
    else:
        n_tr = math.ceil(args.blocks / BLOCKS_PER_TR)
        if n_tr * BLOCKS_PER_TR != args.blocks:
            print(f"note: {args.blocks} is not a multiple of {BLOCKS_PER_TR}; building {n_tr} TRs")
        n_pe1, n_pe2 = split_trs(n_tr)

    t0 = time.perf_counter()
    seq = gre3d(n_pe1, n_pe2, n_read=args.n_read, labels=not args.no_labels)
    t_build = time.perf_counter() - t0
    n_blocks = len(seq.block_events)
    print(f"built gre3d {n_pe1} x {n_pe2} x {args.n_read}: {n_blocks} blocks in {t_build:.2f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a timing error reported by write() is fatal here
        seq.write(str(args.out), check_timing=not args.no_check_timing)
    t_write = time.perf_counter() - t0
    size_mb = args.out.stat().st_size / 1e6
    check = "without" if args.no_check_timing else "with"
    print(f"wrote {args.out} ({size_mb:.1f} MB) in {t_write:.2f} s ({check} check_timing)")
    print(f"total {t_build + t_write:.2f} s, sequence duration {sum(seq.block_durations.values()):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
