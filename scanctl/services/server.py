"""The control server: the scanner as a ZeroMQ service (``scanctl serve``; protocol in docs/server.md).

Sockets:

- **command** (ROUTER, default ``tcp://127.0.0.1:5555``): requests of type ``command`` with body
  ``{"command": NAME, ...}``. Replies are ``reply`` ``{"status": "accepted" | "done", ...}`` or ``error``
  ``{"code", "message", ...}``. A retry with the same request id from the same client gets the same reply
  without the command running twice.
- **events** (PUB, default ``tcp://127.0.0.1:5556``): ``event`` messages on the streams ``state``,
  ``progress``, ``telemetry``, ``safety``, ``run``, ``control`` and ``sync``, each stamped with ``src``,
  ``run`` and a per-stream ``seq``.
- **data** (PUB; the events socket unless another endpoint is given): ``data`` messages, stream
  ``data``, the ADC samples as binary frames straight from numpy.

Threads: the loop thread owns the sockets' receiving side and answers commands; one worker thread owns
the scanner's state machine (connect, load/prepare, run, reset, table moves) as the executor requires.
Pause, resume, stop and abort reach the run loop through :meth:`Scanner.request` (thread-safe);
emergency stop through :meth:`Scanner.emergency_stop`. Publishing happens on whichever thread has
something to say, serialised by one lock (a ZeroMQ socket may move between threads behind a lock).
"""

from __future__ import annotations

import logging
import math
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from scanctl.config.profile import DEFAULT_ENDPOINTS, SystemProfile
from scanctl.engine.executor import Scanner
from scanctl.engine.machine import JournalEntry, ScannerState
from scanctl.engine.run import RunOutputError, RunReport, subsystem_urls
from scanctl.engine.session import LocalPort, Refused, ScanSession
from scanctl.errors import (
    ConfigError,
    InvalidTransitionError,
    SafetyLimitError,
    ScanctlError,
    SequenceFormatError,
    WireProtocolError,
)
from scanctl.hw.interfaces import Acquisitions
from scanctl.services.reply_cache import ReplyCache, fingerprint
from scanctl.services.run_store import MAX_CHUNK_BYTES, RunStore
from scanctl.transport.publisher import Publisher
from scanctl.transport.security import ServerCurve, refuse_unauthenticated
from scanctl.transport.wire import (
    VERSION_TEXT,
    Message,
    decode,
    encode,
    error_reply,
    malformed_reply,
    pack_acquisitions,
    to_plain,
)

log = logging.getLogger(__name__)

S = ScannerState
DEFAULT_CONTROL = DEFAULT_ENDPOINTS["control"]
DEFAULT_EVENTS = DEFAULT_ENDPOINTS["events"]
DEFAULT_DATA = DEFAULT_ENDPOINTS["data"]
#: Largest command message accepted (bytes); a bigger one makes ZeroMQ drop the connection.
MAX_COMMAND_BYTES = 64 << 20
#: Acquisitions per data message at most (a batch is packed in columns: six binary frames whatever its size).
ACQUISITIONS_PER_MESSAGE = 1024
#: Commands whose replies are not kept for retries: they change nothing, so a retry simply runs again (and
#: a status reply, a whole snapshot, is the largest there is).
UNCACHED_COMMANDS = frozenset({"status", "sync", "runs", "fetch"})
#: How often the worker looks at every subsystem between commands (s): a lost one latches FAULT.
LIVENESS_CHECK_S = 0.1

#: A controller silent for longer than this (s: no command, not even ``status``) may be taken over by
#: another client's ``take_control`` without ``force``: a console that died does not hold the scanner.
CONTROL_TIMEOUT_S = 30.0
#: Commands anyone may send; every other command needs control. The emergency stop is a button anyone in
#: the room may press: an observer's console can send it too (releasing it needs control).
OPEN_COMMANDS = frozenset({"status", "take_control", "sync", "emergency_stop", "runs", "fetch"})
RUN_REQUESTS = ("pause", "resume", "stop", "abort")
#: Commands that run on the worker thread (they drive the state machine); the reply follows when done.
WORKER_COMMANDS = frozenset({"load", "reset", "move_table"})
COMMANDS = frozenset({*OPEN_COMMANDS, "release_control", "load", "start", *RUN_REQUESTS, "emergency_stop",
                      "release_emergency_stop", "reset", "move_table"})
