"""Where a sequence's raster samples are, block by block, and each axis's block types: the layout, the
types' samples and their filters' responses from rest, for :mod:`scanctl.safety.pns_blocks`
(docs/safety.md#pns: "Block by block").

A block on one axis is a *type* — its physical gradient row, its number of raster samples and where its
first sample falls between two block-raster ticks. :class:`Layout` finds the blocks that hold samples (or
None for a sequence the block structure does not fit); :class:`BlockTypes` groups one axis's blocks into
types; :class:`AxisTypes` works out each type's samples, slews and filter response from rest once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.safety.lowpass import decay_scan
from scanctl.sequence.model import FloatArray, IntArray, Sequence
from scanctl.sequence.waveforms import physical_gradients

#: Samples per segment when a block is looked into, and the sizes it is halved through.
SEGMENT = 8
SIZES = tuple(SEGMENT >> i for i in range(SEGMENT.bit_length() - 1))
#: How close (in rasters) a raster sample centre may be to an event's end for the end's value to hold.
EDGE = 1e-9


@dataclass
class Layout:
    """The blocks that hold raster samples (``L`` > 0; the samples after the last block, up to the last
    gradient breakpoint, form one more block without events): each one's gradient rows ``(n, 3)``, first
    sample ``k``, number of samples ``length`` and ``phase`` (half block-raster ticks from its start to its
    first sample centre); and the CSR breakpoint table of the physical gradient rows."""

    rows: IntArray
    k: IntArray
    length: IntArray
    phase: IntArray
    phases: int  # 2 · (gradient raster / block raster): the number of possible phases
    half_tick_s: float
    dt: float
    offsets: IntArray
    t_s: FloatArray
    g: FloatArray

    @classmethod
    def of(cls, seq: Sequence) -> Layout | None:
        dt = seq.rasters.gradient_s
        phys = physical_gradients(seq)
        offsets, t_rel, g_rel = phys.offsets, phys.t_s, phys.g_hz_per_m
        counts = np.diff(offsets)
        if counts.size == 0 or not (np.isfinite(g_rel).all() and np.isfinite(t_rel).all()):
            return None
        rows = phys.rows
        rows = np.where(counts[np.maximum(rows, 0)] > 0, rows, -1)  # an empty row plays nothing
        if _has_steps(offsets, t_rel, g_rel)[rows].any():
            return None
        ratio = dt / seq.rasters.block_duration_s  # block starts on a grid of 1/m rasters
        m = round(ratio)
        if m < 1 or abs(ratio - m) > 1e-9:
            return None
        ticks = np.concatenate(([0], np.cumsum(seq.blocks.duration_ticks)))
        k = -((m - 2 * ticks) // (2 * m))  # the first sample whose centre (k + ½)·dt is at or after the start
        phase = (2 * k + 1) * m - 2 * ticks
        if (phase == 0).any():  # a sample centred on a block boundary
            return None
        end = _last_breakpoint(seq, rows, offsets, t_rel, g_rel, dt)
        if end is None:
            return None
        n = math.ceil((end - 1e-10) / dt)  # as the per-sample model: up to the last gradient breakpoint
        length = np.minimum(k[1:], n) - k[:-1]
        held = np.flatnonzero(length > 0)
        rows, first, length, phase = rows[held], k[held], length[held], phase[held]
        tail = n - int(k[-1])
        if tail > 0:
            rows = np.concatenate((rows, np.full((1, 3), -1)))
            first, length, phase = np.append(first, k[-1]), np.append(length, tail), np.append(phase, m)
        return cls(rows, first, length, phase, 2 * m, seq.rasters.block_duration_s / 2, dt, offsets, t_rel, g_rel)


def _has_steps(offsets: IntArray, t_s: FloatArray, g: FloatArray) -> Any:
    """Per gradient row (and a last False for "none"): a step (or time going back) inside it."""
    owner = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    seg = np.diff(t_s)
    bad = (owner[1:] == owner[:-1]) & ((seg < 0) | ((seg == 0) & (np.diff(g) != 0)))
    out = np.zeros(offsets.size, dtype=bool)  # index -1: no row
    out[owner[1:][bad]] = True
    return out


def _last_breakpoint(seq: Sequence, rows: IntArray, offsets: IntArray, t_rel: FloatArray, g_rel: FloatArray,
                     dt: float) -> float | None:
    """The last gradient breakpoint's time (s), or None if there is none or a block cannot play its
    samples by itself: an event outside its block, or where the per-sample model's waveform between two
    events is not each block's own (see :func:`gaps_fit`)."""
    starts, dur = seq.block_start_s, seq.block_duration_s
    eps = EDGE * dt
    ends = []
    for a in range(3):
        has = np.flatnonzero(rows[:, a] >= 0)
        if not has.size:
            continue
        r = rows[has, a]
        first, last = offsets[r], offsets[r + 1] - 1
        if (t_rel[first] < -eps).any() or (t_rel[last] > dur[has] + eps).any():
            return None
        v_begin, v_end = g_rel[first], g_rel[last]
        # only the gaps with a non-zero end need a look (none when every event starts and ends at 0)
        live = np.flatnonzero((v_end[:-1] != 0) | (v_begin[1:] != 0))
        look = np.zeros(has.size, dtype=bool)
        look[[0, -1]] = True
        look[live] = look[live + 1] = True
        pick = np.flatnonzero(look)
        t_end = starts[has[pick]] + t_rel[last[pick]]  # as AxisWaveform: block start + time in the block
        t_begin = starts[has[pick]] + t_rel[first[pick]]
        if not gaps_fit(t_begin, v_begin[pick], t_end, v_end[pick], dt, np.diff(pick) == 1):
            return None
        ends.append(float(t_end[-1]))
    return max(ends) if ends else None


