"""Compiled programs: what the executor streams to the subsystems, one segment at a time.

A real spectrometer has finite buffers, so a sequence is never handed over whole: the executor cuts it
into **segments** of whole blocks (a bounded duration and number of blocks each) and compiles each into
one program per subsystem, on the scan's single timebase (seconds from the start of the sequence):

- :class:`GradientProgram`: per axis, the piecewise-linear waveform's breakpoints (Hz/m);
- :class:`RFProgram`: every RF pulse's complex samples (Hz), their times and frequency offsets;
- :class:`ADCProgram`: every receive window (start, samples, dwell, frequency/phase, labels).

Everything is vectorised over the blocks of a segment; nothing here is per block in Python.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.errors import SafetyLimitError
from scanctl.sequence.labels import label_values
from scanctl.sequence.model import TIME_DEFAULT, FloatArray, IntArray, Sequence
from scanctl.sequence.timing import block_event_ends
from scanctl.sequence.waveforms import axis_waveform

ComplexArray = npt.NDArray[np.complex128]
_AXES = ("x", "y", "z")


def _non_finite(value: Any) -> tuple[str, Any] | None:
    """Where ``value`` (a number, an array, or a tuple/dict of them) is not finite: ``(suffix, bad value)``
    with the suffix naming the axis/key and index (``"[y][3]"``), or None when every value is finite.
    Integer and other non-numeric values are finite by construction."""
    if isinstance(value, tuple | list):
        names = _AXES if len(value) == 3 else [str(i) for i in range(len(value))]
        items: Iterator[tuple[str, Any]] = zip(names, value, strict=True)
    elif isinstance(value, dict):
        items = iter(value.items())
    else:
        array = np.asarray(value)
        if array.dtype.kind not in "fc":
            return None
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size == 0:
            return None
        if array.ndim == 0:
            return "", array.item()
        return f"[{int(bad[0])}]", array.reshape(-1)[bad[0]].item()
    for name, item in items:
        found = _non_finite(item)
        if found is not None:
            return f"[{name}]{found[0]}", found[1]
    return None


def validate_program(program: Any) -> None:
    """Fail closed on a program that is not fit to play: every number of every field (times, waveforms, B1,
    frequencies, phases, dwell times) must be finite and the program must not end before it starts.

    The program types call this when they are made (so a program decoded from a wire is checked too) and a
    subsystem calls it again when it loads one (numpy arrays stay writable in a frozen dataclass). Raises
    SafetyLimitError naming the program, the field, the axis or key and the index of the first bad value."""
    kind = type(program).__name__
    for f in fields(program):
        found = _non_finite(getattr(program, f.name))
        if found is not None:
            raise SafetyLimitError(f"{kind}: {f.name}{found[0]} is {found[1]}: a program's values must be finite")
    if not program.t0_s <= program.t1_s:
        raise SafetyLimitError(f"{kind}: t1_s {program.t1_s} is before t0_s {program.t0_s}")


class Validated:
    """What every program type shares: it is checked (:func:`validate_program`) when it is made, and a
    subsystem calls :meth:`validate` again when it loads one."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SafetyLimitError naming the field, axis or key and index of a non-finite value."""
        validate_program(self)


@dataclass(frozen=True)
class GradientProgram(Validated):
    """Gradient waveforms of one segment: for each axis x, y, z, breakpoints ``t_s`` (absolute, s)
    and values ``g_hz_per_m``, linear in between and 0 where an axis has no breakpoints."""

    t0_s: float
    t1_s: float
    t_s: tuple[FloatArray, FloatArray, FloatArray]
    g_hz_per_m: tuple[FloatArray, FloatArray, FloatArray]

    def sample(self, t_s: FloatArray) -> FloatArray:
        """The gradient at ``t_s`` on all three axes, shape ``(3, len(t_s))``, Hz/m."""
        out = np.zeros((3, np.size(t_s)))
        for axis in range(3):
            if self.t_s[axis].size:
                out[axis] = np.interp(t_s, self.t_s[axis], self.g_hz_per_m[axis], left=0.0, right=0.0)
        return out


