"""Bring sequences read from format 1.3/1.4 files up to the 1.5 model.

What older formats do not store is derived the way the reference implementations derive it:

- RF ``center``: the middle of the samples at >= 99.999 % of the peak magnitude;
- RF ``use``: flip angle below 90.01° is an excitation; otherwise a long (> 6 ms) pulse at -3.4 to
  -3.5 ppm (fat) is a saturation, anything else a refocusing pulse (B0 1.5 T, as the references assume);
- arbitrary-gradient ``first``: the previous block's ``last`` on that axis when that gradient ran to
  its block's end (and this one has no delay), else 0; ``last``: the final sample of a time-shaped
  gradient, else the waveform extrapolated half a raster past its last sample;
- format 1.3 block durations: the longest of the block's delay and its events.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scanctl.sequence.model import TIME_DEFAULT, FloatArray, GradEvents, RFEvents, Sequence
from scanctl.sequence.timing import block_event_ends, grad_shape_duration_s, rf_shape_duration_s

_GAMMA_HZ_PER_T = 42.576e6
_B0_T = 1.5


class DurationRangeError(ValueError):
    """A format 1.3 block would last longer than the model can hold (``block``: its row)."""

    def __init__(self, block: int, message: str) -> None:
        super().__init__(message)
        self.block = block


def upgrade(seq: Sequence, *, delays: FloatArray) -> Sequence:
    """Return ``seq`` with the 1.5 fields filled in (``delays``: per-block 1.3 delays, or empty)."""
    seq = dataclasses.replace(seq, rf=_rf_center_and_use(seq))
    if seq.version[1] <= 3:
        ends = block_event_ends(seq)
        content = np.maximum.reduce([delays, *ends.values()])
        raster = seq.rasters.block_duration_s
        ticks_f = np.ceil(content / raster - 1e-6)
        bad = np.flatnonzero(~(np.isfinite(ticks_f) & (ticks_f <= 2.0**53)))
        if bad.size:  # keep the int64 cast (and the sums of durations) exact
            k = int(bad[0])
            raise DurationRangeError(k, f"block {int(seq.blocks.id[k])} would last {content[k]:g} s, more than "
                                        f"2**53 block-duration rasters")
        ticks = ticks_f.astype(np.int64)
        seq = dataclasses.replace(seq, blocks=dataclasses.replace(seq.blocks, duration_ticks=ticks))
    return dataclasses.replace(seq, grad=_grad_first_last(seq))


def _rf_center_and_use(seq: Sequence) -> RFEvents:
    rf, shapes, raster = seq.rf, seq.shapes, seq.rasters.rf_s
    center = rf.center_s.copy()
    use = rf.use.copy()
    durations = rf_shape_duration_s(seq)
    for row in range(rf.id.size):
        mag = shapes.get(int(rf.mag_shape[row]))
        phase = shapes.get(int(rf.phase_shape[row])) if rf.phase_shape[row] >= 0 else np.zeros(mag.size)
        if rf.time_shape[row] == TIME_DEFAULT:
            t = (np.arange(mag.size) + 0.5) * raster
        else:
            t = shapes.get(int(rf.time_shape[row])) * raster
        peak = np.abs(mag)
        top = np.flatnonzero(peak >= peak.max() * 0.99999)
        center[row] = (t[top[0]] + t[top[-1]]) / 2
        signal = rf.amplitude_hz[row] * mag * np.exp(2j * np.pi * phase)
        flip_deg = abs(np.sum(signal[:-1] * np.diff(t))) * 360
        offres_ppm = 1e6 * rf.freq_hz[row] / _B0_T / _GAMMA_HZ_PER_T
        if flip_deg < 90.01:
            use[row] = ord("e")
        elif durations[row] > 6e-3 and -3.5 <= offres_ppm <= -3.4:
            use[row] = ord("s")
        else:
            use[row] = ord("r")
    return dataclasses.replace(rf, center_s=center, use=use)


def _grad_first_last(seq: Sequence) -> GradEvents:
    g, shapes = seq.grad, seq.shapes
    first, last = g.first_hz_per_m.copy(), g.last_hz_per_m.copy()
    pending = np.flatnonzero(np.isnan(first))
    if pending.size == 0:
        return g
    for row in pending.tolist():
        w = g.amplitude_hz_per_m[row] * shapes.get(int(g.shape[row]))
        if g.time_shape[row] != TIME_DEFAULT or w.size < 2:
            last[row] = w[-1]
        else:
            last[row] = (3 * w[-1] - w[-2]) * 0.5
    end = g.delay_s + grad_shape_duration_s(seq)
    block_dur = seq.block_duration_s
    first_seen = np.full(g.id.size, np.nan)
    for axis in range(3):
        rows = seq.blocks.grad[:, axis]
        has = rows >= 0
        safe = np.where(has, rows, 0)
        arb = has & ~g.is_trap[safe]
        runs_to_end = arb & (end[safe] + 1e-12 >= block_dur)
        prev_last = np.zeros(rows.size)
        prev_last[1:] = np.where(runs_to_end[:-1], last[safe[:-1]], 0.0)
        prev_last[arb & (g.delay_s[safe] > 0)] = 0.0
        blocks_with = np.flatnonzero(arb & np.isnan(first[safe]))
        ev = rows[blocks_with]
        uniq, idx = np.unique(ev, return_index=True)
        todo = np.isnan(first_seen[uniq])
        first_seen[uniq[todo]] = prev_last[blocks_with[idx[todo]]]
    first = np.where(np.isnan(first), np.nan_to_num(first_seen), first)
    return dataclasses.replace(g, first_hz_per_m=first, last_hz_per_m=last)
