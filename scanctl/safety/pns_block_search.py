"""The search for the SAFE PNS peak inside the blocks that may hold it (docs/safety.md#pns: "Block by
block"): the candidates the scan over the blocks leaves, looked into segment by segment with bounds, and
bisected only where a bound still beats what is known. :class:`BlockPeak` is the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.safety.pns_block_types import SEGMENT, AxisTypes
from scanctl.sequence.model import FloatArray, IntArray

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


@dataclass
class Candidates:
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

def search(result: BlockPeak, cand: Candidates, axes: list[AxisTypes]) -> BlockPeak:
    combined = norm(cand.bound)
    live = np.flatnonzero(combined > result.peak * (1 + _SLACK))
    live = first_of_each(cand, live, (0, 1, 2))
    live = live[np.argsort(-combined[live], kind="stable")]  # the likeliest first: the peak rises early
    batch = 64
    while live.size:
        _look_into(cand, axes, np.sort(live[:batch]), (0, 1, 2), result)
        live = live[batch:]
        live = live[combined[live] > result.peak * (1 + _SLACK)]
        batch *= 4
    for a in range(3):
        live = np.flatnonzero(cand.bound[a] > result.axis_peaks[a] * (1 + _SLACK))
        _look_into(cand, axes, first_of_each(cand, live, (a,)), (a,), result)
    return result


def norm(stim: FloatArray) -> FloatArray:
    """The combination of the axes' responses (rows of ``stim``): the root of the sum of squares."""
    total = stim[0] * stim[0]
    for row in stim[1:]:
        total += row * row
    return np.sqrt(total, out=total)


def first_of_each(cand: Candidates, live: IntArray, which: tuple[int, ...]) -> IntArray:
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
    """Segments of :data:`~scanctl.safety.pns_block_types.SEGMENT` samples of some blocks: the block (an index into
    them), the segment's number in its block, its first sample's offset ``j0`` in the block and its length."""

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


def _look_into(cand: Candidates, axes: list[AxisTypes], live: IntArray, which: tuple[int, ...],
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
    seg = seg.take(beats(stim, which, both, result))
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
        result.add(k[seg.owner] + j, stim, which, norm(stim) if both else None)
    owner, j0, size = seg.owner, seg.j0, SEGMENT
    while True:
        for keep in (np.flatnonzero(j1 - j0 > 1), None):  # those with samples inside, then those that beat
            if keep is None:
                keep = np.flatnonzero(beats(_inside_bounds(kinds, y0s, y1s, owner, j0, j1, size), which, both, result))
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
        result.add(k[owner[split]] + mid, stim, which, norm(stim) if both else None)
        right = [y[:, split] for y in y1s]  # the right halves: from the middle to the end
        left = j1.copy()
        left[split] = mid
        for y1, y in zip(y1s, ys, strict=True):
            y1[:, split] = y  # the left halves end at the middle
        owner, j0 = np.concatenate((owner, owner[split])), np.concatenate((j0, mid))
        j1 = np.concatenate((left, j1[split]))
        y0s = [np.concatenate((y0, y), axis=1) for y0, y in zip(y0s, ys, strict=True)]
        y1s = [np.concatenate((y1, r), axis=1) for y1, r in zip(y1s, right, strict=True)]


def _values(ax: AxisTypes, t: IntArray, z: FloatArray, owner: IntArray, j: IntArray) -> FloatArray:
    """The three filters' values ``(3, n)`` at sample ``j`` of the candidates ``owner`` (indices into ``t``
    and ``z``, the candidates' types and states on this axis)."""
    ts = t[owner]
    return z[:, owner] * ax.beta_pow[:, j] + ax.h[:, ax.off[ts] + np.minimum(j, ax.top[ts])]


def _weighted(kinds: list[tuple[AxisTypes, IntArray, FloatArray]], ys: list[FloatArray]) -> FloatArray:
    """Each axis's response from its filters' ``|y|``."""
    out = np.empty((len(ys), ys[0].shape[1]))
    for i, ((ax, _, _), y) in enumerate(zip(kinds, ys, strict=True)):
        w = ax.weight
        out[i] = w[0] * y[0] + w[1] * y[1] + w[2] * y[2]
    return out


def _inside_bounds(kinds: list[tuple[AxisTypes, IntArray, FloatArray]], y0s: list[FloatArray], y1s: list[FloatArray],
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


def beats(bound: FloatArray, which: tuple[int, ...], both: bool, result: BlockPeak) -> Any:
    """Where the bounds (rows: the ``which`` axes) beat an axis's peak or, for all three, the peak."""
    live = bound[0] > result.axis_peaks[which[0]] * (1 + _SLACK)
    for i, a in enumerate(which[1:], 1):
        live |= bound[i] > result.axis_peaks[a] * (1 + _SLACK)
    if both:
        live |= norm(bound) > result.peak * (1 + _SLACK)
    return live
