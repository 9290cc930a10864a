"""Pulseq shape compression: run-length encoding of the waveform's derivative.

A stored shape whose length equals ``num_samples`` is uncompressed. Otherwise the stored values are
the derivative of the waveform in which a run of ``n >= 2`` equal values is written as the value
twice followed by ``n - 2``; the waveform is the cumulative sum of the expanded derivative.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_QUANTUM = 1e-7  # the derivative is quantised to this step before run-length encoding


class ShapeError(ValueError):
    """A compressed shape is inconsistent (the reader turns it into a located SequenceFormatError)."""


def decompress(packed: npt.NDArray[np.float64], num_samples: int) -> npt.NDArray[np.float64]:
    """Expand a stored shape to its ``num_samples`` samples. Raises :class:`ShapeError`."""
    if packed.size == num_samples:
        return packed.astype(np.float64, copy=True)
    if packed.size > num_samples:
        raise ShapeError(f"{packed.size} stored values for {num_samples} samples")
    if packed.size == 0:
        raise ShapeError("no stored values")
    # Run markers: positions i where packed[i] == packed[i+1] start a (value, value, count) triple.
    # A triple consumes three stored values, so markers inside a consumed triple are skipped.
    starts = _run_starts(np.flatnonzero(packed[:-1] == packed[1:]))
    complete = starts[starts + 2 < packed.size]
    counts = packed[complete + 2]
    bad = np.flatnonzero(~((counts >= 0) & (counts == np.floor(counts)) & (counts <= num_samples)))
    if bad.size:
        k = int(bad[0])
        raise ShapeError(f"invalid repeat count {counts[k]:g} at stored value {int(complete[k]) + 3}")
    if complete.size < starts.size:
        raise ShapeError(f"run at stored value {int(starts[-1]) + 1} has no repeat count")
    # The expansion is at least the sum of the counts; keep the int64 sum below from overflowing.
    if float(counts.sum()) > 2.0**62:
        raise ShapeError(f"compressed data expands to more than {num_samples} samples")
    rep = np.ones(packed.size, dtype=np.int64)
    rep[starts] = counts.astype(np.int64) + 2
    rep[starts + 1] = 0
    rep[starts + 2] = 0
    total = int(rep.sum())
    if total != num_samples:
        raise ShapeError(f"compressed data expands to {total} samples, num_samples says {num_samples}")
    return np.cumsum(np.repeat(packed.astype(np.float64, copy=False), rep))


def _run_starts(markers: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The markers that start a triple: the first one, then the first at or after each start + 3.

    The chain is followed by pointer doubling (O(n log n), vectorised) rather than one marker at a time.
    """
    n = markers.size
    if n == 0:
        return markers
    jump = np.append(np.searchsorted(markers, markers + 3), n)  # n: past the end, maps to itself
    path = np.zeros(1, dtype=np.int64)
    while path[-1] != n:
        path = np.concatenate((path, jump[path]))
        jump = jump[jump]
    return markers[path[path < n]]


def compress(waveform: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Compress a waveform as the Pulseq reference implementations do (bit-compatible layout).

    Shapes of four samples or fewer, and shapes that would not get shorter, are stored as they are.
    """
    w = np.asarray(waveform, dtype=np.float64)
    if w.size <= 4:
        return w.copy()
    scaled = w / _QUANTUM
    datq = np.round(np.concatenate((scaled[:1], np.diff(scaled))))
    qerr = scaled - np.cumsum(datq)
    datd = datq + np.concatenate(([0.0], np.diff(np.round(qerr))))
    starts = np.concatenate(([0], np.flatnonzero(datd[1:] != datd[:-1]) + 1))
    lengths = np.diff(np.concatenate((starts, [datd.size])))
    runs = lengths > 1
    repeat = 1 + 2 * runs
    out = np.repeat(datd[starts] * _QUANTUM, repeat)
    out[(np.cumsum(repeat) - 1)[runs]] = lengths[runs] - 2
    return out if out.size < w.size else w.copy()
