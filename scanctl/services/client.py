"""The Python client of the control server (:mod:`scanctl.services.server`; protocol in docs/server.md).

:class:`Client` sends commands on a DEALER socket: each has a request id, a timeout and retries (a retry
reuses the id, so the server never runs a command twice). :class:`Subscription` receives events and
ADC data and notices gaps in the per-stream sequence numbers. :func:`run_remote` is ``scanctl run
--connect``: it writes the raw data file, image and report locally exactly as an in-process run does.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import zmq

from scanctl.config.profile import DEFAULT_ENDPOINTS
from scanctl.errors import ConfigError, ScanctlError
from scanctl.hw.interfaces import AcquisitionBatch
from scanctl.transport.acquisitions import unpack_acquisitions
from scanctl.transport.batch import unbatch
from scanctl.transport.security import ClientCurve
from scanctl.transport.wire import Message, decode, encode

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = DEFAULT_ENDPOINTS["control"]
#: Streams the server publishes a ``sync`` token on (events socket, data socket).
SYNC_STREAMS = ("sync", "data_sync")
#: Commands that take long on the server (their default timeout, s).
SLOW_COMMANDS = {"load": 120.0, "reset": 60.0, "move_table": 300.0,
                 "exam.next": 3600.0, "exam.run": 3600.0, "exam.close": 60.0}  # exam: runs, MPPS


class CommandError(ScanctlError):
    """The server refused or failed a command. ``code``: ``rejected`` (not in this state),
    ``not_controller``, ``unknown_command``, ``bad_argument``, ``malformed``, ``failed`` or ``internal``;
    ``body`` is the whole error body (``state``, ``controller`` where they apply)."""

    def __init__(self, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.body = body

    @property
    def state(self) -> str | None:
        value = self.body.get("state")
        return value if isinstance(value, str) else None


class ServerTimeoutError(ScanctlError, TimeoutError):
    """The server did not answer within the timeout, retries included."""


class ServerLostError(ServerTimeoutError):
    """The server stopped answering during run ``run_id`` (it had answered: not a key or endpoint problem);
    what was received is in the run's raw data file, and the server keeps its own copy of the run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"the control server stopped answering during run {run_id}")


