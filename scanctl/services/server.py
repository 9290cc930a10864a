"""The control server: the scanner as a ZeroMQ service (``scanctl serve``; protocol in docs/server.md).

Sockets:

- **command** (ROUTER, default ``tcp://127.0.0.1:5555``): requests of type ``command`` with body ``{"command":
  NAME, ...}``. Replies are ``reply`` ``{"status": "accepted" | "done", ...}`` or ``error`` ``{"code", "message",
  ...}``. A retry with the same request id from the same client gets the same reply, the command run once.
- **events** (PUB, default ``tcp://127.0.0.1:5556``): ``event`` messages on the streams ``state``, ``progress``,
  ``telemetry``, ``safety``, ``run``, ``control``, ``sync`` and ``exam``, stamped ``src``, ``run``, per-stream ``seq``.
- **data** (PUB; the events socket unless another endpoint is given): ``data`` messages, stream ``data`` (the ADC
  samples as binary frames straight from numpy) and ``data_sync``.

Every message, a command's arguments included (others are refused), is in the wire schema (scanctl/transport/
schema/wire.json). Telemetry: :mod:`scanctl.services.telemetry`; exam commands: :mod:`scanctl.services.exam_commands`.

Threads: the loop thread owns the sockets' receiving side and answers commands; one worker thread owns the
scanner's state machine (connect, load/prepare with its prescan, run, reset, table moves) as the executor
requires. Pause, resume, stop and abort reach the run loop through :meth:`Scanner.request` (thread-safe);
emergency stop through :meth:`Scanner.emergency_stop`. Publishing happens on whichever thread has something
to say, serialised by one lock (a ZeroMQ socket may move between threads behind a lock).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq

from scanctl.config.profile import DEFAULT_ENDPOINTS, SystemProfile
from scanctl.engine.executor import Scanner
from scanctl.engine.machine import JournalEntry, ScannerState
from scanctl.engine.run import subsystem_urls
from scanctl.engine.session import Loaded, LocalPort, ScanSession
from scanctl.errors import (
    ConfigError,
    InvalidTransitionError,
    SafetyLimitError,
    ScanctlError,
    SequenceFormatError,
    WireProtocolError,
)
from scanctl.prescan.plan import before_run
from scanctl.services.commands import COMMANDS, RUN_STATES, Rejected, check_arguments, play
from scanctl.services.exam_commands import EXAM_COMMANDS  # noqa: F401 (registers the exam commands)
from scanctl.services.lease import Lease
from scanctl.services.reply_cache import ReplyCache, fingerprint
from scanctl.services.run_store import RunStore
from scanctl.services.telemetry import Telemetry
from scanctl.transport.publisher import Publisher
from scanctl.transport.security import ServerCurve, refuse_unauthenticated
from scanctl.transport.wire import (
    VERSION_TEXT,
    Message,
    command_of,
    decode,
    encode,
    error_reply,
    malformed_reply,
    routed,
    to_plain,
)

log = logging.getLogger(__name__)

S = ScannerState
DEFAULT_CONTROL = DEFAULT_ENDPOINTS["control"]
DEFAULT_EVENTS = DEFAULT_ENDPOINTS["events"]
#: Largest command message accepted (bytes); a bigger one makes ZeroMQ drop the connection.
MAX_COMMAND_BYTES = 64 << 20
#: How often the worker looks at every subsystem between commands (s): a lost one latches FAULT.
LIVENESS_CHECK_S = 0.1
#: A controller silent for longer than this (s: no command, not even ``status``) may be taken over by
#: another client's ``take_control`` without ``force``: a console that died does not hold the scanner.
CONTROL_TIMEOUT_S = 30.0


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
        self.busy: str | None = None  # the worker command queued or running (set and cleared on the loop thread)
        self._run_ended = False  # the run's end is published (set by the worker, read on the loop thread)
        self.lease = Lease(control_timeout_s)  # who controls the scanner (scanctl/services/lease.py)
        self.deferred: list[str] = []  # run requests that arrived before the run loop began
        self.state_lock = threading.Lock()  # guards the snapshot below (worker writes, loop reads)
        self.run_id = ""
        self._progress: dict[str, float] = {}
        self._last_report: dict[str, Any] | None = None
        self.loaded: _Loaded | None = None
        self.urls = subsystem_urls(profile, self.overrides)
        self.scanner = Scanner.from_profile(profile, self.urls, segment_s=segment_s)
        self.scanner.machine.listeners.append(self._on_journal)
        self.telemetry = Telemetry(self.scanner, self.publish, self.state_lock, telemetry_period_s, name)
        # One scan session over this scanner (nothing reconnected or re-homed), prescanning as `scanctl run` does.
        self._port = LocalPort(profile, self.overrides, scanner=self.scanner, run_id=lambda: self.run_id,
                               prescan=before_run)
        self.session = ScanSession(self._port)
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
        if self.scanner.state in RUN_STATES:
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
        split = routed(frames)
        if split is None:
            return  # not from a DEALER/REQ peer: nothing can be answered
        identity, payload = split
        try:
            msg = decode(payload)
        except Exception as exc:  # noqa: BLE001 - not only WireProtocolError: no message may end the server
            refusal = malformed_reply(payload, exc, src=self.name)
            refusal.body["command"] = command_of(payload)  # the shape of every command error (null: unreadable)
            self._send(identity, refusal)
            return
        client = msg.src or identity[0].hex()
        key = _user_id(payload[0])
        if key is not None:  # CurveZMQ: a name is only as good as the key it comes with
            client = f"{client}@{key[:8]}"
        self.lease.heard(client)
        if msg.type != "command":
            self._send(identity, self._error(msg, "malformed", f"unknown message type {msg.type!r} "
                                                               "(expected 'command')"))
            return
        print_ = None
        command = msg.body.get("command")
        known = COMMANDS.get(command) if isinstance(command, str) else None
        if msg.id is not None and (known is None or known.cached):
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
        """Dispatch by :data:`scanctl.services.commands.COMMANDS`: None when queued for the worker (its reply
        follows)."""
        name = msg.body.get("command")
        command = COMMANDS.get(name) if isinstance(name, str) else None
        if command is None:
            raise Rejected("unknown_command", f"unknown command {name!r} (commands: {', '.join(sorted(COMMANDS))})")
        check_arguments(command.name, msg.body)
        if not command.open and self.lease.holder != client:
            holder = f"{self.lease.holder!r} has control" if self.lease.holder else "nobody has control"
            raise Rejected("not_controller", f"{name} refused: {holder}; send take_control first",
                           controller=self.lease.holder)
        # A run whose end has been published is over for the console (the worker is only finishing up): what
        # it sends next is queued behind it, not refused.
        if command.exclusive and self.busy is not None and not (self.busy == "start" and self._run_ended):
            raise Rejected("rejected", f"cannot {command.name.replace('_', ' ')}: {self.busy} in progress "
                                       f"(state {self.scanner.state.name})", state=self.scanner.state.name)
        if command.worker:
            if command.check is not None:
                command.check(msg.body)
            self.busy = command.name
            self._jobs.put((command.name, identity, client, msg))
            return None
        body = command.handler(self, client, msg)
        return self._reply(msg, body.pop("status", "done"), **body)

    # -- what the commands use (scanctl/services/commands.py) ---------------------------------------------------
    @property
    def separate_data(self) -> bool:
        """Whether ADC data have a socket of their own (else they travel on the events socket)."""
        return self._data is not self._events

    def begin_run(self, run_id: str, duration_s: float) -> None:
        """Queue the run behind an accepted ``start`` (loop thread)."""
        with self.state_lock:
            self.run_id = run_id
            self._progress = {"t_s": 0.0, "total_s": duration_s, "acquisitions": 0}
            self.deferred.clear()
        self.busy, self._run_ended = "start", False
        self._jobs.put(("start", [], "", Message(type="command", body={"command": "start"})))

    def progressed(self, progress: dict[str, float]) -> None:
        """A run's progress (worker): kept for ``status``, published, telemetry at most every 0.1 s."""
        with self.state_lock:
            self._progress = progress
        self.publish("progress", progress)
        self.telemetry.publish()

    def end_run(self, report: dict[str, Any]) -> None:
        """A run ended (worker): its report kept for ``status`` and published as the ``end`` event."""
        self.telemetry.publish(force=True)  # the snapshot as the run ended (a subsystem lost in it shows as such)
        with self.state_lock:
            self._last_report = report
            self.loaded = None  # the next start needs a new load (the executor needs a new prepare)
        self._run_ended = True  # before the end goes out: a console may send its next command at once
        self.publish("run", {"event": "end", **report})

    def forget_loaded(self) -> None:
        with self.state_lock:
            self.loaded = None

    def keep_loaded(self, source: str, loaded: Loaded) -> dict[str, Any]:
        """Remember what was loaded (for ``start`` and ``status``); returns the load reply's report entries."""
        info = {**loaded.report, **self._port.plan}
        duration_s = info.pop("duration_s")
        with self.state_lock:
            self.loaded = _Loaded(source, duration_s, info)
        return info

    # -- replies ---------------------------------------------------------------------------------------------
    def _reply(self, request: Message, status: str, **body: Any) -> Message:
        return Message(type="reply", re=request.id, src=self.name,
                       body={"command": request.body.get("command"), "status": status, **to_plain(body)})

    def _error(self, request: Message, code: str, message: str, **extra: Any) -> Message:
        reply, command = error_reply(request.id, code, message, src=self.name), request.body.get("command")
        reply.body.update({"command": command if isinstance(command, str) else None, **to_plain(extra)})
        return reply

    def _send_replies(self) -> None:
        while True:
            try:
                identity, client, reply, job = self._replies.get_nowait()
            except queue.Empty:
                return
            if self.busy == job:
                self.busy = None
            if not identity:
                continue  # a job of the server's own (connect, the run behind an accepted start)
            frames = self._send(identity, reply)
            if reply.re is not None:  # (one that could not be encoded is forgotten: a retry runs again)
                self._cache.remember(client, reply.re, None, frames or [])

    def _send(self, identity: list[bytes], msg: Message) -> list[bytes] | None:
        """Send ``msg``; its frames as sent (for the reply cache), or None when it could not be encoded."""
        try:
            frames = [bytes(frame) for frame in encode(msg)]
        except WireProtocolError as exc:  # a bug of ours: the client gets `internal` now, not its timeout later
            log.error("%s: reply to %s cannot be encoded: %s", self.name, msg.re, exc)
            error = error_reply(msg.re, "internal", f"the reply cannot be encoded: {exc}", src=self.name)
            self._send_frames(identity, [bytes(frame) for frame in encode(error)])
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
        self._publisher.publish(stream, body, run=self.run_id, data=data)

    def _on_journal(self, entry: JournalEntry) -> None:
        body = asdict(entry)
        body["state"] = entry.dest
        self.publish("state", body)
        if entry.dest in ("FAULT", "EMERGENCY_STOP"):
            self.publish("safety", {"kind": entry.dest.lower(), "message": entry.reason, "trigger": entry.trigger})
        if entry.trigger == "start":
            with self.state_lock:
                # The run loop has begun and cleared its queue: now it takes the requests that came early.
                for what in self.deferred:
                    self.scanner.request(what)
                self.deferred.clear()

    def snapshot(self) -> dict[str, Any]:
        """The current state for a late joiner (the ``status`` reply)."""
        with self.state_lock:
            loaded = None if self.loaded is None else {"source": self.loaded.source, **self.loaded.info}
            snapshot = {
                "server": self.name,
                "version": VERSION_TEXT,
                "state": self.scanner.state.name,
                "allowed": self.scanner.machine.allowed(),
                "controller": self.lease.holder,
                "controller_silent_s": None if (silent := self.lease.silent_s()) is None else round(silent, 3),
                "busy": self.busy,
                "run": self.run_id,
                "progress": dict(self._progress),
                "subsystems": dict(self.telemetry.statuses),
                "urls": dict(self.urls),
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
                    try:
                        self.telemetry.watch()
                    except Exception:  # noqa: BLE001 - the worker must survive a bug to keep watching the scanner
                        log.exception("%s: watching the subsystems failed", self.name)
                    continue
                if item is None:
                    return
                name, identity, client, msg = item
                try:
                    reply = self._job(name, msg)
                except Exception as exc:  # noqa: BLE001 - the worker must survive a bug to keep the scanner safe
                    log.exception("%s: %s failed", self.name, name)
                    reply = self._error(msg, "internal", f"{type(exc).__name__}: {exc}")
                self.telemetry.publish(force=True)
                self._replies.put((identity, client, reply, name))
                wake.send(b"")
        finally:
            wake.close()

    def _job(self, name: str, msg: Message) -> Message:
        """A command (or a job of the server's own: connect, the run behind a start) on the worker thread."""
        try:
            if name == "connect":
                self.scanner.connect()
                return self._reply(msg, "done", state=self.scanner.state.name)
            handler = play if name == "start" else COMMANDS[name].handler
            return self._reply(msg, "done", **handler(self, "", msg))
        except Rejected as exc:
            return self._error(msg, exc.code, str(exc), **exc.extra)
        except (InvalidTransitionError, SafetyLimitError) as exc:
            return self._error(msg, "rejected", str(exc), state=self.scanner.state.name)
        except (ConfigError, SequenceFormatError) as exc:  # the file or value given is wrong: it names what
            return self._error(msg, "bad_argument", str(exc), state=self.scanner.state.name)
        except ScanctlError as exc:
            return self._error(msg, "failed", f"{type(exc).__name__}: {exc}", state=self.scanner.state.name)


def _user_id(frame: Any) -> str | None:
    """The client's public key (Z85) as CurveZMQ authenticated it; None without CURVE."""
    try:
        user = frame.get("User-Id")
    except (AttributeError, zmq.ZMQError):
        return None
    return user if isinstance(user, str) and user and user != "anonymous" else None


__all__ = ["ControlServer", "Rejected", "bind_socket"]
