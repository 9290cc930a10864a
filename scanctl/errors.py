"""The one error tree of scanctl.

Every error the project raises derives from :class:`ScanctlError`. Errors raised at a boundary
(file, socket, serial line) are raised ``from`` the foreign error so the cause is never lost.
"""

from __future__ import annotations

import os


class ScanctlError(Exception):
    """Root of every error scanctl raises on purpose."""


class ConfigError(ScanctlError):
    """A system profile, protocol, URL or option is wrong."""


class SequenceFormatError(ScanctlError):
    """A sequence file cannot be read: names the file, the line and what is wrong.

    ``line`` is 1-based; ``None`` when the problem concerns the whole file.
    """

    def __init__(self, path: str | os.PathLike[str] | None, line: int | None, message: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.message = message
        where = self.path or "<sequence>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class SignatureError(SequenceFormatError):
    """The file's MD5 signature does not match its content."""


class SafetyLimitError(ScanctlError):
    """A sequence or command would break a scanner or patient limit."""


class DriverError(ScanctlError):
    """A subsystem failed or refused a command; the message names the subsystem and its state."""


class SubsystemFault(DriverError):
    """A subsystem reported a fault (amplifier trip, over-temperature, ...) while running."""


class DriverTimeoutError(DriverError, TimeoutError):
    """A subsystem did not answer or finish within the time allowed (a ``TimeoutError`` too, as the driver
    interfaces promise)."""


class BufferFullError(DriverError):
    """A program was loaded further ahead of the playhead than the subsystem's buffer holds."""


class InvalidTransitionError(ScanctlError):
    """A command is not allowed in the scanner's current state (the message names the state)."""


class InterlockError(ScanctlError):
    """An interlock (emergency stop, door, ...) forbids the command."""


class WireProtocolError(ScanctlError):
    """A message or frame on a wire (ZeroMQ, serial) is malformed or of an unsupported version."""


class DicomError(ScanctlError):
    """A run cannot be turned into DICOM, an order is malformed, or a DICOM file cannot be written."""