class Client:
    """Commands to the control server at ``endpoint``.

    ``timeout_s`` is how long one attempt waits for its reply; ``retries`` how many times it is sent
    again (same request id) before :class:`ServerTimeoutError`. ``keys``
    (:class:`scanctl.transport.security.ClientCurve`): connect with CurveZMQ, as a server with keys requires (its
    subscriptions too); a refused key shows as no answer (ServerTimeoutError). Not thread-safe: one client
    per thread.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, name: str | None = None, timeout_s: float = 2.0,
                 retries: int = 2, keys: ClientCurve | None = None, context: zmq.Context[Any] | None = None) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"timeout {timeout_s} s is not a positive number")
        self.endpoint = endpoint
        self.keys = keys
        self.name = name or f"client-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.timeout_s = timeout_s
        self.retries = retries
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(self._socket)
        # Without a live connection (server down, or CURVE refused) a DEALER blocks on send: bound that.
        self._socket.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
        connect(self._socket, endpoint)
        # Request ids: unique for this instance, so that a console that comes back under the same name is
        # never answered from the server's record of its earlier requests.
        self._ids = itertools.count(1)
        self._id_prefix = f"{self.name}-{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, name: str, args: dict[str, Any] | None = None, *,
                timeout_s: float | None = None) -> dict[str, Any]:
        """Send command ``name`` with the arguments ``args`` and return the reply body (``status`` is ``accepted`` or
        ``done``). Raises CommandError (refused or failed) or ServerTimeoutError."""
        request_id = f"{self._id_prefix}-{next(self._ids)}"
        frames = encode(Message(type="command", id=request_id, src=self.name, body={"command": name, **(args or {})}))
        wait_s = timeout_s if timeout_s is not None else SLOW_COMMANDS.get(name, self.timeout_s)
        for _attempt in range(self.retries + 1):
            try:
                self._socket.send_multipart(frames, copy=False)
            except zmq.Again:
                continue  # not connected (yet): counts as an attempt without an answer
            deadline = time.monotonic() + wait_s
            while (left := deadline - time.monotonic()) > 0:
                if not self._socket.poll(int(left * 1000) + 1):
                    break
                frames = self._socket.recv_multipart(copy=False)
                try:
                    reply = decode(frames)
                except Exception as exc:  # noqa: BLE001 - not only WireProtocolError: a bad reply ends no client
                    log.warning("%s: malformed reply ignored: %s: %s", self.name, type(exc).__name__, exc)
                    continue
                if reply.re != request_id:
                    continue  # the late answer to an earlier attempt or request
                if reply.type == "error":
                    code = str(reply.body.get("code", "error"))
                    raise CommandError(code, str(reply.body.get("message", "")), reply.body)
                return reply.body
        hint = "" if self.keys is not None else " (a server with CurveZMQ keys answers only clients with --keys)"
        raise ServerTimeoutError(f"no answer from {self.endpoint} to {name} within {wait_s:g} s "
                                 f"({self.retries + 1} attempts){hint}")

    # -- one method per command ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The server's snapshot: state, controller, run, progress, subsystems, last report, endpoints."""
        snapshot: dict[str, Any] = self.command("status")["snapshot"]
        return snapshot

    def take_control(self, force: bool = False) -> dict[str, Any]:
        return self.command("take_control", {"force": force})

    def release_control(self) -> dict[str, Any]:
        return self.command("release_control")

    def load(self, path: str | os.PathLike[str] | None = None, *, text: str | None = None,
             format: str | None = None, name: str | None = None, patient_weight_kg: float | None = None,
             mode: str = "normal", prescan: bool = True) -> dict[str, Any]:
        """Load and check a protocol or Pulseq file: ``path`` on the server, or its ``text`` (``format``
        ``"toml"`` or ``"seq"``), with its safety prediction for the patient (``patient_weight_kg``, else the
        protocol's) in ``mode``, after the prescan the scan needs unless ``prescan`` is False. The reply holds
        the check report, the sequence, the raw header and the prescan's results."""
        safety: dict[str, Any] = {"patient_weight_kg": patient_weight_kg, "mode": mode}
        if not prescan:  # only when skipped: the server's default is to prescan, and a 2.1 server knows no such key
            safety["prescan"] = False
        if path is not None:
            return self.command("load", {"path": os.fspath(path), **safety})
        return self.command("load", {"text": text, "format": format, "name": name, **safety})

    def start(self) -> dict[str, Any]:
        return self.command("start")

    def pause(self) -> dict[str, Any]:
        return self.command("pause")

    def resume(self) -> dict[str, Any]:
        return self.command("resume")

    def stop(self) -> dict[str, Any]:
        return self.command("stop")

    def abort(self) -> dict[str, Any]:
        return self.command("abort")

    def emergency_stop(self, reason: str | None = None) -> dict[str, Any]:
        return self.command("emergency_stop", {"reason": reason} if reason else None)

    def release_emergency_stop(self) -> dict[str, Any]:
        return self.command("release_emergency_stop")

    def reset(self) -> dict[str, Any]:
        return self.command("reset")

    def move_table(self, position_mm: float, speed_mm_s: float | None = None) -> dict[str, Any]:
        return self.command("move_table", {"position_mm": position_mm, "speed_mm_s": speed_mm_s})

    def runs(self) -> list[dict[str, Any]]:
        """The runs the server keeps a copy of (id and file sizes), oldest first."""
        return list(self.command("runs")["runs"])

    def fetch(self, run_id: str, out: str | os.PathLike[str]) -> list[Path]:
        """Copy the server's files of run ``run_id`` (raw.h5, sequence.seq, report.json, those it has) into
        the folder ``out`` (created; files are created exclusively, never overwritten). Returns their paths.
        Raises CommandError for an unknown run, ScanctlError for a file that exists or cannot be written."""
        folder = Path(out)
        listed = {run["run"]: run["files"] for run in self.runs()}
        if run_id not in listed:
            raise CommandError("bad_argument", f"no run {run_id!r} on the server at {self.endpoint}", {})
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name in listed[run_id]:
            path = folder / name
            try:
                with open(path, "xb") as f:
                    offset, size = 0, None
                    while size is None or offset < size:
                        piece = self.command("fetch", {"run": run_id, "file": name, "offset": offset})
                        data = np.asarray(piece["data"], dtype=np.uint8)
                        size = int(piece["size"])
                        if data.size == 0 and offset < size:
                            raise ScanctlError(f"{name} of {run_id} ended at {offset} of {size} bytes")
                        f.write(data.tobytes())
                        offset += data.size
            except OSError as exc:
                raise ScanctlError(f"cannot write {path}: {exc.strerror or exc}") from exc
            written.append(path)
        return written

    def subscribe(self, *, data: bool = False, events: bool = True, timeout_s: float = 5.0) -> Subscription:
        """A subscription to this server's events (and ADC data), ready: every message published after
        this returns is received (see :meth:`Subscription.sync`)."""
        endpoints = self.status()["endpoints"]
        wanted = []
        if events:
            wanted.append(public_endpoint(endpoints["events"], self.endpoint))
        if data and endpoints["data"] != endpoints["events"]:
            wanted.append(public_endpoint(endpoints["data"], self.endpoint))
        elif data and not events:
            wanted.append(public_endpoint(endpoints["events"], self.endpoint))
        sub = Subscription(wanted, context=self._context, keys=self.keys)
        try:
            sub.sync(self, timeout_s=timeout_s, sockets=len(wanted))
        except BaseException:
            sub.close()
            raise
        return sub


def connect(socket: zmq.Socket[Any], endpoint: str) -> None:
    """Connect ``socket`` to ``endpoint``; ConfigError naming it if ZeroMQ cannot (not an endpoint)."""
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        socket.close()
        raise ConfigError(f"cannot connect to {endpoint!r}: {exc} (an endpoint is e.g. tcp://HOST:PORT)") from None


