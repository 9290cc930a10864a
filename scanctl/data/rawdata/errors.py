"""The raw-data error, and a short reason for an I/O failure (HDF5's error stack is many lines long)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from scanctl.errors import ScanctlError, SequenceFormatError


class RawDataError(ScanctlError):
    """A raw-data file cannot be written or read; the message names the file."""

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path or '<raw data>'}: {message}")


_ERRNO = re.compile(r"errno = (\d+)")


def reason(exc: BaseException) -> str:
    """What went wrong, in a few words: the system's message for the errno HDF5 reports ("No space left on
    device") rather than its multi-line error stack, else the first line of the error."""
    number = getattr(exc, "errno", None)
    if not isinstance(number, int) or number <= 0:
        found = _ERRNO.search(str(exc))
        number = int(found.group(1)) if found else None
    if number:
        return os.strerror(number)
    first = str(exc).strip().splitlines()
    return first[0] if first else type(exc).__name__



class SequenceGeometryError(SequenceFormatError):
    """A sequence's geometry contradicts itself (an ADC rotated otherwise than its excitation, a slice
    offset that does not fit the slice gradient, a FOV definition the k-space steps contradict): bad input,
    as a malformed file is (the CLI exits 2). The message names the block (its Pulseq id) or the definition."""

    def __init__(self, block_id: int | None, message: str) -> None:
        self.block_id = block_id
        self.path, self.line, self.message = None, None, message
        where = f"block {block_id}: " if block_id is not None else ""
        ScanctlError.__init__(self, f"sequence geometry: {where}{message}")
