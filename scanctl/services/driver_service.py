"""Driver services: any subsystem (simulated or real) behind a ZeroMQ ROUTER socket.

``scanctl driver serve KIND --url URL --bind ENDPOINT`` runs one. Requests (``docs/wire-protocol.md``):

- ``call`` ``{"method": NAME, "args": [...], "kwargs": {...}}`` -> ``reply`` ``{"result": ...}`` or
  ``error`` ``{"code", "error": CLASS, "message", "method"}``; only the methods of the subsystem's
  interface can be called (``METHODS``), one at a time, in order, on a worker thread. Every call is
  answered: ``code`` ``driver`` for a scanctl error the driver raised (``error`` its class), ``malformed``
  for a call that cannot be made (unknown method, arguments not a list/object, the wrong arguments,
  arguments the driver refuses with TypeError/ValueError), ``internal`` (``error`` ``DriverError``) for
  any other exception — a bug in the driver, or a result that cannot travel; the worker carries on;
- ``heartbeat`` -> ``heartbeat``, answered at once even while a call runs, so a client can tell a
  busy driver from a dead one;
- anything malformed -> ``error`` ``{"code": "malformed", ...}`` (``re`` the request id whenever it can be
  read); the service never stops for it.

The protocol, for writing a driver service in another language: docs/driver-protocol.md.

Programs, statuses and acquisitions travel as ``{"__type__": NAME, ...fields}`` with their arrays as
binary frames (:func:`to_wire` / :func:`from_wire`).
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from dataclasses import fields, is_dataclass
from typing import Any

import zmq

from scanctl import errors
from scanctl.errors import ScanctlError, WireProtocolError
from scanctl.hw.interfaces import Scene, Status, SubsystemState
from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram
from scanctl.transport.acquisitions import pack_acquisitions
from scanctl.transport.security import ServerCurve, refuse_unauthenticated
from scanctl.transport.wire import Message, decode, encode, error_reply, malformed_reply, routed

log = logging.getLogger(__name__)

_COMMON = ("connect", "close", "status", "abort", "reset")
_SEQUENCER = (*_COMMON, "arm", "start", "sync", "finish", "load")
#: What a console sets between scans (scanctl.hw.interfaces.RFAdjustments and ShimSystem; docs/prescan.md).
RF_ADJUSTMENTS = ("set_frequency_offset", "set_tx_scale", "set_receiver_gain", "adjustments")
SHIM_ADJUSTMENTS = ("set_shim", "adjustments")
METHODS: dict[str, tuple[str, ...]] = {
    "gradient": (*_SEQUENCER, *SHIM_ADJUSTMENTS),
    "rf": (*_SEQUENCER, "acquisitions", "place", *RF_ADJUSTMENTS),
    "table": (*_COMMON, "home", "move_to", "wait_idle", "position_mm", "stop"),
}
#: Methods only a simulator offers (its scene): a driver without one answers ``malformed``.
SIMULATOR_METHODS = frozenset({"place"})
#: Methods of an optional capability (the adjustments): a driver without them answers ``malformed`` too.
OPTIONAL_METHODS = SIMULATOR_METHODS | frozenset(RF_ADJUSTMENTS) | frozenset(SHIM_ADJUSTMENTS)
_SCANNING = ("arm", "start", "load", "sync")  # calls after which a silent scanner makes the service abort
_SCAN_OVER = ("finish", "abort", "close", "reset", "connect")
#: Attributes a proxy reads once when it connects.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gradient": ("buffer_s",),
    "rf": ("buffer_s", "channels"),
    "table": ("min_position_mm", "max_position_mm", "max_speed_mm_s"),
}

_TYPES: dict[str, Any] = {
    "GradientProgram": lambda d: GradientProgram(d["t0_s"], d["t1_s"], tuple(d["t_s"]), tuple(d["g_hz_per_m"]),
                                                 dict(d.get("shim_hz_per_m2") or {})),
    "RFProgram": lambda d: RFProgram(**d),
    "ADCProgram": lambda d: ADCProgram(**d),
    "Status": lambda d: Status(SubsystemState(d["state"]), d["time_s"], d["message"], d["telemetry"]),
    "Scene": lambda d: Scene(**d),
}


def to_wire(value: Any) -> Any:
    """Known dataclasses to tagged dicts (arrays kept for binary frames), recursively."""
    if is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if name not in _TYPES:
            raise WireProtocolError(f"cannot send a {name}")
        out = {"__type__": name}
        out.update({f.name: to_wire(getattr(value, f.name)) for f in fields(value)})
        return out
    if isinstance(value, SubsystemState):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value


def from_wire(value: Any) -> Any:
    """The inverse of :func:`to_wire`. Raises WireProtocolError for an unknown or malformed type."""
    if isinstance(value, dict):
        inner = {k: from_wire(v) for k, v in value.items() if k != "__type__"}
        if "__type__" not in value:
            return inner
        make = _TYPES.get(value["__type__"]) if isinstance(value["__type__"], str) else None
        if make is None:
            raise WireProtocolError(f"unknown type {value['__type__']!r}")
        try:
            return make(inner)
        except (TypeError, KeyError, ValueError) as exc:
            raise WireProtocolError(f"malformed {value['__type__']}: {exc}") from None
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


def error_class(name: str) -> type[ScanctlError]:
    """The scanctl error class a remote error names (ScanctlError for anything unknown)."""
    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, ScanctlError) else ScanctlError


class DriverService:
    """Serve ``subsystem`` (of ``kind``) on ``endpoint`` until :meth:`stop`.

    Heartbeats go both ways: the service answers the proxy's, and when a scan is under way on it (armed,
    started, loading or syncing since the last finish/abort) and the scanner — the connection that made
    that call — has said nothing, not even a heartbeat, for ``client_timeout_s``, it aborts the subsystem
    by itself: a scanner that died or lost its network leaves no RF or gradient playing. Other clients'
    traffic (a monitoring tool's heartbeats) never keeps a playing driver alive.

    With ``curve`` (:class:`scanctl.transport.security.ServerCurve`) only CURVE clients with an allowed key get in;
    without it a non-loopback endpoint is refused (ConfigError) unless ``insecure``."""

    def __init__(self, kind: str, subsystem: Any, endpoint: str, *, name: str | None = None,
                 curve: ServerCurve | None = None, insecure: bool = False, client_timeout_s: float = 3.0,
                 context: zmq.Context[Any] | None = None) -> None:
        if kind not in METHODS:
            raise errors.ConfigError(f"unknown subsystem kind {kind!r}")
        refuse_unauthenticated([endpoint], curve, insecure, f"the {kind} driver")
        self.kind = kind
        self.subsystem = subsystem
        self.name = name or f"{kind}-driver"
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if curve is not None:
            curve.apply(self._socket, self._context)
        self.endpoint = self._bind(endpoint)
        self._wake_addr = f"inproc://service-wake-{id(self)}"
        self._wake = self._context.socket(zmq.PAIR)
        self._wake.bind(self._wake_addr)
        self._calls: queue.Queue[tuple[list[bytes], Message] | None] = queue.Queue()
        self._replies: queue.Queue[tuple[list[bytes], Message]] = queue.Queue()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name=f"{self.name}-worker", daemon=True)
        self.client_timeout_s = client_timeout_s
        self._last_heard = time.monotonic()  # from the scanner: the connection that made the scanning call
        self._in_scan = False  # set by the worker after arm/start/load/sync, cleared by finish/abort/close/reset
        self._scanner: bytes | None = None  # the routing id of the connection that made the scan's calls
        self._signatures: dict[str, inspect.Signature | None] = {}  # of the subsystem's methods, by name

    def _bind(self, endpoint: str) -> str:
        try:
            if endpoint.endswith(":0") or endpoint.endswith(":*"):
                port = self._socket.bind_to_random_port(endpoint.rsplit(":", 1)[0])
                return f"{endpoint.rsplit(':', 1)[0]}:{port}"
            self._socket.bind(endpoint)
            return endpoint
        except zmq.ZMQError as exc:
            raise errors.ConfigError(f"cannot bind {endpoint}: {exc}") from exc

    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop` (from another thread or a signal handler)."""
        self._worker.start()
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        log.info("%s serving on %s", self.name, self.endpoint)
        try:
            while not self._stopping.is_set():
                ready = dict(poller.poll(100))
                if self._wake in ready:
                    self._wake.recv()
                    self._send_replies()
                if self._socket in ready:
                    self._handle(self._socket.recv_multipart(copy=False))
                self._send_replies()
                self._watch_clients()
        finally:
            self._calls.put(None)
            self._worker.join(timeout=5)
            self._socket.close()
            self._wake.close()

    def stop(self) -> None:
        self._stopping.set()

    def _watch_clients(self) -> None:
        silent_s = time.monotonic() - self._last_heard
        if self._in_scan and silent_s > self.client_timeout_s:
            self._in_scan = False
            log.error("%s: no word from the scanner for %.1f s during a scan: making the %s safe", self.name,
                      silent_s, self.kind)
            # On a thread of its own: the abort waits for the subsystem's lock, the loop must keep answering.
            threading.Thread(target=self._abort_alone, name=f"{self.name}-watchdog", daemon=True).start()

    def _abort_alone(self) -> None:
        try:
            self.subsystem.abort()
        except ScanctlError as exc:
            log.error("%s: abort after the scanner went silent failed: %s", self.name, exc)

    def _handle(self, frames: list[Any]) -> None:
        split = routed(frames)
        if split is None:
            return  # not from a DEALER/REQ peer: nothing to answer
        identity, payload = split
        if identity[0] == self._scanner:
            self._last_heard = time.monotonic()
        try:
            msg = decode(payload)
        except Exception as exc:  # noqa: BLE001 - not only WireProtocolError: no message may end the service
            self._send(identity, malformed_reply(payload, exc, src=self.name))
            return
        if msg.type == "heartbeat":
            self._send(identity, Message(type="heartbeat", re=msg.id, src=self.name))
        elif msg.type == "call" and msg.body.get("method") == "abort":
            # at once, beside a call in flight (abort is thread-safe); from anyone: making safe is always allowed
            self._send(identity, self._call(msg, identity[0]))
        elif msg.type == "call":
            self._calls.put((identity, msg))
        else:
            self._send(identity, error_reply(msg.id, "malformed", f"unknown message type {msg.type!r}", src=self.name))

    def _work(self) -> None:
        wake = self._context.socket(zmq.PAIR)
        wake.connect(self._wake_addr)
        try:
            while True:
                item = self._calls.get()
                if item is None:
                    return
                identity, msg = item
                try:
                    reply = self._call(msg, identity[0])
                except Exception as exc:  # noqa: BLE001 - _call answers everything; this only guards against its bugs
                    log.exception("%s: call %r failed", self.name, msg.body.get("method"))
                    reply = self._internal(msg, msg.body.get("method"), exc)
                self._replies.put((identity, reply))
                wake.send(b"")
        finally:
            wake.close()

    def _call(self, msg: Message, caller: bytes) -> Message:
        """The answer to ``caller``'s call: its reply, or an error naming the method. Never raises: whatever
        the driver raises is answered, and the worker goes on to the next call."""
        method = msg.body.get("method")
        args, kwargs = msg.body.get("args", []), msg.body.get("kwargs", {})
        if method == "attributes":
            try:  # (a value that cannot travel is answered by _send)
                body = {"result": {a: to_wire(getattr(self.subsystem, a)) for a in ATTRIBUTES[self.kind]}}
            except Exception as exc:  # noqa: BLE001 - answered, never fatal
                return self._internal(msg, method, exc)
            return Message(type="reply", re=msg.id, src=self.name, body=body)
        if not isinstance(method, str) or method not in METHODS[self.kind]:
            return self._malformed(msg, method, f"no method {method!r} on a {self.kind} driver (methods: "
                                                f"{', '.join(('attributes', *METHODS[self.kind]))})")
        if method in OPTIONAL_METHODS and not callable(getattr(self.subsystem, method, None)):
            why = "not a simulator" if method in SIMULATOR_METHODS else "it has no adjustments"
            return self._malformed(msg, method, f"this {self.kind} driver offers no {method!r} ({why})")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return self._malformed(msg, method, f"{method}: 'args' must be a list and 'kwargs' an object, got "
                                                f"{type(args).__name__} and {type(kwargs).__name__}")
        try:
            args, kwargs = from_wire(args), from_wire(kwargs)
            if not isinstance(kwargs, dict):  # a '__type__' object made of the keyword arguments
                raise WireProtocolError("'kwargs' must be an object of arguments")
            bound = getattr(self.subsystem, method)
            self._check_arguments(method, bound, args, kwargs)
        except (WireProtocolError, TypeError) as exc:
            return self._malformed(msg, method, f"{method}: {exc}")
        except ScanctlError as exc:  # an argument refused as it is made (a program with a NaN): as the driver would
            return self._driver_error(msg, method, exc)
        except Exception as exc:  # noqa: BLE001 - the subsystem lacks the method, or its signature is broken
            return self._internal(msg, method, exc)
        try:
            result = bound(*args, **kwargs)
        except ScanctlError as exc:  # WireProtocolError too: the driver's own line (a serial link) broke
            return self._driver_error(msg, method, exc)
        except (TypeError, ValueError) as exc:  # arguments of the right number the driver cannot take
            return self._malformed(msg, method, f"{method}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug in the driver: answered, and the service keeps serving
            return self._internal(msg, method, exc)
        if method in _SCANNING:  # the caller is the scanner: only its word keeps the scan going
            if caller != self._scanner:
                self._scanner, self._last_heard = caller, time.monotonic()
            self._in_scan = True
        elif method in _SCAN_OVER:
            self._in_scan = False
        try:  # (a result that cannot travel is answered by _send, which packs it once)
            body = {"result": pack_acquisitions(result) if method == "acquisitions" else to_wire(result)}
        except Exception as exc:  # noqa: BLE001 - a result that cannot travel (the driver's bug)
            return self._internal(msg, method, exc)
        return Message(type="reply", re=msg.id, src=self.name, body=body)

    def _check_arguments(self, method: str, bound: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Raise TypeError naming what is wrong when ``args``/``kwargs`` do not fit the method's signature."""
        if method not in self._signatures:
            try:
                self._signatures[method] = inspect.signature(bound)
            except (TypeError, ValueError):  # no signature to check against (a builtin): the call will tell
                self._signatures[method] = None
        signature = self._signatures[method]
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"wrong arguments ({exc})") from None

    def _driver_error(self, msg: Message, method: Any, exc: ScanctlError) -> Message:
        return Message(type="error", re=msg.id, src=self.name,
                       body={"code": "driver", "error": type(exc).__name__, "message": str(exc), "method": method})

    def _malformed(self, msg: Message, method: Any, message: str) -> Message:
        reply = error_reply(msg.id, "malformed", message, src=self.name)
        reply.body.update(error="WireProtocolError", method=method if isinstance(method, str) else None)
        return reply

    def _internal(self, msg: Message, method: Any, exc: BaseException) -> Message:
        """An exception that is no scanctl error (a driver bug): logged, and answered as a DriverError."""
        name = method if isinstance(method, str) else None
        log.error("%s: %s raised %s: %s", self.name, name, type(exc).__name__, exc, exc_info=exc)
        reply = error_reply(msg.id, "internal", f"{self.kind} driver: {name}: {type(exc).__name__}: {exc}",
                            src=self.name)
        reply.body.update(error="DriverError", method=name)
        return reply

    def _send_replies(self) -> None:
        while True:
            try:
                identity, reply = self._replies.get_nowait()
            except queue.Empty:
                return
            self._send(identity, reply)

    def _send(self, identity: list[bytes], msg: Message) -> None:
        try:
            frames = encode(msg)
        except WireProtocolError as exc:  # a result that cannot travel: the caller still gets an answer
            log.error("%s: %s to %s cannot be sent: %s", self.name, msg.type, msg.re, exc)
            error = error_reply(msg.re, "internal", f"{self.kind} driver: the answer cannot be sent: {exc}",
                                src=self.name)
            error.body.update(error="DriverError", method=None)
            frames = encode(error)
        try:
            self._socket.send_multipart([*identity, *frames], copy=False)
        except zmq.ZMQError as exc:
            log.warning("%s: reply not sent: %s", self.name, exc)
