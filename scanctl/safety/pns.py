"""Peripheral nerve stimulation predicted by the SAFE model (Hebrank and Gebhardt, ISMRM 2000), as
pypulseq's ``calc_pns`` computes it, for a whole sequence (docs/safety.md#pns).

The physical gradients are sampled at the centres of the gradient raster, ``t_k = (k + ½)·Δt``, and
differentiated, ``Ġ_k = (G_k − G_{k−1})/Δt`` (T/m/s, ``G_{−1} = 0``). Each axis filters the slew rate with
three first-order low-pass filters, ``y_k = α·x_k + (1 − α)·y_{k−1}`` with ``α = Δt/(τ + Δt)``, and
combines them::

    stim = (a1·|LP_τ1(Ġ)| + a2·LP_τ2(|Ġ|) + a3·|LP_τ3(Ġ)|) / stim_limit · g_scale · 100   (% of threshold)

The axes combine as the root of the sum of squares. The timeline is processed in chunks with the
filters' state carried over, so memory stays bounded however long the sequence; the full-resolution
curve is kept only as its maximum per ``envelope_s`` (for reports), the peak exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.safety.limits import PNSAxis, PNSSafety
from scanctl.safety.lowpass import low_pass
from scanctl.sequence.model import FloatArray, IntArray, Sequence
from scanctl.sequence.waveforms import axis_waveform

#: Samples per chunk: bounds the memory of a prediction (about 100 bytes a sample while a chunk is worked).
CHUNK_SAMPLES = 1 << 20


@dataclass(frozen=True)
class PNSPrediction:
    """The combined SAFE response over time (``percent``: its maximum over each envelope interval starting
    at ``t_s``), its peak (% of the stimulation threshold), when and in which block, and each axis's peak."""

    t_s: FloatArray
    percent: FloatArray
    peak_percent: float
    peak_time_s: float
    peak_block: int
    axis_peak_percent: tuple[float, float, float]


