"""Derived quantities of a sequence, vectorised over whole columns.

Gradients are piecewise linear between breakpoints (Pulseq's model): each gradient event's
breakpoints are computed once per event, then gathered for every block that plays it. No
per-block Python loop runs here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from scanctl.sequence.model import TIME_DEFAULT, TIME_OVERSAMPLED, FloatArray, IntArray, Sequence

AXES = ("x", "y", "z")


@dataclass(frozen=True)
class AxisWaveform:
    """One gradient axis as breakpoints: ``g_hz_per_m`` at ``t_s``, linear in between, 0 outside.

    Times are non-decreasing; two breakpoints at the same time are a step. ``block`` is the block
    index each breakpoint belongs to.
    """

    t_s: FloatArray
    g_hz_per_m: FloatArray
    block: IntArray

    def sample(self, t_s: FloatArray) -> FloatArray:
        """The gradient at arbitrary times (right-continuous at steps), Hz/m."""
        return np.interp(t_s, self.t_s, self.g_hz_per_m, left=0.0, right=0.0) if self.t_s.size else np.zeros(
            np.shape(t_s)
        )

    def moment(self, t_s: FloatArray) -> FloatArray:
        """The integral of the gradient from 0 to ``t_s`` (exact for the piecewise-linear model), 1/m."""
        t, g = self.t_s, self.g_hz_per_m
        tq = np.asarray(t_s, dtype=np.float64)
        if t.size == 0:
            return np.zeros(tq.shape)
        cum = np.concatenate(([0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(t))))
        i = np.clip(np.searchsorted(t, tq, side="right") - 1, 0, t.size - 1)
        dt = tq - t[i]
        nxt = np.minimum(i + 1, t.size - 1)
        span = t[nxt] - t[i]
        slope = np.divide(g[nxt] - g[i], span, out=np.zeros_like(span), where=span > 0)
        inside = (tq >= t[0]) & (i < t.size - 1)
        m = cum[i] + np.where(inside, g[i] * dt + 0.5 * slope * dt * dt, 0.0)
        return np.where(tq < t[0], 0.0, m)


@dataclass(frozen=True)
class PhysicalGradients:
    """The gradients as the coils play them: for each block and physical axis, ``rows[block, axis]``
    is a row of the CSR breakpoint table (``offsets``, ``t_s`` from the block start, ``g_hz_per_m``), or
    -1. Rows ``0 .. n_events-1`` are the file's gradient events; a block with a ``ROTATIONS`` extension
    plays rotated combinations of its events, added once per distinct (events, rotation) as further
    rows, so every consumer (waveforms, checks, executor) sees the physical axes."""

    rows: IntArray
    offsets: IntArray
    t_s: FloatArray
    g_hz_per_m: FloatArray


_PHYSICAL: weakref.WeakKeyDictionary[Sequence, PhysicalGradients] = weakref.WeakKeyDictionary()


def physical_gradients(seq: Sequence) -> PhysicalGradients:
    """The physical gradient table of ``seq``, computed once per sequence (events are few)."""
    cached = _PHYSICAL.get(seq)
    if cached is None:
        offsets, t_rel, g_rel = _event_breakpoints(seq)
        cached = _PHYSICAL[seq] = _apply_rotations(seq, offsets, t_rel, g_rel)
    return cached


def _apply_rotations(seq: Sequence, offsets: IntArray, t_rel: FloatArray, g_rel: FloatArray) -> PhysicalGradients:
    rows = seq.blocks.grad
    spec = seq.extensions.specs.get("ROTATIONS")
    which, spec_rows = seq.extensions.entries(seq.blocks.ext, "ROTATIONS") if spec else (np.zeros(0, int),) * 2
    if spec is None or which.size == 0:
        return PhysicalGradients(rows, offsets, t_rel, g_rel)
    matrices = np.asarray(spec.columns["matrix"], dtype=np.float64)
    combos, inverse = np.unique(np.column_stack([rows[which], spec_rows]), axis=0, return_inverse=True)
    times: list[FloatArray] = [t_rel]
    values: list[FloatArray] = [g_rel]
    lengths: list[int] = []
    for rx, ry, rz, rot in combos.tolist():  # distinct rotated combinations: few
        parts = [(t_rel[offsets[r]:offsets[r + 1]], g_rel[offsets[r]:offsets[r + 1]]) for r in (rx, ry, rz) if r >= 0]
        t = np.unique(np.concatenate([p[0] for p in parts])) if parts else np.zeros(0)
        logical = np.zeros((3, t.size))
        for axis, r in enumerate((rx, ry, rz)):
            if r >= 0:
                logical[axis] = np.interp(t, t_rel[offsets[r]:offsets[r + 1]], g_rel[offsets[r]:offsets[r + 1]],
                                          left=0.0, right=0.0)
        physical = matrices[rot] @ logical
        for axis in range(3):
            times.append(t)
            values.append(physical[axis])
            lengths.append(t.size)
    n_events = offsets.size - 1
    physical_rows = rows.copy()
    physical_rows[which] = n_events + 3 * inverse.reshape(-1, 1) + np.arange(3)
    new_offsets = np.concatenate((offsets, offsets[-1] + np.cumsum(lengths))).astype(np.int64)
    return PhysicalGradients(physical_rows, new_offsets, np.concatenate(times), np.concatenate(values))


def _event_breakpoints(seq: Sequence) -> tuple[IntArray, FloatArray, FloatArray]:
    g, shapes, raster = seq.grad, seq.shapes, seq.rasters.gradient_s
    n = g.id.size
    # Trapezoids: 4 breakpoints, or 3 for a triangle (no flat top).
    tt = g.delay_s[:, None] + np.cumsum(np.stack([np.zeros(n), g.rise_s, g.flat_s, g.fall_s], axis=1), axis=1)
    tv = g.amplitude_hz_per_m[:, None] * np.array([0.0, 1.0, 1.0, 0.0])
    keep = np.ones((n, 4), dtype=bool)
    keep[:, 2] = g.flat_s > 0
    keep[~g.is_trap] = False
    times: list[FloatArray] = [tt[keep]]
    values: list[FloatArray] = [tv[keep]]
    owner: list[IntArray] = [np.nonzero(keep)[0]]
    for row in np.flatnonzero(~g.is_trap).tolist():
        w = g.amplitude_hz_per_m[row] * shapes.get(int(g.shape[row]))
        ts = int(g.time_shape[row])
        if ts == TIME_DEFAULT:
            inner = (np.arange(w.size) + 0.5) * raster
            t_row = np.concatenate(([0.0], inner, [w.size * raster]))
            v_row = np.concatenate(([g.first_hz_per_m[row]], w, [g.last_hz_per_m[row]]))
        elif ts == TIME_OVERSAMPLED:
            inner = (np.arange(w.size) + 1) * 0.5 * raster
            t_row = np.concatenate(([0.0], inner, [(w.size + 1) * 0.5 * raster]))
            v_row = np.concatenate(([g.first_hz_per_m[row]], w, [g.last_hz_per_m[row]]))
        else:
            t_row, v_row = shapes.get(ts) * raster, w
        times.append(t_row + g.delay_s[row])
        values.append(v_row)
        owner.append(np.full(t_row.size, row))
    own = np.concatenate(owner)
    order = np.argsort(own, kind="stable")  # group by event row, keeping each event's own order
    lengths = np.bincount(own, minlength=n)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    return offsets, np.concatenate(times)[order], np.concatenate(values)[order]


def _gather_csr(offsets: IntArray, rows: IntArray) -> tuple[IntArray, IntArray]:
    """Indices into a CSR payload for the concatenation of ``rows``, and the repeat count per row."""
    lengths = offsets[rows + 1] - offsets[rows]
    total = int(lengths.sum())
    starts = np.repeat(offsets[rows] - (np.cumsum(lengths) - lengths), lengths)
    return starts + np.arange(total), lengths


def axis_waveform(seq: Sequence, axis: int, blocks: IntArray | None = None) -> AxisWaveform:
    """The gradient on ``axis`` (0, 1, 2) over the whole sequence, or over the given block indices."""
    phys = physical_gradients(seq)
    offsets, t_rel, values = phys.offsets, phys.t_s, phys.g_hz_per_m
    rows_all = phys.rows[:, axis]
    block_idx = np.flatnonzero(rows_all >= 0) if blocks is None else blocks[rows_all[blocks] >= 0]
    rows = rows_all[block_idx]
    idx, lengths = _gather_csr(offsets, rows)
    start = np.repeat(seq.block_start_s[block_idx], lengths)
    return AxisWaveform(t_rel[idx] + start, values[idx], np.repeat(block_idx, lengths))


def adc_sample_times(seq: Sequence) -> tuple[FloatArray, IntArray]:
    """Time of every ADC sample (``delay + (i + 0.5) * dwell`` into its block) and its block index."""
    blocks = np.flatnonzero(seq.blocks.adc >= 0)
    rows = seq.blocks.adc[blocks]
    n = seq.adc.num_samples[rows]
    total = int(n.sum())
    first = np.cumsum(n) - n
    i = np.arange(total) - np.repeat(first, n)
    t = np.repeat(seq.block_start_s[blocks] + seq.adc.delay_s[rows], n) + (i + 0.5) * np.repeat(
        seq.adc.dwell_s[rows], n
    )
    return t, np.repeat(blocks, n)


def rf_centres(seq: Sequence) -> tuple[FloatArray, IntArray, IntArray]:
    """``(time_s, block, rf_row)`` of every RF pulse's centre (block start + delay + centre)."""
    blocks = np.flatnonzero(seq.blocks.rf >= 0)
    rows = seq.blocks.rf[blocks]
    return seq.block_start_s[blocks] + seq.rf.delay_s[rows] + seq.rf.center_s[rows], blocks, rows


