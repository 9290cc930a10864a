"""``scanctl exam open|status|skip|repeat|append|next|run|close|demo`` (docs/exam.md).

Without ``--connect`` an exam lives in a directory given on the command line and its runs play in this
process on the profile's subsystems (the embedded simulators by default); each verb resumes the exam
from its ``exam.json``. With ``--connect ENDPOINT`` the control server (``scanctl up``) holds the exam and
runs it; the verbs send its ``exam.*`` commands. Exit codes: 0 done; 1 a step did not complete, a store or
MPPS did not go through (said on stderr, the exam and its files kept); 2 bad input or an operation the
exam's state does not allow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from scanctl.cli_common import EXIT_LIMITS, EXIT_OK, client_security_args, one_line
from scanctl.errors import ScanctlError


def add_parsers(sub: Any) -> None:
    """Add ``exam`` and its verbs to the ``scanctl`` sub-command parsers ``sub``."""
    from scanctl.cli_dicom import order_args

    p = sub.add_parser("exam", help="an exam: an order, an exam card's protocols as a queue, MPPS, DICOM",
                       description="Run an exam (docs/exam.md): open it from an order, run its protocols one by one "
                                   "or all, skip, repeat or append, close it. Without --connect the exam lives in "
                                   "DIR and runs in this process; with --connect the control server holds it.")
    verbs = p.add_subparsers(dest="exam_action", required=True)

    def verb(name: str, text: str, *, remote: bool = True) -> argparse.ArgumentParser:
        a = verbs.add_parser(name, help=text, description=text)
        if remote:
            a.add_argument("dir", nargs="?", help="the exam directory (not with --connect)")
            a.add_argument("--connect", metavar="ENDPOINT", help="the control server holding the exam (scanctl up)")
            a.add_argument("--force", action="store_true", help="with --connect: take control from another client")
            client_security_args(a)
        return a

    a = verb("open", "open an exam from an order (a file, or a worklist entry by accession number)")
    order_args(a)
    a.add_argument("--calling-aet", default="SCANCTL", help="our AE title towards the worklist (default SCANCTL)")
    a.add_argument("--card", help="an exam card name (protocols/exams) or file (default: the one serving the "
                                  "order's requested procedure)")
    a.add_argument("--mpps", metavar="AET@HOST:PORT", help="send MPPS (N-CREATE, N-SET) to this peer")
    a.set_defaults(func=cmd_open)
    a = verb("status", "the exam's steps and state")
    a.add_argument("--json", action="store_true", help="print exam.json's content")
    a.set_defaults(func=cmd_status)
    for name, text in (("skip", "skip a pending step"), ("repeat", "queue a step's protocol again, to run next")):
        a = verb(name, text)
        a.add_argument("step", type=int, help="the step's number (scanctl exam status)")
        a.set_defaults(func=cmd_queue)
    a = verb("append", "add a protocol at the end of the queue")
    a.add_argument("protocol", help="protocol .toml (or Pulseq .seq); with --connect a path on the server")
    a.add_argument("--name", help="the step's name (default: the file's)")
    a.set_defaults(func=cmd_queue)
    for name, text in (("next", "run the next pending step"), ("run", "run every pending step")):
        a = verb(name, text)
        a.add_argument("--system", help="system profile (in this process; default the embedded simulators)")
        a.add_argument("--no-prescan", action="store_true", help="skip the calibrations each protocol needs first "
                                                                 "(in this process; docs/prescan.md)")
        a.set_defaults(func=cmd_run)
    a = verb("close", "close the exam (MPPS COMPLETED), or discontinue it")
    a.add_argument("--discontinue", action="store_true", help="end it as discontinued (MPPS DISCONTINUED)")
    a.add_argument("--reason", default="", help="why it was discontinued")
    a.add_argument("--store", metavar="AET@HOST:PORT", help="C-STORE the series not yet stored first (not with "
                                                            "--connect)")
    a.add_argument("--retries", type=int, default=2, help="with --store: tries again while the PACS cannot be "
                                                          "reached (default 2)")
    a.add_argument("--retry-wait", type=float, default=2.0, metavar="S", help="seconds between tries (default 2)")
    a.set_defaults(func=cmd_close)
    a = verb("demo", "a whole demo exam: worklist, head card on the simulators, DICOM to a local Orthanc, report",
             remote=False)
    a.add_argument("--out", required=True, help="the exam directory (new or empty): report.html, dicom/, runs/")
    a.set_defaults(func=cmd_demo)


# -- helpers ---------------------------------------------------------------------------------------------------
def _where(args: argparse.Namespace) -> None:
    if args.connect and args.dir:
        raise ScanctlError("give an exam directory or --connect, not both (the server holds its exam)")
    if not args.connect and not args.dir:
        raise ScanctlError("give the exam directory (or --connect ENDPOINT for the server's exam)")


def _remote(args: argparse.Namespace, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send ``name`` to the server, holding control for it (as the command verbs do)."""
    from scanctl.cli_common import client_keys
    from scanctl.services.client import Client, CommandError

    with Client(args.connect, keys=client_keys(args)) as client:
        try:
            if name == "exam.status":
                return client.command(name)
            client.take_control(force=args.force)
            try:
                return client.command(name, body or {})
            finally:
                client.release_control()
        except CommandError as exc:
            raise ScanctlError(f"{name} refused: {exc}") from None


