"""k-space grids of a Cartesian scan, shared by the raw data's encoding (:mod:`.encoding`) and the recon of a
readout along any logical axis (:mod:`scanctl.data.recon.readaxis`): which logical axis moves during the
readouts, which of the other two is the phase axis, the distinct k-space values along an axis and the step
of their grid (1/step = FOV), and whether those values sit on a grid offset by half a step.

Units: k in 1/m on a window's logical axes (0 x, 1 y, 2 z).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: k-space values (1/m) closer than this are one value when a sequence gives no FOV: half the step of a
#: 1 m FOV, larger than any a scanner images (so no real encoding step is ever merged), and ~100 times the
#: raster rounding of gradient areas that leaves k not quite 0 where it should be. An axis whose k varies
#: less than this through a readout does not move in it.
MAX_FOV_M = 1.0
K_TOLERANCE_PER_M = 0.5 / MAX_FOV_M
#: A least-squares grid step replaces the median gap (:func:`grid_step`) when it differs from it by more than
#: this fraction (far above float rounding, 1e-15; far below a step's rounding in a file, 1e-6) and by more
#: than this many of its standard errors (the scatter of the values about the grid can explain less).
GRID_AGREEMENT = 1e-9
GRID_SIGNIFICANCE = 3.0
#: Preferred phase axis when neither the encoding nor the ``LIN`` label says: logical y, then x, so the logical
#: z stays the partition (slab) axis unless it is the read (``write_mprage.py``: read z, phase y, partitions x).
PHASE_PREFERENCE = (1, 0, 2)


def clusters(k: FloatArray) -> IntArray:
    """Per value of ``k``, the number of its cluster in ascending order: values within
    :data:`K_TOLERANCE_PER_M` of their neighbour (sorted) are one cluster."""
    ids = np.zeros(k.size, np.int64)
    if k.size:
        order = np.argsort(k, kind="stable")
        ids[order] = np.concatenate(([0], np.cumsum(np.diff(k[order]) > K_TOLERANCE_PER_M)))
    return ids


def distinct_values(k: FloatArray) -> FloatArray:
    """The distinct values of ``k`` in ascending order (the means of its :func:`clusters`); none when every
    value is within :data:`K_TOLERANCE_PER_M` of 0 (not encoded)."""
    if k.size == 0 or float(np.max(np.abs(k))) < K_TOLERANCE_PER_M:
        return np.zeros(0)
    ordered = np.sort(k)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ordered) > K_TOLERANCE_PER_M) + 1))
    return np.add.reduceat(ordered, starts) / np.diff(np.concatenate((starts, [ordered.size])))


def distinct_gaps(k: FloatArray) -> FloatArray:
    """The gaps (1/m) between the :func:`distinct_values` of ``k``."""
    return np.diff(distinct_values(k))


def grid_step(k: FloatArray) -> float:
    """The step (1/m; 1/FOV) of the grid the distinct values of ``k`` lie on, 0 when not encoded.

    The median gap between the values, unless the least-squares slope of the values over their numbers on
    that grid (a line never acquired, a gap of two steps, numbered as such) says it is off: by more than
    :data:`GRID_AGREEMENT` of it (float rounding) and by more than :data:`GRID_SIGNIFICANCE` standard errors
    of the slope (the values' own scatter about the fitted grid); then that slope. Where the gaps agree the
    median stands (as it always did); where they differ by the rounding of each phase area (pypulseq writes
    gradient amplitudes to about 6 digits: ``write_mprage.py``'s x lines step from k = 8.000006 down, and
    their median gap is 6e-6 of a step short) the slope averages every value's rounding."""
    values = distinct_values(k)
    if values.size < 2:
        return 0.0
    median = float(np.median(np.diff(values)))
    number = np.rint((values - values[0]) / median)
    number -= number.mean()
    spread = float(np.sum(number * number))
    slope = float(np.sum(number * (values - values.mean())) / spread)
    residual = values - values.mean() - slope * number
    error = float(np.sqrt(np.sum(residual ** 2) / max(values.size - 2, 1) / spread))
    off = abs(slope - median)
    return slope if off > GRID_AGREEMENT * median and off > GRID_SIGNIFICANCE * error else median


def grid_offset(x: FloatArray) -> float:
    """Where the values ``x`` (k times the FOV: steps) sit between integers: 0.5 for a grid offset by half a
    step (k = (i + 1/2) / FOV; then shifted down by half a step before rounding, so no two values round to
    the same step), 0 for whole steps (also for no values)."""
    if x.size == 0:
        return 0.0
    offset = float(np.angle(np.mean(np.exp(2j * np.pi * x))) / (2 * np.pi))
    if abs(abs(offset) - 0.5) < 0.25:
        return 0.5
    return 0.0 if abs(offset) < 0.25 else offset


def read_axis(first: FloatArray, last: FloatArray) -> int | None:
    """The one logical axis that every readout moves along (by :data:`K_TOLERANCE_PER_M` or more from its
    first sample ``first (3, windows)`` to its last ``last``, 1/m), the other two staying within it; None
    when there is no window, or no such axis."""
    if first.shape[1] == 0:
        return None
    moving = np.abs(last - first) >= K_TOLERANCE_PER_M
    axes = {tuple(np.flatnonzero(column).tolist()) for column in moving.T}
    if len(axes) != 1:
        return None
    (only,) = axes
    return int(only[0]) if len(only) == 1 else None


def phase_axis(read: int, centres: FloatArray, lin: IntArray | None) -> int:
    """The logical axis of the image rows, of the two other than ``read``, from each readout's k at its
    centre ``centres (3, windows)`` (1/m) and its ``LIN`` label (None: none): the one encoded axis if only one
    is; else the one whose k the ``LIN`` label determines (one k per ``LIN`` value), if just one of the two
    is; else the first of :data:`PHASE_PREFERENCE` other than ``read``."""
    others = [a for a in PHASE_PREFERENCE if a != read]
    encoded = [a for a in others if distinct_values(centres[a]).size > 1]
    if len(encoded) == 1:
        return encoded[0]
    if lin is not None and lin.size == centres.shape[1]:
        counted = [a for a in encoded if _counts(lin, clusters(centres[a]))]
        if len(counted) == 1:
            return counted[0]
    return others[0]


def _counts(lin: IntArray, ids: IntArray) -> bool:
    """Whether each ``LIN`` value has one k cluster ``ids``."""
    return int(np.unique(np.column_stack((lin, ids)), axis=0).shape[0]) == int(np.unique(lin).size)


def frame_axes(read: int, centres: FloatArray, lin: IntArray | None) -> tuple[int, int, int]:
    """The logical axes of the readout, the phase encoding and the partitions (:func:`phase_axis`)."""
    phase = phase_axis(read, centres, lin)
    return read, phase, 3 - read - phase
