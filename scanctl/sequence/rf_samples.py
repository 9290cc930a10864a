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
    pulse's start (its delay excluded) and the unit-amplitude complex shape ``mag * exp(2πi phase)``.

    Samples are always on the RF raster (centres at ``(i + 0.5) * raster``): a pulse with a time shape
    (samples at given times, the waveform linear between them, as pypulseq's block pulses and extended
    shapes are written) is resampled onto the raster, so the transmitter, the Bloch simulation and the
    SAR prediction all play the waveform it describes rather than its few support points."""
    cached = _RF_SAMPLES.get(seq)
    if cached is None:
        rf, shapes, raster = seq.rf, seq.shapes, seq.rasters.rf_s
        times: list[npt.NDArray[Any]] = []
        values: list[ComplexArray] = []
        for row in range(rf.id.size):
            mag = shapes.get(int(rf.mag_shape[row]))
            phase = shapes.get(int(rf.phase_shape[row])) if rf.phase_shape[row] >= 0 else np.zeros(mag.size)
            value = mag * np.exp(2j * np.pi * phase)
            if rf.time_shape[row] == TIME_DEFAULT or rf.time_shape[row] < 0:
                t = (np.arange(mag.size) + 0.5) * raster
            else:
                t, value = _on_raster(shapes.get(int(rf.time_shape[row])) * np.float64(raster), value, raster)
            times.append(t)
            values.append(value)
        lengths = np.array([t.size for t in times], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        cached = (
            offsets,
            np.concatenate(times) if times else np.zeros(0),
            np.concatenate(values) if values else np.zeros(0, np.complex128),
        )
        _RF_SAMPLES[seq] = cached
    return cached


def _on_raster(t: FloatArray, value: ComplexArray, raster: float) -> tuple[FloatArray, ComplexArray]:
    """A waveform given at times ``t`` (s, non-decreasing), linear in between, sampled at the centres of
    the raster intervals it spans: from the raster edge at or before ``t[0]`` to the one at or after
    ``t[-1]``."""
    first = np.floor(t[0] / raster + 1e-9)
    last = max(first + 1, np.ceil(t[-1] / raster - 1e-9))
    centres = (np.arange(first, last) + 0.5) * raster
    if t.size == 1:
        return centres, np.full(centres.size, value[0], np.complex128)
    resampled = np.interp(centres, t, value.real) + 1j * np.interp(centres, t, value.imag)
    return centres, resampled.astype(np.complex128)
