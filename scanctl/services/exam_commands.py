"""The control server's exam commands (``exam.open``, ``exam.status``, ``exam.skip``, ``exam.repeat``,
``exam.append``, ``exam.next``, ``exam.run``, ``exam.close``) and the ``exam`` event stream (docs/exam.md,
docs/wire-protocol.md).

The server holds one exam at a time. Its directory is ``DATA_DIR/exams/<exam id>`` beside the server's runs
(the exam directory contract: exam.json, runs/NN-NAME, dicom/NN-NAME): every step is journaled there before
the command answers, so a server restarted mid-exam finds the open exam again at the first exam command
(:meth:`scanctl.exam.exam.Exam.resume`: a step cut short shows ``interrupted``, its data kept) and it can
be continued or closed. Runs go through the server's own scan session, on the worker thread that owns the
state machine, as ``load`` and ``start`` do.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanctl.errors import ConfigError, DicomError
from scanctl.exam.cards import resolve_card
from scanctl.exam.exam import Exam, new_exam_id, order_from_json
from scanctl.exam.record import ExamError
from scanctl.services.commands import Rejected, command
from scanctl.transport.wire import Message

if TYPE_CHECKING:
    from scanctl.services.server import ControlServer

log = logging.getLogger(__name__)

_exams: weakref.WeakKeyDictionary[Any, Exam] = weakref.WeakKeyDictionary()
_lock = threading.Lock()  # the loop thread and the worker both reach the exam


def exams_dir(server: ControlServer) -> Path:
    """Where the server keeps its exams."""
    return Path(server.store.root) / "exams"


def current(server: ControlServer, *, required: bool = True) -> Exam | None:
    """The server's open exam: the one in memory, else the newest open one on disk (a server restarted
    mid-exam), resumed. Raises Rejected when there is none and ``required``."""
    with _lock:
        exam = _exams.get(server)
        if exam is None or exam.state != "open":
            exam = _find_open(server)
            if exam is not None:
                _exams[server] = exam
    if exam is None and required:
        raise Rejected("rejected", "no exam is open on this server (exam.open)")
    return exam


def _find_open(server: ControlServer) -> Exam | None:
    folder = exams_dir(server)
    candidates = []
    for path in folder.glob("*/exam.json") if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("state") == "open":
            candidates.append((str(doc.get("opened")), path.parent))
    for _, exam_dir in sorted(candidates, reverse=True):
        try:
            exam = Exam.resume(exam_dir, listener=_publisher(server, exam_dir.name))
        except ExamError as exc:
            log.warning("%s: exam in %s not resumed: %s", server.name, exam_dir, exc)
            continue
        log.info("%s: exam %s resumed from %s", server.name, exam.exam_id, exam_dir)
        server.publish("exam", {"exam": exam.exam_id, "event": "resumed", "dir": str(exam_dir)})
        return exam
    return None


def _publisher(server: ControlServer, exam_id: str) -> Any:
    def publish(event: str, details: dict[str, Any]) -> None:
        server.publish("exam", {"exam": exam_id, "event": event, **details})
    return publish


def _reply(exam: Exam, **extra: Any) -> dict[str, Any]:
    return {"exam": exam.doc, "dir": str(exam.dir), **extra}


def _step_number(body: dict[str, Any]) -> int:
    n = body.get("step")
    if isinstance(n, bool) or not isinstance(n, int):
        raise Rejected("bad_argument", f"{body.get('command')} needs an integer 'step', got {n!r}")
    return n


def _refusing(call: Any) -> Any:
    """Run ``call()``; an exam in the wrong state is ``rejected``, a bad card, protocol or order
    ``bad_argument``."""
    try:
        return call()
    except ExamError as exc:
        raise Rejected("rejected", str(exc)) from None
    except (ConfigError, DicomError) as exc:
        raise Rejected("bad_argument", str(exc)) from None


# -- commands --------------------------------------------------------------------------------------------------
def _check_open(body: dict[str, Any]) -> None:
    if not isinstance(body.get("order"), dict):
        raise Rejected("bad_argument", "exam.open needs 'order': an object of the order's fields (patient_id, "
                                       "patient_name, weight_kg, requested_procedure, …)")
    for key in ("card", "mpps", "order_source"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise Rejected("bad_argument", f"exam.open: '{key}' must be a string")


@command("exam.open")
def exam_open(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Open an exam of ``order`` with ``card`` (a name or a card file on the server; default: the card
    serving the order's requested procedure), MPPS to ``mpps`` (AET@HOST:PORT) if given."""
    body = msg.body
    _check_open(body)
    if (open_exam := current(server, required=False)) is not None:
        raise Rejected("rejected", f"exam {open_exam.exam_id} is open on this server: close it first")

    def make() -> Exam:
        from scanctl.data.pacs import PacsError, parse_pacs

        order = order_from_json(body["order"])
        card = resolve_card(body.get("card"), order.requested_procedure_code, order.requested_procedure)
        try:
            mpps = parse_pacs(body["mpps"]) if body.get("mpps") else None
        except PacsError as exc:
            raise ConfigError(f"mpps: {exc}") from None
        exam_id = new_exam_id()
        return Exam.open(exams_dir(server) / exam_id, order, card, source=str(body.get("order_source") or client),
                         mpps=mpps, listener=_publisher(server, exam_id), exam_id=exam_id)

    exam = _refusing(make)
    with _lock:
        _exams[server] = exam
    return _reply(exam)


