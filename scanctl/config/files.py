"""Reading the files a user or a console names (protocols, profiles, Pulseq files, phantoms), bounded.

A path from outside may name anything: a FIFO with no writer (an ordinary ``open`` waits forever), a
device such as ``/dev/zero`` (read until memory runs out), a directory, or a file far larger than any
input of its kind. :func:`read_bounded` opens without blocking, reads only regular files, and never more
than the bound; :func:`require_regular` does the check for readers that open the file themselves.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    """What a file of ``mode`` is, when it is not a regular file; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def require_regular(path: str | os.PathLike[str], max_bytes: int) -> int:
    """The size of ``path`` (bytes). Raises OSError-free ``ValueError`` with the reason when it is not a
    regular file or is larger than ``max_bytes``, and ``OSError`` when it cannot be looked at."""
    info = os.stat(path)
    kind = _not_regular(info.st_mode)
    if kind is not None:
        raise ValueError(f"is {kind}, not a regular file")
    if info.st_size > max_bytes:
        raise ValueError(f"is {info.st_size} bytes, more than the {max_bytes} accepted")
    return info.st_size


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Raises ``ValueError`` (saying why) for a FIFO, device, directory or socket, or a file over the bound
    (checked on the open file, and again while reading: a file growing as it is read is caught too), and
    ``OSError`` when it cannot be opened or read. Never blocks on a FIFO."""
    fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)  # the file opened, not the name (which could be swapped in between)
        kind = _not_regular(info.st_mode)
        if kind is not None:
            raise ValueError(f"is {kind}, not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"is {info.st_size} bytes, more than the {max_bytes} accepted")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 24, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"is more than the {max_bytes} bytes accepted (it grew while being read)")
        return b"".join(chunks)
    finally:
        os.close(fd)
