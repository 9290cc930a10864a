"""Where each DICOM image lies: Image Position/Orientation (Patient), Pixel Spacing, Slice Thickness, Slice
Location and Spacing Between Slices, from the recon's ``image.json`` (the images contract: per image its
centre, read/phase/slice directions in patient LPS, FOV and matrix), or, for a run without one (older runs),
transverse at the isocentre from the raw data header (docs/dicom.md). Millimetres throughout.

Pixel ``[j, i]`` (row j = phase, column i = read) of an ``nx`` x ``ny`` image sits at
``position + (i - nx//2)·Δread·read_dir + (j - ny//2)·Δphase·phase_dir`` (ISMRMRD's image convention), so
Image Position (Patient), the centre of pixel [0, 0], is ``position - (nx//2)·Δread·read_dir -
(ny//2)·Δphase·phase_dir``; Image Orientation (Patient) is ``read_dir \\ phase_dir`` (DICOM: the direction
along a row, then down a column). Errors: DicomError naming the file, the image and the key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanctl.data.rawdata import RawHeader
from scanctl.errors import DicomError

#: How far a direction may be from unit length or two from orthogonal (image.json is written in float64).
DIRECTION_TOLERANCE = 1e-4
#: Transverse base orientation (patient LPS): read along +x (left), phase along +y (posterior).
TRANSVERSE_READ, TRANSVERSE_PHASE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)


@dataclass(frozen=True)
class ImageGeometry:
    """One image's plane: centre ``position`` (mm, LPS), unit ``read``/``phase`` directions, ``fov``
    (read, phase, thickness; mm), ``matrix`` (nx columns, ny rows)."""

    position: tuple[float, float, float]
    read: tuple[float, float, float]
    phase: tuple[float, float, float]
    fov: tuple[float, float, float]
    matrix: tuple[int, int]

    @property
    def spacing(self) -> tuple[float, float]:
        """(Δread, Δphase), mm: column spacing and row spacing."""
        return self.fov[0] / self.matrix[0], self.fov[1] / self.matrix[1]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.read), np.asarray(self.phase))

    @property
    def first_pixel(self) -> np.ndarray:
        """Image Position (Patient): the centre of pixel [0, 0], mm."""
        dr, dp = self.spacing
        nx, ny = self.matrix
        return (np.asarray(self.position) - (nx // 2) * dr * np.asarray(self.read)
                - (ny // 2) * dp * np.asarray(self.phase))

    @property
    def location(self) -> float:
        """Slice Location: the plane's distance from the origin along its normal, mm."""
        return float(np.dot(self.position, self.normal))


