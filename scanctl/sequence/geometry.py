"""Where a scan images: orientations, patient positions and slice stacks, in the patient's and the
scanner's coordinates (docs/geometry.md).

Conventions, one set for the builders, the simulators, the raw data and DICOM:

- **Patient coordinates** are DICOM's LPS: +x toward the patient's left, +y posterior, +z head. ISMRMRD's
  ``position``/``read_dir``/``phase_dir``/``slice_dir`` and DICOM's Image Position/Orientation (Patient) are
  in these coordinates.
- **Scanner coordinates** are the gradient axes a Pulseq file plays on. For a head-first supine (HFS)
  patient they equal the patient coordinates (as a Siemens scanner's device coordinates do); the other
  positions turn the patient about the scanner's axes (:func:`patient_to_scanner`).
- **Logical axes** are read, phase and slice. A :class:`Orientation` holds the three directions as the
  columns of a rotation matrix, right-handed (slice = read x phase); in scanner coordinates that matrix is
  the Pulseq ``ROTATIONS`` quaternion (it rotates logical into physical gradients).

Distances are metres in code (protocol files and DICOM use millimetres). Everything here is pure numpy;
every wrong input is a :class:`GeometryError` naming what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.errors import ConfigError

FloatArray = npt.NDArray[np.float64]

#: DICOM Patient Position values understood, and the scanner axes each patient axis lies along:
#: ``scanner = diag(signs) @ patient`` (the patient turned about the scanner's y or z axis).
PATIENT_POSITIONS: dict[str, tuple[float, float, float]] = {
    "HFS": (1.0, 1.0, 1.0),     # head first supine
    "FFS": (-1.0, 1.0, -1.0),   # feet first supine: turned about the vertical axis
    "HFP": (-1.0, -1.0, 1.0),   # head first prone: turned about the bore axis
    "FFP": (1.0, -1.0, -1.0),   # feet first prone
}

#: The base orientations: (read, phase) directions in patient coordinates; slice = read x phase.
BASE_ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "transverse": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),   # slice +z (head)
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),    # slice -x (right)
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),     # slice +y (posterior)
}
#: The orientation whose slice axis lies along each patient axis (x, y, z): the base of an oblique.
_BASE_BY_AXIS = ("sagittal", "coronal", "transverse")

#: Slice orders of a multi-slice stack.
SLICE_ORDERS = ("interleaved", "sequential", "descending")

#: Tolerance on unit length and orthogonality of given direction vectors.
_UNIT_TOLERANCE = 1e-6


class GeometryError(ConfigError):
    """A geometry cannot be made: a zero normal, an unknown orientation or patient position, slices
    that overlap. The message names the key."""


@dataclass(frozen=True, eq=False)
class Orientation:
    """Read, phase and slice directions in patient coordinates (unit vectors, right-handed)."""

    read: FloatArray
    phase: FloatArray

    def __post_init__(self) -> None:
        read = np.asarray(self.read, dtype=np.float64).reshape(3)
        phase = np.asarray(self.phase, dtype=np.float64).reshape(3)
        if not (np.isfinite(read).all() and np.isfinite(phase).all()):
            raise GeometryError("orientation: directions must be finite")
        if abs(np.linalg.norm(read) - 1) > _UNIT_TOLERANCE or abs(np.linalg.norm(phase) - 1) > _UNIT_TOLERANCE:
            raise GeometryError("orientation: read and phase directions must be unit vectors")
        if abs(float(read @ phase)) > _UNIT_TOLERANCE:
            raise GeometryError("orientation: read and phase directions must be perpendicular")
        object.__setattr__(self, "read", read)
        object.__setattr__(self, "phase", phase)

    @property
    def slice(self) -> FloatArray:
        """The slice direction (the normal): read x phase."""
        return np.cross(self.read, self.phase)

    @property
    def matrix(self) -> FloatArray:
        """3x3, columns read, phase, slice: patient <- logical."""
        return np.column_stack((self.read, self.phase, self.slice))

    @classmethod
    def named(cls, name: str) -> Orientation:
        """A base orientation: transverse, sagittal or coronal."""
        if name not in BASE_ORIENTATIONS:
            raise GeometryError(f"orientation: unknown {name!r} (known: {', '.join(BASE_ORIENTATIONS)}, "
                                f"or a normal vector)")
        read, phase = BASE_ORIENTATIONS[name]
        return cls(np.array(read), np.array(phase))

    @classmethod
    def from_normal(cls, normal: Seq[float] | FloatArray, inplane_rotation_deg: float = 0.0) -> Orientation:
        """The oblique orientation with slice direction ``normal`` (any length > 0): the base orientation
        whose normal is nearest (largest component, ties to transverse, then coronal) turned by the smallest
        rotation onto ``normal``, then turned by ``inplane_rotation_deg`` about it (read toward phase)."""
        n = np.asarray(normal, dtype=np.float64).reshape(-1)
        if n.size != 3 or not np.isfinite(n).all() or np.linalg.norm(n) < 1e-9:
            raise GeometryError(f"orientation.normal: must be three finite numbers, not all zero, got {list(n)}")
        if not math.isfinite(inplane_rotation_deg):
            raise GeometryError("orientation.inplane_rotation_deg: must be finite")
        n = n / np.linalg.norm(n)
        axis = max((2, 1, 0), key=lambda i: abs(n[i]))  # ties: z, then y, then x
        base = cls.named(_BASE_BY_AXIS[axis])
        turn = _rotation_between(base.slice, n)
        read, phase = turn @ base.read, turn @ base.phase
        a = math.radians(inplane_rotation_deg)
        read, phase = (math.cos(a) * read + math.sin(a) * phase, -math.sin(a) * read + math.cos(a) * phase)
        return cls(read / np.linalg.norm(read), phase / np.linalg.norm(phase))

    def in_scanner(self, patient_position: str = "HFS") -> FloatArray:
        """The rotation matrix (scanner <- logical) for a patient lying in ``patient_position``."""
        return patient_to_scanner(patient_position) @ self.matrix

    def quaternion(self, patient_position: str = "HFS") -> FloatArray:
        """The Pulseq ROTATIONS quaternion ``(w, x, y, z)``, ``w >= 0``, of :meth:`in_scanner`."""
        return matrix_to_quaternion(self.in_scanner(patient_position))

    def is_identity(self, patient_position: str = "HFS") -> bool:
        return bool(np.allclose(self.in_scanner(patient_position), np.eye(3), atol=1e-12))


def patient_to_scanner(patient_position: str) -> FloatArray:
    """3x3 matrix taking patient (LPS) into scanner coordinates for a DICOM Patient Position."""
    signs = PATIENT_POSITIONS.get(patient_position)
    if signs is None:
        raise GeometryError(f"patient_position: unknown {patient_position!r} (known: {', '.join(PATIENT_POSITIONS)})")
    return np.diag(signs)


def matrix_to_quaternion(m: FloatArray) -> FloatArray:
    """The unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a proper rotation matrix ``m``
    (:class:`GeometryError` if ``m`` is not one)."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (3, 3) or not np.allclose(m.T @ m, np.eye(3), atol=1e-6) or np.linalg.det(m) < 0:
        raise GeometryError("rotation: not a proper rotation matrix (orthonormal, determinant +1)")
    # Shepperd's method: take the largest of the four squared components for numerical stability.
    t = np.trace(m)
    cands = np.array([1 + t, 1 + 2 * m[0, 0] - t, 1 + 2 * m[1, 1] - t, 1 + 2 * m[2, 2] - t])
    i = int(np.argmax(cands))
    s = 2.0 * math.sqrt(max(cands[i], 0.0))
    if i == 0:
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif i == 1:
        q = [(m[2, 1] - m[1, 2]) / s, s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif i == 2:
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s]
    else:
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4]
    out = np.array(q)
    out /= np.linalg.norm(out)
    return -out if out[0] < 0 else out


