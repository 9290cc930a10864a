"""Pulseq labels (LABELSET / LABELINC extensions) evaluated for every block at once.

A label keeps its value from block to block; in a block, ``LABELSET`` entries apply first, then
``LABELINC`` entries add to the value (the order the MATLAB and pypulseq implementations use for the
common case of one entry per label per block). The value in a block is the one its ADC data carries.
"""

from __future__ import annotations

import numpy as np

from scanctl.sequence.model import IntArray, Sequence


def label_values(seq: Sequence) -> dict[str, IntArray]:
    """For every label name in the sequence, its value in each block (``(n_blocks,)`` int64)."""
    n = len(seq.blocks)
    sets = _entries(seq, "LABELSET")
    incs = _entries(seq, "LABELINC")
    out: dict[str, IntArray] = {}
    for name in sorted(set(sets) | set(incs)):
        set_blocks, set_values = sets.get(name, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        inc_blocks, inc_values = incs.get(name, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        inc = np.bincount(inc_blocks, weights=inc_values, minlength=n).astype(np.int64)
        cum_inc = np.cumsum(inc)
        # The last set at or before each block, and the increments accumulated since just before it.
        is_set = np.zeros(n, dtype=bool)
        set_value = np.zeros(n, dtype=np.int64)
        is_set[set_blocks] = True
        set_value[set_blocks] = set_values  # the last entry wins when a block sets a label twice
        last = np.maximum.accumulate(np.where(is_set, np.arange(n), -1))
        base = np.where(last >= 0, set_value[np.maximum(last, 0)], 0)
        since = cum_inc - np.where(last >= 1, cum_inc[np.maximum(last - 1, 0)], 0)
        since = np.where(last >= 0, since, cum_inc)
        out[name] = base + since
    return out


def _entries(seq: Sequence, kind: str) -> dict[str, tuple[IntArray, IntArray]]:
    """Per label name: the block indices and values of its ``kind`` entries."""
    spec = seq.extensions.specs.get(kind)
    if spec is None:
        return {}
    which, rows = seq.extensions.entries(seq.blocks.ext, kind)
    labels = spec.columns["label"][rows]
    values = spec.columns["value"][rows].astype(np.int64)
    out: dict[str, tuple[IntArray, IntArray]] = {}
    for name in np.unique(labels).tolist():
        sel = labels == name
        out[str(name)] = (which[sel], values[sel])
    return out
