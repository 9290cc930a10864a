"""The control server's commands: one function each, registered with what the dispatcher needs to know.

Adding a command is its function here, under its ``@command`` line, and its row in docs/wire-protocol.md;
the server dispatches by :data:`COMMANDS` (control, retries, the worker thread) and the client sends any
command by name (``Client.command``). A handler gets the server, the client's id and the request, and
returns the reply's body (``status`` ``done`` unless it says ``accepted``); it raises :class:`Rejected`
(or a ScanctlError, mapped by the server) to refuse.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scanctl.engine.machine import ScannerState
from scanctl.engine.run import RunOutputError, RunReport
from scanctl.engine.session import Refused
from scanctl.errors import ConfigError, InvalidTransitionError, ScanctlError, SequenceFormatError
from scanctl.hw.interfaces import Acquisitions
from scanctl.services.run_store import MAX_CHUNK_BYTES
from scanctl.transport import schema
from scanctl.transport.acquisitions import pack_acquisitions
from scanctl.transport.wire import Message, to_plain

if TYPE_CHECKING:
    from scanctl.services.server import ControlServer

log = logging.getLogger(__name__)

S = ScannerState
#: Acquisitions per data message at most (a batch is packed in columns: six binary frames whatever its size).
ACQUISITIONS_PER_MESSAGE = 1024
RUN_STATES = frozenset({S.POSITIONING, S.RUNNING, S.PAUSING, S.PAUSED, S.STOPPING, S.ABORTING})

Handler = Callable[["ControlServer", str, Message], dict[str, Any]]


class Rejected(ScanctlError):
    """A command the server will not carry out; ``code`` goes into the error reply."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra


@dataclass(frozen=True)
class Command:
    """A command: its handler and how the server treats it."""

    name: str
    handler: Handler
    open: bool = False  # anyone may send it, control or not
    cached: bool = True  # its answer is kept for retries (False: it changes nothing, a retry runs again)
    worker: bool = False  # runs on the worker thread, which owns the state machine; the reply follows when done
    exclusive: bool = False  # only while no worker command or run is in progress
    check: Callable[[dict[str, Any]], None] | None = None  # its arguments, checked before it is queued


COMMANDS: dict[str, Command] = {}


def command(*names: str, **options: Any) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of ``names`` (see :class:`Command`)."""
    def register(handler: Handler) -> Handler:
        for name in names:
            COMMANDS[name] = Command(name, handler, **options)
        return handler
    return register


def check_arguments(name: str, body: dict[str, Any]) -> None:
    """Refuse (``bad_argument``) an argument of command ``name`` that the wire schema does not list for it: a
    misspelt optional argument would otherwise be ignored without a word."""
    known = schema.command_arguments()[name]
    unknown = sorted(str(key) for key in body if key != "command" and key not in known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise Rejected("bad_argument", f"{name} has no argument {', '.join(map(repr, unknown))} "
                                       f"(its arguments: {takes})")


def _number(value: Any) -> bool:
    """A finite number (not a bool): a NaN or infinite position or speed is refused, never acted on."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- anyone ----------------------------------------------------------------------------------------------------
