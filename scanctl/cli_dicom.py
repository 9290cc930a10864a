"""``scanctl export`` (a run as DICOM, optionally stored to a PACS), ``scanctl pacs serve`` (a local Orthanc,
optionally serving a Modality Worklist), ``scanctl worklist query|add`` (orders in), and the ``--dicom``,
``--store``, ``--order``, ``--accession``/``--worklist`` options of ``scanctl run`` (docs/dicom.md).

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
    order_args(p)
    p.add_argument("--store", metavar="AET@HOST:PORT", help="also C-STORE the DICOM files to this PACS")
    p.add_argument("--calling-aet", default="SCANCTL", help="our AE title towards the PACS (default SCANCTL)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"tries again while the PACS cannot be reached or drops the association (default "
                        f"{DEFAULT_RETRIES})")
    p.add_argument("--retry-wait", type=float, default=2.0, metavar="S",
                   help="seconds before the first retry, doubled each time up to 60 (default 2)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="trust the C-STORE answers alone (default: find every object again by C-FIND first)")


def order_args(p: argparse.ArgumentParser) -> None:
    """--order FILE, or --accession N with --worklist AET@HOST:PORT: the patient and study."""
    p.add_argument("--order", metavar="FILE", help="the patient and study: a TOML [order] table or a FHIR R4 "
                                                  "ServiceRequest (.json) (default: marked placeholders, patient "
                                                  "'NO ORDER^SCANCTL')")
    p.add_argument("--accession", metavar="N", help="the order with this accession number, from --worklist")
    p.add_argument("--worklist", metavar="AET@HOST:PORT", help="the Modality Worklist server --accession asks")


def resolve_order(args: argparse.Namespace) -> Any:
    """The :class:`~scanctl.data.dicom.Order` ``args`` name (None: none): read from ``--order`` or asked of
    ``--worklist`` by ``--accession`` (C-FIND). Raises ScanctlError (exit 2) naming the option, file or
    server at fault."""
    order_file, accession, worklist = (getattr(args, k, None) for k in ("order", "accession", "worklist"))
    if order_file and (accession or worklist):
        raise ScanctlError("--order and --accession/--worklist both name an order: give one")
    if bool(accession) != bool(worklist):
        raise ScanctlError("--accession N and --worklist AET@HOST:PORT go together")
    if not (order_file or accession):
        return None  # most runs: pydicom and pynetdicom are not even imported
    from scanctl.data import worklist as wl

    if order_file:
        return wl.load_order_file(order_file)
    if accession:
        from scanctl.data.pacs import check_aet

        _quiet_pynetdicom()
        return wl.order_by_accession(_address(worklist, "--worklist"), accession,
                                     calling_aet=check_aet(args.calling_aet, "--calling-aet"))
    return None


def _address(text: str | None, option: str) -> Any:
    from scanctl.data.pacs import PacsError, parse_pacs

    try:
        return parse_pacs(text or "")
    except PacsError as exc:
        raise ScanctlError(f"{option}: {exc}") from None


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
    a.add_argument("--worklists", metavar="WLDIR", help="also serve the Modality Worklist from the .wl files in "
                                                        "WLDIR (scanctl worklist add), with Orthanc's plugin")
    a.set_defaults(func=cmd_pacs_serve)

    p = sub.add_parser("worklist", help="orders in: query a Modality Worklist, or add an order to a worklist folder")
    actions = p.add_subparsers(dest="worklist_action", required=True)
    a = actions.add_parser("query", help="list the orders a Modality Worklist server holds (C-FIND)",
                           description="Ask a Modality Worklist server (C-FIND) for the scheduled procedure steps "
                                       "matching the keys given and list them as orders. Exit 2: bad input, or "
                                       "the server cannot be reached, refuses or fails.")
    a.add_argument("--pacs", "--worklist", dest="server", metavar="AET@HOST:PORT", required=True,
                   help="the worklist server (e.g. ORTHANC@127.0.0.1:4242 of scanctl pacs serve --worklists)")
    a.add_argument("--modality", default="MR", help="scheduled modality (default MR; 'any': every modality)")
    a.add_argument("--station", metavar="AET", help="scheduled station AE title (default: any)")
    a.add_argument("--date", help="scheduled date YYYYMMDD or range YYYYMMDD-YYYYMMDD (default: any; 'today')")
    a.add_argument("--patient", metavar="ID", help="patient ID (default: any)")
    a.add_argument("--accession", metavar="N", help="accession number (default: any)")
    a.add_argument("--calling-aet", default="SCANCTL", help="our AE title (default SCANCTL)")
    a.add_argument("--json", action="store_true", help="print the orders as JSON")
    a.set_defaults(func=cmd_worklist_query)
    a = actions.add_parser("add", help="write an order as a worklist file (.wl) into a folder an Orthanc serves",
                           description="Write the order of FILE (TOML [order] or FHIR ServiceRequest JSON) as a "
                                       "Modality Worklist entry into WLDIR (scanctl pacs serve --worklists WLDIR).")
    a.add_argument("order", metavar="FILE", help="the order: TOML [order] table or FHIR R4 ServiceRequest (.json)")
    a.add_argument("wldir", metavar="WLDIR", help="the worklist folder (created if missing)")
    a.add_argument("--station", metavar="AET", default="SCANCTL", help="scheduled station AE title (default SCANCTL)")
    a.add_argument("--date", help="scheduled date YYYYMMDD (default today)")
    a.add_argument("--time", default="", help="scheduled time HHMMSS (default none)")
    a.add_argument("--modality", default="MR", help="scheduled modality (default MR)")
    a.set_defaults(func=cmd_worklist_add)


class Prepared:
    """The DICOM options checked before anything is done (a bad address or order is refused first)."""

    def __init__(self, args: argparse.Namespace, order: Any = None) -> None:
        from scanctl.data.pacs import check_aet, parse_pacs

        self.out = Path(args.dicom)
        self.order = order
        self.pacs = parse_pacs(args.store) if args.store else None
        self.calling_aet = check_aet(args.calling_aet, "--calling-aet")
        if args.retries < 0:
            raise ScanctlError(f"--retries must be 0 or more, got {args.retries}")
        if not args.retry_wait >= 0:
            raise ScanctlError(f"--retry-wait must be 0 or more seconds, got {args.retry_wait}")
        self.retries, self.retry_wait = args.retries, args.retry_wait
        self.verify = bool(getattr(args, "verify", True))


def prepare(args: argparse.Namespace, order: Any = None) -> Prepared | None:
    """The checked DICOM options of ``args`` (None without ``--dicom``), with ``order`` (from
    :func:`resolve_order`). Raises ScanctlError (exit 2)."""
    if getattr(args, "dicom", None) is None:
        if getattr(args, "store", None):
            raise ScanctlError("--store needs --dicom DIR")
        return None
    return Prepared(args, order)


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
                       retry_wait_s=prepared.retry_wait, verify=prepared.verify)
    except PacsError as exc:
        print(f"scanctl: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_LIMITS
    remark = f", {len(result.warnings)} with a warning" if result.warnings else ""
    remark += ", verified by C-FIND" if result.verified else ", not verified (--no-verify)"
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
    prepared = prepare(args, resolve_order(args))
    assert prepared is not None  # --dicom is required here
    return export(Path(args.run_dir), prepared)


def cmd_pacs_serve(args: argparse.Namespace) -> int:
    from scanctl.services.orthanc import Orthanc

    server = Orthanc(args.dir, aet=args.aet, dicom_port=args.port, http_port=args.http_port,
                     worklists=args.worklists)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with server:
        worklist = f", worklist from {server.worklists}" if server.worklists else ""
        print(f"Orthanc {server.pacs} (REST {server.url}), storage in {Path(args.dir) / 'storage'}{worklist}; "
              f"Ctrl-C stops", flush=True)
        try:
            assert server.process is not None
            code = server.process.wait()
        except KeyboardInterrupt:
            return EXIT_OK
    raise ScanctlError(f"Orthanc exited by itself with {code}; see {Path(args.dir) / 'orthanc.log'}")


def cmd_worklist_query(args: argparse.Namespace) -> int:
    import dataclasses
    import datetime as dt
    import json

    from scanctl.data.worklist import query

    _quiet_pynetdicom()
    date = dt.date.today().strftime("%Y%m%d") if args.date == "today" else args.date
    orders = query(_address(args.server, "--pacs"), modality=None if args.modality == "any" else args.modality,
                   station_aet=args.station, date=date, patient_id=args.patient, accession_number=args.accession,
                   calling_aet=args.calling_aet)
    if args.json:
        fields = [f.name for f in dataclasses.fields(orders[0])] if orders else []
        print(json.dumps([{k: getattr(o, k) for k in fields if k != "placeholder"} for o in orders], indent=2,
                         ensure_ascii=False))
        return EXIT_OK
    for o in orders:
        weight = f"{o.weight_kg:g} kg" if o.weight_kg is not None else "no weight"
        print(f"{o.accession_number or '-':16} {o.patient_id:12} {o.patient_name:28} {o.birth_date or '-':8} "
              f"{o.sex or '-'} {weight:>9}  {o.requested_procedure_code or '-'} {o.requested_procedure}".rstrip())
    print(f"{len(orders)} order{'s' if len(orders) != 1 else ''} from {args.server}")
    return EXIT_OK


def cmd_worklist_add(args: argparse.Namespace) -> int:
    from scanctl.data.worklist import Scheduled, load_order_file, write_worklist

    order = load_order_file(args.order)
    paths = write_worklist([order], args.wldir, Scheduled(modality=args.modality, station_aet=args.station,
                                                          date=args.date or "", time=args.time))
    print(f"wrote {paths[0]} (patient {order.patient_id}, accession {order.accession_number or '-'})")
    return EXIT_OK
