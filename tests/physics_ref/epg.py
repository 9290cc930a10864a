"""Extended phase graph (EPG) of Weigel, "Extended phase graphs: dephasing, RF pulses, and echoes - pure
and simple", J. Magn. Reson. Imaging 41:266-295 (2015), written from the paper.

State: ``omega`` of shape ``(3, K, ...)``: rows ``F+_k``, ``F-_k``, ``Z_k`` for ``k = 0..K-1`` dephasing
orders, any trailing axes (isochromats, tissues) carried along. ``F-_k = conj(F+_{-k})``, so the row
``F-`` holds the negative orders and ``F+_0 = conj(F-_0)``. Weigel's frame: a pulse of flip ``α`` and phase
``φ`` acts by his eq. 15 matrix ``T(α, φ)``; from equilibrium it gives ``F+_0 = -i e^{iφ} sin α``.

Any rotation ``R`` of ``(Mx, My, Mz)`` (a shaped, slice-selective pulse at one position in the slice) acts
on every order alike by ``P R P^-1`` with ``P`` mapping ``(Mx, My, Mz)`` to ``(M+, M-, Mz)``, ``M± = Mx ± i My``
(the same basis change from which Weigel derives ``T``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

ComplexArray = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float64]

_P = np.array([[1.0, 1j, 0.0], [1.0, -1j, 0.0], [0.0, 0.0, 1.0]])
_P_INV = np.linalg.inv(_P)


def weigel_t(alpha: float, phi: float) -> ComplexArray:
    """Weigel's eq. 15: the RF operator ``T(α, φ)`` on ``(F+, F-, Z)`` (radians)."""
    c2, s2, s = np.cos(alpha / 2) ** 2, np.sin(alpha / 2) ** 2, np.sin(alpha)
    e = np.exp(1j * phi)
    return np.array([[c2, e**2 * s2, -1j * e * s],
                     [np.conj(e) ** 2 * s2, c2, 1j * np.conj(e) * s],
                     [-0.5j * np.conj(e) * s, 0.5j * e * s, np.cos(alpha)]])


def operator_of_rotation(rotation: FloatArray) -> ComplexArray:
    """``P R P^-1``: the EPG RF operator of rotation matrices ``R`` (shape ``(..., 3, 3)``)."""
    return _P @ rotation @ _P_INV


def phase_shifted(operator: ComplexArray, phi: float) -> ComplexArray:
    """The operator of the same pulse played with its B1 turned by ``φ`` (``Rz(φ) R Rz(-φ)``)."""
    d = np.array([np.exp(1j * phi), np.exp(-1j * phi), 1.0])
    return d[:, None] * operator * np.conj(d)[None, :]


def equilibrium(orders: int, shape: tuple[int, ...] = ()) -> ComplexArray:
    """``Z_0 = 1``, everything else 0."""
    omega = np.zeros((3, orders, *shape), np.complex128)
    omega[2, 0] = 1.0
    return omega


def rf(omega: ComplexArray, operator: ComplexArray) -> ComplexArray:
    """Apply an RF operator: one ``(3, 3)`` for all, or ``(Z, 3, 3)``, one per index of ``omega``'s first
    trailing axis (``omega`` of shape ``(3, K, Z, ...)``: a pulse that differs through the slice)."""
    if operator.ndim == 2:
        return np.einsum("ab,bk...->ak...", operator, omega)
    extra = omega.ndim - 3  # trailing axes after Z
    op = operator.reshape(1, operator.shape[0], 3, 3, *(1,) * extra)  # (1, Z, a, b, ...)
    return np.stack([sum(op[:, :, a, b] * omega[b] for b in range(3)) for a in range(3)])


def relax(omega: ComplexArray, e1: FloatArray | float, e2: FloatArray | float) -> ComplexArray:
    """Relaxation over an interval: ``F *= E2``, ``Z_k *= E1``, ``Z_0`` recovers towards 1 (``M0 = 1``)."""
    out = omega.copy()
    out[:2] *= e2
    out[2] *= e1
    out[2, 0] += 1.0 - np.asarray(e1)
    return out


def shift(omega: ComplexArray) -> ComplexArray:
    """One unit of dephasing (Weigel's eq. 22-23): ``F+_k -> F+_{k+1}``, ``F-_k -> F-_{k-1}``,
    ``F+_0 = conj(F-_0)``. The highest order falls off (it must be empty: give enough orders)."""
    out = np.empty_like(omega)
    out[0, 1:] = omega[0, :-1]
    out[1, :-1] = omega[1, 1:]
    out[1, -1] = 0.0
    out[0, 0] = np.conj(out[1, 0])
    out[2] = omega[2]
    return out
