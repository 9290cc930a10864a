"""Proxy drivers: a subsystem served by ``scanctl driver serve`` in another process (or host) made to
look local. Chosen by a ``tcp://HOST:PORT`` (or ``ipc://PATH``) URL in the system profile.

Every method is one request on a DEALER socket. While waiting for a reply the proxy sends heartbeats
every ``liveness_s / 5``; a driver that answers nothing for ``liveness_s`` seconds (default 0.5) is
declared silent: the call raises :class:`DriverTimeoutError` and ``status()`` says UNKNOWN until it
answers again. Errors raised by the remote driver are raised here with their own class.

An abort that cannot be delivered (the driver silent: frozen by a GC pause or a stalled VM, or its line
cut) is **owed**: it is resent the moment the driver is heard again (by the heartbeats between calls and
before any other call), and retried until the driver confirms it, so a driver that wakes up still playing
is made safe at once. Until then ``status()`` says UNKNOWN.

URL options: ``liveness_s`` (s), ``call_timeout_s`` (the longest any one call may take, s); ``keys``
(CurveZMQ: this client's ``.key_secret`` file or a directory holding it) and ``server_key`` (the driver
service's public key; default ``server.key`` beside the client key) — see docs/server.md#security.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import zmq

from scanctl.config.profile import SystemProfile
from scanctl.errors import DriverTimeoutError, ScanctlError, WireProtocolError
from scanctl.hw.interfaces import AcquisitionBatch, Scene, Status, SubsystemState
from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram
from scanctl.hw.registry import Converter, SubsystemURL, positive_float
from scanctl.services.driver_service import ATTRIBUTES, error_class, from_wire, to_wire
from scanctl.transport.acquisitions import unpack_acquisitions
from scanctl.transport.security import ClientCurve
from scanctl.transport.wire import Message, decode, encode

log = logging.getLogger(__name__)

#: The default liveness bound (s): a driver silent this long is declared lost. With the server's check
#: every 0.1 s this puts FAULT within about 0.6 s of a driver's death, under 1 s with margin on a loaded
#: machine (benchmarks/bench_liveness.py), while a live driver answers heartbeats within milliseconds.
LIVENESS_S = 0.5
#: Heartbeats sent per liveness bound: one lost or late heartbeat never makes a live driver look silent.
HEARTBEATS_PER_BOUND = 5


class RemoteDriver:
    """The client side of one driver service."""

    kind = "subsystem"
    OPTIONS: ClassVar[dict[str, Converter]] = {"liveness_s": positive_float, "call_timeout_s": positive_float,
                                                "keys": str, "server_key": str}

    def __init__(self, url: str, endpoint: str, *, liveness_s: float = LIVENESS_S, call_timeout_s: float = 120.0,
                 keys: str | None = None, server_key: str | None = None) -> None:
        self.url = url
        self.endpoint = endpoint
        self.curve = ClientCurve.load(keys, server_key) if keys is not None else None
        self.liveness_s = liveness_s
        self.call_timeout_s = call_timeout_s
        self._socket: zmq.Socket[Any] | None = None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._last_heard = 0.0
        self._silent = False
        self._abort_line: RemoteDriver | None = None
        self._abort_owed = False  # an abort that did not reach the driver: resent until it is confirmed
        self._abort_lock = threading.Lock()  # the abort line is made once, by whichever thread aborts first
        self._beating = threading.Event()  # set: the heartbeat thread is to stop
        self._beat_thread: threading.Thread | None = None

    @classmethod
    def from_url(cls, url: SubsystemURL, options: dict[str, Any], profile: SystemProfile) -> Self:
        endpoint = url.url.split("?", 1)[0]
        return cls(url.url, endpoint, **options)

    # -- transport ------------------------------------------------------------------------------------------
    def _open(self) -> zmq.Socket[Any]:
        if self._socket is None:
            socket: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                self.curve.apply(socket)
            # A DEALER with no live connection (the driver down, or its CURVE handshake refused us) blocks
            # on send: never wait longer than the liveness bound for that.
            socket.setsockopt(zmq.SNDTIMEO, max(1, int(self.liveness_s * 1000)))
            socket.connect(self.endpoint)
            self._socket = socket
            self._last_heard = 0.0  # nothing heard on this connection yet
            if self._beat_thread is None:
                self._beating.clear()
                self._beat_thread = threading.Thread(target=self._beat, name=f"{self.kind}-proxy-heartbeat",
                                                     daemon=True)
                self._beat_thread.start()
        return self._socket

    def _beat(self) -> None:
        """Between calls, heartbeat the service every ``liveness_s / 5`` (a call in flight does it itself), so
        that it knows its scanner is alive while the scanner talks to other subsystems."""
        while not self._beating.wait(self.liveness_s / HEARTBEATS_PER_BOUND):
            if not self._lock.acquire(blocking=False):
                continue
            try:
                socket = self._socket
                if socket is None:
                    continue
                with contextlib.suppress(zmq.ZMQError):  # not connected (NOBLOCK: never wait here)
                    socket.send_multipart(encode(Message(type="heartbeat", id=f"hb-{next(self._ids)}")), zmq.NOBLOCK)
                    while socket.poll(0):  # answers to earlier heartbeats (and late replies): it is alive
                        socket.recv_multipart(copy=False)
                        self._last_heard = time.monotonic()
                        self._silent = False
            finally:
                self._lock.release()
            if self._abort_owed and not self._silent:
                self._settle_abort()

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` on the remote subsystem and return its result (or raise its error). While an abort
        is owed, it is resent first, and any other call but ``close`` raises DriverTimeoutError until it is
        confirmed: nothing is loaded, armed or started on a driver that may still be playing."""
        if self._abort_owed and method not in ("abort", "close") and not self._settle_abort():
            raise DriverTimeoutError(f"{self.kind} driver at {self.endpoint}: {method} refused: an abort is owed "
                                     "and the driver has not confirmed it")
        with self._lock:
            socket = self._open()
            request_id = f"{self.kind}-{next(self._ids)}"
            body = {"method": method, "args": to_wire(list(args)), "kwargs": to_wire(kwargs)}
            # Silence counts from the last answer heard (heartbeats between calls included), not from this
            # call: a driver that died during another subsystem's call is found out within the bound, and one
            # known silent fails at once (the heartbeats find out when it is back). A new connection, or
            # connect(), gets the whole bound.
            now = time.monotonic()
            heard = self._last_heard or now
            # Without a connection (the process gone) the send waits: only as long as the bound has left.
            socket.setsockopt(zmq.SNDTIMEO, max(1, int((heard + self.liveness_s - now) * 1000)))
            try:
                socket.send_multipart(encode(Message(type="call", id=request_id, body=body)), copy=False)
            except zmq.Again:
                self._silent = True
                raise DriverTimeoutError(f"{self.kind} driver at {self.endpoint} unreachable, silent for "
                                         f"{time.monotonic() - heard:.2f} s (not running, or it refused this "
                                         f"client's keys)") from None
            deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.call_timeout_s)
            beat = self.liveness_s / HEARTBEATS_PER_BOUND
            while True:
                now = time.monotonic()
                if now - heard > self.liveness_s and not socket.poll(0):  # (an answer waiting is one heard)
                    self._silent = True
                    raise DriverTimeoutError(f"{self.kind} driver at {self.endpoint} silent for "
                                             f"{now - heard:.2f} s during {method}")
                if now > deadline:
                    if self._silent:
                        raise DriverTimeoutError(f"{self.kind} driver at {self.endpoint} is still silent")
                    raise DriverTimeoutError(f"{self.kind} driver at {self.endpoint}: {method} took longer "
                                             f"than {self.call_timeout_s:g} s")
                if not socket.poll(max(1, int(min(beat, heard + self.liveness_s - now) * 1000))):
                    with contextlib.suppress(zmq.Again):  # unreachable: the liveness bound decides
                        socket.send_multipart(encode(Message(type="heartbeat", id=f"hb-{next(self._ids)}")),
                                              zmq.NOBLOCK)
                    continue
                frames = socket.recv_multipart(copy=False)
                heard = self._last_heard = time.monotonic()
                self._silent = False
                try:
                    reply = decode(frames)
                except Exception as exc:  # noqa: BLE001 - only the driver talks to this socket: it broke the protocol
                    raise WireProtocolError(f"{self.kind} driver at {self.endpoint} sent an undecodable message "
                                            f"during {method}: {type(exc).__name__}: {exc}") from None
                if reply.re != request_id:
                    continue  # a heartbeat, or a late reply to an abandoned request
                if reply.type == "error":
                    cls = error_class(str(reply.body.get("error", "ScanctlError")))
                    if reply.body.get("code") == "malformed":
                        cls = WireProtocolError
                    raise cls(str(reply.body.get("message", "remote error")))
                return from_wire(reply.body.get("result"))

    # -- the common interface ----------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> None:
        self._reach_anew()
        if self._abort_line is not None:
            self._abort_line._reach_anew()
        self.call("connect", timeout_s, timeout_s=timeout_s + self.liveness_s)
        for name, value in self.call("attributes", timeout_s=timeout_s).items():
            if name in ATTRIBUTES[self.kind]:
                setattr(self, name, value)

    def _reach_anew(self) -> None:
        """Reaching the driver anew (after a restart, say): silence counts from now."""
        with self._lock:
            self._last_heard = 0.0
            self._silent = False

    def close(self) -> None:
        self._beating.set()  # first: the heartbeat thread may resend an owed abort on the abort line
        if self._beat_thread is not None:
            self._beat_thread.join()
            self._beat_thread = None
        with self._abort_lock:
            if self._abort_line is not None:
                self._abort_line.close()
        with self._lock:
            if self._socket is not None:
                with contextlib.suppress(ScanctlError):  # closing must not fail on a dead driver
                    self.call("close", timeout_s=self.liveness_s)
                self._socket.close()
                self._socket = None

    def status(self) -> Status:
        if self._silent:  # known silent: UNKNOWN at once (the heartbeats find out when it answers again)
            return Status(SubsystemState.UNKNOWN, 0.0, f"{self.kind} driver at {self.endpoint} is silent")
        try:  # (an owed abort is settled first: until it is, UNKNOWN)
            return self.call("status", timeout_s=self.liveness_s)
        except DriverTimeoutError as exc:
            return Status(SubsystemState.UNKNOWN, 0.0, str(exc))

    def abort(self) -> None:
        """Make the remote subsystem safe now. Raises DriverTimeoutError when the driver is silent or does not
        confirm in time; the abort is then owed, and resent until the driver confirms it."""
        if self._silent:  # a silent driver cannot be reached: say so at once, do not wait again
            self._abort_owed = True
            raise DriverTimeoutError(f"{self.kind} driver at {self.endpoint} is silent: the abort is resent "
                                     "the moment it answers")
        # On a connection of its own: an abort must not queue behind a call in flight (a sync waiting for
        # the hardware to play), and the service answers it at once (scanctl.services.driver_service).
        with self._abort_lock:
            if self._abort_line is None:
                self._abort_line = RemoteDriver(self.url, self.endpoint, liveness_s=self.liveness_s)
                self._abort_line.kind, self._abort_line.curve = self.kind, self.curve
            line = self._abort_line
        try:
            line.call("abort")
        except DriverTimeoutError:
            self._abort_owed = True  # not heard: owed, resent the moment the driver answers
            raise
        except ScanctlError:
            self._abort_owed = False  # heard, and answered with the driver's error: its status tells the rest
            raise
        self._abort_owed = False

    def _settle_abort(self) -> bool:
        """Resend an owed abort; True once the driver has confirmed it."""
        try:
            self.abort()
        except DriverTimeoutError:
            return False
        except ScanctlError as exc:  # the driver answered with an error: delivered; its status tells the rest
            log.error("%s driver at %s: owed abort answered with an error: %s", self.kind, self.endpoint, exc)
            return True
        log.warning("%s driver at %s: owed abort delivered and confirmed", self.kind, self.endpoint)
        return True

    def reset(self) -> None:
        self.call("reset")


