"""One framed, checksummed request/reply line to the patient-table controller (docs/table-serial.md): a
command is sent with its sequence number and tried again, as the same command, until a valid reply to that
number comes or the attempts run out; events are collected on the way; anything else is discarded and the
reader resynchronises. Used by :class:`scanctl.drivers.serial_table.SerialTable`."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from scanctl.errors import DriverError, DriverTimeoutError
from scanctl.transport.table_protocol import COMMAND, EVENT, REPLY, SEQ_MAX, FrameError, Line, LineSplitter, decode

log = logging.getLogger(__name__)


class SerialLink:
    """Commands and replies on one serial line: framing, sequence numbers, retries, resynchronisation.

    ``port`` is an open pyserial port (anything with ``read(n)``, ``write(data)`` and ``in_waiting``, whose
    reads return within a short timeout). Unsolicited events go to ``on_event`` as they are read.
    """

    def __init__(self, port: Any, name: str, *, timeout_s: float, retries: int,
                 on_event: Any = None) -> None:
        self.port = port
        self.name = name
        self.timeout_s = timeout_s
        self.retries = retries
        self.on_event = on_event
        self.counts = {"retries": 0, "discarded": 0, "stale": 0}
        self.last_write_s = time.monotonic()  # when a command last went out (the heartbeat fills the gaps)
        self._splitter = LineSplitter()
        self._lines: list[bytes] = []
        self._seq = random.randint(1, SEQ_MAX)  # a fresh start, unlike the controller's last remembered one

    def request(self, verb: str, *args: str, retries: int | None = None, timeout_s: float | None = None) -> Line:
        """Send a command and return its reply (``OK`` or ``ERR``), retrying with the same sequence number.
        Raises DriverTimeoutError (no valid reply) or DriverError (the port failed)."""
        self._seq = self._seq % SEQ_MAX + 1
        data = Line(COMMAND, self._seq, verb, args).encode()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        attempts = 1 + (self.retries if retries is None else retries)
        for attempt in range(attempts):
            if attempt:
                self.counts["retries"] += 1
                log.info("%s: no reply to %s #%d, retrying (%d/%d)", self.name, verb, self._seq, attempt, attempts - 1)
            self._write(data)
            reply = self._await(self._seq, time.monotonic() + timeout)
            if reply is not None:
                return reply
        raise DriverTimeoutError(f"table: no valid reply to {verb} from the controller on {self.name} "
                                 f"({attempts} attempts, {timeout:g} s each)")

    def pump(self) -> None:
        """Read whatever has arrived (events) without waiting for more (bounded by ``timeout_s`` even
        when the line never stops babbling)."""
        self._await(None, time.monotonic() + self.timeout_s)

    def _await(self, seq: int | None, deadline: float) -> Line | None:
        """The reply to ``seq`` if one comes before ``deadline``; ``seq=None``: just take in what is there."""
        while True:
            reply = self._take(seq)
            if reply is not None:
                return reply
            if time.monotonic() >= deadline or (seq is None and not self._in_waiting()):
                return None
            self._lines += self._splitter.feed(self._read())

    def _take(self, seq: int | None) -> Line | None:
        """Go through the lines read so far: events to ``on_event``, the reply to ``seq`` returned."""
        while self._lines:
            raw = self._lines.pop(0)
            try:
                line = decode(raw)
            except FrameError as exc:
                self.counts["discarded"] += 1
                log.debug("%s: discarded %r: %s", self.name, raw, exc)
                continue
            if line.kind == EVENT:
                if self.on_event is not None:
                    self.on_event(line)
            elif line.kind == REPLY and line.seq == seq and line.word in ("OK", "ERR"):
                return line
            elif line.kind == REPLY:
                self.counts["stale"] += 1  # a late or repeated answer to an earlier command
            # COMMAND lines are our own, echoed (loop://, a half-duplex bus): not for us.
        return None

    def discarded(self) -> int:
        return self.counts["discarded"] + self._splitter.discarded

    def _in_waiting(self) -> int:
        try:
            return int(self.port.in_waiting)
        except Exception as exc:  # noqa: BLE001 - pyserial raises SerialException, OSError, ValueError...
            raise DriverError(f"table: serial port {self.name} failed: {exc}") from exc

    def _read(self) -> bytes:
        try:
            waiting = int(self.port.in_waiting)
            return bytes(self.port.read(min(max(1, waiting), 4096)))
        except Exception as exc:  # noqa: BLE001 - the boundary: any port failure is one typed error
            raise DriverError(f"table: serial port {self.name} failed: {exc}") from exc

    def _write(self, data: bytes) -> None:
        try:
            self.last_write_s = time.monotonic()
            self.port.write(data)
            self.port.flush()
        except Exception as exc:  # noqa: BLE001 - the boundary: any port failure is one typed error
            raise DriverError(f"table: serial port {self.name} failed: {exc}") from exc
