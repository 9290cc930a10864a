"""The simulated magnet room: what couples the gradient and RF simulators.

The RF simulator's receiver needs the gradients that actually played to compute the MR signal; in a
real scanner physics couples them, here the gradient simulator posts every program it accepts to its
world and the RF simulator takes them from there (``sim://?world=...`` on both):

- a **name** (default ``default``): the :class:`World` of that name in this process, for simulators in
  one process (``scanctl run``, ``scanctl serve`` on ``sim://`` URLs);
- ``tcp://HOST:PORT`` (a loopback host) or ``ipc://PATH``: a world across processes (``scanctl up``).
  The RF simulator, the receiver, binds a ZeroMQ PULL socket there (:class:`WorldReceiver`); the gradient
  simulator connects a PUSH socket and sends each program it accepts (:class:`WorldSender`), packed as a
  driver service call packs it (JSON envelope, arrays as binary frames; nothing is pickled). Delivery is
  asynchronous: :meth:`WorldReceiver.take_gradient` waits up to ``wait_s`` for a program not there yet.

With a real gradient system (a hardware-in-the-loop rig) nothing is posted and the RF simulator
receives without spatial encoding, which it logs once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

import zmq

from scanctl.errors import ConfigError, WireProtocolError
from scanctl.hw.program import GradientProgram
from scanctl.hw.registry import is_remote
from scanctl.transport.wire import Message, decode, encode

log = logging.getLogger(__name__)

#: How long the receiver waits for a gradient program that has not arrived yet (s).
WAIT_S = 1.0
#: How long a receiver retries binding an address its predecessor in this process is still releasing (s).
BIND_RETRY_S = 2.0
_GRADIENT, _CLEAR = "world.gradient", "world.clear"


class World:
    """A world inside one process, shared by name."""

    _worlds: ClassVar[dict[str, World]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name
        self._gradients: dict[float, GradientProgram] = {}
        self._mutex = threading.Lock()

    @classmethod
    def named(cls, name: str) -> World:
        with cls._lock:
            world = cls._worlds.get(name)
            if world is None:
                world = cls._worlds[name] = World(name)
            return world

    def open(self) -> None:
        """Nothing to open: a named world lives as long as its process (as :meth:`close`)."""

    def close(self) -> None:
        """Nothing to release."""

    def post_gradient(self, program: GradientProgram) -> None:
        with self._mutex:
            self._gradients[program.t0_s] = program

    def take_gradient(self, t0_s: float, wait_s: float | None = None) -> GradientProgram | None:
        """The gradient program that starts at ``t0_s`` (removed from the world), if one was posted (in one
        process it was posted before: nothing to wait for, whatever ``wait_s``)."""
        with self._mutex:
            return self._gradients.pop(t0_s, None)

    def peek_gradient(self, t0_s: float) -> GradientProgram | None:
        """The gradient program that starts at ``t0_s`` if it is here already, left in the world (no wait)."""
        with self._mutex:
            return self._gradients.get(t0_s)

    def clear(self) -> None:
        with self._mutex:
            self._gradients.clear()

    @property
    def heard(self) -> bool:
        """In one process a program is posted before it is taken: a missing one was never sent."""
        return False


def world_option(text: str) -> str:
    """The ``world`` URL option: a name, ``tcp://HOST:PORT`` on a loopback host, or ``ipc://PATH``.
    Raises ValueError saying what is wrong (the registry reports it as a ConfigError)."""
    if "://" not in text:
        if not text or text != text.strip():
            raise ValueError("must be a name, tcp://127.0.0.1:PORT or ipc://PATH")
        return text
    scheme = text.split("://", 1)[0]
    if scheme == "ipc":
        if not text[len("ipc://"):]:
            raise ValueError("ipc:// needs a path (ipc://PATH)")
        return text
    if scheme != "tcp":
        raise ValueError(f"unknown scheme {scheme}:// (a world is a name, tcp://127.0.0.1:PORT or ipc://PATH)")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 0 < port < 65536 or parts.path or parts.query or parts.fragment:
        raise ValueError(f"{text} is not tcp://HOST:PORT with a port 1-65535")
    if parts.hostname != "localhost" and not parts.hostname.startswith("127."):
        raise ValueError(f"{parts.hostname} is not a loopback address: a world is unauthenticated, keep it on "
                         f"this host (tcp://127.0.0.1:PORT or ipc://PATH)")
    return text


def sender(spec: str) -> World | WorldSender:
    """The gradient simulator's end of the world ``spec`` (checked by :func:`world_option`)."""
    spec = _checked(spec)
    return WorldSender(spec) if is_remote(spec) else World.named(spec)


def receiver(spec: str, wait_s: float = WAIT_S) -> World | WorldReceiver:
    """The RF simulator's end of the world ``spec`` (checked by :func:`world_option`)."""
    spec = _checked(spec)
    return WorldReceiver(spec, wait_s) if is_remote(spec) else World.named(spec)


def _checked(spec: str) -> str:
    try:
        return world_option(spec)
    except ValueError as exc:
        raise ConfigError(f"world {spec!r}: {exc}") from None


