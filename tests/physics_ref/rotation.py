"""Hard-pulse Bloch rotations of a shaped RF pulse through a slice, with rotation matrices.

Each RF raster sample is a rotation about the effective field ``(Re b1, Im b1, f)`` (Hz; ``f`` the spin's
frequency offset in the slice gradient) by ``2π |(b1, f)| dt``, right-handed as in Weigel's frame
(:mod:`.epg`): the classic hard-pulse approximation of the Bloch equation (e.g. Bernstein, King & Zhou,
Handbook of MRI Pulse Sequences, 2004, ch. 2), built from Rodrigues' formula.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]


def rodrigues(axis: FloatArray, angle: FloatArray) -> FloatArray:
    """Right-handed rotation matrices about unit ``axis`` (``(..., 3)``) by ``angle`` (``(...)``, rad)."""
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    s, c = np.sin(angle)[..., None, None], np.cos(angle)[..., None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def rz(angle: FloatArray) -> FloatArray:
    """Right-handed rotations about +z (free precession at a positive frequency offset in Weigel's frame)."""
    angle = np.asarray(angle, dtype=np.float64)
    axis = np.zeros((*angle.shape, 3))
    axis[..., 2] = 1.0
    return rodrigues(axis, angle)


def pulse_rotation(b1_hz: ComplexArray, dt_s: FloatArray, offset_hz: FloatArray) -> FloatArray:
    """The rotation of a whole pulse for each position: ``b1_hz`` (n,), ``dt_s`` (n,), ``offset_hz`` (n, Z)
    the spin's frequency offset during each sample at each of Z positions. Returns ``(Z, 3, 3)``."""
    n_z = offset_hz.shape[1]
    total = np.broadcast_to(np.eye(3), (n_z, 3, 3)).copy()
    for b, dt, f in zip(b1_hz, dt_s, offset_hz, strict=True):
        field = np.stack([np.full(n_z, b.real), np.full(n_z, b.imag), f], -1)
        norm = np.linalg.norm(field, axis=-1)
        axis = field / np.where(norm > 0, norm, 1.0)[:, None]
        total = rodrigues(axis, 2 * np.pi * norm * dt) @ total
    return total
