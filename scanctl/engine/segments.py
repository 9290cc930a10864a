"""The segment compiler: a sequence cut into segments and compiled into one program per subsystem.

A real spectrometer has finite buffers, so a sequence is never handed over whole: the executor cuts it
into **segments** of whole blocks (a bounded duration and number of blocks each) and compiles each into
one program per subsystem (:mod:`scanctl.hw.program`), on the scan's single timebase. Everything is
vectorised over the blocks of a segment; nothing here is per block in Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram
from scanctl.sequence.labels import label_values
from scanctl.sequence.model import FloatArray, IntArray, Sequence
from scanctl.sequence.rf_samples import rf_event_samples
from scanctl.sequence.timing import block_event_ends
from scanctl.sequence.waveforms import axis_waveform


@dataclass(frozen=True)
class Segment:
    """Blocks ``block_start:block_stop`` compiled for every subsystem, from ``t0_s`` to ``t1_s``. A piece of a
    block cut in time (see :func:`compile_segments`) after the one holding its events has no blocks
    (``block_start == block_stop``) and empty programs."""

    number: int
    block_start: int
    block_stop: int
    t0_s: float
    t1_s: float
    gradient: GradientProgram
    rf: RFProgram
    adc: ADCProgram

    @property
    def duration_s(self) -> float:
        return self.t1_s - self.t0_s


def segment_bounds(seq: Sequence, max_duration_s: float = 1.0, max_blocks: int = 4096) -> IntArray:
    """Block indices where segments start (and the end): each segment spans at most ``max_blocks``
    blocks and at most ``max_duration_s`` seconds (at least one block, however long it is)."""
    n = len(seq.blocks)
    starts = [0]
    bstart = seq.block_start_s
    while starts[-1] < n:
        a = starts[-1]
        limit = min(a + max_blocks, n)
        by_time = int(np.searchsorted(bstart[a + 1 : limit + 1], bstart[a] + max_duration_s, side="right"))
        starts.append(a + max(1, by_time))
    return np.array(starts, dtype=np.int64)


def compile_segments(
    seq: Sequence, *, larmor_hz: float, max_duration_s: float = 1.0, max_blocks: int = 4096
) -> Iterator[Segment]:
    """Compile ``seq`` into consecutive segments (lazily: one segment is built when asked for).

    ``larmor_hz`` converts the ppm frequency and phase offsets of Pulseq 1.5 into Hz and radians.

    A block longer than ``max_duration_s`` (a long delay, a TR fill) is cut in time, so that no segment is
    longer than ``max_duration_s`` unless the block's own events are: its events go in the first piece, which
    lasts ``max_duration_s`` or until its events end if they last longer, and the rest of the block follows
    as idle segments (no blocks: ``block_start == block_stop``, empty programs) of at most ``max_duration_s``.
    The executor then keeps loading, playing and hearing the subsystems through a delay of any length,
    instead of handing them one program longer than their buffer.
    """
    bounds = segment_bounds(seq, max_duration_s, max_blocks)
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)
    labels = label_values(seq)
    busy = _events_end_s(seq)
    number = 0
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        t0, t1 = float(seq.block_start_s[a]), float(seq.block_start_s[b])
        pieces = [t0, t1] if t1 - t0 <= max_duration_s else _cut(t0, t1, float(busy[a]), max_duration_s)
        blocks = np.arange(a, b)
        for k, (p0, p1) in enumerate(zip(pieces[:-1], pieces[1:], strict=True)):
            mine = blocks if k == 0 else blocks[:0]  # the events are all in the first piece
            yield Segment(
                number=number,
                block_start=a if k == 0 else b,
                block_stop=b,
                t0_s=p0,
                t1_s=p1,
                gradient=_gradient(seq, mine, p0, p1),
                rf=_rf(seq, mine, p0, p1, larmor_hz),
                adc=_adc(seq, mine, p0, p1, larmor_hz, adc_blocks, labels),
            )
            number += 1


def _events_end_s(seq: Sequence) -> FloatArray:
    """Per block, when its last event (RF, gradient or ADC, delay included) ends, s from the block's start."""
    ends = block_event_ends(seq)
    return np.maximum.reduce([ends[name] for name in ("rf", "gx", "gy", "gz", "adc")])


def _cut(t0: float, t1: float, busy_s: float, max_duration_s: float) -> list[float]:
    """The boundaries (s) that cut one long block ``[t0, t1]`` whose events end ``busy_s`` after ``t0``: a
    first piece holding the events, then idle pieces of equal length, at most ``max_duration_s`` each."""
    first = min(t1, t0 + max(max_duration_s, busy_s))
    n = int(np.ceil((t1 - first) / max_duration_s - 1e-9))
    idle = np.linspace(first, t1, n + 1) if n > 0 else np.array([t1])
    idle[-1] = t1  # end exactly where the next block starts
    return [t0, *idle.tolist()]


def _gradient(seq: Sequence, blocks: IntArray, t0: float, t1: float) -> GradientProgram:
    waves = [axis_waveform(seq, axis, blocks) for axis in range(3)]
    return GradientProgram(
        t0, t1, (waves[0].t_s, waves[1].t_s, waves[2].t_s),
        (waves[0].g_hz_per_m, waves[1].g_hz_per_m, waves[2].g_hz_per_m),
    )


def _rf(seq: Sequence, blocks: IntArray, t0: float, t1: float, larmor_hz: float) -> RFProgram:
    rf = seq.rf
    pulse_blocks = blocks[seq.blocks.rf[blocks] >= 0]
    rows = seq.blocks.rf[pulse_blocks]
    offsets, t_rel, shape = rf_event_samples(seq)
    lengths = offsets[rows + 1] - offsets[rows]
    total = int(lengths.sum())
    starts = np.repeat(offsets[rows] - (np.cumsum(lengths) - lengths), lengths)
    idx = starts + np.arange(total)
    start = seq.block_start_s[pulse_blocks] + rf.delay_s[rows]
    phase = rf.phase_rad[rows] + rf.phase_ppm[rows] * 1e-6 * larmor_hz
    b1 = np.repeat(rf.amplitude_hz[rows] * np.exp(1j * phase), lengths) * shape[idx]
    return RFProgram(
        t0_s=t0,
        t1_s=t1,
        raster_s=seq.rasters.rf_s,
        start_s=start,
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        t_s=np.repeat(start, lengths) + t_rel[idx],
        b1_hz=b1,
        freq_hz=rf.freq_hz[rows] + rf.freq_ppm[rows] * 1e-6 * larmor_hz,
        use=rf.use[rows],
        block=pulse_blocks,
    )


def _adc(seq: Sequence, blocks: IntArray, t0: float, t1: float, larmor_hz: float, adc_blocks: IntArray,
         labels: dict[str, IntArray]) -> ADCProgram:
    adc = seq.adc
    win_blocks = blocks[seq.blocks.adc[blocks] >= 0]
    rows = seq.blocks.adc[win_blocks]
    return ADCProgram(
        t0_s=t0,
        t1_s=t1,
        start_s=seq.block_start_s[win_blocks] + adc.delay_s[rows],
        num_samples=adc.num_samples[rows],
        dwell_s=adc.dwell_s[rows],
        freq_hz=adc.freq_hz[rows] + adc.freq_ppm[rows] * 1e-6 * larmor_hz,
        phase_rad=adc.phase_rad[rows] + adc.phase_ppm[rows] * 1e-6 * larmor_hz,
        block=win_blocks,
        index=np.searchsorted(adc_blocks, win_blocks).astype(np.int64),
        labels={name: values[win_blocks] for name, values in labels.items()},
    )
