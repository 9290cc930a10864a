"""The read-out: the signal of the phase graph's transverse states at the ADC sample times.

A sample at time ``t`` is, over tissue classes ``c`` and transverse states ``j`` (``graph.py``),

    s(t) = Σ_c decay_c(t) Σ_j slab_jc(k_jz + Δm_z(t)) · exp(-R2′_c |τ_j + Δt|) · P_c(k_j,xy + Δm_xy(t), τ_j + Δt)

with ``Δm(t)`` the gradient moment and ``Δt`` the time since the states' time, ``decay_c`` the class's
relaxation and off-resonance (given by the caller), ``R2′_c = 1/T2′`` the class's Lorentzian spread of
off-resonance inside a voxel (acting by the dephasing time: a spin echo refocuses it), ``slab_jc`` the
state's amplitudes integrated through the slab (2D: isochromats, piecewise linear in z and integrated
exactly against the z phase; 3D: the class's plane) and ``P_c(k, τ) = Σ_v pd_v exp(2πi (k·r_v + δf_v τ))``
the Fourier sum of the class's proton density over the in-plane grid (``δf`` the voxel's off-resonance
relative to its class). Voxels are band-limited: a state contributes only while its moment is within
``±1/(2 voxel)`` on each resolved axis.

How it is computed, and why (the cost is in ``P``, a sum over every voxel):

* States with the same in-plane moment (and dephasing time, when it matters) share ``P``: their slab
  amplitudes are summed first (one matrix product per state, ``(C, S) @ (S, T)``, since the z phase
  factorises into the state's and the sample's part).
* **Separable read-outs** (Cartesian: ``Δm_y`` or ``Δm_x`` constant through the window): ``P`` factorises
  into ``exp(2πi k_y y)`` and ``exp(2πi k_x x)``; all groups of a window go through two matrix products, and
  the samples' phasors are shared by the groups and cached (Cartesian scans repeat them every TR).
  **Nearly separable read-outs** (Cartesian under a shim's or the magnet's small static gradient: the
  "constant" moment drifts by a few thousandths of a cycle across the field of view): its phasor is a
  Taylor series around a reference moment (error < 1e-9 of ``Σ pd``), each term separable -- a few matrix
  products instead of the NUFFT, whose gather of ``width²`` taps of every map per sample took two thirds
  of gre_3d's run (279 plane maps of 128 x 128). The reference is quantised, so the first products are
  a function of it and are cached: a 3D scan's partitions repeat every line's moment.
* **Other read-outs** (radial, spiral, oblique): a type-2 non-uniform FFT of the proton-density maps
  (``nufft.py``, error < 1e-9 of ``Σ pd``), ``width²`` per point instead of ``nx·ny``; or, when the maps
  are many and sparse (classes split into strips along a pulse's in-plane gradient, e.g. a linear B0
  inhomogeneity during a non-selective pulse), the sum over their nonzero voxels only (exact, ``nnz`` per
  point: the classes share no voxel, so at most the object's voxels, whatever the number of classes).
* **Off-resonance varying inside a class**: ``P`` depends on ``τ`` too; a Taylor series in time around the
  middle of short chunks (error < 1e-7), each term separable or summed over the nonzero voxels (the terms
  share the points' phasors).
* **Receive arrays** (``sens``: each channel's sensitivity on each class's plane): channel ``n`` sees
  ``P_nc``, the Fourier sum of ``sens_n · pd`` instead of ``pd``. The slab sums, the decay and the phase
  graph are the channels' common part and are computed once; only ``P`` is summed per channel and class
  (the maps are stacked, ``N·C`` of them, through the same products), so ``N`` channels cost up to ``N``
  times the plane sums and nothing more.
* **Grids off the isocentre** (a phantom posed on an off-centre slice): the positions ``x``, ``y`` carry the
  offset; the NUFFT, which assumes a centred grid, gets it back as a phase ``exp(2πi (kx x0 + ky y0))``.

Conventions: the internal (mirror) ones of ``bloch.py``: ``Mxy`` turns as ``exp(+2πi f t)``, and a voxel of
proton density 1, fully transverse and in phase through its slab, contributes 1 — ``bloch.py`` conjugates
the samples and weights them by the voxel volume (mm³) on output.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from .nufft import WIDTH, PlaneNufft, plane_direct
from .planesums import Drift, MapArray, SparseMaps, taylor_terms, times, unique_rows

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
AnyComplexArray = npt.NDArray[np.complexfloating[Any, Any]]  # the phase graph's amplitudes: complex64

#: A state counts as inside a voxel's band while |moment| * voxel size <= 0.5, with a slack of 1e-3 of the
#: band: the edge line of a scan whose grid equals the phantom's (k = -1/(2 voxel)) must not vanish when a
#: shim's small static gradient or Pulseq's rounding moves it a hair outside (it did: a zero line).
BAND = 0.5 + 1e-3
#: Taylor series in time for off-resonance inside a class: largest argument per chunk, error bound.
_TAYLOR_MAX_ARG = 1.0
_TAYLOR_TOL = 1e-7
#: A read-out axis counts as constant through a window when its moment varies by less than this many
#: cycles across the field of view (a phase error below 2π·1e-9).
_CONSTANT_CYCLES = 1e-9
#: BLAS threads for the read-out's matrix products. They are small (hundreds by hundreds): a second thread
#: gains little on an idle machine, and on a loaded one OpenBLAS's waiting threads spin against the other
#: processes -- tse_2d's physics took 183 s of wall time (63 s CPU) with 2 threads against 21 s (7 s CPU)
#: with 1 at load average 12 (benchmarks/bench_physics.py; measured before this module).
BLAS_THREADS = 1
#: A read-out axis whose moment drifts through a window (a static gradient on a Cartesian read-out) goes the
#: separable way while the drift's phase across the field of view, ``2π max|δk| max|r - r_c|``, is at most
#: this (rad; beyond, the NUFFT: each Taylor term costs a separable product); the series' error bound is
#: :data:`.planesums.DRIFT_TOL`.
_DRIFT_MAX_ARG = 1.0
#: Bytes of cached drift rows (gre_3d: 4 terms x 279 maps x 128 voxels, 2.3 MB a line; it reads 64 lines).
_DRIFT_CACHE_BYTES = 192 << 20
#: Cached sample phasors (the moments of a Cartesian read-out repeat every TR).
_PHASOR_CACHE = 256
#: The sparse plane sum (:class:`SparseMaps`) is taken instead of the NUFFT while the maps' nonzero voxels are
#: fewer than this fraction of the NUFFT's taps (``width²`` per map) per point. A voxel of the sparse sum cost
#: 5-6 ns, a tap of the NUFFT 3.4-4 ns with the 6 classes of shepp_logan(64) and (128) (best of 3, 4096 points),
#: and a tap grows dearer with the maps (221 classes: ~50 ns, its gather no longer in cache); the sparse
#: sum also needs no set-up (the NUFFT's FFT of 447 maps took 18 s at 128 x 128).
_SPARSE_FRACTION = 0.5
#: Elements (groups x classes x samples, and states x classes x isochromats x samples) per block: bounds
#: the intermediate arrays to ~32 MB.
_BLOCK_ELEMENTS = 1 << 21


_controller: ThreadpoolController | None = None


def _blas_limit() -> AbstractContextManager[object]:
    """A context in which BLAS uses :data:`BLAS_THREADS` threads (the libraries are looked up once)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=BLAS_THREADS, user_api="blas")