def _resume(args: argparse.Namespace) -> Any:
    from scanctl.exam.exam import Exam

    return Exam.resume(args.dir)


def print_exam(doc: dict[str, Any] | None) -> None:
    """The exam as a few lines: who, what, each step."""
    if doc is None:
        print("no exam open")
        return
    order = doc["order"]
    weight = f"{order['weight_kg']:g} kg" if order.get("weight_kg") is not None else "no weight"
    print(f"exam {doc['exam_id']} ({doc['state']}): {doc['card']['name']} for {order['patient_name']} "
          f"({order['patient_id']}, {weight}), accession {order.get('accession_number') or '-'}")
    for step in doc["steps"]:
        detail = step["message"] or step["outcome"] or ""
        series = step["dicom"]
        dicom = f"{series['files']} DICOM{', stored' if series['stored'] else ''}" if series else ""
        print(f"  {step['n']:>2} {step['protocol']:16} {step['status']:11} {step['run_dir'] or '-':22} {dicom:16}"
              f"{one_line(detail)}".rstrip())
    mpps = doc["mpps"]
    if mpps.get("peer"):
        print(f"  MPPS {mpps['peer']}: {mpps['state'] or 'not sent'}" + (f" ({mpps['message']})" if mpps["message"]
                                                                         else ""))


def _outcome(steps: list[dict[str, Any]]) -> int:
    bad = [s for s in steps if s["status"] != "done"]
    for s in bad:
        print(f"scanctl: step {s['n']} ({s['protocol']}) {s['status']}: {one_line(s['message'] or s['outcome'])}",
              file=sys.stderr)
    return EXIT_LIMITS if bad else EXIT_OK


# -- verbs -----------------------------------------------------------------------------------------------------
def cmd_open(args: argparse.Namespace) -> int:
    from scanctl.cli_dicom import resolve_order

    _where(args)
    order = resolve_order(args)
    if order is None:
        raise ScanctlError("an exam needs an order: --order FILE, or --accession N --worklist AET@HOST:PORT")
    source = args.order or f"worklist {args.worklist} accession {args.accession}"
    if args.connect:
        from scanctl.exam.exam import order_json

        card = str(Path(args.card).resolve()) if args.card and args.card.endswith(".toml") else args.card
        body = _remote(args, "exam.open", {"order": order_json(order), "card": card, "mpps": args.mpps,
                                           "order_source": source})
        print_exam(body["exam"])
        return EXIT_OK
    from scanctl.data.pacs import parse_pacs
    from scanctl.exam.cards import resolve_card
    from scanctl.exam.exam import Exam

    card = resolve_card(args.card, order.requested_procedure_code, order.requested_procedure)
    mpps = parse_pacs(args.mpps) if args.mpps else None
    with Exam.open(args.dir, order, card, source=source, mpps=mpps) as exam:
        print_exam(exam.doc)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    _where(args)
    if args.connect:
        doc = _remote(args, "exam.status")["exam"]
    else:
        from scanctl.exam import record

        doc = record.read(Path(args.dir))  # reading does not resume: a process running it is not disturbed
    if args.json:
        print(json.dumps(doc, indent=1, ensure_ascii=False))
    else:
        print_exam(doc)
    return EXIT_OK


