"""Reference k-space and tissue signals of an RF-spoiled 2D gradient echo on a tissue-map phantom, from the
EPG (:mod:`.epg`) of the schedule in its ``.seq`` file (:mod:`.seqread`).

Model (and why it is exact for a Cartesian spoiled GRE on band-limited voxels): every TR has the same
gradient moment (phase encoding is rewound), so one EPG order is one TR's moment. That moment's read part
(half the read-out plus the read spoiler) exceeds 1/voxel, so at every read-out sample only order 0 lies
inside a voxel's band: the signal of tissue ``c`` is ``S_c(t)`` times the Fourier transform of its
proton-density map at the sample's ``k``. The slice profile is resolved by positions through the phantom's
slab, each with the rotation its own Bloch simulation of the pulse gives (:mod:`.rotation`), with the
slice gradient's precession before and after the pulse centre factored out (it is part of the TR's
moment). Relaxation: exact exponentials; T2 decay runs on from the pulse centre to each sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import epg
from .rotation import pulse_rotation, rz
from .seqread import GreSchedule

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]


@dataclass(frozen=True)
class Tissues:
    """Tissue classes of a 2D phantom: ``pd`` maps ``(C, ny, nx)``, ``t1_s``/``t2_s`` ``(C,)``, names."""

    names: tuple[str, ...]
    pd: FloatArray
    t1_s: FloatArray
    t2_s: FloatArray
    label: npt.NDArray[np.int64]  # (ny, nx): class index, -1 outside the object


def tissues_of(pd: FloatArray, t1: FloatArray, t2: FloatArray, named: dict[str, tuple[float, float]]) -> Tissues:
    """Split maps into classes of equal (T1, T2); ``named`` maps a tissue name to its (T1, T2)."""
    inside = pd > 0
    pairs = sorted({(float(a), float(b)) for a, b in zip(t1[inside], t2[inside], strict=True)})
    label = np.full(pd.shape, -1, np.int64)
    maps, names = [], []
    for c, (a, b) in enumerate(pairs):
        mask = inside & np.isclose(t1, a) & np.isclose(t2, b)
        label[mask] = c
        maps.append(np.where(mask, pd, 0.0))
        names.append(next((n for n, v in named.items() if np.allclose(v, (a, b))), f"T1={a:g},T2={b:g}"))
    return Tissues(tuple(names), np.array(maps), np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]),
                   label)


def slice_operators(s: GreSchedule, slab_m: float, positions: int = 64) -> tuple[FloatArray, ComplexArray]:
    """Positions through the slab (midpoints) and the EPG operator of the excitation (phase 0) at each,
    referred to the pulse centre."""
    z = ((np.arange(positions) + 0.5) / positions - 0.5) * slab_m
    full = pulse_rotation(s.b1_hz, s.b1_dt_s, np.outer(s.gz_during_rf_hz_m, z))
    centred = rz(-2 * np.pi * s.rf_from_centre_moment * z) @ full @ rz(-2 * np.pi * s.rf_to_centre_moment * z)
    return z, epg.operator_of_rotation(centred)


def tissue_signals(s: GreSchedule, tissues: Tissues, slab_m: float, positions: int = 64) -> ComplexArray:
    """``S[adc, sample, class]``: each class's signal (proton density 1, slab-averaged) at every ADC sample,
    demodulated with the ADC phase, in the project's convention (conjugate of Weigel's frame)."""
    z, ops = slice_operators(s, slab_m, positions)
    n_tr = s.rf_centre_s.size
    omega = epg.equilibrium(n_tr + 1, (z.size, tissues.t1_s.size))
    out = np.zeros((*s.adc_t_s.shape, tissues.t1_s.size), np.complex128)
    rows_of = {tr: np.flatnonzero(s.adc_tr == tr) for tr in np.unique(s.adc_tr)}
    for n in range(n_tr):
        live = omega[:, : n + 2]  # after n shifts only orders 0..n can be populated (a view: updated in place)
        live[...] = epg.rf(live, epg.phase_shifted(ops, float(s.rf_phase_rad[n])))
        for row in rows_of.get(n, ()):
            out[row] = _echo(omega[0, 0], s, row, z, tissues.t2_s)
        if n + 1 < n_tr:
            dt = float(s.rf_centre_s[n + 1] - s.rf_centre_s[n])
            live[...] = epg.shift(epg.relax(live, np.exp(-dt / tissues.t1_s), np.exp(-dt / tissues.t2_s)))
    return np.conj(out)


def _echo(f0: ComplexArray, s: GreSchedule, row: int, z: FloatArray, t2: FloatArray) -> ComplexArray:
    """Order 0 (``(Z, C)``) read at the samples of ADC ``row``: slab average with the z moment since the
    pulse centre, T2 decay since then, ADC phase (Weigel's frame: states carry exp(+2πi k·r))."""
    t = s.adc_t_s[row] - s.rf_centre_s[s.adc_tr[row]]
    kz = s.adc_k[row, :, 2]
    slab = np.exp(2j * np.pi * np.outer(kz, z)) @ f0 / z.size  # (samples, C)
    return slab * np.exp(-t[:, None] / t2[None, :]) * np.exp(-1j * s.adc_phase_rad[row])


def dft_maps(maps: FloatArray, k: FloatArray, voxel_m: tuple[float, float]) -> ComplexArray:
    """``Σ_r map_c(r) exp(-2πi k·r)`` for ``k`` of shape ``(adc, samples, >=2)`` (1/m) on the phantom grid
    (voxel ``[j, i]`` at ``((i - nx//2) dx, (j - ny//2) dy)``). Returns ``(adc, samples, C)``."""
    _, ny, nx = maps.shape
    x = (np.arange(nx) - nx // 2) * voxel_m[0]
    y = (np.arange(ny) - ny // 2) * voxel_m[1]
    out = np.empty((*k.shape[:2], maps.shape[0]), np.complex128)
    # Read-outs repeat their kx: x is contracted once per pattern (equal to 1e-6 1/m: a phase error of
    # 2π 1e-6 x 0.13 m, below 1e-6 rad).
    along_x: dict[bytes, ComplexArray] = {}
    for row in range(k.shape[0]):
        key = np.round(k[row, :, 0], 6).tobytes()
        if key not in along_x:
            along_x[key] = np.einsum("cyx,sx->csy", maps, np.exp(-2j * np.pi * np.outer(k[row, :, 0], x)))
        ey = np.exp(-2j * np.pi * np.outer(k[row, :, 1], y))  # (samples, ny)
        out[row] = np.einsum("csy,sy->sc", along_x[key], ey)
    return out


def reference_kspace(s: GreSchedule, tissues: Tissues, voxel_m: tuple[float, float, float],
                     unit_per_voxel: float = 1.0) -> tuple[ComplexArray, ComplexArray]:
    """``(kspace (adc, samples), S (adc, samples, class))``: the reference k-space of the phantom, each
    voxel of proton density 1 contributing ``unit_per_voxel`` when fully transverse."""
    signals = tissue_signals(s, tissues, voxel_m[2])
    return unit_per_voxel * np.einsum("asc,asc->as", signals, dft_maps(tissues.pd, s.adc_k, voxel_m[:2])), signals