class Readout:
    """The signal of a phase graph's transverse states for one phantom geometry.

    ``pd_map`` ``(C, ny, nx)``: each class's proton density on the in-plane grid; ``dfr_map`` the same shape:
    each voxel's off-resonance relative to its class (Hz), ``dfr_max`` its largest magnitude (0: none);
    ``r2p`` ``(C,)`` each class's 1/T2′ (1/s; 0: none);
    ``x``, ``y`` the in-plane voxel positions (m), ``voxel`` ``(dx, dy, dz)`` (m); ``iso_z`` the isochromat
    positions through a slab (m; evenly spaced, around its centre), ``z_class`` each class's plane (m);
    ``ndim`` 2 for slabs (z resolved by the isochromats; each class's slab centred on its plane) or 3 (z
    resolved by the planes). ``method``: ``"fast"`` (separable products or the NUFFT) or ``"direct"`` (every
    plane sum voxel by voxel: the reference the tests compare against; slow). ``sens`` ``(N, C, ny, nx)``
    (complex, optional): each receive channel's sensitivity over each class's plane, in the internal
    (mirror) convention, i.e. the conjugate of the sensitivity the output carries; None: one channel of
    sensitivity 1 (the body coil).
    """

    def __init__(self, pd_map: FloatArray, dfr_map: FloatArray, dfr_max: float, r2p: FloatArray, x: FloatArray,
                 y: FloatArray, voxel: tuple[float, float, float], iso_z: FloatArray, z_class: FloatArray, ndim: int,
                 method: str = "fast", sens: ComplexArray | None = None) -> None:
        if method not in ("fast", "direct"):
            raise ValueError(f"method must be 'fast' or 'direct', got {method!r}")
        self.method = method
        self.n_classes = pd_map.shape[0]
        self.channels = 1 if sens is None else int(sens.shape[0])
        self._n_maps = self.n_classes * self.channels  # the plane sums: one per channel and class
        if sens is not None:  # channel-major stack of the maps each channel sees
            pd_map = (sens * pd_map[None]).reshape(self._n_maps, *pd_map.shape[1:])
            dfr_map = np.tile(dfr_map, (self.channels, 1, 1))
        self._pd = pd_map
        # The maps laid out for the separable products, made when first needed (:meth:`_layout`): classes split
        # along a pulse's in-plane gradient rebuild the read-out with hundreds of maps (three copies of 447 at
        # 128 x 128 took 0.4 s per rebuild) whose windows are seldom separable.
        self._layouts: dict[tuple[str, bool], MapArray] = {}
        self._dfr = dfr_map
        self._dfr_max = dfr_max
        self._r2p = np.asarray(r2p, np.float64)
        self._r2p_maps = np.tile(self._r2p, self.channels)
        # States of one moment but different dephasing times differ where the time matters.
        self._track_time = dfr_max > 0 or bool(self._r2p.any())
        self._x, self._y = x, y
        self._voxel = voxel
        self._iso_z = iso_z
        self._iso_step = float(iso_z[1] - iso_z[0]) if iso_z.size > 1 else float(voxel[2])
        self._z_class = z_class
        # Slabs (ndim 2) whose classes sit off z = 0: a grid off the isocentre, a stack of slabs.
        self._z_shift = ndim == 2 and bool(np.any(z_class != 0))
        self._ndim = ndim
        self._band = [0, 1] if ndim == 2 else [0, 1, 2]
        self._extent = (float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0)))
        self._centre = (float(x[x.size // 2]), float(y[y.size // 2])) if x.size and y.size else (0.0, 0.0)
        self._nufft: PlaneNufft | None = None
        self._sparse: SparseMaps | None = None
        # Drift rows by (maps, quantised reference moment, terms): a function of the key alone, so kept
        # across scans (reset does not clear them).
        self._drift_cache: dict[tuple[str, int, int], ComplexArray] = {}
        self._drift_bytes = 0
        self.reset()

    def reset(self) -> None:
        """Forget the cached phasors (kept by moment rounded to 1e-6: one kept from an earlier scan agrees
        with one computed afresh only to rounding, so a scan's data would depend on the scans before it)."""
        self._phasors: dict[tuple[int, float, float, bytes], ComplexArray] = {}

    # ------------------------------------------------------------------------------------------------------

    def signal(self, f_k: FloatArray, f_tau: FloatArray, f: AnyComplexArray, dm: FloatArray, dt: FloatArray,
               decay: ComplexArray) -> ComplexArray:
        """The (not demodulated) signal at ``T`` samples of the transverse states ``f`` ``(J, C, S)`` at
        moments ``f_k`` ``(J, 3)`` (1/m) and dephasing times ``f_tau`` ``(J,)`` (s); ``dm`` ``(3, T)`` the
        moment and ``dt`` ``(T,)`` the time of each sample since the states' time; ``decay`` ``(C, T)``
        each class's relaxation and off-resonance over ``dt``. Shape ``(channels, T)``."""
        with _blas_limit():
            return self._signal(f_k, f_tau, f, dm, dt, decay)

    def _signal(self, f_k: FloatArray, f_tau: FloatArray, f: AnyComplexArray, dm: FloatArray, dt: FloatArray,
                decay: ComplexArray) -> ComplexArray:
        n_t = dt.size
        out = np.zeros((self.channels, n_t), np.complex128)
        if f.shape[0] == 0 or self.n_classes == 0 or n_t == 0:
            return out
        candidates = self._in_band(f_k, dm)
        if not candidates.size:
            return out
        # States with the same in-plane moment (and dephasing time, if it matters) share the plane sum -- in 3D
        # too, whatever their k_z: its phase and its band are the slab sums' (``_slab_sum``).
        key = np.round(f_k[candidates][:, :2] / 1e-9).astype(np.int64)
        if self._track_time:
            key = np.column_stack((key, np.round(f_tau[candidates] / 1e-12).astype(np.int64)))
        first, group = unique_rows(key)
        heads = candidates[first]  # one state per group: its moment and dephasing time
        kappa = f_k[heads][:, :, None] + dm[None, :, :]  # (G, 3, T)
        ok = np.ones((heads.size, n_t), bool)
        for axis in (0, 1):
            ok &= np.abs(kappa[:, axis]) * self._voxel[axis] <= BAND
        live = np.flatnonzero(ok.any(axis=1))
        if not live.size:
            return out
        # Groups in blocks, so that the (groups, classes, samples) arrays stay bounded.
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(heads.size + 1))
        per_block = max(1, _BLOCK_ELEMENTS // (self._n_maps * n_t))
        for lo in range(0, live.size, per_block):
            sel = live[lo:lo + per_block]
            members = np.concatenate([order[bounds[g]:bounds[g + 1]] for g in sel])
            owner = np.repeat(np.arange(sel.size), bounds[sel + 1] - bounds[sel])
            slab = self._slab_sum(f_k[candidates[members], 2], f[candidates[members]], owner, sel.size, dm[2])
            tau0 = f_tau[heads[sel]]
            plane = self._plane(kappa[sel, 0], kappa[sel, 1], tau0, dt, ok[sel])
            if self._r2p.any():  # T2′: the Lorentzian spread inside the voxel, by the dephasing time
                plane *= np.exp(-self._r2p_maps[None, :, None] * np.abs(tau0[:, None] + dt[None, :])[:, None, :])
            if self.channels == 1:
                out[0] += np.einsum("gct,ct,gct->t", slab, decay, plane)
            else:  # the channels share the slab sums and the decay
                out += np.einsum("gct,ct,gnct->nt", slab, decay,
                                 plane.reshape(sel.size, self.channels, self.n_classes, n_t))
        return out

    def _in_band(self, f_k: FloatArray, dm: FloatArray) -> npt.NDArray[np.intp]:
        """The states whose moment comes within the voxels' band at some sample."""
        inside = np.ones(f_k.shape[0], bool)
        for axis in self._band:
            half = BAND / self._voxel[axis]
            inside &= (f_k[:, axis] + dm[axis].max() >= -half) & (f_k[:, axis] + dm[axis].min() <= half)
        return np.flatnonzero(inside)

    # ------------------------------------------------------------------------------------------------------
    # Through the slab
    # ------------------------------------------------------------------------------------------------------

    def _slab_sum(self, kz: FloatArray, f: AnyComplexArray, owner: npt.NDArray[np.intp], n_groups: int,
                  dm_z: FloatArray) -> ComplexArray:
        """``Σ_{j in g} Σ_s F_j[c, s] w_s(kz_j + dm_z)`` per group ``g`` (``owner[j]``): the transverse
        amplitudes integrated through the slab (2D: isochromat samples, piecewise linear in z, integrated
        exactly against the z phase) or taken at the class planes (3D); shape ``(G, C, T)``."""
        n_t = dm_z.size
        out = np.zeros((n_groups, self.n_classes, n_t), np.complex128)
        # exp(2πi z (kz + dm_z)) = exp(2πi z kz) exp(2πi z dm_z): a state factor and a sample factor.
        z = self._iso_z if self._ndim == 2 else self._z_class
        sample = np.exp(2j * np.pi * np.outer(z, dm_z))  # (S, T) or (C, T)
        step = max(1, _BLOCK_ELEMENTS // max(1, f.shape[1] * f.shape[2] * n_t))
        for lo in range(0, kz.size, step):
            kc = kz[lo:lo + step]
            state = np.exp(2j * np.pi * np.outer(kc, z))  # (J, S) or (J, C)
            if self._ndim == 2:
                amp = np.matmul(f[lo:lo + step] * state[:, None, :], sample)  # (J, C, T)
                total = kc[:, None] + dm_z[None, :]
                amp *= (np.sinc(total * self._iso_step) ** 2 / self._iso_z.size)[:, None, :]
                if self._z_shift:  # each class's slab at its own plane: the isochromats' z plus its centre
                    amp *= np.exp(2j * np.pi * total[:, None, :] * self._z_class[None, :, None])
            else:
                amp = (f[lo:lo + step, :, 0] * state)[:, :, None] * sample[None, :, :]
                # The band along z, state by state: a group holds states of one in-plane moment only.
                amp *= (np.abs(kc[:, None] + dm_z[None, :]) * self._voxel[2] <= BAND)[:, None, :]
            own = owner[lo:lo + step]  # sorted: each group's states are consecutive
            starts = np.flatnonzero(np.concatenate(([True], own[1:] != own[:-1])))
            out[own[starts]] += np.add.reduceat(amp, starts, axis=0)
        return out

    # ------------------------------------------------------------------------------------------------------
    # Over the plane
    # ------------------------------------------------------------------------------------------------------

    def _plane(self, kx: FloatArray, ky: FloatArray, tau0: FloatArray, dt: FloatArray,
               ok: npt.NDArray[np.bool_]) -> ComplexArray:
        """``P_c`` per group at the moments ``kx``, ``ky`` ``(G, T)`` (1/m) and dephasing times
        ``tau0 + dt``, 0 where ``ok`` is False (outside the band); shape ``(G, C, T)``."""
        if self._dfr_max > 0:
            out = np.zeros((kx.shape[0], self._n_maps, kx.shape[1]), np.complex128)
            for g in range(kx.shape[0]):
                sel = np.flatnonzero(ok[g])
                out[g][:, sel] = self._plane_taylor(kx[g, sel], ky[g, sel], tau0[g] + dt[sel])
            return out
        if self.method == "direct":
            return self._scatter(plane_direct(self._pd, self._x, self._y, kx[ok], ky[ok]), ok)
        constant = self._constant_axis(kx[0], ky[0])
        if constant == 1:
            out = self._separable(None, ky, self._y, kx, self._x, "rows")
        elif constant == 0:
            out = self._separable(None, kx, self._x, ky, self._y, "cols")
        elif self._sparse_wins():
            return self._scatter(self._sparse_maps()(kx[ok], ky[ok]), ok)
        else:
            if self._nufft is None:
                self._nufft = PlaneNufft(self._pd, self._voxel[0], self._voxel[1])
            values = self._nufft(kx[ok], ky[ok])
            if self._centre != (0.0, 0.0):  # the NUFFT's grid is centred on 0: shift it to where it is
                values = values * np.exp(2j * np.pi * (kx[ok] * self._centre[0] + ky[ok] * self._centre[1]))[:, None]
            return self._scatter(values, ok)
        out *= ok[:, None, :]
        return out

    def _sparse_maps(self) -> SparseMaps:
        if self._sparse is None:
            self._sparse = SparseMaps(self._pd, self._x, self._y, self._dfr)
        return self._sparse

    def _sparse_wins(self) -> bool:
        """Whether a non-separable window's plane sums are cheaper voxel by voxel over the maps' nonzero
        voxels than by the NUFFT (many sparse maps: classes split along a pulse's in-plane gradient)."""
        return self._sparse_maps().nnz < _SPARSE_FRACTION * self._n_maps * WIDTH**2

    def _constant_axis(self, kx: FloatArray, ky: FloatArray) -> int | None:
        """The in-plane axis (1: y, 0: x) whose moment stays put through the samples, if any, else the one
        whose moment drifts least, if a Taylor series of its drift (:meth:`_separable`) is short enough."""
        drift = (np.ptp(kx) * self._extent[0], np.ptp(ky) * self._extent[1])  # cycles at the farthest voxel
        if drift[1] <= _CONSTANT_CYCLES:
            return 1
        if drift[0] <= _CONSTANT_CYCLES:
            return 0
        axis = 1 if drift[1] <= drift[0] else 0
        # The series runs around the grid's centre: half the ptp each way, over half the grid's span.
        pos = self._y if axis == 1 else self._x
        if np.pi * np.ptp(ky if axis == 1 else kx) * 0.5 * np.ptp(pos) <= _DRIFT_MAX_ARG:
            return axis
        return None

    def _scatter(self, values: ComplexArray, ok: npt.NDArray[np.bool_]) -> ComplexArray:
        """``(P, C)`` values at the True entries of ``ok`` ``(G, T)`` into a ``(G, C, T)`` array of zeros."""
        out = np.zeros((ok.shape[0], ok.shape[1], self._n_maps), np.complex128)
        out[ok] = values
        return out.transpose(0, 2, 1)

    def _separable(self, maps: MapArray | None, k_const: FloatArray, pos_const: FloatArray, k_var: FloatArray,
                   pos_var: FloatArray, tag: str | None = None) -> ComplexArray:
        """``Σ maps[u, c, v] exp(2πi k_const[g, t] u) exp(2πi k_var[g, t] v)`` with ``maps`` laid out
        ``(n_u, C, n_v)`` (u the axis constant, or nearly, through the window; moments ``(G, T)`` in 1/m,
        positions in m); shape ``(G, C, T)``. Either ``maps`` (made for this call) or ``tag``, the read-out's
        own maps (:meth:`_layout`; their drift products are then cached, :meth:`_drift_rows`).

        All groups see the same sample moments ``k_var[g] - k_var[g, 0]``, so the sample phasors are shared
        (and cached) and each group adds only its offset's phasor. When ``k_const`` drifts (more than
        :data:`_CONSTANT_CYCLES`), ``exp(2πi k_const u)`` is a Taylor series (:class:`.planesums.Drift`): each term is
        one more row of the same two products, the groups taken in blocks that bound the terms' arrays."""
        n_g, n_t = k_var.shape
        drifts = np.ptp(k_const[0]) * float(np.abs(pos_const).max(initial=0.0)) > _CONSTANT_CYCLES
        if maps is None:
            assert tag is not None
            maps = self._layout(tag, real=drifts and not np.iscomplexobj(self._pd))
        n_u, n_c, n_v = maps.shape
        if not drifts:
            phasor = np.exp(2j * np.pi * np.outer(k_const[:, 0], pos_const))
            rows = (phasor @ maps.reshape(n_u, n_c * n_v)).reshape(n_g, 1, n_c, n_v)
            return self._products(rows, k_var, pos_var)[:, 0]
        drift = Drift(k_const, pos_const)
        out = np.empty((n_g, n_c, n_t), np.complex128)
        step = max(1, _BLOCK_ELEMENTS // (drift.terms * n_c * max(n_v, n_t)))
        for lo in range(0, n_g, step):
            part = slice(lo, lo + step)
            rows = self._drift_rows(maps, drift, drift.ref[part], tag)
            out[part] = drift.sum(self._products(rows, k_var[part], pos_var), drift.delta[part])
        return out

    def _products(self, rows: ComplexArray, k_var: FloatArray, pos_var: FloatArray) -> ComplexArray:
        """The second product of :meth:`_separable`: ``rows`` ``(G, L, C, n_v)`` summed over ``v`` against
        ``exp(2πi k_var[g, t] v)``; shape ``(G, L, C, T)``."""
        n_g, n_l, n_c, n_v = rows.shape
        offset = k_var[:, 0]
        rows = rows * np.exp(2j * np.pi * np.outer(offset, pos_var))[:, None, None, :]
        samples = self._phasor(k_var[0] - offset[0], pos_var)  # (T, n_v)
        return (rows.reshape(n_g * n_l * n_c, n_v) @ samples.T).reshape(n_g, n_l, n_c, k_var.shape[1])

    def _drift_rows(self, maps: MapArray, drift: Drift, ref: npt.NDArray[np.int64],
                    tag: str | None) -> ComplexArray:
        """The first product of :meth:`_separable` under a drift, ``Σ_u maps[u] w_l(u)`` with the weights
        ``w_l`` of :meth:`.planesums.Drift.weights` at each group's reference ``ref``; shape ``(G, L, C, n_v)``.

        The rows are a function of the quantised reference, ``L`` and the maps alone, and are cached for the
        read-out's own maps (``tag``): a 3D Cartesian scan's partitions repeat every line's moment to a few
        1e-4 /m (a static gradient's), well within one quantum; a hit is bit for bit what a miss computes."""
        n_u, n_c, n_v = maps.shape
        found = []
        for r in ref.tolist():
            key = None if tag is None else (tag, r, drift.terms)
            hit = None if key is None else self._drift_cache.get(key)
            if hit is None:
                hit = times(drift.weights(r), maps.reshape(n_u, n_c * n_v)).reshape(drift.terms, n_c, n_v)
                if key is not None:
                    hit.flags.writeable = False  # shared by later windows
                    self._remember(key, hit)
            found.append(hit)
        return found[0][None] if len(found) == 1 else np.stack(found)  # one group (gre_3d): no copy

    def _layout(self, tag: str, real: bool) -> MapArray:
        """The read-out's maps laid out ``(n_u, C, n_v)``: ``"rows"`` (u = y) or ``"cols"`` (u = x), complex
        (for the plain separable product: BLAS multiplies complex by complex) or, for real maps, real (the
        drift rows: two real products, half the memory and the work). Made once, when first needed: gre_3d's
        279 maps on a 128 x 128 grid are 73 MB a complex layout."""
        if (tag, real) not in self._layouts:
            axes = (1, 0, 2) if tag == "rows" else (2, 0, 1)
            moved = self._pd.transpose(axes)
            if real:
                self._layouts[(tag, real)] = np.ascontiguousarray(moved, dtype=np.float64)
            else:
                self._layouts[(tag, real)] = np.ascontiguousarray(moved, dtype=np.complex128)
        return self._layouts[(tag, real)]

    def _remember(self, key: tuple[str, int, int], rows: ComplexArray) -> None:
        """Cache drift rows, forgetting the oldest past :data:`_DRIFT_CACHE_BYTES`."""
        self._drift_cache[key] = rows
        self._drift_bytes += rows.nbytes
        while self._drift_bytes > _DRIFT_CACHE_BYTES and len(self._drift_cache) > 1:
            self._drift_bytes -= self._drift_cache.pop(next(iter(self._drift_cache))).nbytes

    def _phasor(self, k: FloatArray, pos: FloatArray) -> ComplexArray:
        """``exp(2πi k ⊗ pos)``, cached: Cartesian scans repeat the same read-out moments every TR."""
        # By the positions too: x and y of one size differ when the voxels are not square or the grid is
        # off the isocentre (a posed phantom), and one axis' phasors would be taken for the other's.
        key = (pos.size, float(pos[0]), float(pos[-1]), np.round(k, 6).tobytes())
        hit = self._phasors.get(key)
        if hit is None:
            hit = np.exp(2j * np.pi * np.outer(k, pos))
            if len(self._phasors) >= _PHASOR_CACHE:
                self._phasors.pop(next(iter(self._phasors)))
            self._phasors[key] = hit
        return hit

    def _plane_taylor(self, kx: FloatArray, ky: FloatArray, tau: FloatArray) -> ComplexArray:
        """``Σ_v pd_v exp(2πi (kx x_v + ky y_v + δf_v τ))`` per class (``tau`` sorted), shape ``(C, T)``: a
        Taylor series in ``τ`` around the middle of chunks short enough for it, each term summed separably
        (a chunk along one axis), over the nonzero voxels (fast: the classes share no voxel) or directly."""
        n_t = kx.size
        out = np.zeros((self._n_maps, n_t), np.complex128)
        width = 2.0 * _TAYLOR_MAX_ARG / (2.0 * np.pi * self._dfr_max)
        i = 0
        while i < n_t:
            j = max(i + 1, int(np.searchsorted(tau, tau[i] + width, side="right")))
            mid = 0.5 * (tau[i] + tau[j - 1])
            delta = tau[i:j] - mid
            terms = taylor_terms(2.0 * np.pi * self._dfr_max * float(np.abs(delta).max()), _TAYLOR_TOL)
            powers = delta[None, :] ** np.arange(terms)[:, None]  # (L, chunk)
            constant = self._constant_axis(kx[i:j], ky[i:j]) if self.method == "fast" else None
            if constant is None and self.method == "fast":
                sparse = self._sparse_maps()
                # The terms' weights on the nonzero voxels only: pd e^{2πi δf mid} (2πi δf)^l / l!
                weights = np.empty((terms, sparse.nnz), np.complex128)
                weights[0] = sparse.values * np.exp(2j * np.pi * sparse.rates * mid)
                for ell in range(1, terms):
                    weights[ell] = weights[ell - 1] * (2j * np.pi * sparse.rates) / ell
                sums = sparse(kx[i:j], ky[i:j], weights)  # (L, chunk, C)
                out[:, i:j] = np.einsum("ltc,lt->ct", sums, powers)
            else:
                weight = self._pd * np.exp(2j * np.pi * self._dfr * mid)
                for ell in range(terms):
                    if ell:
                        weight = weight * (2j * np.pi * self._dfr) / ell
                    out[:, i:j] += self._plane_one(weight, kx[i:j], ky[i:j], constant) * powers[ell][None, :]
            i = j
        return out

    def _plane_one(self, maps: ComplexArray, kx: FloatArray, ky: FloatArray, constant: int | None) -> ComplexArray:
        """``Σ_{y,x} maps[c, y, x] exp(2πi (kx x + ky y))`` at the samples of one group, shape ``(C, T)``:
        separable along the ``constant`` axis (1: y, 0: x, as :meth:`_constant_axis`), else summed directly."""
        if constant == 1:
            return self._separable(maps.transpose(1, 0, 2), ky[None, :], self._y, kx[None, :], self._x)[0]
        if constant == 0:
            return self._separable(maps.transpose(2, 0, 1), kx[None, :], self._x, ky[None, :], self._y)[0]
        return plane_direct(maps, self._x, self._y, kx, ky).T