def kspace_at(seq: Sequence, t_s: FloatArray) -> FloatArray:
    """The k-space position (1/m, shape ``(3, len(t_s))``) at the given times.

    Excitation (and undefined-use) pulses restart the trajectory at the origin, refocusing pulses
    mirror it through the origin; other pulses (inversion, saturation, ...) do not change it.
    """
    t_rf, _, rows = rf_centres(seq)
    use = seq.rf.use[rows]
    is_exc = (use == ord("e")) | (use == ord("u"))
    is_ref = use == ord("r")
    keep = is_exc | is_ref
    t_ev, is_exc = t_rf[keep], is_exc[keep]
    # Events in time order; k just after event n is M(t) + dk_n with
    # dk_n = -M(t_n) after an excitation and dk_n = -2 M(t_n) - dk_{n-1} after a refocusing.
    order = np.argsort(t_ev, kind="stable")
    t_ev, is_exc = t_ev[order], is_exc[order]
    n_ev = t_ev.size
    period = np.searchsorted(t_ev, t_s, side="right") - 1  # last event at or before each time
    out = np.empty((3, np.size(t_s)))
    j = np.arange(n_ev)
    sign = np.where(j % 2 == 0, 1.0, -1.0)
    seg_start = np.maximum.accumulate(np.where(is_exc, j, 0)) if n_ev else j
    for axis in range(3):
        wave = axis_waveform(seq, axis)
        m_t = wave.moment(t_s)
        if n_ev == 0:
            out[axis] = m_t
            continue
        m_ev = wave.moment(t_ev)
        a = np.where(is_exc, -m_ev, -2.0 * m_ev)
        c = np.cumsum(a * sign)
        before = np.where(seg_start > 0, c[np.maximum(seg_start - 1, 0)], 0.0)
        dk = sign * (c - before)
        out[axis] = m_t + np.where(period >= 0, dk[np.maximum(period, 0)], 0.0)
    return out