def cmd_queue(args: argparse.Namespace) -> int:
    """skip, repeat, append."""
    _where(args)
    action = args.exam_action
    if args.connect:
        body = ({"path": str(Path(args.protocol).resolve()), "name": args.name} if action == "append"
                else {"step": args.step})
        doc = _remote(args, f"exam.{action}", body)["exam"]
    else:
        with _resume(args) as exam:
            if action == "append":
                exam.append(args.protocol, args.name)
            else:
                getattr(exam, action)(args.step)
            doc = exam.doc
    print_exam(doc)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """next, run."""
    _where(args)
    if args.connect:
        if args.system:
            raise ScanctlError("--system is the server's with --connect")
        if args.no_prescan:
            raise ScanctlError("--no-prescan is not available with --connect (the server's exam queue prescans "
                               "each step)")
        body = _remote(args, f"exam.{args.exam_action}")  # (the client waits long for these: runs play first)
        print_exam(body["exam"])
        return _outcome(body["steps"])
    from scanctl.config import profile as profiles
    from scanctl.engine.session import LocalPort, ScanSession
    from scanctl.prescan.plan import before_run

    profile = profiles.load(args.system)
    # Each step prescans first, as scanctl run and the server's exam queue do (one pipeline: LocalPort's hook).
    with _resume(args) as exam, LocalPort(profile, prescan=None if args.no_prescan else before_run) as port:
        session = ScanSession(port)
        steps = exam.run_all(session) if args.exam_action == "run" else [exam.run_next(session)]
        print_exam(exam.doc)
    return _outcome(steps)


def cmd_close(args: argparse.Namespace) -> int:
    _where(args)
    code = EXIT_OK
    if args.connect:
        if args.store:
            raise ScanctlError("--store is not available with --connect (the server's DICOM stays on the server)")
        body = _remote(args, "exam.close", {"discontinue": args.discontinue, "reason": args.reason or None})
        doc, mpps = body["exam"], body["mpps"]
    else:
        from scanctl.data.pacs import parse_pacs

        pacs = parse_pacs(args.store) if args.store else None
        if args.retries < 0 or not args.retry_wait >= 0:
            raise ScanctlError(f"--retries and --retry-wait must be 0 or more, got {args.retries}, {args.retry_wait}")
        with _resume(args) as exam:
            if pacs is not None:
                count, seconds = exam.store(pacs, retries=args.retries, retry_wait_s=args.retry_wait)
                failed = [s for s in exam.doc["steps"] if s["dicom"] and not s["dicom"]["stored"]]
                for s in failed:
                    print(f"scanctl: step {s['n']}: {one_line(s['dicom']['store_message'])}", file=sys.stderr)
                code = EXIT_LIMITS if failed else code
                print(f"stored {count} images to {pacs} in {seconds:.3f} s")
            mpps = exam.discontinue(args.reason) if args.discontinue else exam.close()
            doc = exam.doc
    print_exam(doc)
    if mpps.get("peer") and mpps.get("message"):
        print(f"scanctl: MPPS: {one_line(mpps['message'])}", file=sys.stderr)
        code = EXIT_LIMITS
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    timings = run_demo(Path(args.out), say=lambda line: print(line, flush=True))
    width = max(map(len, timings))
    print("wall time per step:")
    for name, seconds in timings.items():
        print(f"  {name:{width}}  {seconds:8.3f} s")
    return EXIT_OK