@dataclass(frozen=True)
class RFProgram(Validated):
    """RF pulses of one segment. Pulse ``p`` has samples ``offsets[p]:offsets[p+1]`` of ``t_s``
    (absolute sample times, s) and ``b1_hz`` (complex B1 in Hz, phase included; the carrier offset
    ``freq_hz[p]`` is given separately and is *not* applied to ``b1_hz``). ``raster_s`` is the RF raster
    each sample lasts (for hard-pulse integration); ``use`` the Pulseq use initial (ASCII)."""

    t0_s: float
    t1_s: float
    raster_s: float
    start_s: FloatArray
    offsets: IntArray
    t_s: FloatArray
    b1_hz: ComplexArray
    freq_hz: FloatArray
    use: npt.NDArray[np.uint8]
    block: IntArray

    @property
    def n_pulses(self) -> int:
        return int(self.start_s.size)

    def b1_squared_integrals(self) -> FloatArray:
        """∫|B1|² dt of each pulse, Hz²·s (:func:`b1_squared_integrals`)."""
        return b1_squared_integrals(self.offsets, self.t_s, np.abs(self.b1_hz) ** 2, self.raster_s)


#: Two breakpoints at most this far apart (s) are a step: its slew is not computed by dividing.
STEP_S = 1e-12


def breakpoint_slew(t_s: FloatArray, g: FloatArray, step_tolerance: float) -> FloatArray:
    """The slew rate on each interval of a piecewise-linear waveform (breakpoints ``t_s`` in s, values ``g``):
    ``|dg| / dt``, in g's unit per second. A step (an interval of at most :data:`STEP_S`) is infinite when it
    changes the value by more than ``step_tolerance``, else 0: a change in no time is an infinite slew, never
    one skipped. A NaN anywhere gives NaN, which a ``not slew <= limit`` comparison refuses."""
    dt = np.diff(t_s)
    dg = np.abs(np.diff(g))
    step = dt <= STEP_S  # False for a NaN interval, which then divides to NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        slew = dg / np.where(step, 1.0, dt)
    jump = np.where(dg <= step_tolerance, 0.0, np.where(dg > step_tolerance, np.inf, np.nan))
    return np.where(step, jump, slew)


def b1_squared_integrals(offsets: IntArray, t_s: FloatArray, b1_squared: FloatArray, raster_s: float) -> FloatArray:
    """∫|B1|² dt of each pulse of a CSR sample table (pulse ``p``: samples ``offsets[p]:offsets[p+1]``).

    Samples on the uniform RF raster each last one raster. A pulse with a time shape of its own (irregular
    samples, e.g. pypulseq's block pulse: two samples at 0 and T) is integrated by the trapezoidal rule
    between its samples instead: counting it a raster per sample would miss almost all of its energy."""
    n = offsets.size - 1
    if n <= 0 or t_s.size == 0:
        return np.zeros(max(n, 0))
    owner = np.repeat(np.arange(n), np.diff(offsets))
    same = owner[1:] == owner[:-1]  # consecutive samples of one pulse
    dt = np.diff(t_s)
    irregular = np.zeros(n, dtype=bool)
    np.logical_or.at(irregular, owner[1:][same], np.abs(dt[same] - raster_s) > 1e-3 * raster_s)
    on_raster = np.bincount(owner, weights=b1_squared, minlength=n) * raster_s
    trapezoid = np.bincount(owner[1:][same], weights=(0.5 * (b1_squared[1:] + b1_squared[:-1]) * dt)[same],
                            minlength=n)
    return np.where(irregular, trapezoid, on_raster)


@dataclass(frozen=True)
class ADCProgram(Validated):
    """Receive windows of one segment. Sample ``i`` of window ``w`` is at
    ``start_s[w] + (i + 0.5) * dwell_s[w]``. ``index`` numbers the windows over the whole scan;
    ``labels`` holds each window's Pulseq label values (name -> per-window array)."""

    t0_s: float
    t1_s: float
    start_s: FloatArray
    num_samples: IntArray
    dwell_s: FloatArray
    freq_hz: FloatArray
    phase_rad: FloatArray
    block: IntArray
    index: IntArray
    labels: dict[str, IntArray]

    @property
    def n_windows(self) -> int:
        return int(self.start_s.size)

    @property
    def total_samples(self) -> int:
        return int(self.num_samples.sum())

    def sample_times(self) -> FloatArray:
        """Every sample's time, window after window (s)."""
        n = self.num_samples
        first = np.cumsum(n) - n
        i = np.arange(int(n.sum())) - np.repeat(first, n)
        return np.repeat(self.start_s, n) + (i + 0.5) * np.repeat(self.dwell_s, n)


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
