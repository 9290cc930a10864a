"""Event timing, vectorised over event tables and blocks.

Pulseq timing rules (shared by the checks, the waveforms and the executor):

- RF with the default time shape: sample ``i`` at ``(i + 0.5) * rf_raster``; the shape lasts
  ``n * rf_raster``. With a time shape: samples at ``time * rf_raster``, lasting until the last one
  (rounded up to the RF raster).
- Arbitrary gradient, default time: samples at ``(i + 0.5) * grad_raster``, lasting ``n * grad_raster``;
  oversampled (time id -1, ``n`` odd): samples at ``(i + 1) * grad_raster / 2``, lasting
  ``(n + 1) / 2 * grad_raster``; with a time shape: until the last time.
- Trapezoid: ``delay + rise + flat + fall``.
- ADC: sample ``i`` at ``delay + (i + 0.5) * dwell``; the window ends at ``delay + n * dwell``.
"""

from __future__ import annotations

import numpy as np

from scanctl.sequence.model import TIME_OVERSAMPLED, FloatArray, Sequence

_EPS = 1e-12


def rf_shape_duration_s(seq: Sequence) -> FloatArray:
    """Duration of each RF event's shape (without its delay), seconds."""
    rf, shapes, raster = seq.rf, seq.shapes, seq.rasters.rf_s
    n = shapes.length(rf.mag_shape)
    dur: FloatArray = n * np.float64(raster)
    timed = np.flatnonzero(rf.time_shape >= 0)
    for row in timed.tolist():
        last = shapes.get(int(rf.time_shape[row]))[-1] * raster
        dur[row] = np.ceil((last - _EPS) / raster) * raster
    return dur


def grad_shape_duration_s(seq: Sequence) -> FloatArray:
    """Duration of each gradient event (without its delay), seconds."""
    g, shapes, raster = seq.grad, seq.shapes, seq.rasters.gradient_s
    dur = g.rise_s + g.flat_s + g.fall_s
    arb = np.flatnonzero(~g.is_trap)
    if arb.size:
        n = shapes.length(g.shape[arb])
        ts = g.time_shape[arb]
        d = np.where(ts == TIME_OVERSAMPLED, (n + 1) / 2 * raster, n * raster)
        for k in np.flatnonzero(ts >= 0).tolist():
            d[k] = shapes.get(int(ts[k]))[-1] * raster
        dur[arb] = d
    return dur


def adc_window_s(seq: Sequence) -> FloatArray:
    """Length of each ADC window ``num_samples * dwell``, seconds."""
    return seq.adc.num_samples * seq.adc.dwell_s


def block_event_ends(seq: Sequence) -> dict[str, FloatArray]:
    """End time of each event type within its block (0 where the block has none), seconds.

    Keys: ``rf`` (delay + shape), ``gx``/``gy``/``gz`` (delay + waveform), ``adc`` (delay + window).
    Dead and ringdown times are not included: the checks add the profile's.
    """
    b = seq.blocks
    out: dict[str, FloatArray] = {}
    rf_end = seq.rf.delay_s + rf_shape_duration_s(seq)
    out["rf"] = _gather(rf_end, b.rf)
    g_end = seq.grad.delay_s + grad_shape_duration_s(seq)
    for axis, name in enumerate(("gx", "gy", "gz")):
        out[name] = _gather(g_end, b.grad[:, axis])
    adc_end = seq.adc.delay_s + adc_window_s(seq)
    out["adc"] = _gather(adc_end, b.adc)
    return out


def _gather(values: FloatArray, rows: np.ndarray) -> FloatArray:
    """``values[rows]``, with 0 where ``rows`` is -1 (no event): one gather from a zero-padded copy."""
    return np.append(values, 0.0)[rows]