#: The demo patient (a worklist entry the demo writes; the head card serves its requested procedure).
DEMO_ORDER_FIELDS: dict[str, Any] = {
    "patient_id": "DEMO-0001", "patient_name": "Demo^Patient", "birth_date": "19800101", "sex": "O", "weight_kg": 70.0,
    "accession_number": "DEMO0001", "requested_procedure": "MR head", "requested_procedure_code": "MRHEAD",
    "procedure_step_id": "SPS1", "referring_physician": "Doe^Jane"}


def run_demo(out: Path, say: Any = print, overrides: dict[str, str] | None = None) -> dict[str, float]:
    """The demo exam end to end into ``out`` (new or empty); returns the wall time of each step (s), the
    end-to-end time (worklist query to report) last. ``overrides``: subsystem URLs (tests). Raises
    ScanctlError (Orthanc missing, a step that fails)."""
    import tempfile

    from scanctl.config import profile as profiles
    from scanctl.data.orders import Order
    from scanctl.data.worklist import Scheduled, order_by_accession, write_worklist
    from scanctl.engine.session import LocalPort, ScanSession
    from scanctl.exam.cards import resolve_card
    from scanctl.exam.exam import Exam
    from scanctl.prescan.plan import before_run
    from scanctl.services.orthanc import Orthanc

    timings: dict[str, float] = {}

    def timed(name: str, call: Any) -> Any:
        t0 = time.perf_counter()
        result = call()
        timings[name] = time.perf_counter() - t0
        return result

    with tempfile.TemporaryDirectory(prefix="scanctl-demo-") as tmp:
        worklists = Path(tmp) / "worklists"
        write_worklist([Order(**DEMO_ORDER_FIELDS)], worklists, Scheduled())
        orthanc = Orthanc(Path(tmp) / "orthanc", worklists=worklists)
        timed("start Orthanc", orthanc.start)
        try:
            say(f"Orthanc {orthanc.pacs} (worklist and PACS) started")
            t_start = time.perf_counter()
            order = timed("worklist query (C-FIND)",
                          lambda: order_by_accession(orthanc.pacs, DEMO_ORDER_FIELDS["accession_number"]))
            say(f"order: {order.patient_name} ({order.patient_id}), {order.requested_procedure}, "
                f"{order.weight_kg:g} kg")
            card = resolve_card(None, order.requested_procedure_code, order.requested_procedure)
            with Exam.open(out, order, card, source=f"worklist {orthanc.pacs}") as exam, \
                    LocalPort(profiles.load(), overrides, prescan=before_run) as port:
                session = ScanSession(port)
                while (step := exam.pending()) is not None:
                    step = timed(f"protocol {step['n']} {step['protocol']}",
                                 lambda: exam.run_next(session, dicom=False))
                    if step["status"] != "done":
                        raise ScanctlError(f"demo: step {step['n']} ({step['protocol']}) {step['status']}: "
                                           f"{step['message']}")
                    t0 = time.perf_counter()
                    exam.export(step)
                    timings["DICOM conversion"] = timings.get("DICOM conversion", 0.0) + time.perf_counter() - t0
                    say(f"step {step['n']} {step['protocol']}: done ({step['run_dir']})")
                count, seconds = exam.store(orthanc.pacs)
                timings["store (C-STORE)"] = seconds
                unstored = [s for s in exam.steps if s["dicom"] and not s["dicom"]["stored"]]
                if unstored:
                    raise ScanctlError(f"demo: {unstored[0]['dicom']['store_message']}")
                say(f"stored {count} images to {orthanc.pacs}: {count / seconds if seconds else 0:.1f} images/s")
                exam.close()  # writes report.html, its time journaled
            timings["report"] = next(e["seconds"] for e in reversed(exam.doc["journal"]) if e["event"] == "report")
            report = out / "report.html"
            timings["end to end (worklist query to report)"] = time.perf_counter() - t_start
            say(f"report: {report}; DICOM: {out / 'dicom'}")
        finally:
            timed("stop Orthanc", orthanc.stop)
    return timings