_RUN_STATES = frozenset({S.POSITIONING, S.RUNNING, S.PAUSING, S.PAUSED, S.STOPPING, S.ABORTING})


class Rejected(ScanctlError):
    """A command the server will not carry out; ``code`` goes into the error reply."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra


@dataclass
class _Loaded:
    source: str
    duration_s: float
    info: dict[str, Any]


def bind_socket(socket: zmq.Socket[Any], endpoint: str) -> str:
    """Bind ``socket``; an endpoint ending in ``:0`` or ``:*`` takes a free port. Returns the endpoint bound.
    Raises ConfigError."""
    try:
        if endpoint.endswith(":0") or endpoint.endswith(":*"):
            base = endpoint.rsplit(":", 1)[0]
            return f"{base}:{socket.bind_to_random_port(base)}"
        socket.bind(endpoint)
        return endpoint
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {endpoint}: {exc}") from exc


class ControlServer:
    """The scanner ``profile`` describes, served on ``control_endpoint`` (commands) and
    ``events_endpoint`` (events; also ADC data unless ``data_endpoint`` is given).

    ``overrides`` replaces subsystem URLs per kind. Endpoints ending in ``:0`` take a free port (see
    :attr:`endpoints`). With ``curve`` (:class:`scanctl.transport.security.ServerCurve`) every socket requires
    CurveZMQ and admits only the allowed client keys; without it a TCP endpoint that is not on loopback is
    refused with ConfigError unless ``insecure``. Construction binds the sockets;
    :meth:`serve_forever` connects the scanner and serves until :meth:`stop`.
    """

    def __init__(self, profile: SystemProfile, control_endpoint: str = DEFAULT_CONTROL,
                 events_endpoint: str = DEFAULT_EVENTS, data_endpoint: str | None = None,
                 overrides: dict[str, str] | None = None, *, name: str = "scanctl-server", segment_s: float = 0.5,
                 telemetry_period_s: float = 1.0, insecure: bool = False, curve: ServerCurve | None = None,
                 context: zmq.Context[Any] | None = None, control_timeout_s: float = CONTROL_TIMEOUT_S,
                 data_dir: str | Path | None = None) -> None:
        refuse_unauthenticated([control_endpoint, events_endpoint, data_endpoint], curve, insecure, "the scanner")
        self.curve = curve
        self.profile = profile
        self.overrides = dict(overrides or {})
        self.name = name
        self.segment_s = segment_s
        self.telemetry_period_s = telemetry_period_s
        if not (math.isfinite(control_timeout_s) and control_timeout_s > 0):
            raise ConfigError(f"control timeout {control_timeout_s} s is not a positive number")
        self.control_timeout_s = control_timeout_s
        self.store = RunStore(data_dir)  # the server's own copy of every run (scanctl/services/run_store.py)
        self._context = context or zmq.Context.instance()
        self._commands = self._socket(zmq.ROUTER)
        self._commands.setsockopt(zmq.MAXMSGSIZE, MAX_COMMAND_BYTES)
        self._events = self._socket(zmq.PUB)
        self._events.setsockopt(zmq.SNDHWM, 100_000)
        self._data = self._events
        try:
            control = bind_socket(self._commands, control_endpoint)
            events = bind_socket(self._events, events_endpoint)
            data = events
            if data_endpoint is not None:
                self._data = self._socket(zmq.PUB)
                self._data.setsockopt(zmq.SNDHWM, 1_000_000)
                data = bind_socket(self._data, data_endpoint)
        except ConfigError:
            self._close_sockets()
            raise
        self.endpoints = {"control": control, "events": events, "data": data}
        self._wake_addr = f"inproc://server-wake-{uuid.uuid4().hex}"
        self._wake = self._socket(zmq.PAIR)
        self._wake.bind(self._wake_addr)
        self._publisher = Publisher(self._events, self._data, name)
        self._stopping = threading.Event()
        self._jobs: queue.Queue[tuple[str, list[bytes], str, Message] | None] = queue.Queue()
        self._replies: queue.Queue[tuple[list[bytes], str, Message, str]] = queue.Queue()
        self._cache = ReplyCache()
        self._busy: str | None = None  # the worker command queued or running (set and cleared on the loop thread)
        self._run_ended = False  # the run's end is published (set by the worker, read on the loop thread)
        self._controller: str | None = None
        self._controller_since = 0.0
        self._controller_seen = 0.0  # monotonic time of the controller's last command
        self._deferred: list[str] = []  # run requests that arrived before the run loop began
        self._state_lock = threading.Lock()  # guards the snapshot below (worker writes, loop reads)
        self._run_id = ""
        self._progress: dict[str, float] = {}
        self._subsystems: dict[str, Any] = {}
        self._last_report: dict[str, Any] | None = None
        self._loaded: _Loaded | None = None
        self._last_telemetry = 0.0
        self._urls = subsystem_urls(profile, self.overrides)
        self.scanner = Scanner.from_profile(profile, self._urls, segment_s=segment_s)
        self.scanner.machine.listeners.append(self._on_journal)
        # One scan session over this scanner (kept for every load: nothing reconnected or re-homed).
        self._port = LocalPort(profile, self.overrides, scanner=self.scanner, run_id=lambda: self._run_id)
        self._session = ScanSession(self._port)
        self._worker = threading.Thread(target=self._work, name=f"{name}-worker", daemon=True)

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        socket = self._context.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        if self.curve is not None and kind != zmq.PAIR:  # every network-facing socket: CURVE when configured
            self.curve.apply(socket, self._context)
        return socket

    def _close_sockets(self) -> None:
        for socket in {self._commands, self._events, self._data}:
            socket.close()

    # -- serving -------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Connect the scanner and answer commands until :meth:`stop` (from another thread or a signal)."""
        self._worker.start()
        self._jobs.put(("connect", [], "", Message(type="command", body={"command": "connect"})))
        poller = zmq.Poller()
        poller.register(self._commands, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        log.info("%s: commands on %s, events on %s, data on %s", self.name, self.endpoints["control"],
                 self.endpoints["events"], self.endpoints["data"])
        try:
            while not self._stopping.is_set():
                ready = dict(poller.poll(100))
                if self._wake in ready:
                    while self._wake.poll(0):
                        self._wake.recv()
                if self._commands in ready:
                    for _ in range(100):  # answer what is queued, but look at worker replies between bursts
                        try:
                            frames = self._commands.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            self._handle(frames)
                        except Exception:  # noqa: BLE001 - a bug in answering one message never ends the server
                            log.exception("%s: a message could not be handled", self.name)
                self._send_replies()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (a running scan is aborted, the scanner made safe)."""
        self._stopping.set()

    def _shutdown(self) -> None:
        if self.scanner.state in _RUN_STATES:
            self.scanner.request("abort")
        self._jobs.put(None)
        self._worker.join(timeout=30)
        try:
            self.scanner.close()
        except ScanctlError as exc:
            log.error("%s: closing the scanner: %s", self.name, exc)
        self._publisher.close()
        self._close_sockets()
        self._wake.close()

    # -- commands (loop thread) ------------------------------------------------------------------------------
    def _handle(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            return  # not from a DEALER/REQ peer: nothing can be answered
        identity = [bytes(frames[0].buffer)]
        payload = frames[1:]
        if payload and len(payload[0]) == 0:  # a REQ peer's empty delimiter
            identity.append(b"")
            payload = payload[1:]
        try:
            msg = decode(payload)
        except Exception as exc:  # noqa: BLE001 - not only WireProtocolError: no message may end the server
            self._send(identity, malformed_reply(payload, exc, src=self.name))
            return
        client = msg.src or identity[0].hex()
        key = _user_id(payload[0])
        if key is not None:  # CurveZMQ: a name is only as good as the key it comes with
            client = f"{client}@{key[:8]}"
        if client == self._controller:
            self._controller_seen = time.monotonic()
        if msg.type != "command":
            self._send(identity, error_reply(msg.id, "malformed", f"unknown message type {msg.type!r} (expected "
                                                                  f"'command')", src=self.name))
            return
        print_ = None
        command = msg.body.get("command")
        if msg.id is not None and not (isinstance(command, str) and command in UNCACHED_COMMANDS):
            print_ = fingerprint(msg.body)
            seen = self._cache.seen(client, msg.id, print_)
            if seen is False:
                self._send(identity, self._error(msg, "bad_argument", f"request id {msg.id!r} was already used by "
                                                                      "this client for a different command"))
                return
            if seen is True:
                return  # a retry of a command still running: its reply follows
            if seen is not None:
                self._send_frames(identity, seen)  # a retry of a command answered: the same reply, not run again
                return
        try:
            reply = self._command(client, identity, msg)
        except Rejected as exc:
            reply = self._error(msg, exc.code, str(exc), **exc.extra)
        except InvalidTransitionError as exc:
            reply = self._error(msg, "rejected", str(exc), state=self.scanner.state.name)
        except ScanctlError as exc:
            reply = self._error(msg, "failed", f"{type(exc).__name__}: {exc}", state=self.scanner.state.name)
        except Exception as exc:  # noqa: BLE001 - a server bug answers this client and keeps serving the others
            log.exception("%s: command %r failed", self.name, msg.body.get("command"))
            reply = self._error(msg, "internal", f"{type(exc).__name__}: {exc}")
        if reply is None:  # queued for the worker: its reply follows
            if print_ is not None and msg.id is not None:
                self._cache.running(client, msg.id, print_)
            return
        sent = self._send(identity, reply)
        if print_ is not None and msg.id is not None and sent is not None:
            self._cache.remember(client, msg.id, print_, sent)

    def _command(self, client: str, identity: list[bytes], msg: Message) -> Message | None:
        name = msg.body.get("command")
        if not isinstance(name, str) or name not in COMMANDS:
            known = ", ".join(sorted(COMMANDS))
            raise Rejected("unknown_command", f"unknown command {name!r} (commands: {known})")
        if name not in OPEN_COMMANDS and self._controller != client:
            holder = f"{self._controller!r} has control" if self._controller else "nobody has control"
            raise Rejected("not_controller", f"{name} refused: {holder}; send take_control first",
                           controller=self._controller)
        if name in WORKER_COMMANDS or name == "start":
            # A run whose end has been published is over for the console (the worker is only finishing
            # up): what it sends next is queued behind it, not refused.
            if self._busy is not None and not (self._busy == "start" and self._run_ended):
                raise Rejected("rejected", f"cannot {name.replace('_', ' ')}: {self._busy} in progress "
                                           f"(state {self.scanner.state.name})", state=self.scanner.state.name)
            if name == "start":
                return self._start(msg)
            self._check_args(name, msg.body)
            self._busy = name
            self._jobs.put((name, identity, client, msg))
            return None
        handler: Callable[[str, Message], dict[str, Any]] = getattr(self, f"_cmd_{name}", self._run_request)
        body = handler(client, msg)
        return self._reply(msg, body.pop("status", "done"), **body)

    @staticmethod
    def _check_args(name: str, body: dict[str, Any]) -> None:
        if name == "load":
            path, text = body.get("path"), body.get("text")
            if (path is None) == (text is None) or not isinstance(path or text, str):
                raise Rejected("bad_argument", "load needs 'path' (a file on the server) or 'text' (its content)")
            if text is not None and body.get("format") not in ("toml", "seq"):
                raise Rejected("bad_argument", "load with 'text' needs 'format': 'toml' or 'seq'")
            weight, mode = body.get("patient_weight_kg"), body.get("mode", "normal")
            if not (weight is None or _number(weight)) or mode not in ("normal", "first-level", "first_level"):
                raise Rejected("bad_argument", "load takes an optional number 'patient_weight_kg' and 'mode' "
                                               "'normal' or 'first-level'")
        if name == "move_table":
            position, speed = body.get("position_mm"), body.get("speed_mm_s")
            if not _number(position) or not (speed is None or _number(speed)):
                raise Rejected("bad_argument", "move_table needs a number 'position_mm' (and optional 'speed_mm_s')")

    def _cmd_status(self, client: str, msg: Message) -> dict[str, Any]:
        return {"snapshot": self.snapshot()}

    def _cmd_sync(self, client: str, msg: Message) -> dict[str, Any]:
        token = msg.body.get("token")
        if not isinstance(token, str):
            raise Rejected("bad_argument", "sync needs a string 'token'")
        self.publish("sync", {"token": token})
        if self._data is not self._events:
            self.publish("data_sync", {"token": token}, data=True)
        return {}

    def _cmd_take_control(self, client: str, msg: Message) -> dict[str, Any]:
        lapsed = False
        if self._controller not in (None, client):
            silent = time.monotonic() - self._controller_seen
            lapsed = silent > self.control_timeout_s
            if msg.body.get("force") is not True and not lapsed:
                since = time.strftime("%H:%M:%S", time.localtime(self._controller_since))
                raise Rejected("not_controller", f"{self._controller!r} has control (since {since}, last heard "
                                                 f"{silent:.1f} s ago; it lapses after {self.control_timeout_s:g} "
                                                 f"s of silence); take_control with force to take it over",
                               controller=self._controller)
            log.warning("%s: %s takes control over from %s (%s)", self.name, client, self._controller,
                        f"silent for {silent:.1f} s" if lapsed else "forced")
        if self._controller != client:
            previous, self._controller, self._controller_since = self._controller, client, time.time()
            self.publish("control", {"controller": client, "previous": previous, "lapsed": lapsed})
        self._controller_seen = time.monotonic()
        return {"controller": client}

    def _cmd_runs(self, client: str, msg: Message) -> dict[str, Any]:
        return {"runs": self.store.runs(), "dir": str(self.store.root)}

    def _cmd_fetch(self, client: str, msg: Message) -> dict[str, Any]:
        """A piece of a stored run's file: ``run``, ``file`` (raw.h5, sequence.seq, report.json), ``offset``
        and ``length`` (bytes); the reply's ``data`` is a uint8 array (a binary frame) and ``size`` the
        file's size."""
        body = msg.body
        try:
            data, size = self.store.read(body.get("run"), body.get("file", "raw.h5"), body.get("offset", 0),
                                         body.get("length", MAX_CHUNK_BYTES))
        except ValueError as exc:
            raise Rejected("bad_argument", f"fetch: {exc}") from None
        except FileNotFoundError:
            raise Rejected("bad_argument", f"fetch: no file {body.get('file', 'raw.h5')!r} of run "
                                           f"{body.get('run')!r} on this server") from None
        except OSError as exc:
            raise Rejected("failed", f"fetch: {exc.strerror or exc}") from None
        return {"run": body["run"], "file": body.get("file", "raw.h5"), "offset": body.get("offset", 0),
                "size": size, "data": np.frombuffer(data, dtype=np.uint8)}

    def _cmd_release_control(self, client: str, msg: Message) -> dict[str, Any]:
        self._controller = None
        self.publish("control", {"controller": None, "previous": client})
        return {"controller": None}

    def _start(self, msg: Message) -> Message:
        state = self.scanner.state
        if state is not S.READY or self._loaded is None:
            raise Rejected("rejected", f"cannot start while {state.name}" + (": load a protocol first"
                                                                              if state is S.IDLE else ""),
                           state=state.name)
        run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with self._state_lock:
            self._run_id = run_id
            self._progress = {"t_s": 0.0, "total_s": self._loaded.duration_s, "acquisitions": 0}
        self._busy, self._run_ended = "start", False
        with self._state_lock:
            self._deferred.clear()
        self._jobs.put(("start", [], "", msg))
        return self._reply(msg, "accepted", run=run_id)

    def _run_request(self, client: str, msg: Message) -> dict[str, Any]:
        """pause, resume, stop, abort: honoured by the run loop at its next safe point."""
        what = str(msg.body["command"])
        with self._state_lock:  # atomic with the worker handing deferred requests over (_on_journal)
            state = self.scanner.state
            if self._busy == "start" and state in (S.READY, S.POSITIONING):
                self._deferred.append(what)  # the run loop has not begun: hand it over when it does
                return {"status": "accepted", "state": state.name}
            if state not in _RUN_STATES or what not in self.scanner.machine.allowed():
                allowed = ", ".join(self.scanner.machine.allowed())
                why = "no scan is running" if state not in _RUN_STATES else f"allowed: {allowed}"
                raise Rejected("rejected", f"cannot {what} while {state.name} ({why})", state=state.name)
            self.scanner.request(what)
        return {"status": "accepted", "state": state.name}

    def _cmd_emergency_stop(self, client: str, msg: Message) -> dict[str, Any]:
        reason = msg.body.get("reason")
        # The state change to EMERGENCY_STOP publishes the safety event (_on_journal).
        self.scanner.emergency_stop(reason if isinstance(reason, str) else f"emergency stop by {client}")
        return {"state": self.scanner.state.name}

    def _cmd_release_emergency_stop(self, client: str, msg: Message) -> dict[str, Any]:
        self.scanner.release_emergency_stop()
        self.publish("safety", {"kind": "emergency_stop_released", "message": f"released by {client}",
                                "interlocks": dict(self.scanner.interlocks)})
        return {"state": self.scanner.state.name}

    # -- replies ---------------------------------------------------------------------------------------------
    def _reply(self, request: Message, status: str, **body: Any) -> Message:
        return Message(type="reply", re=request.id, src=self.name,
                       body={"command": request.body.get("command"), "status": status, **to_plain(body)})

    def _error(self, request: Message, code: str, message: str, **extra: Any) -> Message:
        reply = error_reply(request.id, code, message, src=self.name)
        reply.body.update({"command": request.body.get("command"), **to_plain(extra)})
        return reply

    def _send_replies(self) -> None:
        while True:
            try:
                identity, client, reply, job = self._replies.get_nowait()
            except queue.Empty:
                return
            if self._busy == job:
                self._busy = None
            if not identity:
                continue  # a job of the server's own (connect, the run behind an accepted start)
            frames = self._send(identity, reply)
            if reply.re is not None and frames is not None:
                self._cache.remember(client, reply.re, None, frames)

    def _send(self, identity: list[bytes], msg: Message) -> list[bytes] | None:
        """Send ``msg``; its frames as sent (for the reply cache), or None when it could not be encoded."""
        try:
            frames = [bytes(frame) for frame in encode(msg)]
        except WireProtocolError as exc:
            log.error("%s: reply to %s cannot be encoded: %s", self.name, msg.re, exc)
            return None
        self._send_frames(identity, frames)
        return frames

    def _send_frames(self, identity: list[bytes], frames: list[bytes]) -> None:
        try:
            self._commands.send_multipart([*identity, *frames], copy=False)
        except zmq.ZMQError as exc:
            log.warning("%s: reply not sent: %s", self.name, exc)

    # -- events (any thread) ---------------------------------------------------------------------------------
    def publish(self, stream: str, body: dict[str, Any], *, data: bool = False) -> None:
        """Publish ``body`` on ``stream`` (the data socket if ``data``) with the next sequence number
        (:class:`scanctl.transport.publisher.Publisher`)."""
        self._publisher.publish(stream, body, run=self._run_id, data=data)

    def _on_journal(self, entry: JournalEntry) -> None:
        body = asdict(entry)
        body["state"] = entry.dest
        self.publish("state", body)
        if entry.dest in ("FAULT", "EMERGENCY_STOP"):
            self.publish("safety", {"kind": entry.dest.lower(), "message": entry.reason, "trigger": entry.trigger})
        if entry.trigger == "positioned":
            with self._state_lock:
                # The run loop has begun and cleared its queue: now it takes the requests that came early.
                for what in self._deferred:
                    self.scanner.request(what)
                self._deferred.clear()

    def snapshot(self) -> dict[str, Any]:
        """The current state for a late joiner (the ``status`` reply)."""
        with self._state_lock:
            loaded = None if self._loaded is None else {"source": self._loaded.source, **self._loaded.info}
            snapshot = {
                "server": self.name,
                "version": VERSION_TEXT,
                "state": self.scanner.state.name,
                "allowed": self.scanner.machine.allowed(),
                "controller": self._controller,
                "controller_silent_s": (round(time.monotonic() - self._controller_seen, 3)
                                        if self._controller is not None else None),
                "busy": self._busy,
                "run": self._run_id,
                "progress": dict(self._progress),
                "subsystems": dict(self._subsystems),
                "urls": dict(self._urls),
                "interlocks": dict(self.scanner.interlocks),
                "loaded": loaded,
                "last_report": self._last_report,
                "endpoints": dict(self.endpoints),
            }
        snapshot["seq"] = self._publisher.seqs()
        return snapshot

    # -- the worker thread (owns the state machine) ----------------------------------------------------------
    def _work(self) -> None:
        wake = self._context.socket(zmq.PAIR)
        wake.setsockopt(zmq.LINGER, 0)
        wake.connect(self._wake_addr)
        try:
            while True:
                try:
                    item = self._jobs.get(timeout=LIVENESS_CHECK_S)
                except queue.Empty:
                    self._watch_subsystems()
                    continue
                if item is None:
                    return
                name, identity, client, msg = item
                try:
                    reply = self._job(name, msg)
                except Exception as exc:  # noqa: BLE001 - the worker must survive a bug to keep the scanner safe
                    log.exception("%s: %s failed", self.name, name)
                    reply = self._error(msg, "internal", f"{type(exc).__name__}: {exc}")
                self._telemetry(force=True)
                self._replies.put((identity, client, reply, name))
                wake.send(b"")
        finally:
            wake.close()

    def _job(self, name: str, msg: Message) -> Message:
        try:
            if name == "connect":
                self.scanner.connect()
                return self._reply(msg, "done", state=self.scanner.state.name)
            if name == "load":
                return self._load(msg)
            if name == "start":
                return self._run(msg)
            if name == "reset":
                self.scanner.reset()
                return self._reply(msg, "done", state=self.scanner.state.name)
            if name == "move_table":
                speed = msg.body.get("speed_mm_s")
                position = self.scanner.move_table(float(msg.body["position_mm"]),
                                                   None if speed is None else float(speed))
                return self._reply(msg, "done", position_mm=position, state=self.scanner.state.name)
        except (InvalidTransitionError, SafetyLimitError) as exc:
            return self._error(msg, "rejected", str(exc), state=self.scanner.state.name)
        except (ConfigError, SequenceFormatError) as exc:  # the file or value given is wrong: it names what
            return self._error(msg, "bad_argument", str(exc), state=self.scanner.state.name)
        except ScanctlError as exc:
            return self._error(msg, "failed", f"{type(exc).__name__}: {exc}", state=self.scanner.state.name)
        raise AssertionError(f"no job {name!r}")

    def _load(self, msg: Message) -> Message:
        state = self.scanner.state
        if state not in (S.IDLE, S.READY):
            raise InvalidTransitionError(f"cannot load while {state.name} "
                                         f"(allowed: {', '.join(self.scanner.machine.allowed())})")
        weight, mode = msg.body.get("patient_weight_kg"), str(msg.body.get("mode", "normal"))
        with tempfile.TemporaryDirectory(prefix="scanctl-load-") as tmp:
            if "text" in msg.body and msg.body["text"] is not None:
                source_name = str(msg.body.get("name") or f"upload.{msg.body['format']}")
                source = Path(tmp) / f"{Path(source_name).stem}.{msg.body['format']}"
                source.write_text(str(msg.body["text"]), encoding="utf-8")
            else:
                source = Path(str(msg.body["path"]))
                source_name = str(source)
            try:
                loaded = self._session.load(source, name=source_name, patient_weight_kg=weight, mode=mode)
            except Refused as exc:  # nothing moved: typed, so a console never matches the text
                with self._state_lock:
                    self._loaded = None
                safety = exc.report.get("safety", {})
                self.publish("safety", {"kind": "refused", "message": str(exc), **safety})
                return self._error(msg, "rejected", str(exc), state=self.scanner.state.name, outcome="refused",
                                   safety=safety)
            except (ConfigError, SequenceFormatError) as exc:
                if source_name == str(source):
                    raise
                # An upload is named as the client named it, not by the server's temporary copy.
                raise ConfigError(str(exc).replace(str(source), f"{source_name} (uploaded)")) from None
        info = {**loaded.report, **self._port.plan}
        del info["duration_s"]
        with self._state_lock:
            self._loaded = _Loaded(source_name, loaded.seq.duration_s, info)
        return self._reply(msg, "done", state=self.scanner.state.name, check=loaded.check,
                           sequence_text=loaded.sequence_text.decode("utf-8"), header_xml=loaded.header.to_xml(),
                           header=loaded.header, **info)

    def _run(self, msg: Message) -> Message:
        """Play what was loaded through the scan session, which writes the server's own copy of the run
        (DATA_DIR/<run id>); every batch is published as it comes. Whatever happens, the run ends with its
        end event: the console that started it waits for that."""
        loaded = self._loaded
        assert loaded is not None
        run_id = self._run_id
        folder = self.store.root / run_id
        sent = 0
        self.publish("run", {"event": "start", "run": run_id, "sequence": loaded.info["sequence"],
                             "protocol": loaded.info["protocol"], "dir": str(folder)})

        def publish_data(batch: Acquisitions) -> None:
            nonlocal sent
            for i in range(0, len(batch), ACQUISITIONS_PER_MESSAGE):
                chunk = batch[i:i + ACQUISITIONS_PER_MESSAGE]
                self.publish("data", {"acquisitions": pack_acquisitions(chunk)}, data=True)
            sent += len(batch)

        def on_progress(t_s: float, total_s: float, acquisitions: int) -> None:
            progress = {"t_s": t_s, "total_s": total_s, "acquisitions": sent}
            with self._state_lock:
                self._progress = progress
            self.publish("progress", progress)
            self._telemetry()

        try:
            report = asdict(self._session.run(folder, reconstruct=False, progress=on_progress, also=publish_data))
        except RunOutputError as exc:  # the scan ended safe; files of the server's copy are missing (named)
            report = asdict(exc.report)
        except ScanctlError as exc:  # before anything played (the run's folder cannot be made, …)
            log.error("%s: run %s not started: %s", self.name, run_id, exc)
            report = asdict(RunReport(outcome="refused", message=str(exc), acquisitions=0, timings={}, journal=[],
                                      telemetry={}, outputs={}, protocol=loaded.info["protocol"],
                                      sequence=loaded.info["sequence"], profile=self.profile.name,
                                      subsystems=dict(self._urls), duration_s=loaded.duration_s))
        finally:
            with self._state_lock:
                self._deferred.clear()
            # Tell data subscribers the stream of this run is complete (data and events travel apart).
            self.publish("data", {"end": True, "acquisitions": sent}, data=True)
        report["run"] = run_id
        self._telemetry(force=True)  # the snapshot as the run ended (a subsystem lost in it shows as such)
        with self._state_lock:
            self._last_report = report
            self._loaded = None  # the next start needs a new load (the executor needs a new prepare)
        self._run_ended = True  # before the end goes out: a console may send its next command at once
        self.publish("run", {"event": "end", **report})
        return self._reply(msg, "done", **report)

    def _watch_subsystems(self) -> None:
        """Between commands: look at every subsystem each :data:`LIVENESS_CHECK_S`; one lost (UNKNOWN: its
        driver silent) latches FAULT at once, as in a scan; telemetry is published every period, or sooner
        when a subsystem's state changed."""
        before = {kind: sub.get("state") for kind, sub in self._subsystems.items()}
        statuses = self._refresh_statuses()
        changed = {kind: sub["state"] for kind, sub in statuses.items()} != before
        if {"unknown", "off"} & {sub["state"] for sub in statuses.values()}:
            try:
                self.scanner.require_known()
            except ScanctlError as exc:
                log.error("%s: %s", self.name, exc)
        if changed or time.monotonic() - self._last_telemetry >= self.telemetry_period_s:
            self._last_telemetry = time.monotonic()
            self.publish("telemetry", {"subsystems": statuses})

    def _refresh_statuses(self) -> dict[str, Any]:
        """Every subsystem's status (for ``status``), asked now."""
        statuses: dict[str, Any] = {}
        for kind, sub in (("gradient", self.scanner.gradient), ("rf", self.scanner.rf), ("table", self.scanner.table)):
            try:
                statuses[kind] = to_plain(sub.status())
            except ScanctlError as exc:
                statuses[kind] = {"state": "unknown", "time_s": 0.0, "message": str(exc), "telemetry": {}}
        with self._state_lock:
            self._subsystems = statuses
        return statuses

    def _telemetry(self, force: bool = False) -> None:
        """Refresh the subsystems' statuses (for ``status``) and publish them, at most every 0.1 s in a run."""
        now = time.monotonic()
        if not force and now - self._last_telemetry < 0.1:
            return
        self._last_telemetry = now
        self.publish("telemetry", {"subsystems": self._refresh_statuses()})


def _user_id(frame: Any) -> str | None:
    """The client's public key (Z85) as CurveZMQ authenticated it; None without CURVE."""
    try:
        user = frame.get("User-Id")
    except (AttributeError, zmq.ZMQError):
        return None
    return user if isinstance(user, str) and user and user != "anonymous" else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def serve(profile: SystemProfile, control: str = DEFAULT_CONTROL, events: str = DEFAULT_EVENTS,
          data: str | None = DEFAULT_DATA, overrides: dict[str, str] | None = None, *,
          insecure: bool = False) -> ControlServer:
    """A server bound and ready for :meth:`ControlServer.serve_forever` (the ``scanctl serve`` path)."""
    return ControlServer(profile, control, events, data, overrides, insecure=insecure)


__all__ = ["ControlServer", "Rejected", "bind_socket", "serve"]
