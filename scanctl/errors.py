"""The one error tree of scanctl.

Every error the project raises derives from :class:`ScanctlError`. Errors raised at a boundary
(file, socket, serial line) are raised ``from`` the foreign error so the cause is never lost.
"""

from __future__ import annotations

from pathlib import Path


class ScanctlError(Exception):
    """Root of every error scanctl raises on purpose."""


class ConfigError(ScanctlError):
    """A system profile, protocol, URL or option is wrong."""


class SequenceFormatError(ScanctlError):
    """A sequence file cannot be read: names the file, the line and what is wrong.

    ``line`` is 1-based; ``None`` when the problem concerns the whole file.
    """

    def __init__(self, path: str | Path | None, line: int | None, message: str) -> None:
        self.path = None if path is None else str(path)
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
