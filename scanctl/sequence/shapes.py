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
    # Run markers: positions i where packed[i] == packed[i+1] start a (value, value, count) triple.
    # A triple consumes three stored values, so markers inside a consumed triple are skipped.
    values: list[npt.NDArray[np.float64]] = []
    repeats: list[npt.NDArray[np.int64]] = []
    equal_next = np.flatnonzero(packed[:-1] == packed[1:])
    pos = 0
    for marker in equal_next.tolist():
        if marker < pos:
            continue
        if marker + 2 >= packed.size:
            raise ShapeError(f"run at stored value {marker + 1} has no repeat count")
        count = packed[marker + 2]
        if count < 0 or count != np.floor(count) or count > num_samples:
            raise ShapeError(f"invalid repeat count {count:g} at stored value {marker + 3}")
        if marker > pos:
            values.append(packed[pos:marker])
            repeats.append(np.ones(marker - pos, dtype=np.int64))
        values.append(packed[marker : marker + 1])
        repeats.append(np.array([int(count) + 2], dtype=np.int64))
        pos = marker + 3
    if pos < packed.size:
        values.append(packed[pos:])
        repeats.append(np.ones(packed.size - pos, dtype=np.int64))
    if not values:
        raise ShapeError("no stored values")
    rep = np.concatenate(repeats)
    total = int(rep.sum())
    if total != num_samples:
        raise ShapeError(f"compressed data expands to {total} samples, num_samples says {num_samples}")
    return np.cumsum(np.repeat(np.concatenate(values), rep))


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
