"""Every RF event's samples, once per event row: what the segment compiler and the SAR prediction read."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.sequence.model import TIME_DEFAULT, FloatArray, IntArray, Sequence

ComplexArray = npt.NDArray[np.complex128]


_RF_SAMPLES: weakref.WeakKeyDictionary[Sequence, tuple[IntArray, FloatArray, ComplexArray]] = (
    weakref.WeakKeyDictionary()
)


def rf_event_samples(seq: Sequence) -> tuple[IntArray, FloatArray, ComplexArray]:
    """Every RF event's samples, once per event row, as CSR ``(offsets, t_rel_s, shape)``: time from the
    pulse's start (its delay excluded) and the unit-amplitude complex shape ``mag * exp(2πi phase)``."""
    cached = _RF_SAMPLES.get(seq)
    if cached is None:
        rf, shapes, raster = seq.rf, seq.shapes, seq.rasters.rf_s
        times: list[npt.NDArray[Any]] = []
        values: list[ComplexArray] = []
        for row in range(rf.id.size):
            mag = shapes.get(int(rf.mag_shape[row]))
            phase = shapes.get(int(rf.phase_shape[row])) if rf.phase_shape[row] >= 0 else np.zeros(mag.size)
            if rf.time_shape[row] == TIME_DEFAULT or rf.time_shape[row] < 0:
                t = (np.arange(mag.size) + 0.5) * raster
            else:
                t = shapes.get(int(rf.time_shape[row])) * np.float64(raster)
            times.append(t)
            values.append(mag * np.exp(2j * np.pi * phase))
        lengths = np.array([t.size for t in times], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        cached = (
            offsets,
            np.concatenate(times) if times else np.zeros(0),
            np.concatenate(values) if values else np.zeros(0, np.complex128),
        )
        _RF_SAMPLES[seq] = cached
    return cached
