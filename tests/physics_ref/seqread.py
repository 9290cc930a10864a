"""The schedule of an RF-spoiled gradient echo, read from its ``.seq`` file with pypulseq (the Pulseq
reference implementation, not scanctl's reader): per TR the RF pulse (shape, phase, centre time, slice
gradient), per ADC its TR, sample times, phase and k-space positions (pypulseq's ``calculate_kspace``:
moments since the last excitation, 1/m)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pypulseq as pp

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]


@dataclass(frozen=True)
class GreSchedule:
    """Everything an EPG of the sequence needs, in seconds, Hz, radians and 1/m."""

    rf_centre_s: FloatArray      # (n_tr,) time of each excitation's centre
    rf_phase_rad: FloatArray     # (n_tr,)
    b1_hz: ComplexArray          # (n,) the excitation's samples (phase 0), as the file gives them
    b1_dt_s: FloatArray          # (n,) each sample's duration
    gz_during_rf_hz_m: FloatArray  # (n,) the slice gradient at each sample
    rf_to_centre_moment: float   # z moment from the pulse start to its centre (1/m)
    rf_from_centre_moment: float  # z moment from the centre to the pulse end (1/m)
    adc_tr: npt.NDArray[np.int64]  # (n_adc,) index of the excitation each ADC follows
    adc_t_s: FloatArray          # (n_adc, samples) sample times
    adc_phase_rad: FloatArray    # (n_adc,)
    adc_k: FloatArray            # (n_adc, samples, 3) k at each sample, since the excitation centre (1/m)

    @property
    def tr_s(self) -> float:
        return float(np.median(np.diff(self.rf_centre_s)))

    @property
    def dummies(self) -> int:
        return int(self.adc_tr.min())

    @property
    def flip_rad(self) -> float:
        """The nominal (on-resonance, small-angle-exact for a block) flip: 2π |∫ b1 dt|."""
        return float(2 * np.pi * abs(np.sum(self.b1_hz * self.b1_dt_s)))


def read_gre(path: str | Path) -> GreSchedule:
    """Read an RF-spoiled GRE (one identical excitation per TR, any number of ADCs) from ``path``."""
    seq = pp.Sequence()
    with warnings.catch_warnings():  # pypulseq 1.5.0 warns about any 1.5.1 file, which it reads fine
        warnings.simplefilter("ignore", UserWarning)
        seq.read(str(path))
    starts = np.concatenate(([0.0], np.cumsum([seq.block_durations[k] for k in seq.block_events])))
    rf_t, rf_ph, adc_rows = [], [], []
    first_rf = None
    for i, block_id in enumerate(seq.block_events):
        block = seq.get_block(block_id)
        if block.rf is not None:
            centre, _ = pp.calc_rf_center(block.rf)
            rf_t.append(starts[i] + block.rf.delay + centre)
            rf_ph.append(block.rf.phase_offset)
            if first_rf is None:
                first_rf = (starts[i], block)
        if block.adc is not None:
            adc = block.adc
            t = starts[i] + adc.delay + (np.arange(adc.num_samples) + 0.5) * adc.dwell
            adc_rows.append((len(rf_t) - 1, t, adc.phase_offset))
    ktraj_adc, _, _, _, t_adc = seq.calculate_kspace()
    n_samples = adc_rows[0][1].size
    k = np.asarray(ktraj_adc).T.reshape(len(adc_rows), n_samples, 3)
    assert np.allclose(np.asarray(t_adc).reshape(len(adc_rows), n_samples), [r[1] for r in adc_rows], atol=1e-9)
    start, block = first_rf
    return GreSchedule(np.array(rf_t), np.array(rf_ph), *_pulse(block, seq.rf_raster_time), *_slice_moments(block),
                       np.array([r[0] for r in adc_rows]), np.array([r[1] for r in adc_rows]),
                       np.array([r[2] for r in adc_rows]), k)


def _pulse(block, raster_s: float) -> tuple[ComplexArray, FloatArray, FloatArray]:
    """Samples on the RF raster, their durations and the slice gradient at each. A pulse given with a time
    shape (pypulseq's block pulse: 2 points) is the piecewise-linear waveform through its points, as the
    Pulseq specification defines it; a pulse on the raster is taken as it is."""
    rf = block.rf
    t = np.asarray(rf.t, dtype=np.float64)
    signal = np.asarray(rf.signal, np.complex128)
    n = int(round(rf.shape_dur / raster_s))
    grid = (np.arange(n) + 0.5) * raster_s
    if t.size != n or not np.allclose(t, grid, atol=1e-3 * raster_s):
        signal = np.interp(grid, t, signal.real) + 1j * np.interp(grid, t, signal.imag)
    return signal, np.full(n, raster_s), _trap(block.gz, rf.delay + grid)


def _slice_moments(block) -> tuple[float, float]:
    """The slice gradient's moment from the pulse start to its centre and from the centre to its end."""
    rf = block.rf
    centre, _ = pp.calc_rf_center(rf)
    grid = np.linspace(rf.delay, rf.delay + rf.shape_dur, 20001)
    g = _trap(block.gz, grid)
    cum = np.concatenate(([0.0], np.cumsum((g[1:] + g[:-1]) / 2 * np.diff(grid))))
    mid = float(np.interp(rf.delay + centre, grid, cum))
    return mid, float(cum[-1] - mid)


def _trap(gz, t: FloatArray) -> FloatArray:
    """A trapezoid (or none) at block times ``t`` (Hz/m)."""
    if gz is None:
        return np.zeros_like(t)
    if gz.type != "trap":
        raise NotImplementedError(f"slice gradient of type {gz.type}")
    corners = gz.delay + np.cumsum([0.0, gz.rise_time, gz.flat_time, gz.fall_time])
    return np.interp(t, corners, [0.0, gz.amplitude, gz.amplitude, 0.0])
