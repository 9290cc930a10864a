"""The exam directory's ``exam.json``: the exam's state and journal, the source of truth for resume
(docs/exam.md; the layout is /work's exam directory contract: runs/NN-NAME, dicom/NN-NAME, report.html).

It is rewritten whole after every step (a temporary file, fsync, ``os.replace``): a process killed at
any moment leaves either the previous or the next version, never half of one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from scanctl.errors import ScanctlError

FORMAT = 1
FILE = "exam.json"
STATES = ("open", "closed", "discontinued")
STEP_STATUSES = ("pending", "running", "done", "failed", "refused", "skipped", "interrupted")


class ExamError(ScanctlError):
    """An exam operation that cannot be done (a closed exam, a step that is not pending, an exam directory
    that is not one, a weight missing); the message names the exam and the step."""


def now() -> str:
    """The time now, ISO 8601 UTC (seconds)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write(exam_dir: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as ``exam_dir/exam.json`` atomically (temporary file, fsync, rename)."""
    path = exam_dir / FILE
    tmp = exam_dir / f".{FILE}.tmp"
    data = json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(exam_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)


def read(exam_dir: Path) -> dict[str, Any]:
    """``exam_dir/exam.json``, checked for the keys and values the contract names. Raises ExamError."""
    path = exam_dir / FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExamError(f"{exam_dir}: not an exam directory (no {FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExamError(f"{path}: cannot read the exam: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ExamError(f"{path}: not an exam file of format {FORMAT}")
    missing = [k for k in ("exam_id", "state", "order", "card", "steps", "journal", "mpps", "opened", "closed")
               if k not in doc]
    if missing:
        raise ExamError(f"{path}: key {missing[0]!r} is missing")
    if doc["state"] not in STATES:
        raise ExamError(f"{path}: state {doc['state']!r} is not one of {', '.join(STATES)}")
    for step in doc["steps"]:
        if not isinstance(step, dict) or step.get("status") not in STEP_STATUSES:
            raise ExamError(f"{path}: step {step!r} has no valid status")
    return doc
