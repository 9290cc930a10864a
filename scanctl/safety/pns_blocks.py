"""The SAFE PNS peak of a whole sequence played block by block (docs/safety.md#pns): the same per-sample
model as :mod:`scanctl.safety.pns`, computed from what repeats.

Why it can: the filters are linear and time invariant, each axis's three filters see only that axis, and
a block plays the same waveform wherever it is. On one axis a block is a **type** — its gradient event
row (physical, after ROTATIONS), its number of raster samples and where its first sample falls — and a
sequence has few types even when it has 256,000 blocks. For each type the samples of its waveform, their
slews and the filters' response from rest (``h``) are computed once. A block of type ``t`` then starts
from the filters' state ``y_s`` before it and the slew ``x0`` of its first sample (the only one that
depends on the block before: the previous sample is that block's last one), and inside it::

    y(j) = z·β^j + h_t(j),    z = β·y_s + α·x0        (j = 0 .. L−1, each of the nine filters)

so its end state is ``β^L·y_s + α·β^(L−1)·x0 + h_t(L−1)``: one linear recurrence over the blocks, solved
for the nine filters at once (:func:`scanctl.safety.lowpass.product_scan`).

The peak is then searched without playing every sample. Known exactly for every block: the response at
its first and last samples. An upper bound for every sample of a block: each ``|y(j)| ≤ |z| + max_j
|h_t(j)|``, and the axes' responses and their combination are increasing in the ``|y|``. Only blocks whose
bound beats what is known (the peak, or an axis's peak) are looked into: blocks of the same types whose
states agree to 1e-13 of the response are the same block played again (a steady state repeats exactly)
and are looked into once, at their first occurrence; each remaining block is cut into segments of
:data:`SEGMENT` samples. A segment is first bounded by its types' largest response from rest in it plus
the state's decay to it; where that beats what is known, it is evaluated exactly at both ends and bisected
while a bound on its inside still beats it: inside a run of constant slew each filter is monotone, so
``max(|y(j0)|, |y(j1)|)`` bounds it there, else ``|y(j)| ≤ |y(j0)| + |z|·β^j0·(1 − β^(j1−j0)) + max |h_t(j) −
h_t(j0)|``. The peak, its sample and each axis's peak are the per-sample model's (up to rounding, and to
1e-13 of the response for repeated blocks).

A type without an event stores one sample (``h`` is 0 throughout), so long delays cost nothing. Sequences
this does not fit — a non-finite gradient, a step inside an event, an event outside its block, a gradient
that does not return to zero where the waveform between two blocks' events would be interpolated across
raster samples, a raster sample centred on a block boundary, block starts off a grid shared with the
gradient raster, too many distinct types' samples, or (unless asked) more of them than a quarter of the
gradient breakpoints, where runs are quicker — are left to the run-by-run closed form
(:func:`scanctl.safety.pns.predict_waveforms`): :func:`predict_blocks` returns None for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.safety.lowpass import ROW, decay_scan, lane_order, product_scan
from scanctl.sequence.model import FloatArray, IntArray, Sequence
from scanctl.sequence.waveforms import physical_gradients

#: Most raster samples of one axis's distinct block types (else the run-by-run closed form is used).
MAX_TYPE_SAMPLES = 1 << 20
#: Blocks whose filters' states are worked out at once (bounds the memory: about 0.5 kB a block).
CHUNK = 1 << 15
#: Samples per segment when a block is looked into, and the sizes it is halved through.
SEGMENT = 8
_SIZES = tuple(SEGMENT >> i for i in range(SEGMENT.bit_length() - 1))
#: How close (in rasters) a raster sample centre may be to an event's end for the end's value to hold.
_EDGE = 1e-9
#: A bound within this (relative) of what is known cannot change the result.
_SLACK = 1e-12
#: Blocks whose states agree within this (relative to the response) are looked into once.
_SAME = 1e-13


@dataclass
class BlockPeak:
    """The combined response's peak (% of threshold) and its raster sample, each axis's peak, and how
    much was looked into (blocks after level 0, samples evaluated one by one)."""

    peak: float
    peak_k: int
    axis_peaks: FloatArray
    blocks_searched: int = 0
    samples_evaluated: int = 0

    def add(self, k: IntArray, stim: FloatArray, axes: tuple[int, ...], combined: FloatArray | None) -> None:
        """Exact values at the samples ``k``: each of ``axes``'s response (rows of ``stim``) and, if given,
        the combination (the earliest sample wins a tie)."""
        if not k.size:
            return
        which = list(axes)
        self.axis_peaks[which] = np.maximum(self.axis_peaks[which], stim.max(axis=1))
        if combined is not None:
            top = float(combined.max())
            if top >= self.peak:
                at = int(k[combined == top].min())
                if top > self.peak or at < self.peak_k:
                    self.peak, self.peak_k = top, at


def predict_blocks(seq: Sequence, lam: FloatArray, weight: FloatArray, to_t_per_m_per_s: float, *,
                   always: bool = False) -> BlockPeak | None:
    """The SAFE peak of ``seq``'s physical gradients for the nine filters' decay per raster sample ``lam``
    (``−ln β``, axis-major) and the weights of their ``|y|`` (% per T/m/s); ``to_t_per_m_per_s`` turns a
    change of the gradient (Hz/m) between two samples into a slew (T/m/s). None when the sequence does not
    fit the block structure (see the module's documentation), or (unless ``always``) when its types hold
    more samples than a quarter of its gradient breakpoints: then the runs are the quicker way."""
    layout = _Layout.of(seq)
    if layout is None:
        return None
    found = [_Types.of(layout, a) for a in range(3)]
    types = [t for t in found if t is not None]
    if len(types) < 3:
        return None
    # worth it only when the types' samples are few beside the runs of constant slew the run-by-run closed
    # form would play (about two per breakpoint): not for a sequence of few, long, distinct blocks
    counts = np.append(np.diff(layout.offsets), 0)
    breakpoints = sum(int(counts[layout.rows[:, a]].sum()) for a in range(3))
    stored = sum(int(t.stored.sum()) for t in types)
    if stored > MAX_TYPE_SAMPLES or (4 * stored > breakpoints and not always):
        return None
    beta, alpha = np.exp(-lam), -np.expm1(-lam)
    axes = [_Axis.of(layout, t, lam[3 * a:3 * a + 3], alpha[3 * a:3 * a + 3], weight[3 * a:3 * a + 3],
                     to_t_per_m_per_s) for a, t in enumerate(types)]
    return _search(*_scan(layout, axes, beta, alpha), axes)


# -- where the samples are -------------------------------------------------------------------------------

@dataclass
class _Layout:
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
    def of(cls, seq: Sequence) -> _Layout | None:
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
    events is not each block's own (see :func:`_gaps_fit`)."""
    starts, dur = seq.block_start_s, seq.block_duration_s
    eps = _EDGE * dt
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
        if not _gaps_fit(t_begin, v_begin[pick], t_end, v_end[pick], dt, np.diff(pick) == 1):
            return None
        ends.append(float(t_end[-1]))
    return max(ends) if ends else None


def _gaps_fit(t_begin: FloatArray, v_begin: FloatArray, t_end: FloatArray, v_end: FloatArray, dt: float,
              adjacent: Any = True) -> bool:
    """Whether the per-sample model's waveform on one axis is, at every raster sample, what each block plays
    from its own event (``v`` at ``t``: each event's first and last breakpoints, in play order). Between two
    events it interpolates from one's last value to the next's first, and is 0 before the first and after the
    last; a block plays 0 outside its event and its event's end values up to :data:`_EDGE` rasters outside
    it. The same where a gap's ends are both 0; else no sample may be inside a gap (more than _EDGE from
    its ends), nor at a step from one event to the next (its value would depend on rounding), nor on the
    wrong side of the first or last breakpoint when that is not 0. (At an end of a gap the model's value
    is the end's, up to rounding: the waveform is continuous there.) ``adjacent``: which neighbours in the
    arrays are neighbours in play order (the others are not gaps)."""
    eps = _EDGE * dt
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

class _Types:
    """One axis's block types: each block's (``inverse``), and per type its gradient row (-1: none), number
    of samples, phase and the samples stored for it (a type without an event plays zeros: one sample stands
    for all, a long delay is not laid out sample by sample)."""

    def __init__(self, inverse: IntArray, row: IntArray, length: IntArray, phase: IntArray) -> None:
        self.inverse, self.row, self.length, self.phase = inverse, row, length, phase
        self.stored = np.where(row >= 0, length, 1)

    @classmethod
    def of(cls, lay: _Layout, axis: int) -> _Types | None:
        top = int(lay.length.max()) + 1
        key = _dense(((lay.rows[:, axis] + 1) * top + lay.length) * lay.phases + lay.phase)
        if key is None:
            return None
        inverse, unique = key
        rest = unique // lay.phases
        return cls(inverse, rest // top - 1, rest % top, unique % lay.phases)


@dataclass
class _Axis:
    """One axis: each block's type (``type_of``), the types' samples (CSR ``off``: the filters' response from
    rest ``h`` (3, S), per segment the largest change from the segment's first sample ``rise`` (3, segs)
    with CSR ``seg_off``), the filters' constants, and per block (after :func:`_scan`) the state ``z``
    at its first sample (3, blocks), the response at its first and last samples and the bound."""

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
    def of(cls, lay: _Layout, types: _Types, lam: FloatArray, alpha: FloatArray, weight: FloatArray,
           conv: float) -> _Axis:
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
        rise = {size: _rise(h, j, off, stored, size) for size in _SIZES}
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


def _sample_types(lay: _Layout, row: IntArray, length: IntArray, phase: IntArray, off: IntArray) -> FloatArray:
    """Each type's gradient (Hz/m) at its raster samples, from its row's breakpoints (0 outside them, the
    end values held for 2·_EDGE rasters beyond them): one interpolation, the types' breakpoints laid side by
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
    eps = _EDGE * lay.dt
    xs, ys = np.empty(int(base[-1])), np.zeros(int(base[-1]))
    lo, hi = lay.t_s[first] + shift, lay.t_s[first + count - 1] + shift
    xs[base[:-1]], xs[base[:-1] + 1] = lo - 3 * eps, lo - 2 * eps  # 0, then the first value ...
    ys[base[:-1] + 1] = lay.g[first]
    xs[base[1:] - 2], xs[base[1:] - 1] = hi + 2 * eps, hi + 3 * eps  # ... the last value, then 0
    ys[base[1:] - 2] = lay.g[first + count - 1]
    xs[base[:-1][owner] + 2 + pos] = lay.t_s[first[owner] + pos] + shift[owner]
    ys[base[:-1][owner] + 2 + pos] = lay.g[first[owner] + pos]
    return np.interp(tau + slot * span, xs, ys, left=0.0, right=0.0)


def _scan(lay: _Layout, axes: list[_Axis], beta: FloatArray, alpha: FloatArray) -> tuple[BlockPeak, _Candidates]:
    """The nine filters' state through the blocks, :data:`CHUNK` blocks at a time (each chunk in the lane
    layout of :func:`scanctl.safety.lowpass.lane_order`, the state carried from chunk to chunk): the exact
    response at every block's last sample (the peaks so far), and the blocks whose bound beats the peaks
    so far, with their state ``z``: the only ones that can hold a larger value."""
    count = lay.length.size
    result = BlockPeak(0.0, 0, np.zeros(3))
    state = np.zeros(9)
    found: list[tuple[IntArray, FloatArray, FloatArray]] = []
    for c0 in range(0, count, CHUNK):
        size = min(CHUNK, count - c0)
        order = lane_order(size)
        pad = order >= size
        blocks = c0 + np.minimum(order, size - 1)
        y, z = _chunk(lay, axes, blocks, pad, state, beta, alpha)
        state = y[:, (size - 1) % ROW * (order.size // ROW) + (size - 1) // ROW].copy()
        stim = np.empty((3, order.size))
        bound = np.empty((3, order.size))
        for a, ax in enumerate(axes):
            f, w = 3 * a, ax.weight
            np.abs(y[f:f + 3], out=y[f:f + 3])
            stim[a] = w[0] * y[f] + w[1] * y[f + 1] + w[2] * y[f + 2]
            bound[a] = w[0] * np.abs(z[f]) + w[1] * np.abs(z[f + 1]) + w[2] * np.abs(z[f + 2])
        real = np.flatnonzero(~pad)  # a padding place's z is not any block's (its x0 is its block's)
        result.add(lay.k[blocks[real]], bound[:, real], (0, 1, 2), _norm(bound[:, real]))  # first samples: y = z
        result.add(lay.k[blocks] + lay.length[blocks] - 1, stim, (0, 1, 2), _norm(stim))
        for a, ax in enumerate(axes):
            bound[a] += ax.h_weighted[ax.type_of[blocks]]
        live = _beats(bound, (0, 1, 2), True, result) & ~pad & (lay.length[blocks] > 1)
        live = np.flatnonzero(live)
        found.append((blocks[live], z[:, live], bound[:, live]))
    block = np.concatenate([f[0] for f in found])
    return result, _Candidates(block, lay.k[block], lay.length[block], np.stack([ax.type_of[block] for ax in axes]),
                               np.concatenate([f[1] for f in found], axis=1),
                               np.concatenate([f[2] for f in found], axis=1))


def _chunk(lay: _Layout, axes: list[_Axis], blocks: IntArray, pad: Any, state: FloatArray, beta: FloatArray,
           alpha: FloatArray) -> tuple[FloatArray, FloatArray]:
    """One chunk's blocks (``blocks`` in the lane layout, ``pad``: places past the end) from the filters'
    ``state`` before it: their end states ``y`` and the states ``z`` at their first samples, ``(9, places)``."""
    rows = blocks.size // ROW
    decay = np.empty((9, blocks.size))
    drive = np.empty((9, blocks.size))
    x0s = []
    for a, ax in enumerate(axes):
        t = ax.type_of[blocks]
        x0 = ax.g_first[t]
        x0 -= ax.g_last[ax.type_of[blocks - 1]]  # the sample before: the previous block's last
        x0[blocks == 0] = ax.g_first[t[blocks == 0]]  # G before the first sample is zero
        x0 *= ax.conv
        x0s.append(x0)
        f = slice(3 * a, 3 * a + 3)
        np.take(ax.decay, t, axis=1, out=decay[f])
        np.take(ax.gain0, t, axis=1, out=drive[f])
        drive[3 * a] *= x0
        drive[3 * a + 1] *= np.abs(x0)
        drive[3 * a + 2] *= x0
        drive[f] += np.take(ax.h_end, t, axis=1)
    decay[:, pad] = 1.0  # padding holds the last block's value
    drive[:, pad] = 0.0
    y = product_scan(decay.reshape(9, ROW, rows), drive.reshape(9, ROW, rows), state)
    before = decay.reshape(9, ROW, rows)  # reused: the state before each block, the previous place's
    before[:, 1:] = y[:, :-1]
    before[:, 0, 1:] = y[:, -1, :-1]
    before[:, 0, 0] = state
    z = before.reshape(9, -1)
    z *= beta[:, None]
    for a in range(3):
        i = 3 * a
        z[i] += alpha[i] * x0s[a]
        z[i + 1] += alpha[i + 1] * np.abs(x0s[a])
        z[i + 2] += alpha[i + 2] * x0s[a]
    return y.reshape(9, -1), z


@dataclass
class _Candidates:
    """The blocks that may hold a larger value than found at the blocks' last samples: each one's block
    index, first sample, number of samples, type per axis ``(3, n)``, state ``z`` at its first sample
    ``(9, n)`` and bound per axis ``(3, n)``."""

    block: IntArray
    k: IntArray
    length: IntArray
    types: IntArray
    z: FloatArray
    bound: FloatArray


# -- the search ----------------------------------------------------------------------------------------

def _search(result: BlockPeak, cand: _Candidates, axes: list[_Axis]) -> BlockPeak:
    combined = _norm(cand.bound)
    live = np.flatnonzero(combined > result.peak * (1 + _SLACK))
    live = _first_of_each(cand, live, (0, 1, 2))
    live = live[np.argsort(-combined[live], kind="stable")]  # the likeliest first: the peak rises early
    batch = 64
    while live.size:
        _look_into(cand, axes, np.sort(live[:batch]), (0, 1, 2), result)
        live = live[batch:]
        live = live[combined[live] > result.peak * (1 + _SLACK)]
        batch *= 4
    for a in range(3):
        live = np.flatnonzero(cand.bound[a] > result.axis_peaks[a] * (1 + _SLACK))
        _look_into(cand, axes, _first_of_each(cand, live, (a,)), (a,), result)
    return result


def _norm(stim: FloatArray) -> FloatArray:
    """The combination of the axes' responses (rows of ``stim``): the root of the sum of squares."""
    total = stim[0] * stim[0]
    for row in stim[1:]:
        total += row * row
    return np.sqrt(total, out=total)


def _first_of_each(cand: _Candidates, live: IntArray, which: tuple[int, ...]) -> IntArray:
    """``live`` (candidates) without those that repeat an earlier one: the same types on the ``which`` axes
    and states within :data:`_SAME` of the response."""
    if live.size < 2:
        return live
    key = np.zeros(live.size, dtype=np.int64)
    for a in which:
        key = key * (int(cand.types[a].max()) + 1) + cand.types[a][live]
    if int(key.max()) >= 1 << 62:
        return live
    # by types, then in time (live is in time): a stable sort, radix on small keys
    order = np.argsort(key.astype(np.uint16) if int(key.max()) < 1 << 16 else key, kind="stable")
    b = live[order]
    same = key[order][1:] == key[order][:-1]
    for a in which:
        z = cand.z[3 * a:3 * a + 3][:, b]
        scale = max(float(np.abs(z).max()), 1e-300)
        cells = np.rint(z / (scale * _SAME))
        same &= (cells[:, 1:] == cells[:, :-1]).all(axis=0)
    keep = np.ones(b.size, dtype=bool)
    keep[1:] = ~same
    return np.sort(b[keep])


@dataclass
class _Segments:
    """Segments of :data:`SEGMENT` samples of some blocks: the block (an index into them), the segment's
    number in its block, its first sample's offset ``j0`` in the block and its length."""

    owner: IntArray
    number: IntArray
    j0: IntArray
    length: IntArray

    @classmethod
    def of(cls, lengths: IntArray) -> _Segments:
        count = -(-lengths // SEGMENT)
        owner = np.repeat(np.arange(lengths.size), count)
        number = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        j0 = number * SEGMENT
        return cls(owner, number, j0, np.minimum(SEGMENT, lengths[owner] - j0))

    def take(self, keep: IntArray) -> _Segments:
        return _Segments(self.owner[keep], self.number[keep], self.j0[keep], self.length[keep])


def _look_into(cand: _Candidates, axes: list[_Axis], live: IntArray, which: tuple[int, ...],
               result: BlockPeak) -> None:
    """Search the candidates ``live`` on the ``which`` axes (all three: the combination too), segment by
    segment: first a bound from the types' largest response from rest in the segment plus the state's decay
    to it; where that beats what is known, the exact value at the segment's first sample and a bound on the
    change after it; where that still beats it, every sample."""
    if not live.size:
        return
    result.blocks_searched += int(live.size)
    both = len(which) == 3
    seg = _Segments.of(cand.length[live])
    kinds = [(axes[a], cand.types[a][live], cand.z[3 * a:3 * a + 3][:, live]) for a in which]
    stim = np.empty((len(which), seg.owner.size))
    place = seg.number * live.size + seg.owner  # in a (segment number, block) table
    for i, (ax, t, z) in enumerate(kinds):
        zpart = np.abs(z) * ax.weight[:, None]
        decayed = np.empty((int(seg.number.max()) + 1, live.size))  # Σ w·|z|·β^j0 per segment number
        for g, row in enumerate(decayed):
            b = ax.beta_pow[:, g * SEGMENT]  # three terms by hand: a BLAS call would wake its threads
            np.multiply(zpart[0], b[0], out=row)
            row += zpart[1] * b[1]
            row += zpart[2] * b[2]
        ts = t[seg.owner]
        np.add(ax.seg_max[ax.seg_off[ts] + np.minimum(seg.number, ax.top[ts] // SEGMENT)],
               decayed.reshape(-1)[place], out=stim[i])
    seg = seg.take(_beats(stim, which, both, result))
    if not seg.owner.size:
        return
    # exact at both ends of each segment, then bisected while a bound on its inside beats what is known
    length = cand.length[live]
    j1 = np.minimum(seg.j0 + SEGMENT, length[seg.owner] - 1)
    k = cand.k[live]
    y0s = [np.abs(_values(ax, t, z, seg.owner, seg.j0)) for ax, t, z in kinds]
    y1s = [np.abs(_values(ax, t, z, seg.owner, j1)) for ax, t, z in kinds]
    for j, ys in ((seg.j0, y0s), (j1, y1s)):
        stim = _weighted(kinds, ys)
        result.add(k[seg.owner] + j, stim, which, _norm(stim) if both else None)
    owner, j0, size = seg.owner, seg.j0, SEGMENT
    while True:
        for keep in (np.flatnonzero(j1 - j0 > 1), None):  # those with samples inside, then those that beat
            if keep is None:
                keep = np.flatnonzero(_beats(_inside_bounds(kinds, y0s, y1s, owner, j0, j1, size), which, both, result))
            if not keep.size:
                return
            owner, j0, j1 = owner[keep], j0[keep], j1[keep]
            y0s, y1s = [y[:, keep] for y in y0s], [y[:, keep] for y in y1s]
        size //= 2
        split = np.flatnonzero(j0 + size < j1)
        mid = j0[split] + size
        ys = [np.abs(_values(ax, t, z, owner[split], mid)) for ax, t, z in kinds]
        stim = _weighted(kinds, ys)
        result.samples_evaluated += int(split.size)
        result.add(k[owner[split]] + mid, stim, which, _norm(stim) if both else None)
        right = [y[:, split] for y in y1s]  # the right halves: from the middle to the end
        left = j1.copy()
        left[split] = mid
        for y1, y in zip(y1s, ys, strict=True):
            y1[:, split] = y  # the left halves end at the middle
        owner, j0 = np.concatenate((owner, owner[split])), np.concatenate((j0, mid))
        j1 = np.concatenate((left, j1[split]))
        y0s = [np.concatenate((y0, y), axis=1) for y0, y in zip(y0s, ys, strict=True)]
        y1s = [np.concatenate((y1, r), axis=1) for y1, r in zip(y1s, right, strict=True)]


def _values(ax: _Axis, t: IntArray, z: FloatArray, owner: IntArray, j: IntArray) -> FloatArray:
    """The three filters' values ``(3, n)`` at sample ``j`` of the candidates ``owner`` (indices into ``t``
    and ``z``, the candidates' types and states on this axis)."""
    ts = t[owner]
    return z[:, owner] * ax.beta_pow[:, j] + ax.h[:, ax.off[ts] + np.minimum(j, ax.top[ts])]


def _weighted(kinds: list[tuple[_Axis, IntArray, FloatArray]], ys: list[FloatArray]) -> FloatArray:
    """Each axis's response from its filters' ``|y|``."""
    out = np.empty((len(ys), ys[0].shape[1]))
    for i, ((ax, _, _), y) in enumerate(zip(kinds, ys, strict=True)):
        w = ax.weight
        out[i] = w[0] * y[0] + w[1] * y[1] + w[2] * y[2]
    return out


def _inside_bounds(kinds: list[tuple[_Axis, IntArray, FloatArray]], y0s: list[FloatArray], y1s: list[FloatArray],
                   owner: IntArray, j0: IntArray, j1: IntArray, size: int) -> FloatArray:
    """Each axis's bound on the samples strictly between ``j0`` and ``j1`` (inside a sub-segment of ``size``
    from ``j0``), where the filters' ``|y|`` are ``y0s`` and ``y1s``: within one run of constant slew each
    filter is monotone, so ``|y| ≤ max(|y(j0)|, |y(j1)|)`` (plus the rounding slack); else ``|y(j)| ≤
    |y(j0)| + |z|·β^j0·(1 − β^(j1−j0)) + the type's largest change of ``h`` from ``j0`` in the sub-segment."""
    out = np.empty((len(y0s), owner.size))
    for i, ((ax, t, z), y0, y1) in enumerate(zip(kinds, y0s, y1s, strict=True)):
        offsets, rise = ax.rise[size]
        ts = t[owner]
        base, top = ax.off[ts], ax.top[ts]
        y = np.abs(z[:, owner])
        y *= ax.beta_pow[:, j0]
        y *= 1.0 - ax.beta_pow[:, j1 - j0]
        y += rise[:, offsets[ts] + np.minimum(j0, top) // size]
        y += y0
        mono = ax.run[base + np.minimum(j0 + 1, top)] == ax.run[base + np.minimum(j1, top)]
        if mono.any():
            y[:, mono] = np.maximum(y0[:, mono], y1[:, mono]) + ax.slack[ts[mono]]
        w = ax.weight
        out[i] = w[0] * y[0] + w[1] * y[1] + w[2] * y[2]
    return out


def _beats(bound: FloatArray, which: tuple[int, ...], both: bool, result: BlockPeak) -> Any:
    """Where the bounds (rows: the ``which`` axes) beat an axis's peak or, for all three, the peak."""
    live = bound[0] > result.axis_peaks[which[0]] * (1 + _SLACK)
    for i, a in enumerate(which[1:], 1):
        live |= bound[i] > result.axis_peaks[a] * (1 + _SLACK)
    if both:
        live |= _norm(bound) > result.peak * (1 + _SLACK)
    return live
