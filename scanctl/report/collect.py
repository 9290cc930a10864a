"""What a report shows, read from an exam directory (docs/report.md, the exam directory contract) or a
single run directory: plain data, no HTML. Every file is untrusted: a value of the wrong type is shown as
missing, never trusted as markup (the renderer escapes every text) and never a traceback.

Raises :class:`ReportError` (a :class:`~scanctl.errors.ScanctlError`) only for a directory that is neither
an exam nor a run directory, or an ``exam.json`` that is not a JSON object.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.errors import ScanctlError

log = logging.getLogger(__name__)

#: A series with more images than this shows its middle image as the key image, else a mosaic of all.
MOSAIC_MAX = 16


class ReportError(ScanctlError):
    """A directory that is neither an exam directory (``exam.json``) nor a run directory (``report.json``
    or ``image.npy``), or an ``exam.json`` that cannot be read as a JSON object."""


@dataclass(frozen=True)
class SeriesQuality:
    """The image-quality measures of a series (scanctl.data.quality): median SNR and the worst N/2 ghosting
    ratio over its images, and every flag with the images (1-based) it was raised for. ``error``: why the
    series could not be measured at all (then it is flagged too)."""

    snr: float | None = None
    ghosting_ratio: float | None = None
    flags: tuple[str, ...] = ()
    images: int = 0
    error: str | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.flags) or self.error is not None


@dataclass(frozen=True)
class RunView:
    """One run (one protocol step) as the report shows it."""

    title: str  # e.g. "02 gre_2d"
    run_dir: Path | None
    report: Mapping[str, Any]  # the run's report.json (empty when missing or unreadable)
    step: Mapping[str, Any] = field(default_factory=dict)  # the exam.json step (empty for a lone run)
    key_png: bytes | None = None  # the key image (middle image or a mosaic), 8-bit grey PNG
    key_caption: str = ""
    quality: SeriesQuality | None = None
    problems: tuple[str, ...] = ()  # files missing or unreadable, said in the report


@dataclass(frozen=True)
class ExamView:
    """An exam (or a lone run, ``exam`` empty) as the report shows it."""

    source: Path
    exam: Mapping[str, Any]
    runs: list[RunView]


def load_exam(exam_dir: str | os.PathLike[str]) -> ExamView:
    """The exam in ``exam_dir`` (``exam.json`` and its ``runs/``). Raises ReportError."""
    root = Path(exam_dir)
    exam = _json_object(root / "exam.json", required=True)
    runs = []
    steps = exam.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            continue
        name = _text(step.get("protocol")) or f"step {i + 1}"
        run_rel = step.get("run_dir")
        run_dir = _inside(root, run_rel) if isinstance(run_rel, str) and run_rel else None
        title = f"{int(step['n']):02d} {name}" if isinstance(step.get("n"), int) else name
        if run_dir is not None:
            runs.append(load_run(run_dir, title=title, step=step))
            continue
        why = (f"run_dir {run_rel!r} is outside the exam directory: not read",) if run_rel else ()
        runs.append(RunView(title=title, run_dir=None, report={}, step=step, problems=why))
    return ExamView(root, exam, runs)


def load_run(run_dir: str | os.PathLike[str], *, title: str | None = None,
             step: Mapping[str, Any] | None = None) -> RunView:
    """One run directory: its report.json, key image and image quality. Missing files are noted in
    ``problems`` (an interrupted run still gets a report), not raised."""
    run = Path(run_dir)
    problems: list[str] = []
    report = _json_object(run / "report.json", required=False, problems=problems)
    images = _images(run / "image.npy", problems)
    key, caption, quality = None, "", None
    if images is not None:
        key, caption = _key_image(images)
        quality = measure_series(images, channels=_channels(run / "image.json"))
    name = title or _text(_dig(report, "protocol", "name")) or run.name
    return RunView(title=name, run_dir=run, report=report, step=step or {}, key_png=key, key_caption=caption,
                   quality=quality, problems=tuple(problems))


def measure_series(images: npt.NDArray[np.floating[Any]], *, channels: int = 1) -> SeriesQuality:
    """SNR (median over the images), N/2 ghosting (worst) and flags of a stack ``(n, ny, nx)``, by
    :func:`scanctl.data.quality.measure`; an image that cannot be measured is a flag, not an error."""
    from scanctl.data.quality import QualityError, measure

    snrs, ghosts, flags = [], [], []
    for i, image in enumerate(images, start=1):
        where = f"image {i}" if len(images) > 1 else "image"
        try:
            q = measure(image, channels=channels)
        except QualityError as exc:
            flags.append(f"{where}: cannot be measured: {exc}")
            continue
        if math.isfinite(q.snr):
            snrs.append(q.snr)
        ghosts.append(q.ghosting_ratio)
        flags.extend(f"{where}: {flag}" for flag in q.flags)
    return SeriesQuality(snr=float(np.median(snrs)) if snrs else None,
                         ghosting_ratio=max(ghosts) if ghosts else None, flags=tuple(flags), images=len(images))


def _key_image(images: npt.NDArray[np.floating[Any]]) -> tuple[bytes | None, str]:
    from scanctl.data.recon import png_bytes

    n = len(images)
    try:
        if n == 1:
            return png_bytes(images[0]), "the image"
        if n <= MOSAIC_MAX:
            return png_bytes(images), f"all {n} images (mosaic, in stored order)"
        return png_bytes(images[n // 2]), f"image {n // 2 + 1} of {n} (the middle one)"
    except ScanctlError as exc:  # e.g. an image that is all NaN: said, not drawn
        log.warning("report: no key image: %s", exc)
        return None, f"no key image: {exc}"


def _images(path: Path, problems: list[str]) -> npt.NDArray[np.float64] | None:
    if not path.is_file():
        problems.append(f"{path.name}: missing (no images)")
        return None
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name}: cannot be read ({exc})")
        return None
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or 0 in images.shape or not np.issubdtype(images.dtype, np.number):
        problems.append(f"{path.name}: not a stack of images (shape {images.shape}, {images.dtype})")
        return None
    return np.abs(images.astype(np.float64))


def _channels(path: Path) -> int:
    """The coil count behind an RSS image (image.json, images.md), for the noise statistics; 1 otherwise."""
    info = _json_object(path, required=False)
    first = (info.get("images") or [None])[0] if isinstance(info.get("images"), list) else None
    if isinstance(first, dict) and first.get("combine") == "rss" and isinstance(first.get("channels"), int):
        return max(1, int(first["channels"]))
    return 1


def _json_object(path: Path, *, required: bool, problems: list[str] | None = None) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ReportError(f"{path}: not found (not an exam directory)") from None
        if problems is not None:
            problems.append(f"{path.name}: missing")
        return {}
    except (OSError, ValueError) as exc:
        if required:
            raise ReportError(f"{path}: cannot be read as JSON ({exc})") from None
        if problems is not None:
            problems.append(f"{path.name}: cannot be read ({exc})")
        return {}
    if not isinstance(data, dict):
        if required:
            raise ReportError(f"{path}: not a JSON object")
        if problems is not None:
            problems.append(f"{path.name}: not a JSON object")
        return {}
    return data


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it stays inside ``root`` (exam.json is untrusted: no ``../../etc``), else None."""
    path = (root / rel).resolve()
    return path if path.is_relative_to(root.resolve()) else None


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def is_exam_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / "exam.json").is_file()


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return any((p / name).is_file() for name in ("report.json", "image.npy", "raw.h5"))


__all__ = ["ExamView", "ReportError", "RunView", "SeriesQuality", "is_exam_dir", "is_run_dir", "load_exam",
           "load_run", "measure_series"]


