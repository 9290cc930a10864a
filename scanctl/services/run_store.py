"""The control server's own copy of every run: raw data, sequence and report on the server's disk.

A console streams a run's data over ZeroMQ and writes its own files; if it dies mid-scan (killed, its
machine lost) the scan goes on, and without a copy on the server the rest of it would be stored nowhere.
So the server's scan session (:mod:`scanctl.engine.session`) writes each run into ``DATA_DIR/<run id>/`` —
``sequence.seq`` when it starts, ``raw.h5`` (ISMRMRD) as the data arrive, ``report.json`` when it ends —
and a console fetches them later by run id (the ``runs`` and ``fetch`` commands; ``scanctl fetch``).
Files are created exclusively: nothing already stored is ever overwritten.

The default directory is ``$SCANCTL_DATA_DIR``, else ``$XDG_DATA_HOME/scanctl/runs``, else
``~/.local/share/scanctl/runs``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

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


class RunStore:
    """Runs kept under ``root`` (created when the first run starts)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_data_dir()

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