def gaps_fit(t_begin: FloatArray, v_begin: FloatArray, t_end: FloatArray, v_end: FloatArray, dt: float,
              adjacent: Any = True) -> bool:
    """Whether the per-sample model's waveform on one axis is, at every raster sample, what each block plays
    from its own event (``v`` at ``t``: each event's first and last breakpoints, in play order). Between two
    events it interpolates from one's last value to the next's first, and is 0 before the first and after the
    last; a block plays 0 outside its event and its event's end values up to :data:`EDGE` rasters outside
    it. The same where a gap's ends are both 0; else no sample may be inside a gap (more than EDGE from
    its ends), nor at a step from one event to the next (its value would depend on rounding), nor on the
    wrong side of the first or last breakpoint when that is not 0. (At an end of a gap the model's value
    is the end's, up to rounding: the waveform is continuous there.) ``adjacent``: which neighbours in the
    arrays are neighbours in play order (the others are not gaps)."""
    eps = EDGE * dt
    t1, v1, t2, v2 = t_end[:-1], v_end[:-1], t_begin[1:], v_begin[1:]
    live = ((v1 != 0) | (v2 != 0)) & adjacent
    inside = np.floor((t2 - eps) / dt - 0.5) >= np.ceil((t1 + eps) / dt - 0.5)
    near = np.floor((t2 + eps) / dt - 0.5) >= np.ceil((t1 - eps) / dt - 0.5)
    step = (v1 != v2) & (t2 - t1 <= 4 * np.spacing(np.abs(t2)))  # a step from one block to the next
    if (live & inside).any() or (step & near).any():
        return False
    for t, v, side in ((t_begin[0], v_begin[0], 1.0), (t_end[-1], v_end[-1], -1.0)):
        k = np.rint(t / dt - 0.5)
        x = (k + 0.5) * dt  # as the per-sample model computes the sample's time
        if v != 0 and abs(x - t) <= eps and (x - t) * side < 0:
            return False
    return True


# -- one axis's types and the filters' state at each block --------------------------------------------------