class _RemoteSequencer(RemoteDriver):
    buffer_s = 1.0

    def arm(self) -> None:
        self.call("arm")

    def start(self) -> None:
        self.call("start")

    def sync(self, t_s: float, timeout_s: float = 10.0) -> Status:
        return self.call("sync", t_s, timeout_s)

    def finish(self) -> None:
        self.call("finish")


class ProxyGradient(_RemoteSequencer):
    kind = "gradient"

    def load(self, program: GradientProgram) -> None:
        self.call("load", program)

    def set_shim(self, values: Mapping[str, float]) -> None:
        """:class:`scanctl.hw.interfaces.ShimSystem`; a driver without a shim answers WireProtocolError."""
        self.call("set_shim", {str(k): float(v) for k, v in values.items()})

    def adjustments(self) -> dict[str, float]:
        return dict(self.call("adjustments"))


class ProxyRF(_RemoteSequencer):
    kind = "rf"
    channels = 1

    def load(self, rf: RFProgram, adc: ADCProgram) -> None:
        self.call("load", rf, adc)

    def acquisitions(self) -> AcquisitionBatch:
        return unpack_acquisitions(self.call("acquisitions"))

    # :class:`scanctl.hw.interfaces.RFAdjustments`; a driver without them answers WireProtocolError.
    def set_frequency_offset(self, hz: float) -> None:
        self.call("set_frequency_offset", float(hz))

    def set_tx_scale(self, scale: float) -> None:
        self.call("set_tx_scale", float(scale))

    def set_receiver_gain(self, db: float) -> None:
        self.call("set_receiver_gain", float(db))

    def adjustments(self) -> dict[str, float]:
        return dict(self.call("adjustments"))

    def place(self, scene: Scene, timeout_s: float | None = None) -> None:
        """A simulated RF system's scene (:meth:`scanctl.simulators.rf.SimulatedRF.place`); a service whose
        driver offers no ``place`` (real hardware) answers WireProtocolError."""
        self.call("place", scene, timeout_s=timeout_s)


class ProxyTable(RemoteDriver):
    kind = "table"
    min_position_mm = 0.0
    max_position_mm = 0.0
    max_speed_mm_s = 0.0

    def home(self, timeout_s: float = 60.0) -> None:
        self.call("home", timeout_s)

    def move_to(self, position_mm: float, speed_mm_s: float | None = None) -> None:
        self.call("move_to", position_mm, speed_mm_s)

    def wait_idle(self, timeout_s: float = 60.0) -> Status:
        return self.call("wait_idle", timeout_s, timeout_s=timeout_s + self.liveness_s)

    def position_mm(self) -> float:
        return float(self.call("position_mm"))

    def stop(self) -> None:
        self.call("stop")
