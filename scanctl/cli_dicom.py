"""``scanctl export`` (a run as DICOM, optionally stored to a PACS), ``scanctl pacs serve`` (a local Orthanc),
and the ``--dicom``/``--store`` options of ``scanctl run`` (docs/dicom.md).

Exit codes as everywhere: 0 done; 1 the DICOM files were written but the PACS did not take them all (they
are kept, the line says why); 2 bad input (a malformed address or order, not a run directory).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from scanctl.cli_common import EXIT_LIMITS, EXIT_OK, one_line
from scanctl.errors import ScanctlError

#: Tries again while the PACS cannot be reached (then one line, exit 1: the files stay).
DEFAULT_RETRIES = 2


def dicom_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--dicom DIR, --order, --store and its settings."""
    p.add_argument("--dicom", metavar="DIR", required=required,
                   help="write the images as DICOM (MR Image Storage) into DIR, new or empty")
    p.add_argument("--order", metavar="TOML", help="the patient and study ([order] table; default: marked "
                                                  "placeholders, patient 'NO ORDER^SCANCTL')")
    p.add_argument("--store", metavar="AET@HOST:PORT", help="also C-STORE the DICOM files to this PACS")
    p.add_argument("--calling-aet", default="SCANCTL", help="our AE title towards the PACS (default SCANCTL)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"tries again while the PACS cannot be reached (default {DEFAULT_RETRIES})")
    p.add_argument("--retry-wait", type=float, default=2.0, metavar="S", help="seconds between tries (default 2)")


def add_parsers(sub: Any) -> None:
    """Add ``export`` and ``pacs`` to the ``scanctl`` sub-command parsers ``sub``."""
    p = sub.add_parser("export", help="write a run's images as DICOM, and store them to a PACS",
                       description="Write the images of a run directory (scanctl run --out) as a DICOM series "
                                   "and optionally C-STORE it to a PACS. Exit 0: done; 1: written, but the PACS "
                                   "did not take every object (the files are kept); 2: bad input.")
    p.add_argument("run_dir", help="a run directory (raw.h5, sequence.seq, report.json)")
    dicom_args(p, required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("pacs", help="a local PACS (Orthanc) for tests and demos")
    actions = p.add_subparsers(dest="pacs_action", required=True)
    a = actions.add_parser("serve", help="run Orthanc with its storage in DIR until Ctrl-C / SIGTERM",
                           description="Run Orthanc (Debian package orthanc) in the foreground with a configuration "
                                       "of its own written into DIR (storage in DIR/storage, no plugins, REST on "
                                       "127.0.0.1 only). Prints its DICOM address and REST URL.")
    a.add_argument("dir", help="working directory (configuration, storage, log)")
    a.add_argument("--aet", default="ORTHANC", help="its AE title (default ORTHANC)")
    a.add_argument("--port", type=int, default=4242, help="DICOM port (default 4242; 0: any free one)")
    a.add_argument("--http-port", type=int, default=8042, help="REST port (default 8042; 0: any free one)")
    a.set_defaults(func=cmd_pacs_serve)


class Prepared:
    """The DICOM options checked before anything is done (a bad address or order is refused first)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from scanctl.data.dicom import load_order
        from scanctl.data.pacs import check_aet, parse_pacs

        self.out = Path(args.dicom)
        self.order = load_order(args.order) if args.order else None
        self.pacs = parse_pacs(args.store) if args.store else None
        self.calling_aet = check_aet(args.calling_aet, "--calling-aet")
        if args.retries < 0:
            raise ScanctlError(f"--retries must be 0 or more, got {args.retries}")
        if not args.retry_wait >= 0:
            raise ScanctlError(f"--retry-wait must be 0 or more seconds, got {args.retry_wait}")
        self.retries, self.retry_wait = args.retries, args.retry_wait


def prepare(args: argparse.Namespace) -> Prepared | None:
    """The checked DICOM options of ``args`` (None without ``--dicom``). Raises ScanctlError (exit 2)."""
    if getattr(args, "dicom", None) is None:
        for option in ("order", "store"):
            if getattr(args, option, None):
                raise ScanctlError(f"--{option} needs --dicom DIR")
        return None
    return Prepared(args)


def export(run_dir: Path, prepared: Prepared) -> int:
    """Export ``run_dir`` as DICOM (and store it): prints what was done; a PACS that does not take every
    object is one line on stderr and exit 1 (the files are kept). Raises ScanctlError for bad input."""
    from scanctl.data.dicom import export_run
    from scanctl.data.pacs import PacsError, store

    done = export_run(run_dir, prepared.out, prepared.order)
    print(f"wrote {len(done.files)} DICOM images into {prepared.out} in {done.seconds:.3f} s "
          f"(study {done.study_uid}, series {done.series_uid})")
    if prepared.pacs is None:
        return EXIT_OK
    _quiet_pynetdicom()
    try:
        result = store(done.files, prepared.pacs, calling_aet=prepared.calling_aet, retries=prepared.retries,
                       retry_wait_s=prepared.retry_wait)
    except PacsError as exc:
        print(f"scanctl: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_LIMITS
    remark = f", {len(result.warnings)} with a warning" if result.warnings else ""
    print(f"stored {len(result.stored)} images to {prepared.pacs} in {result.seconds:.3f} s "
          f"({result.per_second:.1f} images/s{remark})")
    return EXIT_OK


def _quiet_pynetdicom() -> None:
    """pynetdicom logs every refused or failed association itself (with tracebacks at times); the error we
    raise says it in one line. Its log still shows with -vv."""
    root = logging.getLogger("scanctl")
    if root.getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def cmd_export(args: argparse.Namespace) -> int:
    prepared = prepare(args)
    assert prepared is not None  # --dicom is required here
    return export(Path(args.run_dir), prepared)


def cmd_pacs_serve(args: argparse.Namespace) -> int:
    from scanctl.services.orthanc import Orthanc

    server = Orthanc(args.dir, aet=args.aet, dicom_port=args.port, http_port=args.http_port)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with server:
        print(f"Orthanc {server.pacs} (REST {server.url}), storage in {Path(args.dir) / 'storage'}; Ctrl-C stops",
              flush=True)
        try:
            assert server.process is not None
            code = server.process.wait()
        except KeyboardInterrupt:
            return EXIT_OK
    raise ScanctlError(f"Orthanc exited by itself with {code}; see {Path(args.dir) / 'orthanc.log'}")