def public_endpoint(endpoint: str, control: str) -> str:
    """``endpoint`` as the server reported it, reachable from here: a wildcard host (``0.0.0.0``, ``*``)
    becomes the host of the control endpoint the client connected to."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if host in ("*", "0.0.0.0", "[::]", "::"):
        host = urlsplit(control).hostname or "127.0.0.1"
    return f"tcp://{host}:{port}"


@dataclass(frozen=True)
class Gap:
    """Messages lost on ``stream`` of ``src``: ``expected`` was due, ``got`` came."""

    src: str
    stream: str
    expected: int
    got: int


class Subscription:
    """SUB sockets on the server's event (and data) endpoints; every message's ``seq`` is checked per
    ``(src, stream)`` and each gap recorded in :attr:`gaps` (and logged). A message that cannot be decoded
    is skipped, counted in :attr:`malformed` (and logged)."""

    def __init__(self, endpoints: list[str], *, prefixes: tuple[bytes, ...] = (b"",),
                 context: zmq.Context[Any] | None = None, keys: ClientCurve | None = None) -> None:
        context = context or zmq.Context.instance()
        self.gaps: list[Gap] = []
        self.malformed = 0  # messages skipped because they could not be decoded
        self._last: dict[tuple[str, str], int] = {}
        self._sockets: list[zmq.Socket[Any]] = []
        self._poller = zmq.Poller()
        for endpoint in endpoints:
            socket = context.socket(zmq.SUB)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVHWM, 0)  # a subscriber never drops on its side: losses show as gaps
            for prefix in prefixes:
                socket.setsockopt(zmq.SUBSCRIBE, prefix)
            if keys is not None:
                keys.apply(socket)
            self._sockets.append(socket)
            try:
                connect(socket, endpoint)
            except ConfigError:
                self.close()
                raise
            self._poller.register(socket, zmq.POLLIN)
        self._ready: deque[Message] = deque()

    def close(self) -> None:
        for socket in self._sockets:
            socket.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message (None after ``timeout_s``; ``None`` timeout waits for ever). Malformed
        messages are logged and skipped."""
        if self._ready:
            return self._ready.popleft()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = dict(self._poller.poll(None if left is None else int(left * 1000)))
            for socket in self._sockets:
                if socket in ready:
                    frames = socket.recv_multipart(copy=False)
                    try:
                        groups = unbatch(decode(frames))
                    except Exception as exc:  # noqa: BLE001 - not only WireProtocolError: no event ends a subscriber
                        self.malformed += 1
                        log.warning("malformed event skipped (%d so far): %s: %s", self.malformed,
                                    type(exc).__name__, exc)
                        continue
                    for group in groups:  # one stream's consecutive numbers: checked at the first
                        self._check(group[0], group[-1])
                        self._ready.extend(group)
            if self._ready:
                return self._ready.popleft()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[Message]:
        return self.messages()

    def messages(self, idle_timeout_s: float | None = None) -> Iterator[Message]:
        """Every message as it arrives, ending once ``idle_timeout_s`` passes with none (``None``: never).
        What has been received is handed out in a loop, so this costs less per message than :meth:`recv`."""
        ready = self._ready
        while True:
            while ready:
                yield ready.popleft()
            msg = self.recv(idle_timeout_s)
            if msg is None:
                return
            yield msg

    def _check(self, first: Message, last: Message) -> None:
        """Check ``first``'s sequence number against the last one seen on its stream; ``last`` (the same
        message, or the end of a group numbered on from it) is the new last one."""
        if first.stream is None or first.seq is None or last.seq is None:
            return
        key = (first.src or "", first.stream)
        seen = self._last.get(key)
        if seen is not None and first.seq != seen + 1:
            gap = Gap(key[0], key[1], seen + 1, first.seq)
            self.gaps.append(gap)
            log.warning("gap on %s/%s: expected seq %d, got %d", gap.src, gap.stream, gap.expected, gap.got)
        self._last[key] = last.seq

    def sync(self, client: Client, *, timeout_s: float = 5.0, sockets: int | None = None) -> None:
        """Wait until the subscription is in place on every socket (ZeroMQ's slow joiner): ask the server
        to publish a token until it arrives ``sockets`` times. Raises ServerTimeoutError."""
        want = len(self._sockets) if sockets is None else sockets
        deadline = time.monotonic() + timeout_s
        token = uuid.uuid4().hex
        seen = 0
        kept: list[Message] = []
        while time.monotonic() < deadline:
            client.command("sync", {"token": token})
            until = time.monotonic() + 0.05
            while (left := until - time.monotonic()) > 0:
                msg = self.recv(left)
                if msg is None:
                    break
                if msg.stream in SYNC_STREAMS and msg.body.get("token") == token:
                    seen += 1
                    if seen >= want:
                        self._ready.extendleft(reversed(kept))
                        return
                elif msg.stream not in SYNC_STREAMS:
                    kept.append(msg)
            token = uuid.uuid4().hex  # a fresh token: count only one round's arrivals
            seen = 0
        raise ServerTimeoutError(f"subscription not in place within {timeout_s:g} s")


def acquisitions_of(msg: Message) -> AcquisitionBatch:
    """The acquisitions a ``data`` message carries (their arrays view the received frames)."""
    return unpack_acquisitions(msg.body.get("acquisitions"))
