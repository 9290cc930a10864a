"""``scanctl recon RAW.h5 [--out DIR] [--combine rss|adaptive] [--seq FILE]``: the images of any ISMRMRD
file, ours or another tool's — ``image.npy``, ``image.png`` (a mosaic) and ``image.json`` (where each image
lies), docs/recon.md.

Exit codes as everywhere: 0 done; 2 bad input (a file that is missing, not ISMRMRD, damaged, or holds data
the recon cannot image: one line naming the file and what is wrong); 1 the images could not be written.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any

from scanctl.cli_common import EXIT_LIMITS, EXIT_OK

log = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    """Add ``recon`` to the ``scanctl`` sub-command parsers ``sub``."""
    p = sub.add_parser("recon", help="reconstruct the images of an ISMRMRD raw data file (any tool's)",
                       description="Reconstruct an ISMRMRD file (raw.h5 of scanctl run, or another tool's): "
                                   "image.npy, image.png (mosaic) and image.json (geometry) into --out. Exit 0: "
                                   "done; 1: the images could not be written; 2: bad input.")
    p.add_argument("raw", help="ISMRMRD HDF5 file")
    p.add_argument("--out", help="output directory, new or empty (default: the next numbered one, "
                                 "out/recon-<name>/NNN)")
    p.add_argument("--combine", choices=("rss", "adaptive"), default="rss",
                   help="coil combination: root sum of squares (default) or adaptive (Walsh; prewhitened by the "
                        "noise covariance of the file's noise acquisitions)")
    p.add_argument("--seq", metavar="FILE", help="the Pulseq file, for data whose lines carry no LIN label")
    p.set_defaults(func=cmd_recon)


def cmd_recon(args: argparse.Namespace) -> int:
    import numpy as np

    from scanctl.data.outputs import OutputError, claim_dir, new_series_dir, write_new
    from scanctl.data.rawdata import read_acquisitions
    from scanctl.data.recon import ReconError, json_bytes, png_bytes, reconstruct_file

    raw_path = Path(args.raw)
    raw = read_acquisitions(raw_path)  # RawDataError names the file: exit 2
    seq = None
    if args.seq:
        from scanctl.sequence.pulseq_read import read

        seq = read(args.seq)
    t0 = time.perf_counter()
    try:
        result = reconstruct_file(raw, seq, combine=args.combine)
    except ReconError as exc:
        raise ReconError(exc.message, raw_path) from exc
    except (ValueError, MemoryError) as exc:  # what the file's numbers make numpy or the NUFFT refuse
        raise ReconError(f"cannot be reconstructed: {exc}", raw_path) from exc
    elapsed = time.perf_counter() - t0
    out = claim_dir(args.out) if args.out else new_series_dir(Path("out") / f"recon-{raw_path.stem}")
    npy = io.BytesIO()
    np.save(npy, result.images)
    try:
        write_new(out / "image.npy", npy.getvalue())
        write_new(out / "image.png", png_bytes(result.images))
        write_new(out / "image.json", json_bytes(result.meta))
    except OutputError as exc:
        print(f"scanctl: error: {exc}", file=sys.stderr)
        return EXIT_LIMITS
    n, ny, nx = result.images.shape
    print(f"{raw_path}: {n} image(s) of {ny} x {nx} ({result.meta['trajectory']}"
          f"{', 3D' if result.meta['three_d'] else ''}, {args.combine}) in {elapsed:.3f} s")
    print(f"wrote into {out}: image.npy, image.png, image.json")
    return EXIT_OK
