"""Where a run's files go, and how they are written: never over earlier data.

A scan writes into a directory of its own, as a console gives every series a new number: the directory the
caller names (it must be new or empty), or by default the next numbered directory under a parent
(``out/gre_2d/001``, ``002``, …). Every file is created exclusively (``O_CREAT | O_EXCL``): a file already
at its path, or a symlink planted there, is refused, never truncated or written through. A file that cannot
be written raises :class:`OutputError` naming it and saying why (``No space left on device``).

The scan session (:mod:`scanctl.engine.session`) writes every run through here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from scanctl.errors import ScanctlError

#: Digits of a numbered run directory (more are used once 999 is passed).
SERIES_DIGITS = 3


class OutputError(ScanctlError):
    """An output file or directory cannot be written; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot write {self.path}: {reason}")


class OutputExistsError(OutputError):
    """The output directory named already holds files (a run never writes over earlier data)."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def claim_dir(path: str | os.PathLike[str]) -> Path:
    """The directory ``path`` for one run's files: created (with its parents) if missing, accepted if empty.
    Raises OutputExistsError if it holds anything (naming what), OutputError if it cannot be created or is
    not a directory."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        held = sorted(entry.name for entry in os.scandir(path))
    except FileExistsError:
        raise OutputError(path, "it exists and is not a directory") from None
    except OSError as exc:
        raise OutputError(path, _reason(exc)) from None
    if held:
        shown = ", ".join(held[:4]) + (", …" if len(held) > 4 else "")
        raise OutputExistsError(path, f"already holds {shown} (a run never writes over earlier data: choose a new "
                                      f"or empty directory, or leave out --out for a new numbered one)")
    return path


def new_series_dir(parent: str | os.PathLike[str]) -> Path:
    """A new directory under ``parent`` (created, with ``parent``, if missing) numbered one past the highest
    number there: ``001``, ``002``, … Numbers are never reused, and two runs starting at once get
    different ones (each directory is made with an exclusive ``mkdir``). Raises OutputError."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        taken = [int(entry.name) for entry in os.scandir(parent) if entry.name.isdigit()]
    except OSError as exc:
        raise OutputError(parent, _reason(exc)) from None
    number = max(taken, default=0) + 1
    while True:
        path = parent / f"{number:0{SERIES_DIGITS}d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # taken meanwhile (another run, or a file of that name): the next one
            number += 1
        except OSError as exc:
            raise OutputError(path, _reason(exc)) from None


def remove_if_empty(path: str | os.PathLike[str]) -> None:
    """Remove the directory ``path`` if nothing was written into it (a run refused as bad input leaves no
    empty run directory behind); anything else is left alone."""
    with contextlib.suppress(OSError):  # not empty, or gone: nothing to tidy
        os.rmdir(path)


@contextmanager
def created(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``path`` opened for writing as a new file (``xb``: refused if anything, a symlink too, is there).
    Raises OutputError naming it for any OSError while it is created, written or closed; a file left
    incomplete is removed (it is ours, and would pass for a whole one)."""
    try:
        fh = open(path, "xb")  # noqa: SIM115 - closed below, and removed if incomplete
    except OSError as exc:
        raise OutputError(path, _reason(exc)) from exc
    try:
        with fh:
            yield fh
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if isinstance(exc, OSError):
            raise OutputError(path, _reason(exc)) from exc
        raise


def write_new(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` into the new file ``path``; returns it. Raises OutputError (see :func:`created`)."""
    with created(path) as fh:
        fh.write(data)
    return Path(path)