class WorldSender:
    """Sends the gradient programs to the receiver bound at ``endpoint`` (a PUSH socket, connected on
    :meth:`open` or the first post). Never blocks: a program the receiver does not take (it is not running,
    or it stopped taking) is dropped, with one warning."""

    def __init__(self, endpoint: str) -> None:
        self.name = self.endpoint = endpoint
        self._socket: zmq.Socket[Any] | None = None
        self._mutex = threading.Lock()  # the gradient simulator posts and clears from different threads
        self._warned = False

    def open(self) -> None:
        with self._mutex:
            self._open()

    def _open(self) -> zmq.Socket[Any]:
        if self._socket is None:
            socket: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.PUSH)
            socket.setsockopt(zmq.LINGER, 200)  # a clear sent as it closes still goes out
            try:
                socket.connect(self.endpoint)
            except zmq.ZMQError as exc:
                socket.close()
                raise ConfigError(f"world {self.endpoint}: cannot connect: {exc}") from None
            self._socket = socket
        return self._socket

    def _send(self, msg: Message) -> None:
        with self._mutex:
            socket = self._open()
            try:
                socket.send_multipart(encode(msg), zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if not self._warned:
                    log.warning("world %s: the RF simulator takes nothing (not running?): gradient programs are "
                                "dropped", self.endpoint)
                    self._warned = True

    def post_gradient(self, program: GradientProgram) -> None:
        from scanctl.services.driver_service import to_wire

        self._send(Message(type=_GRADIENT, src="gradient", body={"program": to_wire(program)}))

    def clear(self) -> None:
        """Tell the receiver to drop what it holds (after what was sent before: the socket keeps the order)."""
        if self._socket is not None:
            self._send(Message(type=_CLEAR, src="gradient"))

    def close(self) -> None:
        with self._mutex:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


class WorldReceiver:
    """Receives the gradient programs a :class:`WorldSender` sends, on a PULL socket bound at ``endpoint``
    (on :meth:`open`; :meth:`close` releases the address)."""

    def __init__(self, endpoint: str, wait_s: float = WAIT_S) -> None:
        self.name = self.endpoint = endpoint
        self.wait_s = wait_s
        self._socket: zmq.Socket[Any] | None = None
        self._gradients: dict[float, GradientProgram] = {}
        self._mutex = threading.Lock()
        # Whether anything has arrived since open(); and whether a wait came up empty before that (no
        # gradient simulator sends here): then takes wait no more until something arrives, so that a missing
        # sender costs one wait, not one a segment. Once a sender has been heard, every take may wait.
        self._heard = False
        self._starved = False

    def open(self) -> None:
        """Bind the address. Raises ConfigError if it cannot be bound (in use by another process)."""
        with self._mutex:
            if self._socket is not None:
                return
            socket: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.PULL)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
            deadline = time.monotonic() + BIND_RETRY_S
            while True:
                try:
                    socket.bind(self.endpoint)
                    break
                except zmq.ZMQError as exc:
                    # A receiver closed just before (a scanner rebuilt) releases its address asynchronously.
                    if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                        socket.close()
                        raise ConfigError(f"world {self.endpoint}: cannot bind: {exc}") from None
                    time.sleep(0.02)
            self._socket = socket
            self._heard = self._starved = False

    def close(self) -> None:
        with self._mutex:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            self._gradients.clear()

    def clear(self) -> None:
        with self._mutex:
            self._drain()
            self._gradients.clear()

    @property
    def heard(self) -> bool:
        """Whether a gradient simulator has sent here since :meth:`open`: once one has, a program that does
        not come means it stopped sending (restarted without this world, say), not that there is none."""
        return self._heard

    def take_gradient(self, t0_s: float, wait_s: float | None = None) -> GradientProgram | None:
        """The gradient program that starts at ``t0_s`` (removed from the world), waiting up to ``wait_s``
        (default :attr:`wait_s`) for it to arrive; None if it does not."""
        with self._mutex:
            self._drain()
            program = self._gradients.pop(t0_s, None)
            wait = self.wait_s if wait_s is None else wait_s
            socket = self._socket
            if program is not None or socket is None or wait <= 0 or self._starved:
                return program
            deadline = time.monotonic() + wait
            while program is None and (left := deadline - time.monotonic()) > 0:
                if socket.poll(max(1, int(left * 1000))):
                    self._drain()
                    program = self._gradients.pop(t0_s, None)
            if program is None and not self._heard:
                self._starved = True
            return program

    def peek_gradient(self, t0_s: float) -> GradientProgram | None:
        """The gradient program that starts at ``t0_s`` if it has arrived, left here (no wait)."""
        with self._mutex:
            self._drain()
            return self._gradients.get(t0_s)

    def _drain(self) -> None:
        """Apply everything that has arrived, in order."""
        from scanctl.services.driver_service import from_wire

        socket = self._socket
        if socket is None:
            return
        while socket.poll(0):
            frames = socket.recv_multipart(copy=False)
            try:
                msg = decode(frames)
                if msg.type == _CLEAR:
                    self._gradients.clear()
                    continue
                program = from_wire(msg.body.get("program")) if msg.type == _GRADIENT else None
                if not isinstance(program, GradientProgram):
                    raise WireProtocolError(f"not a gradient program: a {msg.type!r} message")
            except WireProtocolError as exc:
                log.warning("world %s: message ignored: %s", self.endpoint, exc)
                continue
            self._gradients[float(program.t0_s)] = program
            self._heard, self._starved = True, False
