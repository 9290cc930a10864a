"""The patient-table controller's serial line protocol: framing, checksum and grammar
(documented in docs/table-serial.md).

This is a contract between the serial driver (:mod:`scanctl.drivers.serial_table`) and the controller
simulator (:mod:`scanctl.simulators.table_controller`), so it lives in the core beside the other
contracts; each side keeps its own behaviour (retries, state) and only shares the line codec.

A line is ``KIND PAYLOAD * CRC CR LF``: ``KIND`` is ``>`` (host command), ``<`` (controller reply) or
``!`` (controller event); ``CRC`` is four upper-case hex digits of CRC-16/CCITT-FALSE over ``KIND`` and
``PAYLOAD``. Payload bytes are printable ASCII except the four framing characters ``<>!*``, so a start
character in the middle of a line always means the line before it was cut: the splitter starts afresh
there (resynchronisation), as it does at every LF.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

from scanctl.errors import WireProtocolError

COMMAND, REPLY, EVENT = ">", "<", "!"
STARTS = frozenset(b"<>!")
MAX_LINE = 160  # bytes from the start character to the CRC, both included (without CR LF)
SEQ_MAX = 9999  # sequence numbers run 1..SEQ_MAX and wrap to 1

_FORBIDDEN = frozenset("<>!*")
_SEQ = re.compile(r"[1-9][0-9]{0,3}")
_WORD = re.compile(r"[A-Z][A-Z0-9_]{0,15}")
_KEY = re.compile(r"[A-Z][A-Z0-9_]{0,15}")
_VALUE = re.compile(r"[-+.A-Za-z0-9_:/]{1,40}")
_NUMBER = re.compile(r"-?[0-9]{1,6}(\.[0-9]{1,6})?")
_CRC = re.compile(rb"\*([0-9A-F]{4})")

# Error codes (``<SEQ ERR CODE NAME``): the table of docs/table-serial.md.
ERRORS = {
    "E01": "SYNTAX",  # unknown verb, wrong number or form of arguments
    "E03": "NOT_HOMED",  # a move before homing
    "E04": "BUSY",  # a motion command while moving
    "E05": "FAULT",  # a motion command while a fault is latched
    "E10": "LIMIT",  # target outside the travel limits
    "E11": "SPEED",  # speed outside 0 < v <= VMAX
    "E12": "CANNOT_CLEAR",  # CLR while the fault's cause is still there
    "E13": "RANGE",  # a setting outside its range (WD)
}
# Fault codes (``ST`` reply ``CODE=``, ``!FAULT`` and ``!LIMIT`` events).
FAULTS = {
    "F00": "NONE",
    "F01": "STALL",  # the motor stalled: position lost
    "F02": "LIMIT_SWITCH",  # an end-of-travel switch was hit
    "F03": "DRIVE",  # the motor drive reported an error
    "F04": "HOST_LOST",  # the host-link watchdog expired during a move: the axis was stopped (position kept)
}

# The host-link watchdog (``WD`` command, seconds): while the axis moves, the controller stops it and latches
# F04 when no valid command has come from the host for this long. Power-up value, and the range a host may set.
WATCHDOG_POWER_UP_S = 1.0
WATCHDOG_MIN_S = 0.1
WATCHDOG_MAX_S = 10.0


class FrameError(WireProtocolError):
    """A line that is not a valid frame (bad characters, checksum, grammar); it is discarded."""


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF): ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True)
class Line:
    """One decoded frame.

    ``kind`` is ``>``, ``<`` or ``!``; ``seq`` the sequence number (``None`` for events); ``word`` the verb
    (commands), ``OK``/``ERR`` (replies) or the event name; ``args`` the positional arguments; ``fields``
    the ``KEY=VALUE`` arguments (``MSG``, free text, is always last and runs to the end of the payload).
    """

    kind: str
    seq: int | None
    word: str
    args: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)

    def payload(self) -> str:
        head = self.kind + ("" if self.seq is None else f"{self.seq} ") + self.word
        parts = [head, *self.args]
        parts += [f"{k}={v}" for k, v in self.fields.items() if k != "MSG"]
        if "MSG" in self.fields:
            parts.append(f"MSG={self.fields['MSG']}")
        return " ".join(parts)

    def encode(self) -> bytes:
        """The line on the wire, CRC and CR LF included. Raises FrameError if it cannot be framed."""
        return frame(self.payload())

    def number(self, key: str) -> float:
        """Field ``key`` as a number (plain decimal only: no exponent, inf or nan). Raises FrameError."""
        text = self.fields.get(key)
        if text is None or not _NUMBER.fullmatch(text):
            raise FrameError(f"field {key}={text!r} is not a number")
        return float(text)

    def integer(self, key: str) -> int:
        text = self.fields.get(key)
        if text is None or not text.isdigit() or len(text) > 9:
            raise FrameError(f"field {key}={text!r} is not a whole number")
        return int(text)


def frame(payload: str) -> bytes:
    """``payload`` (start character included) framed with its CRC and CR LF. Raises FrameError."""
    try:
        data = payload.encode("ascii")
    except UnicodeEncodeError as exc:
        raise FrameError(f"cannot frame {payload!r}: not ASCII") from exc
    if not data or data[0] not in STARTS or any(c in _FORBIDDEN for c in payload[1:]) \
            or not all(32 <= b < 127 for b in data) or len(data) + 5 > MAX_LINE:
        raise FrameError(f"cannot frame {payload!r}")
    return data + b"*%04X\r\n" % crc16(data)


def clean_text(text: str, limit: int = 80) -> str:
    """Free text made safe for a ``MSG=`` field: printable ASCII without framing characters."""
    kept = "".join(c if 32 <= ord(c) < 127 and c not in _FORBIDDEN else "?" for c in text)
    return kept[:limit]


def fmt(value: float) -> str:
    """A number as the protocol writes it: fixed point, three decimals (µm resolution)."""
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def decode(raw: bytes) -> Line:
    """Decode one line as the splitter gives it (start character first, no CR LF). Raises FrameError."""
    if len(raw) < 6 or len(raw) > MAX_LINE:
        raise FrameError(f"line of {len(raw)} bytes")
    body, tail = raw[:-5], raw[-5:]
    match = _CRC.fullmatch(tail)
    if match is None:
        raise FrameError("no *CRC at the end")
    if not all(32 <= b < 127 for b in body) or any(b in b"<>!*" for b in body[1:]):
        raise FrameError("bytes outside the protocol's character set")
    if int(match.group(1), 16) != crc16(body):
        raise FrameError("checksum mismatch")
    text = body.decode("ascii")
    kind, tokens = text[0], text[1:].split(" ")
    seq = None
    if kind != EVENT:
        if not tokens or not _SEQ.fullmatch(tokens[0]):
            raise FrameError("bad sequence number")
        seq = int(tokens.pop(0))
    if not tokens or not _WORD.fullmatch(tokens[0]):
        raise FrameError("bad verb")
    word = tokens.pop(0)
    args: list[str] = []
    fields: dict[str, str] = {}
    for i, token in enumerate(tokens):
        key, sep, value = token.partition("=")
        if sep and key == "MSG":
            fields["MSG"] = " ".join([value, *tokens[i + 1:]])
            break
        if sep:
            if not _KEY.fullmatch(key) or not _VALUE.fullmatch(value) or key in fields:
                raise FrameError(f"bad field {token!r}")
            fields[key] = value
        elif fields or not _VALUE.fullmatch(token):
            raise FrameError(f"bad argument {token!r}")
        else:
            args.append(token)
    return Line(kind, seq, word, tuple(args), fields)


class LineSplitter:
    """Cut a byte stream into candidate lines, resynchronising after noise, cut and overlong lines.

    A line starts at a start character (``<``, ``>`` or ``!``) and ends at LF (one CR before the LF is
    dropped). Bytes outside a line are noise; a start character inside a line cuts it (the partial line
    is discarded); a line longer than :data:`MAX_LINE` is discarded up to its end. ``discarded`` counts
    the lines and fragments thrown away.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.discarded = 0
        self._buf = bytearray()
        self._overlong = False

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        for byte in data:
            if byte in STARTS:
                if self._buf or self._overlong:
                    self.discarded += 1
                self._buf = bytearray((byte,))
                self._overlong = False
            elif byte == 0x0A:
                if self._buf and not self._overlong:
                    line = bytes(self._buf[:-1] if self._buf.endswith(b"\r") else self._buf)
                    lines.append(line)
                elif self._overlong:
                    self.discarded += 1
                self._buf = bytearray()
                self._overlong = False
            elif self._buf:
                self._buf.append(byte)
                if len(self._buf) > self.max_line + 1:  # + 1: a CR may still come before the LF
                    self._buf = bytearray()
                    self._overlong = True
        return lines

    def clear(self) -> None:
        self._buf = bytearray()
        self._overlong = False
