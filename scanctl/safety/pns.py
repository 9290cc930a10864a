"""Peripheral nerve stimulation predicted by the SAFE model (Hebrank and Gebhardt, ISMRM 2000), as
pypulseq's ``calc_pns`` computes it, for a whole sequence (docs/safety.md#pns).

The model, per gradient raster sample: the physical gradients are sampled at the centres of the raster,
``t_k = (k + ½)·Δt``, and differentiated, ``Ġ_k = (G_k − G_{k−1})/Δt`` (T/m/s, ``G_{−1} = 0``). Each axis
filters the slew rate with three first-order low-pass filters, ``y_k = α·x_k + (1 − α)·y_{k−1}`` with
``α = Δt/(τ + Δt)``, and combines them::

    stim = (a1·|LP_τ1(Ġ)| + a2·LP_τ2(|Ġ|) + a3·|LP_τ3(Ġ)|) / stim_limit · g_scale · 100   (% of threshold)

The axes combine as the root of the sum of squares.

How it is computed without visiting every sample (the same numbers, up to rounding): the gradients are
linear between their breakpoints, so the sampled slew is constant over **runs** of samples — it can only
change at the two samples after each breakpoint. Over a run of ``L`` samples of constant input ``x`` a
filter moves in closed form, ``y_end = β^L·y_start + x·(1 − β^L)`` with ``β = 1 − α``; that recurrence over
runs is solved for all nine filters at once (:func:`scanctl.safety.lowpass.scan_lanes`). The response is
then known exactly at every run's last sample. Inside a run each filter moves monotonically from its value
before the run to its value at the end, so ``|y|`` is bounded by the larger of the two, and so is every
axis's response and their combination; only runs where that bound exceeds both ends' values (the
combination, or an axis, might peak inside) are evaluated sample by sample, in closed form. The peak, its
time and each axis's peak are therefore the per-sample model's, never less.

The envelope (the maximum per ``envelope_s`` interval, for reports) is exact too: the runs are also cut at
each interval's first two samples, so every run lies within one interval together with the sample before
it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.config.limits import PNSAxis, PNSSafety
from scanctl.safety.lowpass import ROW, lane_order, scan_lanes
from scanctl.sequence.model import FloatArray, IntArray, Sequence
from scanctl.sequence.waveforms import AxisWaveform, axis_waveform

#: Samples marked at once when finding the runs (a mask of one byte each).
MASK_SAMPLES = 1 << 22
#: Runs per chunk: bounds the memory of a prediction (about 1.5 kB a run while a chunk is worked).
CHUNK_RUNS = 1 << 16
#: A run is evaluated inside when its bound exceeds its ends' values by more than this (relative): below
#: it the bound itself is within rounding of the ends.
_SLACK = 1e-12


@dataclass(frozen=True)
class PNSPrediction:
    """The combined SAFE response over time (``percent``: its maximum over each envelope interval starting
    at ``t_s``; empty when no envelope was asked for), its peak (% of the stimulation threshold), when and in
    which block, and each axis's peak."""

    t_s: FloatArray
    percent: FloatArray
    peak_percent: float
    peak_time_s: float
    peak_block: int
    axis_peak_percent: tuple[float, float, float]


def predict_pns(seq: Sequence, pns: PNSSafety, gamma_hz_per_t: float, *,
                envelope_s: float | None = 1e-3) -> PNSPrediction:
    """The SAFE PNS response of ``seq``'s physical gradients with the coil parameters ``pns``; with
    ``envelope_s`` (s) also its maximum per interval of that length, else ``t_s`` and ``percent`` are empty.
    A non-finite gradient gives an infinite peak (a violation, never a pass).

    Without an envelope the peak is found block by block (:mod:`scanctl.safety.pns_blocks`) when the
    sequence fits that, else (and with an envelope) run by run over the whole waveform."""
    if envelope_s is None:
        from scanctl.safety.pns_blocks import predict_blocks

        model = _Model((pns.x, pns.y, pns.z), seq.rasters.gradient_s, gamma_hz_per_t)
        found = predict_blocks(seq, model.lam, model.weight, model.to_t_per_m_per_s)
        if found is not None:
            return _block_prediction(found, seq)
    waves = [axis_waveform(seq, axis) for axis in range(3)]
    return predict_waveforms(waves, seq.rasters.gradient_s, seq.block_start_s, pns, gamma_hz_per_t,
                             envelope_s=envelope_s)