def from_header(header: RawHeader, index: Sequence[Mapping[str, int]], shape: tuple[int, int, int]
                ) -> list[ImageGeometry]:
    """Transverse at the isocentre (runs without image.json): 2D slices centred on it one slice thickness
    apart; 3D partition ``p`` of ``nz`` at ``(p - nz//2)·FOV_z/nz``. Raises DicomError for a FOV that is
    not positive."""
    _, ny, nx = shape
    fov = [1e3 * f for f in header.fov_m]
    if not all(math.isfinite(f) and f > 0 for f in fov[:2]):
        raise DicomError(f"the raw data header's field of view {header.fov_m} m is not positive: no pixel spacing")
    three_d = header.encoded_matrix[2] > 1
    counter = "PAR" if three_d else "SLC"
    slices = max(int(c.get(counter, 0)) for c in index) + 1 if index else 1
    if three_d:
        step = fov[2] / max(header.encoded_matrix[2], slices)
    else:
        step = fov[2] if math.isfinite(fov[2]) and fov[2] > 0 else 1.0
    out = []
    for counters in index:
        k = int(counters.get(counter, 0))
        z = (k - slices // 2) * step if three_d else (k - (slices - 1) / 2) * step
        out.append(ImageGeometry((0.0, 0.0, z), TRANSVERSE_READ, TRANSVERSE_PHASE, (fov[0], fov[1], step), (nx, ny)))
    return out


def read_image_json(path: Path, shape: tuple[int, int, int]) -> tuple[list[ImageGeometry], list[dict[str, int]], bool]:
    """The geometry, counters and 3D flag of each image in ``path`` (image.json, format 1) for an
    ``image.npy`` of ``shape`` (n, ny, nx). Raises DicomError naming the file, the image and the key."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DicomError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != 1 or not isinstance(info.get("images"), list):
        raise DicomError(f"{path}: not an image.json of format 1 (an object with 'format': 1 and 'images')")
    images = info["images"]
    if len(images) != shape[0]:
        raise DicomError(f"{path}: {len(images)} images described for {shape[0]} in image.npy")
    geometry, index = [], []
    for i, entry in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict):
            raise DicomError(f"{where}: not an object")
        geometry.append(_image(entry, where, (shape[2], shape[1])))
        counters = entry.get("counters", {})
        if not isinstance(counters, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                     for v in counters.values()):
            raise DicomError(f"{where}.counters: not an object of counts (0, 1, …)")
        index.append({str(k): int(v) for k, v in counters.items()})
    return geometry, index, bool(info.get("three_d", False))


def _image(entry: Mapping[str, Any], where: str, shape_xy: tuple[int, int]) -> ImageGeometry:
    position = _vector(entry, "position_mm", where)
    read, phase = _vector(entry, "read_dir", where), _vector(entry, "phase_dir", where)
    for name, v in (("read_dir", read), ("phase_dir", phase)):
        if abs(math.hypot(*v) - 1.0) > DIRECTION_TOLERANCE:
            raise DicomError(f"{where}.{name}: {list(v)} is not a unit vector")
    if abs(float(np.dot(read, phase))) > DIRECTION_TOLERANCE:
        raise DicomError(f"{where}: read_dir and phase_dir are not orthogonal")
    fov = _vector(entry, "fov_mm", where)
    if not all(f > 0 for f in fov):
        raise DicomError(f"{where}.fov_mm: {list(fov)} must be positive")
    matrix = entry.get("matrix")
    if (not isinstance(matrix, list) or len(matrix) != 2 or not all(isinstance(m, int) for m in matrix)
            or tuple(matrix) != shape_xy):
        raise DicomError(f"{where}.matrix: {matrix!r} is not the image's [columns, rows] {list(shape_xy)}")
    return ImageGeometry(position, read, phase, fov, (int(matrix[0]), int(matrix[1])))


def _vector(entry: Mapping[str, Any], key: str, where: str) -> tuple[float, float, float]:
    v = entry.get(key)
    if (not isinstance(v, list) or len(v) != 3
            or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
        raise DicomError(f"{where}.{key}: {v!r} is not three finite numbers")
    return float(v[0]), float(v[1]), float(v[2])


def spacing_between(geometry: Sequence[ImageGeometry]) -> float:
    """Spacing Between Slices (mm): the smallest distance between two distinct slice locations of the
    series, else (one location) the slice thickness."""
    locations = sorted({round(g.location, 3) for g in geometry})
    gaps = [b - a for a, b in zip(locations, locations[1:], strict=False) if b - a > 1e-3]
    return min(gaps) if gaps else geometry[0].fov[2]


def instance_order(index: Sequence[Mapping[str, int]], geometry: Sequence[ImageGeometry]) -> list[int]:
    """The image rows in Instance Number order: by contrast (echo, repetition, set, phase), then by slice
    position along the normal (a multi-slice series in position order whatever the acquisition order)."""
    planes: dict[tuple[float, ...], int] = {}  # orientations in the order they first appear (a localizer's three)
    for g in geometry:
        planes.setdefault(tuple(np.round(g.normal, 3)), len(planes))

    def key(i: int) -> tuple[float, ...]:
        c, g = index[i], geometry[i]
        return (c.get("ECO", 0), c.get("REP", 0), c.get("SET", 0), c.get("PHS", 0),
                planes[tuple(np.round(g.normal, 3))], g.location, i)

    return sorted(range(len(index)), key=key)
