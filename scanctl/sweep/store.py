"""Where a sweep's points and table live: ``DIR/points/KEY/`` per point (``result.json``, ``image.npy`` and the
files asked for), written atomically as each point finishes — a directory built beside it and renamed into
place, so a point is there whole or not at all — and ``DIR/results.csv`` (and ``results.parquet`` where
pyarrow is installed), one row per point, rebuilt from the points.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from scanctl.data import quality
from scanctl.errors import ScanctlError
from scanctl.sweep.point import Task

log = logging.getLogger(__name__)

RESULT = "result.json"
#: The table's first columns; the axes follow, then outcome and figures.
HEAD = ("index", "key")
TAIL = ("outcome", "message", "wall_s", "cpu_s", "notes")


class SweepOutputError(ScanctlError):
    """The sweep's directory cannot be written."""


class PointStore:
    """The points of a sweep in ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.root = Path(out_dir)
        self.points = self.root / "points"
        try:
            self.points.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SweepOutputError(f"{self.points}: cannot create: {exc.strerror or exc}") from exc

    def load(self, key: str) -> dict[str, Any] | None:
        """The stored result of point ``key``, or None."""
        try:
            return dict(json.loads((self.points / key / RESULT).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def done(self, task: Task) -> dict[str, Any] | None:
        """The stored result of ``task`` if it is there with every file it keeps (a file asked for now but
        not kept then makes it missing), else None."""
        result = self.load(task.key)
        if result is None:
            return None
        made = set(result.get("outputs", []))
        if any(name in made and not (self.points / task.key / name).is_file() for name in task.keep):
            return None
        return result

    def save(self, task: Task, out: dict[str, Any]) -> None:
        """Store a finished point atomically: built in a hidden directory, then renamed into place."""
        final = self.points / task.key
        tmp = self.points / f".{task.key}.{os.getpid()}.tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name, data in out["files"].items():
                (tmp / name).write_bytes(data)
            (tmp / RESULT).write_text(json.dumps(out["result"], indent=1, default=_plain) + "\n", encoding="utf-8")
            if final.exists():  # a stale point (a file missing): replaced whole
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SweepOutputError(f"{final}: cannot write the point: {exc.strerror or exc}") from exc
        except BaseException:  # Ctrl-C while writing: no half point left behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def image(self, key: str) -> np.ndarray | None:
        try:
            return np.asarray(np.load(self.points / key / "image.npy"))
        except (OSError, ValueError):
            return None

    def rows(self, tasks: list[Task], axes: tuple[str, ...], reference: int | None) -> list[dict[str, Any]]:
        """One row per point: index, key, axis values, outcome, figures (NRMSE to the reference point's image
        where both have one of the same shape); a point not run yet is ``pending``."""
        ref_image = self.image(tasks[reference].key) if reference is not None else None
        rows = []
        for task in tasks:
            result = self.load(task.key)
            row: dict[str, Any] = {"index": task.index, "key": task.key}
            row.update({a: task.values.get(a) for a in axes})
            if result is None:
                row.update(outcome="pending", message="", wall_s=None, cpu_s=None, notes="")
                rows.append(row)
                continue
            row.update(outcome=result["outcome"], message=result["message"], wall_s=result.get("wall_s"),
                       cpu_s=result.get("cpu_s"), notes="; ".join(result.get("notes", [])))
            row.update(result.get("figures", {}))
            if ref_image is not None:
                row["nrmse"] = self._nrmse(task.key, ref_image)
            rows.append(row)
        return rows

    def _nrmse(self, key: str, ref: np.ndarray) -> float | None:
        img = self.image(key)
        if img is None or img.shape != ref.shape:
            return None
        try:
            return quality.nrmse(np.abs(_middle(img)), np.abs(_middle(ref)))
        except quality.QualityError:
            return None

    def table_unchanged(self, rows: list[dict[str, Any]], axes: tuple[str, ...]) -> bool:
        """True when ``results.csv`` already holds exactly these rows."""
        try:
            return (self.root / "results.csv").read_bytes() == _csv(rows, axes)
        except OSError:
            return False

    def write_table(self, rows: list[dict[str, Any]], axes: tuple[str, ...]) -> list[Path]:
        """``results.csv`` (and ``results.parquet`` with pyarrow), each replaced atomically."""
        columns = _columns(rows, axes)
        written = [self._replace("results.csv", _csv(rows, axes))]
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return written
        table = pa.table({c: _parquet_column(pa, [r.get(c) for r in rows]) for c in columns})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        written.append(self._replace("results.parquet", sink.getvalue().to_pybytes()))
        return written

    def _replace(self, name: str, data: bytes) -> Path:
        path = self.root / name
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise SweepOutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        return path


def _middle(image: np.ndarray) -> np.ndarray:
    """The middle slice of a stack (as the figures measure it)."""
    return image[image.shape[0] // 2] if image.ndim == 3 else image


def _csv(rows: list[dict[str, Any]], axes: tuple[str, ...]) -> bytes:
    columns = _columns(rows, axes)
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    return text.getvalue().encode()


def _columns(rows: list[dict[str, Any]], axes: tuple[str, ...]) -> list[str]:
    """Index, key, the axes, outcome, message, wall time, notes, then every figure by name."""
    fixed = [*HEAD, *axes, *TAIL]
    figures = sorted({c for row in rows for c in row} - set(fixed))
    return [*fixed, *figures]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _parquet_column(pa: Any, values: list[Any]) -> Any:
    """A Parquet column: as typed as its values allow; lists (a matrix) and mixed kinds as text."""
    values = [json.dumps(list(v)) if isinstance(v, list | tuple) else v for v in values]
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values])


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