def predict_pns(seq: Sequence, pns: PNSSafety, gamma_hz_per_t: float, *,
                envelope_s: float = 1e-3) -> PNSPrediction:
    """The SAFE PNS response of ``seq``'s physical gradients with the coil parameters ``pns``."""
    dt = seq.rasters.gradient_s
    waves = [axis_waveform(seq, axis) for axis in range(3)]
    ends = [float(w.t_s[-1]) for w in waves if w.t_s.size]
    n = math.ceil((max(ends) - 1e-10) / dt) if ends else 0  # as calc_pns: up to the last gradient breakpoint
    axes = (pns.x, pns.y, pns.z)
    filters = [_AxisFilters(axis, dt) for axis in axes]
    per_bin = max(1, round(envelope_s / dt))
    previous = np.zeros(3)
    envelope: list[FloatArray] = []
    peak, peak_k = 0.0, 0
    axis_peaks = np.zeros(3)
    chunk = per_bin * max(1, CHUNK_SAMPLES // per_bin)  # whole envelope intervals
    longest_tau_ms = max(max(a.tau1_ms, a.tau2_ms, a.tau3_ms) for a in axes)
    for k0, k1, quiet in _spans(seq, n, dt, per_bin, longest_tau_ms, waves):
        if quiet:  # no gradient, the response long decayed: the filters decay freely, computed per interval
            offsets = np.arange(0, k1 - k0, per_bin)  # each interval's first sample: its largest (decaying)
            combined = np.zeros(offsets.size)
            for axis_filters in filters:
                combined += axis_filters.free_response(offsets) ** 2
                axis_filters.decay(k1 - k0)
            previous[:] = 0.0
            envelope.append(np.sqrt(combined))
        else:
            peak, peak_k = _play(k0, k1, chunk, dt, gamma_hz_per_t, waves, filters, previous, axis_peaks, per_bin,
                                 envelope, peak, peak_k)
    percent = np.concatenate(envelope) if envelope else np.zeros(0)
    peak_time = (peak_k + 0.5) * dt
    block = int(np.searchsorted(seq.block_start_s, peak_time, side="right") - 1) if n else 0
    return PNSPrediction(t_s=np.arange(percent.size, dtype=np.float64) * (per_bin * dt), percent=percent,
                         peak_percent=peak, peak_time_s=peak_time if n else 0.0, peak_block=max(block, 0),
                         axis_peak_percent=(float(axis_peaks[0]), float(axis_peaks[1]), float(axis_peaks[2])))


def _spans(seq: Sequence, n: int, dt: float, per_bin: int, longest_tau_ms: float,
           waves: list[Any] | None = None) -> list[tuple[int, int, bool]]:
    """Sample ranges ``[k0, k1)`` covering ``[0, n)``, ``quiet`` where a stretch with all three gradients
    zero (between the waveforms' breakpoints, also inside a block: a spoiler and a long delay in one block)
    leaves nothing to compute: from ten of the longest time constants after its start (the response has
    decayed below 5e-5 of itself) to one sample before its end, both on envelope-interval boundaries."""
    guard = 10 * longest_tau_ms * 1e-3
    starts, stops = _zero_stretches(waves if waves is not None else [axis_waveform(seq, a) for a in range(3)],
                                    guard + 5 * per_bin * dt)
    spans, k = [], 0
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        q0 = math.ceil((start + guard) / dt / per_bin) * per_bin
        q1 = min(math.floor((stop / dt - 1) / per_bin) * per_bin, n - n % per_bin)
        if q1 - q0 >= 4 * per_bin and q0 >= k:
            if q0 > k:
                spans.append((k, q0, False))
            spans.append((q0, q1, True))
            k = q1
    if k < n:
        spans.append((k, n, False))
    return spans


def _zero_stretches(waves: list[Any], shortest_s: float) -> tuple[FloatArray, FloatArray]:
    """Starts and ends of the stretches longer than ``shortest_s`` where every axis is zero (the waveforms
    are linear between breakpoints and zero outside them), the one before the first breakpoint included."""
    lo, hi = [], []
    for wave in waves:
        t, g = wave.t_s, wave.g_hz_per_m
        if t.size == 0:
            continue
        active = (g[:-1] != 0) | (g[1:] != 0)  # the segment between breakpoints i and i + 1 is not zero
        lo.append(t[:-1][active])
        hi.append(t[1:][active])
        single = g != 0  # a lone non-zero breakpoint (a jump) counts as a point
        lo.append(t[single])
        hi.append(t[single])
    if not lo or not sum(x.size for x in lo):
        return np.zeros(0), np.zeros(0)
    start, end = np.concatenate(lo), np.concatenate(hi)
    order = np.argsort(start, kind="stable")
    start, reach = start[order], np.maximum.accumulate(end[order])
    gap_start = np.concatenate(([-math.inf], reach[:-1]))  # the zero stretch before each active segment
    long = start - gap_start > shortest_s
    return np.maximum(gap_start[long], 0.0), start[long]


def _play(k_start: int, k_stop: int, chunk: int, dt: float, gamma_hz_per_t: float, waves: list[Any],
          filters: list[_AxisFilters], previous: FloatArray, axis_peaks: FloatArray, per_bin: int,
          envelope: list[FloatArray], peak: float, peak_k: int) -> tuple[float, int]:
    """Compute samples ``[k_start, k_stop)`` chunk by chunk; returns the peak so far and its sample."""
    for k0 in range(k_start, k_stop, chunk):
        k = np.arange(k0, min(k_stop, k0 + chunk))
        t = (k + 0.5).astype(np.float64) * dt
        combined = np.zeros(k.size)
        for a, (wave, axis_filters) in enumerate(zip(waves, filters, strict=True)):
            lo, hi = np.searchsorted(wave.t_s, (t[0], t[-1]))  # only this chunk's breakpoints: a faster interp
            part = slice(max(lo - 1, 0), hi + 1)
            g = (np.interp(t, wave.t_s[part], wave.g_hz_per_m[part], left=0.0, right=0.0) if wave.t_s.size
                 else np.zeros(t.size))
            g *= 1.0 / gamma_hz_per_t  # T/m
            slew = np.diff(g, prepend=previous[a]) / dt
            previous[a] = g[-1]
            stim = axis_filters.response(slew)
            axis_peaks[a] = max(axis_peaks[a], float(stim.max()))
            combined += stim * stim
        np.sqrt(combined, out=combined)
        i = int(np.argmax(combined))
        if combined[i] > peak:
            peak, peak_k = float(combined[i]), int(k[i])
        envelope.append(np.pad(combined, (0, (-combined.size) % per_bin)).reshape(-1, per_bin).max(axis=1))
    return peak, peak_k


class _AxisFilters:
    """The three SAFE filters of one axis, their state carried from chunk to chunk."""

    def __init__(self, axis: PNSAxis, dt_s: float) -> None:
        self.axis = axis
        dt_ms = dt_s * 1e3
        self.alphas = [dt_ms / (tau + dt_ms) for tau in (axis.tau1_ms, axis.tau2_ms, axis.tau3_ms)]
        self.states = [np.zeros(1) for _ in self.alphas]
        self.scale = axis.g_scale * 100.0 / axis.stim_limit_t_per_m_per_s

    def decay(self, samples: int) -> None:
        """``samples`` of zero slew: each filter's state decays by ``(1 − α)^samples``."""
        self.states = [state * (1.0 - alpha) ** samples for state, alpha in zip(self.states, self.alphas, strict=True)]

    def free_response(self, samples: IntArray) -> FloatArray:
        """The response ``samples`` samples from now with zero slew from now on (the states decaying)."""
        a, scale = self.axis, self.scale
        y = [float(state[0]) * (1.0 - alpha) ** samples for state, alpha in zip(self.states, self.alphas, strict=True)]
        return np.asarray((a.a1 * np.abs(y[0]) + a.a2 * y[1] + a.a3 * np.abs(y[2])) * scale)

    def _low_pass(self, i: int, x: FloatArray) -> FloatArray:
        alpha = self.alphas[i]
        y, self.states[i] = low_pass(x, alpha, 1.0 - alpha, self.states[i])
        return y

    def response(self, slew: FloatArray) -> FloatArray:
        a, scale = self.axis, self.scale
        stim = np.abs(self._low_pass(0, slew))
        stim *= a.a1 * scale
        term = self._low_pass(1, np.abs(slew))
        term *= a.a2 * scale
        stim += term
        term = np.abs(self._low_pass(2, slew), out=term)
        term *= a.a3 * scale
        stim += term
        return stim
