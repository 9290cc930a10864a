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

The peak is then searched without playing every sample. Known exactly for every block: the response at its first and
last samples. An upper bound for every sample of a block: each ``|y(j)| ≤ |z| + max_j |h_t(j)|``, and the axes'
responses and their combination are increasing in the ``|y|``. Only blocks whose bound beats what is known (the
peak, or an axis's peak) are looked into: blocks of the same types whose states agree to 1e-13 of the response are
the same block played again (a steady state repeats exactly) and are looked into once, at their first occurrence;
each remaining block is cut into segments of :data:`~scanctl.safety.pns_block_types.SEGMENT` samples. A segment is
first bounded by its types' largest response from rest in it plus the state's decay to it; where that beats what is
known, it is evaluated exactly at both ends and bisected while a bound on its inside still beats it: inside a run of
constant slew each filter is monotone, so ``max(|y(j0)|, |y(j1)|)`` bounds it there, else ``|y(j)| ≤ |y(j0)| +
|z|·β^j0·(1 − β^(j1−j0)) + max |h_t(j) − h_t(j0)|``. The peak, its sample and each axis's peak are the per-sample
model's (up to rounding, and to 1e-13 of the response for repeated blocks).

A type without an event stores one sample (``h`` is 0 throughout), so long delays cost nothing. Sequences
this does not fit — a non-finite gradient, a step inside an event, an event outside its block, a gradient
that does not return to zero where the waveform between two blocks' events would be interpolated across
raster samples, a raster sample centred on a block boundary, block starts off a grid shared with the
gradient raster, too many distinct types' samples, or (unless asked) more of them than a quarter of the
gradient breakpoints, where runs are quicker — are left to the run-by-run closed form
(:func:`scanctl.safety.pns.predict_waveforms`): :func:`predict_blocks` returns None for them.

The parts: the layout and each axis's block types (:mod:`scanctl.safety.pns_block_types`), the scan of the
filters' state through the blocks (here), and the search inside the candidate blocks
(:mod:`scanctl.safety.pns_block_search`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanctl.safety.lowpass import ROW, lane_order, product_scan
from scanctl.safety.pns_block_search import BlockPeak, Candidates, beats, norm, search
from scanctl.safety.pns_block_types import AxisTypes, BlockTypes, Layout
from scanctl.sequence.model import FloatArray, IntArray, Sequence

#: Most raster samples of one axis's distinct block types (else the run-by-run closed form is used).
MAX_TYPE_SAMPLES = 1 << 20
#: Blocks whose filters' states are worked out at once (bounds the memory: about 0.5 kB a block).
CHUNK = 1 << 15


def predict_blocks(seq: Sequence, lam: FloatArray, weight: FloatArray, to_t_per_m_per_s: float, *,
                   always: bool = False) -> BlockPeak | None:
    """The SAFE peak of ``seq``'s physical gradients for the nine filters' decay per raster sample ``lam``
    (``−ln β``, axis-major) and the weights of their ``|y|`` (% per T/m/s); ``to_t_per_m_per_s`` turns a
    change of the gradient (Hz/m) between two samples into a slew (T/m/s). None when the sequence does not
    fit the block structure (see the module's documentation), or (unless ``always``) when its types hold
    more samples than a quarter of its gradient breakpoints: then the runs are the quicker way."""
    layout = Layout.of(seq)
    if layout is None:
        return None
    found = [BlockTypes.of(layout, a) for a in range(3)]
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
    axes = [AxisTypes.of(layout, t, lam[3 * a:3 * a + 3], alpha[3 * a:3 * a + 3], weight[3 * a:3 * a + 3],
                     to_t_per_m_per_s) for a, t in enumerate(types)]
    return search(*_scan(layout, axes, beta, alpha), axes)


def _scan(lay: Layout, axes: list[AxisTypes], beta: FloatArray, alpha: FloatArray) -> tuple[BlockPeak, Candidates]:
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
        result.add(lay.k[blocks[real]], bound[:, real], (0, 1, 2), norm(bound[:, real]))  # first samples: y = z
        result.add(lay.k[blocks] + lay.length[blocks] - 1, stim, (0, 1, 2), norm(stim))
        for a, ax in enumerate(axes):
            bound[a] += ax.h_weighted[ax.type_of[blocks]]
        live = beats(bound, (0, 1, 2), True, result) & ~pad & (lay.length[blocks] > 1)
        live = np.flatnonzero(live)
        found.append((blocks[live], z[:, live], bound[:, live]))
    block = np.concatenate([f[0] for f in found])
    return result, Candidates(block, lay.k[block], lay.length[block], np.stack([ax.type_of[block] for ax in axes]),
                               np.concatenate([f[1] for f in found], axis=1),
                               np.concatenate([f[2] for f in found], axis=1))


def _chunk(lay: Layout, axes: list[AxisTypes], blocks: IntArray, pad: Any, state: FloatArray, beta: FloatArray,
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
