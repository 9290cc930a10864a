"""The table controller simulator's process (``scanctl sim table``): its end of the serial line — a
pseudo-terminal the driver opens as a serial port, or a TCP port as a serial-over-TCP bridge serves one — and
the loop that serves a :class:`~scanctl.simulators.table_controller.TableController` on it
(docs/table-serial.md)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import tty
from collections.abc import Callable
from typing import Any

from scanctl.simulators.table_controller import TableController, build_controller

from scanctl.errors import ConfigError

TICK_S = 0.01  # how often the controller looks at its axis (faults, stuck moves)


class PtyTransport:
    """A pseudo-terminal: the driver opens :attr:`path` as its serial port."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a clean 8-bit line
        os.set_blocking(self.master, False)
        # The slave stays open here too, so the master never sees a hang-up when the driver closes.
        self.path = os.ttyname(self._slave)

    def fds(self) -> list[int]:
        return [self.master]

    def read(self, fd: int) -> bytes:
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return b""

    def write(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError):  # nobody reading and the buffer full: the bytes are lost
            os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class TcpTransport:
    """A TCP port, as a serial-over-TCP bridge serves one: one client at a time (a newer one wins)."""

    def __init__(self, host: str, port: int) -> None:
        self._listener = socket.create_server((host, port))
        self._client: socket.socket | None = None
        self.address = self._listener.getsockname()[:2]

    def fds(self) -> list[int]:
        return [self._listener.fileno()] + ([self._client.fileno()] if self._client is not None else [])

    def read(self, fd: int) -> bytes:
        if fd == self._listener.fileno():
            conn, _ = self._listener.accept()
            if self._client is not None:
                self._client.close()
            self._client = conn
            return b""
        assert self._client is not None
        try:
            data = self._client.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._client.close()
            self._client = None
        return data

    def write(self, data: bytes) -> None:
        if self._client is not None:
            try:
                self._client.sendall(data)
            except OSError:
                self._client.close()
                self._client = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._listener.close()


def serve(controller: TableController, transport: PtyTransport | TcpTransport,
          should_stop: Callable[[], bool], reboot_requested: Callable[[], bool]) -> None:
    """Run the controller on ``transport`` until ``should_stop()``; ``reboot_requested()`` (polled) reboots."""
    while not should_stop():
        if reboot_requested():
            controller.reboot()
        due = controller.next_due_s()
        wait = TICK_S if due is None else min(TICK_S, due)
        try:
            ready, _, _ = select.select(transport.fds(), [], [], wait)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise
        for fd in ready:
            data = transport.read(fd)
            if data:
                controller.receive(data)
        controller.poll()
        out = controller.due_output()
        if out:
            transport.write(out)


def run(args: Any, announce: Callable[[str], None]) -> int:
    """``scanctl sim table``: serve the controller on a pty (``args.pty``) or TCP (``args.tcp``,
    ``HOST:PORT``) until SIGTERM or SIGINT; ``announce`` gets the device path or ``socket://`` URL."""
    controller = build_controller(args.url, args.fault or "", seed=args.seed, speedup=args.speedup, boot=args.boot)
    transport: PtyTransport | TcpTransport
    if args.tcp:
        host, sep, port = args.tcp.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"--tcp {args.tcp!r}: expected HOST:PORT (PORT 0: any free port)")
        try:
            transport = TcpTransport(host or "127.0.0.1", int(port))
        except OSError as exc:
            raise ConfigError(f"--tcp {args.tcp}: {exc.strerror or exc}") from exc
        where = "socket://{}:{}".format(*transport.address)
    else:
        transport = PtyTransport()
        where = transport.path
    flags = {"stop": False, "reboot": False}

    def on_stop(*_: object) -> None:
        flags["stop"] = True

    def on_reboot(*_: object) -> None:
        flags["reboot"] = True

    def take_reboot() -> bool:
        wanted, flags["reboot"] = flags["reboot"], False
        return wanted

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_reboot)
    announce(where)
    try:
        serve(controller, transport, lambda: flags["stop"], take_reboot)
    finally:
        transport.close()
    return 0