def kspace_adc(seq: Sequence) -> FloatArray:
    """k-space at every ADC sample, shape ``(3, N)``, 1/m."""
    t, _ = adc_sample_times(seq)
    return kspace_at(seq, t)


@dataclass(frozen=True)
class EventExtremes:
    """Per gradient event row: peak |g| (Hz/m) and peak |dg/dt| (Hz/m/s), with their times from the
    block start. An event's waveform is the same in every block that plays it, so limits are checked
    once per event, not once per block; steps (zero-length segments) are not slew."""

    max_gradient: FloatArray
    max_gradient_t_s: FloatArray
    max_slew: FloatArray
    max_slew_t_s: FloatArray


def event_extremes(seq: Sequence, min_dt_s: float = 1e-12) -> EventExtremes:
    """Per row of :func:`physical_gradients`."""
    phys = physical_gradients(seq)
    offsets, t_rel, g_rel = phys.offsets, phys.t_s, phys.g_hz_per_m
    n = offsets.size - 1
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(n), lengths)
    ag = np.abs(g_rel)
    max_g = np.zeros(n)
    np.maximum.at(max_g, owner, ag)
    # Slew on the segments inside each event (segment k joins breakpoints k and k+1 of one event).
    dt = np.diff(t_rel)
    inside = owner[1:] == owner[:-1] if owner.size else np.zeros(0, dtype=bool)
    slew = np.divide(np.abs(np.diff(g_rel)), dt, out=np.zeros_like(dt), where=inside & (dt > min_dt_s))
    max_s = np.zeros(n)
    np.maximum.at(max_s, owner[:-1], slew)
    return EventExtremes(
        max_g, _time_of_first(owner, t_rel, ag, max_g, n),
        max_s, _time_of_first(owner[:-1], t_rel[:-1], slew, max_s, n),
    )


def _time_of_first(owner: IntArray, t: FloatArray, values: FloatArray, peak: FloatArray, n: int) -> FloatArray:
    """For each event, the time of its first point whose value equals the event's peak."""
    out = np.zeros(n)
    hit = np.flatnonzero(values == peak[owner])
    rows, first = np.unique(owner[hit], return_index=True)
    out[rows] = t[hit[first]]
    return out
