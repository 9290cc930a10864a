"""The magnetization as a phase graph: dephasing states with amplitudes per tissue class and isochromat.

The magnetization of a spin at ``r`` in a voxel of tissue class ``c``, at isochromat ``s`` (a position
through the slab of a 2D phantom), is

    Mxy(r) = Σ_j F_j[c, s] exp(2πi (k_j·r + δf(r) τ_j))
    Mz(r)  = Σ_j Z_j[c, s] exp(2πi (k_j·r + δf(r) τ_j))

over dephasing states ``j`` with gradient moment ``k_j`` (1/m) and dephasing time ``τ_j`` (s; ``δf`` is
the voxel's off-resonance relative to its class). This is the phase distribution graph of MRzero (Endres
et al., MRM 2024), the continuous-moment generalisation of the extended phase graph (Weigel, JMRI 2015):

* a gradient moves every transverse state ``k -> k + Δm`` and time ``τ -> τ + dt``, exactly, whatever the
  moment; longitudinal states stay put;
* an RF rotation mixes the state at ``(k, τ)`` with the conjugate of the one at ``(-k, -τ)`` and the
  longitudinal state at ``(k, τ)``, so no new moments appear; states at equal ``(k, τ)`` (within a
  quantum: :func:`_cluster`) are merged, and states whose effect on the signal (:func:`signal_weight`)
  is at most the tolerance are dropped (they would only return through echoes weaker than that), as
  are all but the strongest :data:`DEFAULT_MAX_STATES`;
* relaxation and class off-resonance scale the amplitudes per class.

The amplitudes are shared by all voxels of a class, so the work does not grow with the number of voxels:
the voxel positions only enter when a signal is computed (``bloch.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
#: Amplitudes (:data:`AMPLITUDE`) and the rotation coefficients (double or single precision).
ComplexArray = npt.NDArray[np.complexfloating[Any, Any]]

#: Moments closer than this (1/m) are one state: a phase error below 2π·5e-4·r, 4e-4 rad at r = 12.8 cm.
MOMENT_QUANTUM = 1e-3
#: The amplitudes' type. Single precision: the work of an RF pulse is moving amplitudes through memory, which
#: this halves; k-space of se_2d and of the radial GRE moves by 1e-7 (NRMSE), far below the tolerance.
AMPLITUDE = np.complex64
AMPLITUDE_REAL = np.float32
#: Dephasing times closer than this (s) are one state.
TIME_QUANTUM = 1e-9
#: States whose effect on the signal is at most this are dropped (see :func:`signal_weight`). Chosen by
#: accuracy (docs/phantom.md, "Phase-graph states"): with 1e-5 instead of 1e-6 (and 2000 states) k-space
#: moves by 2e-5 (se_2d) and 8e-6 (tse_2d) in NRMSE, and gre_2d against the EPG reference not at all.
DEFAULT_TOLERANCE = 1e-5
#: The most transverse (and, separately, longitudinal) states kept: the strongest. A 64-spoke radial GRE
#: holds ~1e5 states above the tolerance (in-plane moments that rotate every TR never merge). k-space NRMSE
#: against tolerance 1e-6 and up to 20,000 states (radial: 80,000), and bench_physics speed-up over
#: MRzeroCore of the radial GRE (load ~3): 2000 states: radial 3.3e-4 (2.4-2.7x), tse_2d 8e-6, se_2d 2e-5;
#: 1000: radial 4.0e-4 (3.4x), tse_2d 9e-5, se_2d 4e-5 -- all below gre_2d's 1.9e-4 against the EPG
#: reference but the radial GRE, whose choices of tolerance from 1e-6 to 1e-4 move it by 2-3e-4 anyway.
DEFAULT_MAX_STATES = 1000
#: Values in neighbouring bins of a quantum are one when they are closer than this many quanta (a rounding
#: error: moments of 1e5 /m carry errors near 1e-11 /m after thousands of steps).
JOIN = 1e-3


class PhaseGraph:
    """Transverse (``F``) and longitudinal (``Z``) states, amplitudes of shape ``(states, classes, isochromats)``.

    ``tolerance``: states whose effect on a voxel's signal (:func:`signal_weight`, relative to equilibrium
    magnetization 1) is at most this are dropped; ``max_states``: the most transverse and the most
    longitudinal states kept (the strongest), which bounds the work per RF pulse.
    ``track_time``: keep states with equal moment but different dephasing time apart (needed only when
    off-resonance varies inside a class).
    """

    def __init__(self, n_classes: int, n_iso: int, *, tolerance: float = DEFAULT_TOLERANCE,
                 max_states: int = DEFAULT_MAX_STATES,
                 track_time: bool = False) -> None:
        self.shape = (n_classes, n_iso)
        self.tolerance = tolerance
        self.max_states = max_states
        self.track_time = track_time
        self.reset()

    def reset(self) -> None:
        """Equilibrium: one longitudinal state at ``k = 0``, amplitude 1."""
        c, s = self.shape
        self.f_k = np.zeros((0, 3))
        self.f_tau = np.zeros(0)
        self.f = np.zeros((0, c, s), AMPLITUDE)
        self.z_k = np.zeros((1, 3))
        self.z_tau = np.zeros(1)
        self.z = np.ones((1, c, s), AMPLITUDE)

    @property
    def n_states(self) -> int:
        return int(self.f.shape[0] + self.z.shape[0])

    def split(self, parent: npt.NDArray[np.intp]) -> None:
        """Make new classes, class ``i`` starting with the amplitudes of old class ``parent[i]``."""
        self.f = np.ascontiguousarray(self.f[:, parent])
        self.z = np.ascontiguousarray(self.z[:, parent])
        self.shape = (int(parent.size), self.shape[1])

    def evolve(self, dm: FloatArray, dt: float, transverse: ComplexArray, e1: FloatArray) -> None:
        """Free evolution: moment ``dm`` (3,), time ``dt``; ``transverse`` (per class) multiplies the
        transverse amplitudes (relaxation and class off-resonance), ``e1`` (per class) the longitudinal
        ones, which recover towards 1 at ``k = 0``."""
        if self.f.shape[0]:
            self.f_k += dm
            self.f_tau += dt
            self.f *= transverse.astype(AMPLITUDE)[None, :, None]  # in single precision, not via double
        if dt > 0:
            self.z *= e1.astype(AMPLITUDE_REAL)[None, :, None]
            self.z[0] += (1.0 - e1)[:, None]  # state 0 is always the k = 0, τ = 0 one

    def rotate(self, a: ComplexArray, b: ComplexArray, c: ComplexArray, d: ComplexArray, e: FloatArray) -> None:
        """Apply a rotation given per ``(class, isochromat)`` by its coefficients
        (``Mxy' = a Mxy + b conj(Mxy) + c Mz``, ``Mz' = Re(d Mxy) + e Mz``)."""
        n_f, n_z = self.f.shape[0], self.z.shape[0]
        k_all = np.concatenate((self.f_k, -self.f_k, self.z_k))
        tau_all = np.concatenate((self.f_tau, -self.f_tau, self.z_tau))
        first, inverse = _merge_keys(k_all, tau_all if self.track_time else None)
        n_u = first.size
        shape = (n_u, *self.shape)
        k_u, tau_u = k_all[first], tau_all[first]
        if not self.track_time:
            tau_u = np.zeros(n_u)
        # inverse holds the merged states of F, of conj(F) placed at -k and of Z, in that order.
        i_f, i_c, i_z = inverse[:n_f], inverse[n_f:2 * n_f], inverse[2 * n_f:]
        a, b, c, d = (np.asarray(x, AMPLITUDE) for x in (a, b, c, d))
        e = np.asarray(e, AMPLITUDE_REAL)
        half_d = 0.5 * d
        rows = [_rows_of(i_f, n_u), _rows_of(i_c, n_u), _rows_of(i_z, n_u)]
        gathered = [r for r in rows if r is not None]
        mag_f: FloatArray | None = None
        mag_z: FloatArray | None = None
        if len(gathered) == 3:
            # Each merged state has at most one state of each kind: gather them (a row of zeros where none)
            # -- a gather costs a third of a scatter-add into zeros.
            new_f, new_z, mag_f, mag_z = _gather_rotate(self.f, self.z, gathered, (a, b, c, half_d, e))
        else:
            # Two states of one kind landed on one merged state (moments that moved within a quantum of each
            # other): their contributions are summed (a fancy-index ``+=`` would keep only one of them).
            new_f = np.zeros(shape, AMPLITUDE)
            new_z = np.zeros(shape, AMPLITUDE)
            conj_f = np.conj(self.f)  # conj(F at -k), placed at k
            _add_rows(new_f, i_f, a * self.f)
            _add_rows(new_f, i_c, b * conj_f)
            _add_rows(new_z, i_f, half_d * self.f)
            _add_rows(new_z, i_c, np.conj(half_d) * conj_f)
            _add_rows(new_f, i_z, c * self.z)
            _add_rows(new_z, i_z, e * self.z)

        zero = int(inverse[2 * n_f]) if n_z else -1  # where the k = 0 longitudinal state went
        self.f_k, self.f_tau, self.f = self._prune(k_u, tau_u, new_f, keep=-1, mag=mag_f)
        self.z_k, self.z_tau, self.z = self._prune(k_u, tau_u, new_z, keep=zero, mag=mag_z)

    def _prune(self, k: FloatArray, tau: FloatArray, amp: ComplexArray, keep: int,
               mag: FloatArray | None = None) -> tuple[FloatArray, FloatArray, ComplexArray]:
        """Drop states whose :func:`signal_weight` (``mag``, if already known) is at most the tolerance
        (keeping state ``keep`` first, if >= 0) and, past ``max_states``, all but the strongest."""
        if mag is None:
            mag = signal_weight(amp)
        idx = np.flatnonzero(mag > self.tolerance)
        if keep >= 0:
            idx = np.concatenate(([keep], idx[idx != keep]))
        if idx.size > self.max_states:
            head = idx[:1] if keep >= 0 else idx[:0]
            rest = idx[head.size:]
            rest = rest[np.argsort(mag[rest])[::-1][: self.max_states - head.size]]
            idx = np.concatenate((head, np.sort(rest)))
        return k[idx], tau[idx], amp[idx]


def signal_weight(amp: ComplexArray) -> FloatArray:
    """Per state of ``amp`` ``(states, classes, isochromats)``: a bound on the most the state can add to a
    voxel's signal, now or later, relative to the voxel's equilibrium magnetization -- the root mean square
    of its magnitudes over the isochromats (at least their mean: a voxel's signal is the mean over its
    isochromats, and RF rotations and relaxation never enlarge an isochromat's magnetization), the largest
    over the classes. (The root mean square, not the mean: summing squares of the real and imaginary
    parts costs 40 % of taking magnitudes.)

    Why not the largest magnitude at any isochromat: isochromats at the edges of a slice profile carry
    pathways (every pulse is partial there) whose magnitude at that one isochromat is up to ``S`` times
    their effect on the signal; keeping them by their peak held se_2d at 32,000 states for nothing."""
    if amp.shape[1] == 0 or amp.shape[2] == 0:  # no tissue in the plane imaged: nothing to weigh
        return np.zeros(amp.shape[0], dtype=np.float64)
    if amp.shape[2] == 1:
        # One isochromat (a 3D phantom): |amp|² elementwise, 4-5x faster than the einsum below, whose inner
        # axis would hold only (re, im) -- and the same sum of the same two squares, bit for bit.
        one = amp[:, :, 0]
        power = one.real * one.real
        power += one.imag * one.imag
    else:
        parts = amp.view(amp.real.dtype).reshape(amp.shape[0], amp.shape[1], -1)  # (re, im) pairs
        power = np.einsum("ijk,ijk->ij", parts, parts) / amp.shape[2]
    return np.sqrt(power.max(axis=1)).astype(np.float64)


#: Merged states per block of :func:`_gather_rotate` (x 279 classes x 8 bytes: ~140 kB an array, within a
#: core's L2 cache).
_ROTATE_BLOCK_BYTES = 1 << 17


def _gather_rotate(f: ComplexArray, z: ComplexArray, rows: list[npt.NDArray[np.intp]],
                   coefficients: tuple[npt.NDArray[Any], ...]) -> tuple[ComplexArray, ComplexArray, FloatArray,
                                                                        FloatArray]:
    """The rotation of :meth:`PhaseGraph.rotate` when each merged state has at most one state of each kind:
    ``rows`` are, per merged state, the row of ``f`` (at ``k``), of ``f`` (conjugated, at ``-k``) and of
    ``z`` that land on it (one past the end where none); ``coefficients`` are ``(a, b, c, d / 2, e)``.
    Returns the new ``F`` and ``Z`` and their :func:`signal_weight`.

    Block by block of merged states: the gathered rows and the products stay in the cache instead of going
    through memory as whole arrays a dozen times (gre_3d: 1700 merged states x 279 classes, 4x faster);
    every element sees the same operations in the same order as the whole-array expression, bit for bit."""
    a, b, c, half_d, e = coefficients
    conj_half_d = np.conj(half_d)
    f_ext, z_ext = _with_zero_row(f), _with_zero_row(z)
    n_u = rows[0].size
    new_f = np.empty((n_u, *f.shape[1:]), f.dtype)
    new_z = np.empty_like(new_f)
    mag_f, mag_z = np.empty(n_u), np.empty(n_u)
    block = max(1, _ROTATE_BLOCK_BYTES // max(1, f.itemsize * int(np.prod(f.shape[1:]))))
    scratch = np.empty((block, *f.shape[1:]), f.dtype)
    for lo in range(0, n_u, block):
        part = slice(lo, lo + block)
        f_u, z_u = f_ext[rows[0][part]], z_ext[rows[2][part]]
        conj_u = np.conj(f_ext[rows[1][part]])
        out_f, out_z, tmp = new_f[part], new_z[part], scratch[:f_u.shape[0]]
        np.multiply(a, f_u, out=out_f)
        out_f += np.multiply(b, conj_u, out=tmp)
        out_f += np.multiply(c, z_u, out=tmp)
        np.multiply(e, z_u, out=out_z)
        out_z += np.multiply(half_d, f_u, out=tmp)
        out_z += np.multiply(conj_half_d, conj_u, out=tmp)
        mag_f[part] = _block_weight(out_f)
        mag_z[part] = _block_weight(out_z)
    return new_f, new_z, mag_f, mag_z


def _block_weight(amp: ComplexArray) -> FloatArray:
    """:func:`signal_weight` of a contiguous block, bit for bit; with one isochromat as the squares of the
    (re, im) pairs side by side (fewer, contiguous passes: it runs on every block of every rotation)."""
    if amp.shape[2] != 1 or amp.shape[1] == 0 or not amp.flags.c_contiguous:
        return signal_weight(amp)
    squares = amp.view(amp.real.dtype)  # (states, classes, 2)
    squares = squares * squares
    power = squares[:, :, 0] + squares[:, :, 1]
    return np.sqrt(power.max(axis=1))


def _merge_keys(k: FloatArray, tau: FloatArray | None) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Which of the moments ``k`` ``(n, 3)`` (and dephasing times ``tau``, if given) are one state: returns
    ``(first, inverse)``, the first row of each merged state and each row's merged state, as
    ``np.unique(..., return_index=True, return_inverse=True)`` does.

    Two rows are one state when they are one on every axis (:func:`_cluster`)."""
    key = _cluster(k[:, 0], MOMENT_QUANTUM)
    size = int(key.max(initial=0)) + 1  # key < size
    axes = [(k[:, 1], MOMENT_QUANTUM), (k[:, 2], MOMENT_QUANTUM)]
    if tau is not None:
        axes.append((tau, TIME_QUANTUM))
    for values, quantum in axes:
        ids = _cluster(values, quantum)
        n_ids = int(ids.max(initial=0)) + 1
        if size * n_ids >= 1 << 62:  # rank the keys so far first: no int64 overflow
            _, key = np.unique(key, return_inverse=True)
            key, size = key.reshape(-1), int(key.max(initial=0)) + 1
        key, size = key * n_ids + ids, size * n_ids
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _cluster(values: FloatArray, quantum: float) -> npt.NDArray[np.int64]:
    """Cluster ids of ``values`` on one axis: values in one bin of width ``quantum`` are one, and so are
    values in neighbouring bins no more than ``quantum * JOIN`` apart.

    Why not rounding alone: moments on a lattice (multiples of 1/FOV, often binary fractions such as
    15.625 /m) sit exactly on the bins' boundaries, so two copies of one moment that differ by a float
    rounding (1e-11 /m) fell into two bins and were never merged -- a fifth of se_2d's states were such
    twins. Joining across a boundary only what a rounding error apart keeps every cluster within about one
    quantum (a chain would need values within ``quantum * JOIN`` of successive boundaries)."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    bins = np.floor(v / quantum)
    new = np.ones(v.size, bool)
    new[1:] = (bins[1:] != bins[:-1]) & (np.diff(v) > quantum * JOIN)
    ids = np.empty(v.size, np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids


def _rows_of(index: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.intp] | None:
    """For each of ``n`` merged states, the row of ``index`` that lands on it (``index.size`` where none);
    None when two rows land on one."""
    rows = np.full(n, index.size, np.intp)
    rows[index] = np.arange(index.size)
    if np.count_nonzero(rows < index.size) != index.size:
        return None
    return rows


def _with_zero_row(amp: ComplexArray) -> ComplexArray:
    """``amp`` with a row of zeros appended (what :func:`_rows_of` points at where no state lands)."""
    return np.concatenate((amp, np.zeros((1, *amp.shape[1:]), amp.dtype)))


def _add_rows(out: ComplexArray, index: npt.NDArray[np.intp], values: ComplexArray) -> None:
    """``out[index[i]] += values[i]`` for every row ``i``, rows with a repeated index summed."""
    if not index.size:
        return
    counts = np.bincount(index, minlength=out.shape[0])
    if counts.max() <= 1:
        out[index] += values
        return
    # Each pass adds the first remaining row of every index (so none repeats within one fancy-index +=).
    rows = np.argsort(index, kind="stable")
    while rows.size:
        keys = index[rows]
        first = np.concatenate(([True], keys[1:] != keys[:-1]))
        out[keys[first]] += values[rows[first]]
        rows = rows[~first]
