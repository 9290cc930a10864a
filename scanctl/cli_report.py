"""``scanctl report RUN_DIR|EXAM_DIR [--out FILE] [--pdf FILE]``: the self-contained HTML report of an exam
or a run (docs/report.md). Exit 0: written; 2: not an exam or run directory, or a file cannot be written."""

from __future__ import annotations

import argparse
from typing import Any

from scanctl.cli_common import EXIT_OK


def add_parsers(sub: Any) -> None:
    """Add ``report`` to the ``scanctl`` sub-command parsers ``sub``."""
    p = sub.add_parser("report", help="write an exam's (or a run's) report as one self-contained HTML page",
                       description="Write report.html for an exam directory (exam.json, runs/) or a run directory "
                                   "(report.json, image.npy): patient and order, protocols, key images, safety "
                                   "against the limits, journal, timings and image quality.")
    p.add_argument("dir", metavar="RUN_DIR|EXAM_DIR", help="an exam directory or a run directory")
    p.add_argument("--out", metavar="FILE", help="where to write the HTML (default DIR/report.html)")
    p.add_argument("--pdf", metavar="FILE", help="also print it to this PDF (needs Debian's chromium)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from scanctl.report import write_report

    path = write_report(args.dir, args.out)
    print(f"wrote {path}")
    if args.pdf:
        from scanctl.report.pdf import print_pdf

        print(f"wrote {print_pdf(path, args.pdf)}")
    return EXIT_OK
