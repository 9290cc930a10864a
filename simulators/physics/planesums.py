"""The plane sums' building blocks for the read-out (:mod:`.signal`): the Taylor series' term count, the
grouping of states by their moments, the drift series of a nearly separable read-out (:class:`Drift`) and the
sparse sum over the nonzero voxels of many maps (:class:`SparseMaps`). See :mod:`.signal` for when each is
taken and why."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
#: The drift series' error bound, relative to ``Σ |maps|`` (the NUFFT's own error bound).
DRIFT_TOL = 1e-9

#: The drift's reference moments are multiples of this many cycles over half the grid (adds at most
#: ``π · 1e-3`` rad to the series' argument).
REF_CYCLES = 1e-3

#: Elements (points x voxels) per block of the sparse plane sum: its five passes over them stay in cache (1 MB
#: per array). 1024 points of 447 classes' 8177 voxels: 85 ms in blocks of 2^16, 163 ms of 2^21.
SPARSE_BLOCK_ELEMENTS = 1 << 16

#: Maps as the separable products take them: real (the drift rows of real maps) or complex.
MapArray = npt.NDArray[np.floating[Any]] | npt.NDArray[np.complexfloating[Any, Any]]


def taylor_terms(rho: float, tol: float) -> int:
    """Smallest ``L`` with ``rho**L / L! * exp(rho) <= tol`` (the series' remainder bound)."""
    if rho <= 0:
        return 1
    term, n = math.exp(rho), 0
    while term > tol:
        n += 1
        term *= rho / n
    return n


def unique_rows(key: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``np.unique(key, axis=0, return_index=True, return_inverse=True)[1:]`` for the rows of ``key``
    ``(n, m)``: the first row of each distinct row (distinct rows in lexicographic order) and each row's
    distinct row. A stable lexicographic sort: 7x faster than ``np.unique`` along an axis (it sorts the
    rows as structured values), which took 5 % of gre_3d's run grouping the read-out's states."""
    order = np.lexsort(key.T[::-1])  # by the first column, then the next...; stable
    ordered = key[order]
    new = np.ones(order.size, bool)
    np.any(ordered[1:] != ordered[:-1], axis=1, out=new[1:])
    inverse = np.empty(order.size, np.intp)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


def times(weights: ComplexArray, maps: MapArray) -> ComplexArray:
    """``weights @ maps``; for real ``maps`` as one real product of the weights' real and imaginary parts."""
    if np.iscomplexobj(maps):
        return weights @ maps
    n = weights.shape[0]
    both = np.concatenate((weights.real, weights.imag)) @ maps
    out = np.empty((n, maps.shape[1]), np.complex128)
    out.real, out.imag = both[:n], both[n:]
    return out


class Drift:
    """``exp(2πi k[g, t] u)`` for moments ``k`` ``(G, T)`` (1/m) that drift through a window, at positions
    ``pos`` (m), as ``exp(2πi k_ref[g] u) exp(2πi δ u_c) Σ_l (2πi (u - u_c))^l / l! δ^l`` with
    ``δ = k - k_ref`` and ``u_c`` the grid's centre: :attr:`terms` terms for an error below
    :data:`DRIFT_TOL` of ``Σ |maps|`` (the remainder bound of :func:`taylor_terms`).

    ``k_ref`` is the middle of each group's moments rounded to a multiple of :attr:`quantum` (:data:`REF_CYCLES`
    over half the grid), so that the weights depend on the integer :attr:`ref` and ``L`` alone (cacheable)."""

    def __init__(self, k: FloatArray, pos: FloatArray) -> None:
        self.centre = 0.5 * float(pos.max() + pos.min())
        half = 0.5 * float(np.ptp(pos))
        self.quantum = REF_CYCLES / max(half, 1e-12)
        self.ref = np.round(0.5 * (k.max(axis=1) + k.min(axis=1)) / self.quantum).astype(np.int64)  # (G,)
        self.delta = k - (self.ref * self.quantum)[:, None]  # (G, T)
        # By the bound on |δ| (half the drift and half a quantum), not by this window's |δ|: the terms, and so
        # the cached rows' key, do not change with where the moments fall between two quanta.
        bound = 0.5 * float(np.ptp(k, axis=1).max()) + 0.5 * self.quantum
        self.terms = taylor_terms(2.0 * np.pi * half * bound, DRIFT_TOL)
        arg = 2j * np.pi * (pos - self.centre)
        steps = np.broadcast_to(arg, (self.terms - 1, pos.size)) / np.arange(1, self.terms)[:, None]
        self._powers = np.cumprod(np.vstack((np.ones(pos.size), steps)), axis=0)  # (2πi (u - u_c))^l / l!
        self._pos = pos

    def weights(self, ref: int) -> ComplexArray:
        """``exp(2πi k_ref u) (2πi (u - u_c))^l / l!`` for the reference ``ref`` (quanta), ``(L, n_u)``."""
        return np.exp(2j * np.pi * (ref * self.quantum) * self._pos)[None, :] * self._powers

    def sum(self, terms: ComplexArray, delta: FloatArray) -> ComplexArray:
        """``exp(2πi δ u_c) Σ_l terms[:, l] δ^l`` (Horner's rule) for ``terms`` ``(G, L, C, T)`` and ``δ``
        ``(G, T)``; shape ``(G, C, T)``."""
        step = delta[:, None, :]
        total = terms[:, -1]
        for ell in range(terms.shape[1] - 2, -1, -1):
            total = total * step + terms[:, ell]
        return total * np.exp(2j * np.pi * self.centre * step)


class SparseMaps:
    """The nonzero voxels of ``maps`` ``(M, ny, nx)``, map by map, for plane sums voxel by voxel over only
    these: ``nnz`` per point, against ``M·nx·ny`` summed densely and ``M·width²`` by the NUFFT. The tissue
    classes share no voxel, so ``nnz`` is at most the voxels with proton density (times the receive
    channels), however many classes -- classes split along a pulse's in-plane gradient (``bloch.py``) are
    hundreds of thin strips, for which the NUFFT would interpolate every map at every point.
    """

    def __init__(self, maps: FloatArray | ComplexArray, x: FloatArray, y: FloatArray,
                 rates: FloatArray | None = None) -> None:
        which, iy, ix = np.nonzero(maps)  # ordered by map: each map's voxels are consecutive
        self.n_maps = maps.shape[0]
        self.nnz = int(which.size)
        self.index = (which, iy, ix)
        self.values = maps[which, iy, ix].astype(np.complex128)
        #: Each nonzero voxel's off-resonance relative to its class (Hz; ``rates``, a map like ``maps``).
        self.rates = np.zeros(self.nnz) if rates is None else np.asarray(rates[which, iy, ix], np.float64)
        self._x, self._y = x, y
        self._ix, self._iy = ix, iy
        self._present, self._starts = np.unique(which, return_index=True)

    def __call__(self, kx: FloatArray, ky: FloatArray, values: ComplexArray | None = None) -> ComplexArray:
        """``Σ_v values_v exp(2πi (kx x_v + ky y_v))`` per map at the points ``kx``, ``ky`` ``(P,)`` (1/m);
        ``values`` ``(nnz,)`` in :attr:`index` order (default: the maps' own), shape ``(P, M)``; or ``(L, nnz)``
        (L sets of values, e.g. Taylor terms, sharing the points' phasors), shape ``(L, P, M)``."""
        values = self.values if values is None else np.asarray(values)
        sets = values.reshape(values.shape[0] if values.ndim == 2 else 1, self.nnz)
        out = np.zeros((sets.shape[0], kx.size, self.n_maps), np.complex128)
        if self.nnz:
            per_block = max(1, SPARSE_BLOCK_ELEMENTS // self.nnz)
            for lo in range(0, kx.size, per_block):
                ex = np.exp(2j * np.pi * np.outer(kx[lo:lo + per_block], self._x))  # (p, nx): nx exps, not nnz
                ey = np.exp(2j * np.pi * np.outer(ky[lo:lo + per_block], self._y))
                phasor = np.take(ex, self._ix, axis=1)
                phasor *= np.take(ey, self._iy, axis=1)
                for ell, weights in enumerate(sets):
                    out[ell][lo:lo + per_block, self._present] = np.add.reduceat(phasor * weights, self._starts,
                                                                               axis=1)
        return out if values.ndim == 2 else out[0]
