"""The exam report: one self-contained HTML page per exam (or per run) with the patient and order, each
protocol with its parameters, key images, the SAR/PNS/heating prediction against the limits, the state
journal, timings and image-quality measures (docs/report.md).

``write_exam_report(exam_dir)`` writes ``exam_dir/report.html`` from ``exam.json`` and its ``runs/``;
``write_run_report(run_dir)`` does the same for one run directory. ``scanctl report DIR`` is the command.
Errors: :class:`ReportError` (a :class:`~scanctl.errors.ScanctlError`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from scanctl.report.collect import ExamView, ReportError, is_exam_dir, is_run_dir, load_exam, load_run
from scanctl.report.html import render

log = logging.getLogger(__name__)


def write_exam_report(exam_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of the exam in ``exam_dir`` to ``out`` (default ``exam_dir/report.html``, replaced
    atomically if there: the report is regenerated as the exam goes on). Returns its path. Raises
    ReportError (no or unreadable exam.json, the file cannot be written)."""
    view = load_exam(exam_dir)
    return _write(render(view), Path(out) if out is not None else Path(exam_dir) / "report.html")


def write_run_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of the single run in ``run_dir`` to ``out`` (default ``run_dir/report.html``).
    Raises ReportError (not a run directory, the file cannot be written)."""
    run = Path(run_dir)
    if not is_run_dir(run):
        raise ReportError(f"{run}: not a run directory (no report.json, image.npy or raw.h5) nor an exam directory")
    view = ExamView(source=run, exam={}, runs=[load_run(run)])
    return _write(render(view), Path(out) if out is not None else run / "report.html")


def write_report(directory: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """The exam report if ``directory`` holds ``exam.json``, else the run report."""
    if is_exam_dir(directory):
        return write_exam_report(directory, out)
    return write_run_report(directory, out)


def _write(page: str, path: Path) -> Path:
    """Write ``page`` to ``path`` through a temporary file in the same folder and os.replace: a reader never
    sees half a report."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=path.parent)
    except OSError as exc:
        raise ReportError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ReportError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    log.info("report: wrote %s (%d bytes)", path, len(page.encode()))
    return path


__all__ = ["ReportError", "write_exam_report", "write_report", "write_run_report"]