@command("exam.status", open=True, cached=False)
def exam_status(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """The open exam (null when none)."""
    exam = current(server, required=False)
    return {"exam": None, "dir": None} if exam is None else _reply(exam)


@command("exam.skip")
def exam_skip(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    exam = current(server)
    assert exam is not None
    return _reply(exam, step=_refusing(lambda: exam.skip(_step_number(msg.body))))


@command("exam.repeat")
def exam_repeat(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    exam = current(server)
    assert exam is not None
    return _reply(exam, step=_refusing(lambda: exam.repeat(_step_number(msg.body))))


@command("exam.append")
def exam_append(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Append the protocol at ``path`` (on the server) as step ``name`` (default: its file name)."""
    path, name = msg.body.get("path"), msg.body.get("name")
    if not isinstance(path, str) or not (name is None or isinstance(name, str)):
        raise Rejected("bad_argument", "exam.append needs a string 'path' (a protocol on the server) and an "
                                       "optional string 'name'")
    exam = current(server)
    assert exam is not None
    return _reply(exam, step=_refusing(lambda: exam.append(path, name)))


def _run(server: ControlServer, everything: bool) -> dict[str, Any]:
    exam = current(server)
    assert exam is not None

    def progress(t_s: float, total_s: float, acquisitions: int) -> None:
        server.progressed({"t_s": t_s, "total_s": total_s, "acquisitions": acquisitions})

    if everything:
        steps = _refusing(lambda: exam.run_all(server.session, progress=progress))
    else:
        steps = [_refusing(lambda: exam.run_next(server.session, progress=progress))]
    return _reply(exam, steps=steps, state=server.scanner.state.name)


@command("exam.next", worker=True, exclusive=True)
def exam_next(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Run the next pending step (the reply follows when it has ended)."""
    return _run(server, everything=False)


@command("exam.run", worker=True, exclusive=True)
def exam_run(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Run every pending step in turn, stopping at the first that does not complete."""
    return _run(server, everything=True)


def _check_close(body: dict[str, Any]) -> None:
    if body.get("discontinue") is not None and not isinstance(body["discontinue"], bool):
        raise Rejected("bad_argument", "exam.close: 'discontinue' must be true or false")
    if body.get("reason") is not None and not isinstance(body["reason"], str):
        raise Rejected("bad_argument", "exam.close: 'reason' must be a string")


@command("exam.close", worker=True, exclusive=True, check=_check_close)
def exam_close(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Close the open exam (MPPS COMPLETED), or with ``discontinue`` end it (DISCONTINUED, ``reason``); on
    the worker: MPPS may wait for its peer."""
    exam = current(server)
    assert exam is not None
    if msg.body.get("discontinue"):
        mpps = _refusing(lambda: exam.discontinue(str(msg.body.get("reason") or "")))
    else:
        mpps = _refusing(exam.close)
    with _lock:
        _exams.pop(server, None)
    exam.release()
    return _reply(exam, mpps=mpps)


#: The commands this module adds to :data:`scanctl.services.commands.COMMANDS`.
EXAM_COMMANDS = ("exam.open", "exam.status", "exam.skip", "exam.repeat", "exam.append", "exam.next", "exam.run",
                 "exam.close")

__all__ = ["EXAM_COMMANDS", "current", "exams_dir"]