def predict_waveforms(waves: list[AxisWaveform], dt: float, block_start_s: FloatArray, pns: PNSSafety,
                      gamma_hz_per_t: float, *, envelope_s: float | None = 1e-3) -> PNSPrediction:
    """:func:`predict_pns` of the three physical axes' waveforms (Hz/m) on the gradient raster ``dt`` (s);
    ``block_start_s`` places the peak in its block."""
    ends = [float(w.t_s[-1]) for w in waves if w.t_s.size]
    n = math.ceil((max(ends) - 1e-10) / dt) if ends else 0  # as calc_pns: up to the last gradient breakpoint
    per_bin = max(1, round(envelope_s / dt)) if envelope_s is not None else 0
    model = _Model((pns.x, pns.y, pns.z), dt, gamma_hz_per_t)
    tracker = _Tracker(-(-n // per_bin) if per_bin else 0, per_bin)
    starts = _run_starts(waves, n, dt, per_bin)
    y = np.zeros(9)
    for c0 in range(0, starts.size, CHUNK_RUNS):
        chunk = starts[c0:c0 + CHUNK_RUNS + 1]
        stop = n if c0 + CHUNK_RUNS >= starts.size else int(chunk[-1])
        y = _play(model, waves, chunk[:CHUNK_RUNS], stop, y, tracker)
    peak_time = (tracker.peak_k + 0.5) * dt if n else 0.0
    block = int(np.searchsorted(block_start_s, peak_time, side="right") - 1) if n else 0
    return PNSPrediction(t_s=np.arange(tracker.envelope.size, dtype=np.float64) * (per_bin * dt),
                         percent=tracker.envelope, peak_percent=tracker.peak, peak_time_s=peak_time,
                         peak_block=max(block, 0),
                         axis_peak_percent=(float(tracker.axis_peaks[0]), float(tracker.axis_peaks[1]),
                                            float(tracker.axis_peaks[2])))


def _block_prediction(found: Any, seq: Sequence) -> PNSPrediction:
    """The :class:`PNSPrediction` (no envelope) of :func:`scanctl.safety.pns_blocks.predict_blocks`'s peak."""
    peak_time = (found.peak_k + 0.5) * seq.rasters.gradient_s
    block = int(np.searchsorted(seq.block_start_s, peak_time, side="right") - 1)
    axis = found.axis_peaks
    return PNSPrediction(t_s=np.zeros(0), percent=np.zeros(0), peak_percent=float(found.peak), peak_time_s=peak_time,
                         peak_block=max(block, 0), axis_peak_percent=(float(axis[0]), float(axis[1]), float(axis[2])))


class _Model:
    """The nine SAFE filters (axis-major: x τ1, x τ2, x τ3, y τ1, ...): their decay per sample
    ``λ = −ln β`` and the weight of each ``|y|`` in its axis's response (% per T/m/s)."""

    def __init__(self, axes: tuple[PNSAxis, PNSAxis, PNSAxis], dt_s: float, gamma_hz_per_t: float) -> None:
        dt_ms = dt_s * 1e3
        taus = np.array([[a.tau1_ms, a.tau2_ms, a.tau3_ms] for a in axes], dtype=np.float64).ravel()
        self.lam = np.log1p(dt_ms / taus)  # β = τ/(τ + Δt) = 1 − α
        self.weight = np.array([[a.a1, a.a2, a.a3] for a in axes], dtype=np.float64) * np.array(
            [[a.g_scale * 100.0 / a.stim_limit_t_per_m_per_s] for a in axes])
        self.weight = self.weight.ravel()
        self.dt_s = dt_s
        self.to_t_per_m_per_s = 1.0 / (gamma_hz_per_t * dt_s)

    def inputs(self, slew: FloatArray) -> FloatArray:
        """The nine filters' inputs from the three axes' slews (shape ``(3, ...)``): ``x``, ``|x|``, ``x``."""
        x = np.repeat(slew, 3, axis=0)
        np.abs(x[1::3], out=x[1::3])
        return x

    def responses(self, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Each axis's response ``(3, N)`` and their combination ``(N,)`` from the filters' values ``(9, N)``."""
        w = np.abs(y)
        w *= self.weight[:, None]
        stim = w[0::3] + w[1::3]
        stim += w[2::3]
        combined = stim[0] * stim[0]
        combined += stim[1] * stim[1]
        combined += stim[2] * stim[2]
        return stim, np.sqrt(combined, out=combined)


class _Tracker:
    """The peak so far (value, sample, per axis) and the envelope, from values at given samples."""

    def __init__(self, bins: int, per_bin: int) -> None:
        self.peak, self.peak_k = 0.0, 0
        self.axis_peaks = np.zeros(3)
        self.per_bin = per_bin
        self.envelope = np.zeros(bins)

    def add(self, k: IntArray, stim: FloatArray, combined: FloatArray) -> None:
        """Values ``combined`` (and per axis ``stim``) at the samples ``k`` (in any order)."""
        if not k.size:
            return
        if not np.isfinite(combined).all():  # a non-finite gradient: fail closed, an infinite response
            combined = np.where(np.isfinite(combined), combined, np.inf)
            stim = np.where(np.isfinite(stim), stim, np.inf)
        np.maximum(self.axis_peaks, stim.max(axis=1), out=self.axis_peaks)
        top = float(combined.max())
        if top > self.peak or (top == self.peak and top > 0 and int(k[combined == top].min()) < self.peak_k):
            self.peak, self.peak_k = top, int(k[combined == top].min())
        if self.per_bin:
            order = np.argsort(k, kind="stable")
            bins = k[order] // self.per_bin
            first = np.flatnonzero(np.diff(bins, prepend=-1))
            values = np.maximum.reduceat(combined[order], first)
            np.maximum(self.envelope[bins[first]], values, out=values)
            self.envelope[bins[first]] = values


def _run_starts(waves: list[AxisWaveform], n: int, dt: float, per_bin: int) -> IntArray:
    """The first sample of each run of constant slew on all three axes, ascending, within ``[0, n)``: 0,
    the two samples after each breakpoint (the first one's slew may straddle the breakpoint), and with an
    envelope the first two samples of each interval. Marked in a mask window by window (a sort of millions
    of candidates would take longer; the window bounds the mask's memory)."""
    firsts = [np.ceil(w.t_s / dt - 0.5).astype(np.int64) for w in waves]  # first sample at/after each breakpoint
    found = []
    for w0 in range(0, n, MASK_SAMPLES):
        w1 = min(n, w0 + MASK_SAMPLES)
        mark = np.zeros(w1 - w0 + 1, dtype=bool)
        if w0 == 0:
            mark[0] = True
        for k in firsts:
            lo, hi = np.searchsorted(k, (w0 - 1, w1), side="left")
            part = k[lo:hi] - w0
            mark[part[part >= 0]] = True
            mark[part + 1] = True
        if per_bin:
            edges = np.arange(-(-w0 // per_bin) * per_bin, w1, per_bin) - w0
            mark[edges] = True
            mark[edges + 1] = True
        found.append(np.flatnonzero(mark[:-1]) + w0)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _slews(waves: list[AxisWaveform], starts: IntArray, stop: int, dt: float) -> FloatArray:
    """Each run's slew per axis (Hz/m per sample): the gradient's change from the sample before the run to
    the run's last sample over the run's length (constant inside a run, so this is every sample's)."""
    at = np.append(starts - 1, stop - 1)
    t = (at + 0.5) * dt
    lengths = np.diff(np.append(starts, stop))
    slew = np.empty((3, starts.size))
    for axis, wave in enumerate(waves):
        if not wave.t_s.size:
            slew[axis] = 0.0
            continue
        lo, hi = np.searchsorted(wave.t_s, (t[0], t[-1]))  # only this chunk's breakpoints: a faster interp
        part = slice(max(lo - 1, 0), hi + 1)
        g = np.interp(t, wave.t_s[part], wave.g_hz_per_m[part], left=0.0, right=0.0)
        if at[0] < 0:
            g[0] = 0.0  # G before the first sample is zero (as calc_pns)
        slew[axis] = np.diff(g) / lengths
    return slew


def _play(model: _Model, waves: list[AxisWaveform], starts: IntArray, stop: int, y0: FloatArray,
          tracker: _Tracker) -> FloatArray:
    """The runs starting at ``starts`` (the last one ending at ``stop``) from the filters' values ``y0``
    before them; records the response in ``tracker``, returns the filters' values at the end."""
    count = starts.size
    order = lane_order(count)
    pad = order >= count  # padding places repeat the last run with length 0: they hold its value
    order[pad] = count - 1
    rows = order.size // ROW
    natural_length = np.diff(np.append(starts, stop))
    length = natural_length[order]
    length[pad] = 0
    slew = _slews(waves, starts, stop, model.dt_s)[:, order] * model.to_t_per_m_per_s  # T/m/s
    x = model.inputs(slew)
    gap = model.lam[:, None] * length  # (9, places)
    b = -np.expm1(-gap)
    b *= x
    y = scan_lanes(gap.reshape(9, ROW, rows), b.reshape(9, ROW, rows), y0).reshape(9, -1)
    stim, combined = model.responses(y)
    tracker.add((starts + natural_length - 1)[order], stim, combined)  # each run's last sample
    _refine(model, tracker, starts, length, x, y, y0, order, pad)
    return y.reshape(9, ROW, rows)[:, (count - 1) % ROW, (count - 1) // ROW].copy()


def _refine(model: _Model, tracker: _Tracker, starts: IntArray, length: IntArray, x: FloatArray, y: FloatArray,
            y0: FloatArray, order: IntArray, pad: Any) -> None:
    """Find the largest values inside the runs by bisection: an interval of a run between two known samples
    is split at its middle sample (evaluated in closed form) while its bound — every filter at the larger
    ``|y|`` of its two ends, each filter being monotone in between — exceeds what is already known there
    (the envelope interval's maximum, or without an envelope the peak; or an axis's peak). Intervals whose
    bound is below are left: nothing inside them can change the result."""
    rows = order.size // ROW
    # the filters before each run: the previous run's end, the previous place in the lane layout (step
    # j − 1 of the same row, or the last step of the row before), so a shifted view, not a gather
    lanes = y.reshape(9, ROW, rows)
    shifted = np.empty_like(lanes)
    shifted[:, 1:] = lanes[:, :-1]
    shifted[:, 0, 1:] = lanes[:, -1, :-1]
    shifted[:, 0, 0] = y0
    before: FloatArray = shifted.reshape(9, -1)
    bound_stim, bound = model.responses(np.maximum(np.abs(y), np.abs(before)))
    live = _exceeds(tracker, bound_stim, bound, (starts[order] - 1 + length)) & (length >= 2) & ~pad
    live = np.flatnonzero(live)
    src = np.arange(live.size)  # the run each interval belongs to (an index into live)
    lo, hi = np.zeros(live.size, dtype=np.int64), length[live]  # offsets from the sample before the run
    y_lo, y_hi = before[:, live], y[:, live]
    before, x = y_lo, x[:, live]
    base = starts[order[live]] - 1  # the sample before each run
    while src.size:
        bound_stim, bound = model.responses(np.maximum(np.abs(y_lo), np.abs(y_hi)))
        keep = _exceeds(tracker, bound_stim, bound, base[src] + hi) & (hi - lo >= 2)
        src, lo, hi, y_lo, y_hi = src[keep], lo[keep], hi[keep], y_lo[:, keep], y_hi[:, keep]
        if not src.size:
            return
        mid = (lo + hi) // 2
        xin = x[:, src]
        y_mid = xin + (before[:, src] - xin) * np.exp(-model.lam[:, None] * mid)  # after mid samples from before
        stim, combined = model.responses(y_mid)
        tracker.add(base[src] + mid, stim, combined)
        src, lo, hi = np.concatenate((src, src)), np.concatenate((lo, mid)), np.concatenate((mid, hi))
        y_lo, y_hi = np.concatenate((y_lo, y_mid), axis=1), np.concatenate((y_mid, y_hi), axis=1)


def _exceeds(tracker: _Tracker, bound_stim: FloatArray, bound: FloatArray, end_k: IntArray) -> Any:
    """Where a bound exceeds what is known: the maximum of the envelope interval holding the sample
    ``end_k`` (a run and the sample before it lie in one), or without an envelope the peak; or an axis's
    peak."""
    known = tracker.envelope[end_k // tracker.per_bin] if tracker.per_bin else tracker.peak
    keep = bound > known * (1 + _SLACK)
    for axis in range(3):
        keep |= bound_stim[axis] > tracker.axis_peaks[axis] * (1 + _SLACK)
    return keep