@command("status", open=True, cached=False)
def status(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    return {"snapshot": server.snapshot()}


@command("sync", open=True, cached=False)
def sync(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Publish ``token`` on the events (and data) streams: a subscriber that sees it is in place."""
    token = msg.body.get("token")
    if not isinstance(token, str):
        raise Rejected("bad_argument", "sync needs a string 'token'")
    server.publish("sync", {"token": token})
    if server.separate_data:
        server.publish("data_sync", {"token": token}, data=True)
    return {}


@command("take_control", open=True)
def take_control(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    lease = server.lease
    try:
        taken = lease.take(client, force=msg.body.get("force") is True)
    except PermissionError as exc:
        raise Rejected("not_controller", str(exc), controller=lease.holder) from None
    if taken is not None:
        previous, lapsed = taken
        if previous is not None:
            log.warning("%s: %s takes control over from %s (%s)", server.name, client, previous,
                        "it lapsed" if lapsed else "forced")
        server.publish("control", {"controller": client, "previous": previous, "lapsed": lapsed})
    return {"controller": client}


@command("emergency_stop", open=True)
def emergency_stop(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """A button anyone in the room may press: every subsystem safe at once, latched."""
    reason = msg.body.get("reason")
    # The state change to EMERGENCY_STOP publishes the safety event (the server's journal listener).
    server.scanner.emergency_stop(reason if isinstance(reason, str) else f"emergency stop by {client}")
    return {"state": server.scanner.state.name}


@command("runs", open=True, cached=False)
def runs(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    return {"runs": server.store.runs(), "dir": str(server.store.root)}


@command("fetch", open=True, cached=False)
def fetch(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """A piece of a stored run's file: ``run``, ``file`` (raw.h5, sequence.seq, report.json), ``offset`` and
    ``length`` (bytes); the reply's ``data`` is a uint8 array (a binary frame), ``size`` the file's size."""
    body = msg.body
    name, offset, length = _or(body, "file", "raw.h5"), _or(body, "offset", 0), _or(body, "length", MAX_CHUNK_BYTES)
    try:
        data, size = server.store.read(body.get("run"), name, offset, length)
    except ValueError as exc:
        raise Rejected("bad_argument", f"fetch: {exc}") from None
    except FileNotFoundError:
        raise Rejected("bad_argument", f"fetch: no file {name!r} of run {body.get('run')!r} on this server") from None
    except OSError as exc:
        raise Rejected("failed", f"fetch: {exc.strerror or exc}") from None
    return {"run": body["run"], "file": name, "offset": offset, "size": size,
            "data": np.frombuffer(data, dtype=np.uint8)}


def _or(body: dict[str, Any], key: str, default: Any) -> Any:
    """An optional argument's value: ``default`` when it is absent or null (docs/wire-protocol.md)."""
    value = body.get(key)
    return default if value is None else value


# -- the controller ------------------------------------------------------------------------------------------
@command("release_control")
def release_control(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    server.lease.release()
    server.publish("control", {"controller": None, "previous": client})
    return {"controller": None}


@command("release_emergency_stop")
def release_emergency_stop(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    server.scanner.release_emergency_stop()
    server.publish("safety", {"kind": "emergency_stop_released", "message": f"released by {client}",
                              "interlocks": dict(server.scanner.interlocks)})
    return {"state": server.scanner.state.name}


@command("pause", "resume", "stop", "abort")
def run_request(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Honoured by the run loop at its next safe point (one that came before the loop began, when it does)."""
    what = str(msg.body["command"])
    scanner = server.scanner
    with server.state_lock:  # atomic with the worker handing deferred requests over (the journal listener)
        state = scanner.state
        if server.busy == "start" and state is S.READY:
            server.deferred.append(what)  # the run has not begun: handed over when it does
            return {"status": "accepted", "state": state.name}
        if state is S.POSITIONING:  # the run loop takes it before arming (stop, abort) or at its first safe point
            scanner.request(what)
            return {"status": "accepted", "state": state.name}
        if state not in RUN_STATES or what not in scanner.machine.allowed():
            allowed = ", ".join(scanner.machine.allowed())
            why = "no scan is running" if state not in RUN_STATES else f"allowed: {allowed}"
            raise Rejected("rejected", f"cannot {what} while {state.name} ({why})", state=state.name)
        scanner.request(what)
    return {"status": "accepted", "state": state.name}


@command("start", exclusive=True)
def start(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Accepted at once with the run's id; the run plays on the worker (:func:`play`) and ends with the
    ``run`` event ``end``."""
    state, loaded = server.scanner.state, server.loaded
    if state is not S.READY or loaded is None:
        raise Rejected("rejected", f"cannot start while {state.name}" + (": load a protocol first"
                                                                          if state is S.IDLE else ""), state=state.name)
    run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    server.begin_run(run_id, loaded.duration_s)
    return {"status": "accepted", "run": run_id}


def _check_load(body: dict[str, Any]) -> None:
    path, text = body.get("path"), body.get("text")
    if (path is None) == (text is None) or not isinstance(path or text, str):
        raise Rejected("bad_argument", "load needs 'path' (a file on the server) or 'text' (its content)")
    if text is not None and body.get("format") not in ("toml", "seq"):
        raise Rejected("bad_argument", "load with 'text' needs 'format': 'toml' or 'seq'")
    weight, mode = body.get("patient_weight_kg"), body.get("mode") or "normal"  # (null: as if absent)
    if not (weight is None or _number(weight)) or mode not in ("normal", "first-level", "first_level"):
        raise Rejected("bad_argument", "load takes an optional number 'patient_weight_kg' and 'mode' 'normal' or "
                                       "'first-level'")
    if body.get("prescan") not in (None, True, False):
        raise Rejected("bad_argument", f"load: 'prescan' must be true or false, got {body['prescan']!r}")


def _check_move(body: dict[str, Any]) -> None:
    position, speed = body.get("position_mm"), body.get("speed_mm_s")
    if not _number(position) or not (speed is None or _number(speed)):
        raise Rejected("bad_argument", "move_table needs a number 'position_mm' (and optional 'speed_mm_s')")


# -- on the worker thread (the state machine's owner) ----------------------------------------------------------
@command("reset", worker=True, exclusive=True)
def reset(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    server.scanner.reset()
    return {"state": server.scanner.state.name}


@command("move_table", worker=True, exclusive=True, check=_check_move)
def move_table(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    speed = msg.body.get("speed_mm_s")
    position = server.scanner.move_table(float(msg.body["position_mm"]), None if speed is None else float(speed))
    return {"position_mm": position, "state": server.scanner.state.name}


@command("load", worker=True, exclusive=True, check=_check_load)
def load(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """Load, check, predict and prepare a protocol or Pulseq file (a path on the server, or its ``text``)
    through the server's scan session, after the prescan the scan needs unless ``prescan`` is false (the
    reply's ``prescan``); a refusal before anything moved is ``rejected`` with ``outcome`` ``refused`` and the
    ``safety`` prediction."""
    scanner = server.scanner
    if scanner.state not in (S.IDLE, S.READY):
        raise InvalidTransitionError(f"cannot load while {scanner.state.name} "
                                     f"(allowed: {', '.join(scanner.machine.allowed())})")
    body = msg.body
    weight, mode = body.get("patient_weight_kg"), str(body.get("mode") or "normal")
    with tempfile.TemporaryDirectory(prefix="scanctl-load-") as tmp:
        if body.get("text") is not None:
            source_name = str(body.get("name") or f"upload.{body['format']}")
            source = Path(tmp) / f"{Path(source_name).stem}.{body['format']}"
            source.write_text(str(body["text"]), encoding="utf-8")
        else:
            source = Path(str(body["path"]))
            source_name = str(source)
        server.forget_loaded()
        try:
            loaded = server.session.load(source, name=source_name, patient_weight_kg=weight, mode=mode,
                                         prescan=body.get("prescan") is not False)
        except Refused as exc:  # nothing moved: typed, so a console never matches the text
            safety = exc.report.get("safety", {})
            server.publish("safety", {"kind": "refused", "message": str(exc), "safety": safety})
            raise Rejected("rejected", str(exc), state=scanner.state.name, outcome="refused", safety=safety) from None
        except (ConfigError, SequenceFormatError) as exc:
            if source_name == str(source):
                raise
            # An upload is named as the client named it, not by the server's temporary copy.
            raise ConfigError(str(exc).replace(str(source), f"{source_name} (uploaded)")) from None
    info = server.keep_loaded(source_name, loaded)
    return {"state": scanner.state.name, "check": loaded.check, "sequence_text": loaded.sequence_text.decode("utf-8"),
            "header_xml": loaded.header.to_xml(), "header": header_to_plain(loaded.header), **info}


def header_to_plain(header: Any) -> dict[str, Any]:
    """A raw data header as a ``load`` reply carries it: its fields, the complex noise covariance as a
    complex array (the wire has no complex scalars; :func:`scanctl.services.remote_run.header_from_plain`
    turns it back)."""
    plain: dict[str, Any] = to_plain(header)
    if header.noise_covariance is not None:
        plain["noise_covariance"] = np.asarray(header.noise_covariance, dtype=np.complex128)
    return plain


def play(server: ControlServer, client: str, msg: Message) -> dict[str, Any]:
    """The run behind an accepted ``start``, on the worker: the scan session writes the server's own copy of
    it (DATA_DIR/<run id>) and every batch is published as it comes. Whatever happens, the run ends with its
    ``end`` event (the same report, with the run id): the console that started it waits for that."""
    loaded = server.loaded
    assert loaded is not None
    run_id = server.run_id
    folder = server.store.root / run_id
    sent = 0
    server.publish("run", {"event": "start", "run": run_id, "sequence": loaded.info["sequence"],
                           "protocol": loaded.info["protocol"], "dir": str(folder)})

    def publish_data(batch: Acquisitions) -> None:
        nonlocal sent
        for i in range(0, len(batch), ACQUISITIONS_PER_MESSAGE):
            server.publish("data", {"acquisitions": pack_acquisitions(batch[i:i + ACQUISITIONS_PER_MESSAGE])},
                           data=True)
        sent += len(batch)

    def progress(t_s: float, total_s: float, acquisitions: int) -> None:
        server.progressed({"t_s": t_s, "total_s": total_s, "acquisitions": sent})

    try:
        report = asdict(server.session.run(folder, reconstruct=False, progress=progress, also=publish_data))
    except RunOutputError as exc:  # the scan ended safe; files of the server's copy are missing (named)
        report = asdict(exc.report)
    except ScanctlError as exc:  # before anything played (the run's folder cannot be made, …)
        log.error("%s: run %s not started: %s", server.name, run_id, exc)
        report = asdict(RunReport(outcome="refused", message=str(exc), acquisitions=0, timings={}, journal=[],
                                  telemetry={}, outputs={}, protocol=loaded.info["protocol"],
                                  sequence=loaded.info["sequence"], profile=server.profile.name,
                                  subsystems=dict(server.urls), duration_s=loaded.duration_s))
    finally:
        with server.state_lock:
            server.deferred.clear()
        # Tell data subscribers the stream of this run is complete (data and events travel apart).
        server.publish("data", {"end": True, "acquisitions": sent}, data=True)
    report["run"] = run_id
    server.end_run(report)
    return report
