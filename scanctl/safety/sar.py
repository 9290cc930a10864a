"""RF exposure predicted from a sequence's B1 waveforms: SAR on sliding windows, RF duty cycle and peak
power (docs/safety.md#sar).

Each RF pulse transmits ``E = watts_per_ut2 · Σ |B1 in µT|² · Δt_rf`` joules of forward power (the same
coil calibration the RF simulator and the runtime supervisor use), spread evenly over the pulse. The
body absorbs ``body_absorbed_fraction`` of it, the head ``head_absorbed_fraction``; SAR over a window is
the absorbed energy within the window divided by the window's length and the mass (the patient's weight,
or ``head_mass_fraction`` of it). A window may start anywhere, before or after the scan: a scan shorter
than the window is averaged over the whole window, as IEC 60601-2-33 averages over any 6 minutes. The
largest window energy is found exactly: with uniform power per pulse it is reached when a window edge
meets a pulse edge, so only those positions are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanctl.config.limits import RFSafety
from scanctl.hw.program import b1_squared_integrals
from scanctl.sequence.model import FloatArray, IntArray, Sequence
from scanctl.sequence.rf_samples import rf_event_samples


@dataclass(frozen=True)
class RFPulses:
    """Every RF pulse played: start and end (s), forward energy (J), peak forward power (W), block index."""

    start_s: FloatArray
    end_s: FloatArray
    energy_j: FloatArray
    peak_power_w: FloatArray
    block: IntArray

    @classmethod
    def of(cls, seq: Sequence, rf: RFSafety, gamma_hz_per_t: float) -> RFPulses:
        blocks = np.flatnonzero(seq.blocks.rf >= 0)
        rows = seq.blocks.rf[blocks]
        offsets, t_rel, shape = rf_event_samples(seq)
        power = np.abs(shape) ** 2  # of the unit shape
        raster = seq.rasters.rf_s
        integrals = b1_squared_integrals(offsets, t_rel, power, raster)
        filled = offsets[1:] > offsets[:-1]
        last = np.maximum(offsets[1:] - 1, 0)
        peaks = np.where(filled, np.maximum.reduceat(power, offsets[:-1]), 0.0) if power.size else integrals * 0
        ends = np.where(filled, t_rel[last], 0.0) if t_rel.size else integrals * 0
        ut2_per_hz2 = (1e6 / gamma_hz_per_t) ** 2
        amplitude2 = seq.rf.amplitude_hz[rows] ** 2 * ut2_per_hz2 * rf.watts_per_ut2  # W per unit shape²
        start = seq.block_start_s[blocks] + seq.rf.delay_s[rows]
        return cls(start_s=start, end_s=start + ends[rows] + 0.5 * raster, energy_j=amplitude2 * integrals[rows],
                   peak_power_w=amplitude2 * peaks[rows], block=blocks)


@dataclass(frozen=True)
class WindowPeak:
    """The largest average over windows of ``window_s``: the value, the window's start and its block."""

    window_s: float
    value: float
    start_s: float
    block: int


def window_peak(start_s: FloatArray, end_s: FloatArray, amount: FloatArray, window_s: float,
                block_start_s: FloatArray) -> WindowPeak:
    """The largest ``amount`` (spread evenly over each ``[start, end]``) inside any window of ``window_s``,
    divided by ``window_s``. Exact: candidate windows start or end at an interval's edge."""
    if start_s.size == 0 or not amount.any():
        return WindowPeak(window_s, 0.0, 0.0, 0)
    times, cumulative = _cumulative(start_s, end_s, amount)
    candidates = np.concatenate((start_s, end_s, start_s - window_s, end_s - window_s))
    inside = np.interp(candidates + window_s, times, cumulative) - np.interp(candidates, times, cumulative)
    i = int(np.argmax(inside))
    at = max(float(candidates[i]), 0.0)
    block = int(np.clip(np.searchsorted(block_start_s, at, side="right") - 1, 0, block_start_s.size - 2))
    return WindowPeak(window_s, float(inside[i]) / window_s, at, block)


def window_curve(start_s: FloatArray, end_s: FloatArray, amount: FloatArray, window_s: float,
                 t_s: FloatArray) -> FloatArray:
    """The average over the window ending at each of ``t_s`` (for plots)."""
    if start_s.size == 0:
        return np.zeros(t_s.size)
    times, cumulative = _cumulative(start_s, end_s, amount)
    return (np.interp(t_s, times, cumulative) - np.interp(t_s - window_s, times, cumulative)) / window_s


def _cumulative(start_s: FloatArray, end_s: FloatArray, amount: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The running total of ``amount`` as a piecewise-linear function of time (breakpoints, values)."""
    order = np.argsort(start_s, kind="stable")
    start, end, value = start_s[order], np.maximum(end_s[order], start_s[order]), amount[order]
    times = np.stack((start, end), axis=1).reshape(-1)  # pulses do not overlap: one per block at most
    steps = np.stack((np.zeros(value.size), value), axis=1).reshape(-1)
    return times, np.cumsum(steps)