def quaternion_to_matrix(q: Seq[float] | FloatArray) -> FloatArray:
    """The rotation matrix ``(3, 3)`` of a quaternion ``(w, x, y, z)``, or ``(n, 3, 3)`` of ``(n, 4)``
    quaternions (each normalised first)."""
    q = np.asarray(q, dtype=np.float64)
    flat = q.reshape(-1, 4) / np.linalg.norm(q.reshape(-1, 4), axis=1, keepdims=True)
    w, x, y, z = flat[:, 0], flat[:, 1], flat[:, 2], flat[:, 3]
    m = np.empty((flat.shape[0], 3, 3))
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 0, 1] = 2 * (x * y - z * w)
    m[:, 0, 2] = 2 * (x * z + y * w)
    m[:, 1, 0] = 2 * (x * y + z * w)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 1, 2] = 2 * (y * z - x * w)
    m[:, 2, 0] = 2 * (x * z - y * w)
    m[:, 2, 1] = 2 * (y * z + x * w)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return m[0] if q.ndim == 1 else m


@dataclass(frozen=True, eq=False)
class SliceStack:
    """A stack of parallel 2D slices (or one 3D slab, ``count`` 1): centre in patient coordinates (m),
    orientation, thickness and gap (m), and the order the slices are excited in."""

    centre_m: FloatArray
    orientation: Orientation
    count: int = 1
    thickness_m: float = 0.005
    gap_m: float = 0.0
    order: str = "interleaved"

    def __post_init__(self) -> None:
        c = np.asarray(self.centre_m, dtype=np.float64).reshape(-1)
        if c.size != 3 or not np.isfinite(c).all():
            raise GeometryError(f"position_mm: must be three finite numbers, got {list(c)}")
        object.__setattr__(self, "centre_m", c)
        if self.count < 1:
            raise GeometryError(f"slices: must be at least 1, got {self.count}")
        if not (math.isfinite(self.thickness_m) and self.thickness_m > 0):
            raise GeometryError("slice_thickness_m: must be a positive number")
        if not math.isfinite(self.gap_m) or (self.count > 1 and self.gap_m < 0):
            raise GeometryError(f"slice_gap_mm: {self.gap_m * 1e3:g} mm makes the slices overlap "
                                f"(a gap must be >= 0)")
        if self.order not in SLICE_ORDERS:
            raise GeometryError(f"slice_order: unknown {self.order!r} (known: {', '.join(SLICE_ORDERS)})")

    @property
    def spacing_m(self) -> float:
        """Centre-to-centre distance of neighbouring slices (m)."""
        return self.thickness_m + self.gap_m

    def offsets_m(self) -> FloatArray:
        """Each slice's offset from the stack centre along the slice direction (m), in position order."""
        return (np.arange(self.count, dtype=np.float64) - (self.count - 1) / 2.0) * self.spacing_m

    def centres_m(self) -> FloatArray:
        """``(count, 3)``: each slice's centre in patient coordinates (m), in position order."""
        return self.centre_m[None, :] + self.offsets_m()[:, None] * self.orientation.slice[None, :]

    def acquisition_order(self) -> list[int]:
        """The position indices in the order they are excited: interleaved (0, 2, 4, ..., 1, 3, ...),
        sequential (0, 1, 2, ...) or descending."""
        n = self.count
        if self.order == "interleaved":
            return list(range(0, n, 2)) + list(range(1, n, 2))
        if self.order == "sequential":
            return list(range(n))
        return list(range(n - 1, -1, -1))

    def logical_offsets_m(self, patient_position: str = "HFS") -> FloatArray:
        """``(count, 3)``: each slice centre's (read, phase, slice) offset from the isocentre (m): what the
        ADC (read, phase) and the RF (slice) frequency and phase offsets shift by."""
        return self.centres_m() @ self.orientation.matrix  # patient -> logical: M^T p, row-wise

    def extent_corners_m(self, fov_read_m: float, fov_phase_m: float) -> FloatArray:
        """``(count * 8, 3)``: the corners of every slice's box (FOV x thickness), patient coordinates (m),
        for checking the geometry against the gradient system's field of view."""
        m = self.orientation.matrix
        half = np.array([fov_read_m, fov_phase_m, self.thickness_m]) / 2
        signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=np.float64)
        return (self.centres_m()[:, None, :] + (signs * half) @ m.T[None, :, :]).reshape(-1, 3)


def _rotation_between(a: FloatArray, b: FloatArray) -> FloatArray:
    """The smallest rotation taking unit vector ``a`` onto unit vector ``b`` (Rodrigues)."""
    v = np.cross(a, b)
    c = float(a @ b)
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        # Opposite: half a turn about any axis perpendicular to a.
        perp = np.cross(a, np.eye(3)[int(np.argmin(np.abs(a)))])
        perp /= np.linalg.norm(perp)
        return 2 * np.outer(perp, perp) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * ((1 - c) / s**2)