class BlockTypes:
    """One axis's block types: each block's (``inverse``), and per type its gradient row (-1: none), number
    of samples, phase and the samples stored for it (a type without an event plays zeros: one sample stands
    for all, a long delay is not laid out sample by sample)."""

    def __init__(self, inverse: IntArray, row: IntArray, length: IntArray, phase: IntArray) -> None:
        self.inverse, self.row, self.length, self.phase = inverse, row, length, phase
        self.stored = np.where(row >= 0, length, 1)

    @classmethod
    def of(cls, lay: Layout, axis: int) -> BlockTypes | None:
        top = int(lay.length.max()) + 1
        key = _dense(((lay.rows[:, axis] + 1) * top + lay.length) * lay.phases + lay.phase)
        if key is None:
            return None
        inverse, unique = key
        rest = unique // lay.phases
        return cls(inverse, rest // top - 1, rest % top, unique % lay.phases)


@dataclass
class AxisTypes:
    """One axis: each block's type (``type_of``), the types' samples (CSR ``off``: the filters' response from rest
    ``h`` (3, S), per segment the largest change from the segment's first sample ``rise`` (3, segs) with CSR
    ``seg_off``), the filters' constants, and per block (after the scan in :mod:`scanctl.safety.pns_blocks`) the
    state ``z`` at its first sample (3, blocks), the response at its first and last samples and the bound."""

    type_of: IntArray
    length: IntArray
    top: IntArray  # per type, its last stored sample (0 for a type without an event: one sample stands for all)
    off: IntArray
    h: FloatArray
    run: IntArray  # per type sample: its run of constant slew
    slack: FloatArray  # per type: how far the samples' slews in a run may differ (rounding), T/m/s
    h_max: FloatArray
    h_end: FloatArray
    g_first: FloatArray
    g_last: FloatArray
    seg_off: IntArray
    rise: dict[int, tuple[IntArray, FloatArray]]  # per sub-segment size: CSR offsets per type, largest change
    h_weighted: FloatArray  # per type, Σ weight·max |h|: the bound's part from rest
    seg_max: FloatArray  # per segment, the largest response from rest (weighted sum of the three |h|)
    beta_pow: FloatArray  # β^j (3, longest type)
    decay: FloatArray  # β^L per type (3, types)
    gain0: FloatArray  # α·β^(L−1) per type: the weight of the first sample's input at the end
    lam: FloatArray
    alpha: FloatArray
    weight: FloatArray
    conv: float
    z: FloatArray | None = None
    last: FloatArray | None = None
    bound: FloatArray | None = None

    @classmethod
    def of(cls, lay: Layout, types: BlockTypes, lam: FloatArray, alpha: FloatArray, weight: FloatArray,
           conv: float) -> AxisTypes:
        inverse, row, length, phase, stored = types.inverse, types.row, types.length, types.phase, types.stored
        off = np.concatenate(([0], np.cumsum(stored)))
        g = _sample_types(lay, row, stored, phase, off)
        slew = np.empty(g.size)
        slew[0] = 0.0
        np.subtract(g[1:], g[:-1], out=slew[1:])
        slew *= conv
        slew[off[:-1]] = 0.0  # a type's first slew is the block's x0, added per block
        # runs of constant slew (to 1e-9 of the type's largest: the samples' rounding), inside which every
        # filter moves monotonically; each type's first two samples start runs (the first's slew is the block's)
        slack = 1e-9 * np.maximum.reduceat(np.abs(slew), off[:-1])
        change = np.ones(g.size, dtype=bool)
        change[1:] = np.abs(slew[1:] - slew[:-1]) > np.repeat(slack, stored)[1:]
        change[np.minimum(off[:-1] + 1, g.size - 1)] = True
        run = np.cumsum(change)
        x = np.stack((slew, np.abs(slew), slew)) * alpha[:, None]
        gap = np.repeat(lam[:, None], g.size, axis=1)
        gap[:, off[:-1]] = np.inf  # each type from rest (capped: 2e-16 of the type before leaks)
        h = decay_scan(gap, x, np.zeros(3))
        ends = off[1:] - 1
        nseg = -(-stored // SEGMENT)
        seg_off = np.concatenate(([0], np.cumsum(nseg)))
        j = np.arange(g.size) - np.repeat(off[:-1], stored)
        rise = {size: _rise(h, j, off, stored, size) for size in SIZES}
        decay = np.exp(-lam[:, None] * length)  # over the type's samples, and its first sample's input's
        seg_first = np.flatnonzero(j % SEGMENT == 0)
        response = np.abs(h[0]) * weight[0] + np.abs(h[1]) * weight[1] + np.abs(h[2]) * weight[2]
        seg_max = np.maximum.reduceat(response, seg_first)
        beta_pow = np.exp(-lam[:, None] * np.arange(int(length.max()) + 1))
        h_max = np.maximum.reduceat(np.abs(h), off[:-1], axis=1)
        return cls(inverse, length, stored - 1, off, h, run, slack, h_max, h[:, ends], g[off[:-1]], g[ends],
                   seg_off, rise, weight[0] * h_max[0] + weight[1] * h_max[1] + weight[2] * h_max[2], seg_max,
                   beta_pow, decay,
                   alpha[:, None] * decay / np.exp(-lam)[:, None], lam, alpha, weight, conv)


def _rise(h: FloatArray, j: IntArray, off: IntArray, length: IntArray, size: int) -> tuple[IntArray, FloatArray]:
    """Per type, per sub-segment of ``size`` samples (from each multiple of ``size``): the largest change
    of each filter's response from rest from the sub-segment's first sample, ``(3, sub-segments)``, and the
    sub-segments' CSR offsets per type."""
    count = -(-length // size)
    first = np.repeat(off[:-1], length) + (j // size) * size
    change = np.abs(h - h[:, first])
    return np.concatenate(([0], np.cumsum(count))), np.maximum.reduceat(change, np.flatnonzero(j % size == 0), axis=1)


def _dense(key: IntArray) -> tuple[IntArray, IntArray] | None:
    """Ids 0.. of the distinct values of ``key`` (each element's, and the values ascending)."""
    if key.size == 0 or int(key.min()) < 0:
        return None
    top = int(key.max()) + 1
    if top > max(1 << 22, 4 * key.size):
        unique, inverse = np.unique(key, return_inverse=True)
        return inverse.reshape(-1), unique
    present = np.zeros(top, dtype=bool)
    present[key] = True
    unique = np.flatnonzero(present)
    ids = np.zeros(top, dtype=np.int64)
    ids[unique] = np.arange(unique.size)
    return ids[key], unique


def _sample_types(lay: Layout, row: IntArray, length: IntArray, phase: IntArray, off: IntArray) -> FloatArray:
    """Each type's gradient (Hz/m) at its raster samples, from its row's breakpoints (0 outside them, the
    end values held for 2·EDGE rasters beyond them): one interpolation, the types' breakpoints laid side by
    side ``span`` seconds apart, each between zeros."""
    total = int(off[-1])
    slot = np.repeat(np.arange(row.size), length)
    j = np.arange(total) - off[:-1][slot]
    tau = phase[slot] * lay.half_tick_s + j * lay.dt
    has = np.flatnonzero(row >= 0)
    if not has.size:
        return np.zeros(total)
    r = row[has]
    first, count = lay.offsets[r], lay.offsets[r + 1] - lay.offsets[r]
    need = max(float(tau.max()), float(np.abs(lay.t_s).max())) + 2 * lay.dt
    span = 2.0 ** math.ceil(math.log2(need))  # a power of two: the shifts are exact
    base = np.concatenate(([0], np.cumsum(count + 4)))
    owner = np.repeat(np.arange(r.size), count)
    pos = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    shift = has * span
    eps = EDGE * lay.dt
    xs, ys = np.empty(int(base[-1])), np.zeros(int(base[-1]))
    lo, hi = lay.t_s[first] + shift, lay.t_s[first + count - 1] + shift
    xs[base[:-1]], xs[base[:-1] + 1] = lo - 3 * eps, lo - 2 * eps  # 0, then the first value ...
    ys[base[:-1] + 1] = lay.g[first]
    xs[base[1:] - 2], xs[base[1:] - 1] = hi + 2 * eps, hi + 3 * eps  # ... the last value, then 0
    ys[base[1:] - 2] = lay.g[first + count - 1]
    xs[base[:-1][owner] + 2 + pos] = lay.t_s[first[owner] + pos] + shift[owner]
    ys[base[:-1][owner] + 2 + pos] = lay.g[first[owner] + pos]
    return np.interp(tau + slot * span, xs, ys, left=0.0, right=0.0)
