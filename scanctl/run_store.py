"""The control server's own copy of every run: raw data, sequence and report on the server's disk.

A console streams a run's data over ZeroMQ and writes its own files; if it dies mid-scan (killed, its
machine lost) the scan goes on, and without a copy on the server the rest of it would be stored nowhere.
So the server writes each run into ``DATA_DIR/<run id>/`` — ``sequence.seq`` when it starts, ``raw.h5``
(ISMRMRD) as the data arrive, ``report.json`` when it ends — and a console fetches them later by run id
(the ``runs`` and ``fetch`` commands; ``scanctl fetch``). Files are created exclusively: nothing already
stored is ever overwritten.

The default directory is ``$SCANCTL_DATA_DIR``, else ``$XDG_DATA_HOME/scanctl/runs``, else
``~/.local/share/scanctl/runs``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from scanctl.interfaces import Acquisitions
from scanctl.rawdata import RawDataWriter, RawHeader
from scanctl.sequence.model import Sequence

log = logging.getLogger(__name__)

#: The files a stored run has; nothing else in a run's folder can be fetched.
FILES = ("raw.h5", "sequence.seq", "report.json")
#: The most one ``fetch`` returns (bytes); a larger file is fetched in pieces.
MAX_CHUNK_BYTES = 8 << 20
_RUN_ID = re.compile(r"run-\d{8}-\d{6}-[0-9a-f]{6}")


def default_data_dir() -> Path:
    """Where a control server keeps its runs unless told otherwise (see the module docstring)."""
    if os.environ.get("SCANCTL_DATA_DIR"):
        return Path(os.environ["SCANCTL_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "scanctl" / "runs"


def check_run_id(run_id: Any) -> str:
    """``run_id`` if it is a run id the server makes (so never a path); raises ValueError otherwise."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"{run_id!r} is not a run id (run-YYYYMMDD-HHMMSS-xxxxxx)")
    return run_id


class StoredRun:
    """One run being written: its raw data as it arrives; errors writing are kept, never raised, so a full
    disk on the server never stops a scan (the console's stream goes on)."""

    def __init__(self, folder: Path, header: RawHeader, seq: Sequence, sequence_text: str) -> None:
        self.folder = folder
        self.error: str | None = None
        self.acquisitions = 0
        self._writer: RawDataWriter | None = None
        try:
            folder.mkdir(parents=True, exist_ok=False)  # a new folder for every run: nothing overwritten
            with open(folder / "sequence.seq", "x", encoding="utf-8") as f:
                f.write(sequence_text)
            self._writer = RawDataWriter.open(folder / "raw.h5", header, seq=seq)
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = f"{self.folder}: {type(exc).__name__}: {exc}"
            log.error("run store: %s (the scan goes on; its data still stream to the console)", self.error)

    def extend(self, batch: Acquisitions) -> None:
        if self._writer is None or self.error is not None:
            return
        try:
            self._writer.extend(batch)
            self.acquisitions += len(batch)
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def finish(self, report: dict[str, Any]) -> None:
        """Close the raw data and write the report (with where the run is stored)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except (OSError, ValueError) as exc:
                self._fail(exc)
        try:
            with open(self.folder / "report.json", "x", encoding="utf-8") as f:
                json.dump(report, f, indent=2, default=str)
                f.write("\n")
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def info(self) -> dict[str, Any]:
        """What the run's report says of its copy on the server."""
        return {"dir": str(self.folder), "acquisitions": self.acquisitions, "error": self.error}


class RunStore:
    """Runs kept under ``root`` (created when the first run starts)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_data_dir()

    def start(self, run_id: str, header: RawHeader, seq: Sequence, sequence_text: str) -> StoredRun:
        """A new run's copy (a store that cannot write loses only its own copy: see :class:`StoredRun`)."""
        return StoredRun(self.root / check_run_id(run_id), header, seq, sequence_text)

    def runs(self) -> list[dict[str, Any]]:
        """The runs kept, oldest first: id and the size of each file."""
        if not self.root.is_dir():
            return []
        out = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and _RUN_ID.fullmatch(p.name)):
            files = {name: (folder / name).stat().st_size for name in FILES if (folder / name).is_file()}
            out.append({"run": folder.name, "files": files})
        return out

    def read(self, run_id: Any, name: Any, offset: Any, length: Any) -> tuple[bytes, int]:
        """Up to ``length`` bytes of a stored run's file from ``offset``, and the file's size. Raises
        ValueError for a bad run id, file name or range, FileNotFoundError for a run or file not kept."""
        run = check_run_id(run_id)
        if name not in FILES:
            raise ValueError(f"{name!r} is not a file of a run ({', '.join(FILES)})")
        if type(offset) is not int or offset < 0 or type(length) is not int or not 0 < length <= MAX_CHUNK_BYTES:
            raise ValueError(f"'offset' must be an integer >= 0 and 'length' one of 1..{MAX_CHUNK_BYTES}")
        path = self.root / run / name
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            return f.read(length), size
