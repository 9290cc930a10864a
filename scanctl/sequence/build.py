"""Build sequences in Python: event makers on a scanner's rasters and limits, and a block accumulator.

The event makers (:func:`sinc_pulse`, :func:`block_pulse`, :func:`trapezoid`, :func:`readout`,
:func:`adc`) return small immutable events in SI units (RF in Hz, gradients in Hz/m, times in s), every
time on the rasters of a :class:`System` and every gradient within its amplitude and slew limits.
:class:`SequenceBuilder` appends blocks of events and produces the columnar
:class:`~scanctl.sequence.model.Sequence`; identical events, shapes, labels and extension lists are
stored once, as Pulseq does. Only trapezoid gradients are made here.

Impossible requests (a gradient beyond the limits, an area that does not fit a duration) raise
:class:`~scanctl.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from scanctl.config.profile import AXES, SystemProfile
from scanctl.errors import ConfigError
from scanctl.sequence.model import (
    TIME_DEFAULT,
    ADCEvents,
    Blocks,
    Extensions,
    ExtensionSpec,
    FloatArray,
    GradEvents,
    Rasters,
    RFEvents,
    Sequence,
    Shapes,
)

FORMAT_VERSION = (1, 5, 1)
_TOL = 1e-6  # relative tolerance when rounding a time up to a raster
#: Extension type ids written for labels.
LABEL_TYPE_IDS = {"LABELSET": 1, "LABELINC": 2}


# ----------------------------------------------------------------------------------------------------------
# System
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """What the event makers need of a scanner: rasters, dead times and per-axis limits (Hz/m, Hz/m/s)."""

    rasters: Rasters
    max_grad_hz_per_m: tuple[float, float, float]
    max_slew_hz_per_m_per_s: tuple[float, float, float]
    rf_dead_time_s: float
    rf_ringdown_time_s: float
    adc_dead_time_s: float
    gamma_hz_per_t: float

    @classmethod
    def from_profile(cls, profile: SystemProfile, *, grad_fraction: float = 1.0,
                     slew_fraction: float = 1.0) -> System:
        """The profile's limits (optionally only a fraction of them). A raster of 0 in the profile
        (comparison switched off) falls back to Pulseq's usual raster."""
        t, default = profile.timing, Rasters()
        rasters = Rasters(
            gradient_s=t.gradient_raster_s or default.gradient_s,
            rf_s=t.rf_raster_s or default.rf_s,
            adc_s=t.adc_raster_s or default.adc_s,
            block_duration_s=t.block_duration_raster_s or default.block_duration_s,
        )
        g = profile.max_gradient_hz_per_m()
        s = profile.max_slew_hz_per_m_per_s()
        return cls(
            rasters=rasters,
            max_grad_hz_per_m=(g[0] * grad_fraction, g[1] * grad_fraction, g[2] * grad_fraction),
            max_slew_hz_per_m_per_s=(s[0] * slew_fraction, s[1] * slew_fraction, s[2] * slew_fraction),
            rf_dead_time_s=t.rf_dead_time_s,
            rf_ringdown_time_s=t.rf_ringdown_time_s,
            adc_dead_time_s=t.adc_dead_time_s,
            gamma_hz_per_t=profile.gamma_hz_per_t,
        )

    def limits(self, channel: str) -> tuple[float, float]:
        """``(max gradient, max slew)`` of one axis (``"x"``, ``"y"`` or ``"z"``)."""
        axis = AXES.index(channel)
        return self.max_grad_hz_per_m[axis], self.max_slew_hz_per_m_per_s[axis]

    def block_duration(self, *events: RF | Trap | ADC, min_duration_s: float = 0.0) -> float:
        """The duration of a block holding ``events``: the latest event end, RF ringdown and ADC dead
        time included, at least ``min_duration_s``, rounded up to the block raster."""
        end = min_duration_s
        for e in events:
            if isinstance(e, RF):
                end = max(end, e.end_s + self.rf_ringdown_time_s)
            elif isinstance(e, ADC):
                end = max(end, e.end_s + self.adc_dead_time_s)
            else:
                end = max(end, e.end_s)
        return ceil_raster(end, self.rasters.block_duration_s)


def ceil_raster(t: float, raster: float) -> float:
    """``t`` rounded up to a whole multiple of ``raster`` (times within 1e-6 raster of one are on it)."""
    return math.ceil(t / raster - _TOL) * raster


def round_raster(t: float, raster: float) -> float:
    """``t`` rounded to the nearest multiple of ``raster``."""
    return round(t / raster) * raster


# ----------------------------------------------------------------------------------------------------------
# Events
# ----------------------------------------------------------------------------------------------------------


class Shape:
    """An immutable waveform compared and hashed by value (hash computed once)."""

    __slots__ = ("samples", "_key", "_hash")

    def __init__(self, samples: Iterable[float] | FloatArray) -> None:
        arr = np.array(samples, dtype=np.float64)
        arr.flags.writeable = False
        self.samples = arr
        self._key = arr.tobytes()
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shape) and (self is other or self._key == other._key)

    def __len__(self) -> int:
        return int(self.samples.size)

    def __repr__(self) -> str:
        return f"Shape({self.samples.size} samples)"


@dataclass(frozen=True)
class RF:
    """An RF pulse: peak ``amplitude_hz`` times a unit ``magnitude`` shape with a ``phase`` shape (in
    cycles), sampled on the RF raster. ``center_s`` is from the pulse's start, ``delay_s`` from the
    block's start."""

    amplitude_hz: float
    magnitude: Shape
    phase: Shape
    duration_s: float
    center_s: float
    delay_s: float
    freq_hz: float = 0.0
    phase_rad: float = 0.0
    use: str = "e"

    @property
    def end_s(self) -> float:
        return self.delay_s + self.duration_s

    @property
    def centre_in_block_s(self) -> float:
        return self.delay_s + self.center_s

    def with_phase(self, phase_rad: float) -> RF:
        return dataclasses.replace(self, phase_rad=phase_rad)


@dataclass(frozen=True)
class Trap:
    """A trapezoid gradient on ``channel`` (``"x"``, ``"y"``, ``"z"``), amplitude in Hz/m."""

    channel: str
    amplitude_hz_per_m: float
    rise_s: float
    flat_s: float
    fall_s: float
    delay_s: float = 0.0

    @property
    def area(self) -> float:
        """Gradient moment, 1/m."""
        return self.amplitude_hz_per_m * (self.flat_s + 0.5 * (self.rise_s + self.fall_s))

    @property
    def flat_area(self) -> float:
        return self.amplitude_hz_per_m * self.flat_s

    @property
    def duration_s(self) -> float:
        return self.rise_s + self.flat_s + self.fall_s

    @property
    def end_s(self) -> float:
        return self.delay_s + self.duration_s

    def scaled(self, factor: float) -> Trap:
        return dataclasses.replace(self, amplitude_hz_per_m=self.amplitude_hz_per_m * factor)

    def _key(self) -> tuple[float, ...]:
        # The gradient table does not store the channel: one event serves every axis.
        return (self.amplitude_hz_per_m, self.rise_s, self.flat_s, self.fall_s, self.delay_s)


@dataclass(frozen=True)
class ADC:
    """A receiver window: sample ``i`` at ``delay_s + (i + 0.5) * dwell_s`` from the block's start."""

    num_samples: int
    dwell_s: float
    delay_s: float
    freq_hz: float = 0.0
    phase_rad: float = 0.0

    @property
    def end_s(self) -> float:
        return self.delay_s + self.num_samples * self.dwell_s

    def sample_time_s(self, index: float) -> float:
        return self.delay_s + (index + 0.5) * self.dwell_s

    def with_phase(self, phase_rad: float) -> ADC:
        return dataclasses.replace(self, phase_rad=phase_rad)


@dataclass(frozen=True)
class Label:
    """A Pulseq label: ``LABELSET`` (``increment`` false) or ``LABELINC`` of ``name`` by ``value``."""

    name: str
    value: int
    increment: bool = False


def _rf(system: System, waveform: FloatArray, flip_angle_rad: float, delay_s: float, phase_rad: float,
        freq_hz: float, use: str) -> RF:
    """An RF event from a real waveform sampled at ``(i + 0.5) * rf_raster``, scaled to the flip angle."""
    raster = system.rasters.rf_s
    integral = float(waveform.sum()) * raster  # of the waveform in cycles per Hz
    peak = float(np.abs(waveform).max())
    if integral == 0.0 or peak == 0.0:
        raise ConfigError("RF waveform has no net area: it cannot set a flip angle")
    amplitude = flip_angle_rad / (2 * np.pi * integral) * peak
    sign = 1.0 if amplitude >= 0 else -1.0
    mag = np.abs(waveform) / peak
    phase = np.where(waveform * sign < 0, 0.5, 0.0)  # negative lobes: half a cycle
    duration = waveform.size * raster
    return RF(abs(amplitude), Shape(mag), Shape(phase), duration, duration / 2, delay_s, freq_hz, phase_rad,
              use)


def block_pulse(system: System, *, flip_angle_rad: float, duration_s: float, phase_rad: float = 0.0,
                freq_hz: float = 0.0, use: str = "e") -> RF:
    """A non-selective rectangular pulse starting at the RF dead time. ``duration_s`` is rounded up to
    an even number of RF raster steps (the centre then lies on the raster)."""
    raster = system.rasters.rf_s
    n = 2 * max(1, math.ceil(duration_s / (2 * raster) - _TOL))
    delay = ceil_raster(system.rf_dead_time_s, raster)
    return _rf(system, np.ones(n), flip_angle_rad, delay, phase_rad, freq_hz, use)


def sinc_pulse(system: System, *, flip_angle_rad: float, duration_s: float, slice_thickness_m: float,
               time_bw_product: float = 4.0, apodization: float = 0.5, phase_rad: float = 0.0,
               freq_hz: float = 0.0, use: str = "e", channel: str = "z") -> tuple[RF, Trap]:
    """A slice-selective, Hann-apodised sinc pulse on the flat top of its slice-select trapezoid.

    The duration is rounded up to a multiple of two gradient rasters, so the flat top and the pulse's
    centre lie on the gradient raster. The trapezoid starts the block (delayed if its ramp is shorter than
    the RF dead time). The slice rephaser's area is ``-gz.amplitude_hz_per_m * (gz.flat_s + gz.fall_s) / 2``.
    Raises :class:`ConfigError` when the slice-select gradient would exceed the limit.
    """
    g_raster, rf_raster = system.rasters.gradient_s, system.rasters.rf_s
    duration = ceil_raster(duration_s, 2 * g_raster)
    n = round(duration / rf_raster)
    t = (np.arange(n) + 0.5) * rf_raster - duration / 2
    bandwidth = time_bw_product / duration
    window = 1 - apodization + apodization * np.cos(2 * np.pi * t / duration)
    waveform = window * np.sinc(bandwidth * t)
    amplitude = bandwidth / slice_thickness_m
    max_g, max_s = system.limits(channel)
    if amplitude > max_g:
        raise ConfigError(f"slice-select gradient {amplitude:.6g} Hz/m exceeds the {max_g:.6g} Hz/m limit: the "
                          f"thinnest slice with this pulse is {bandwidth / max_g * 1e3:.3f} mm")
    rise = max(g_raster, ceil_raster(amplitude / max_s, g_raster))
    delay = max(0.0, ceil_raster(system.rf_dead_time_s - rise, g_raster))
    gz = Trap(channel, amplitude, rise, duration, rise, delay)
    rf = _rf(system, waveform, flip_angle_rad, delay + rise, phase_rad, freq_hz, use)
    return rf, gz


def slice_rephase_area(gz: Trap) -> float:
    """The area that rewinds a slice-select trapezoid from its pulse's centre (mid flat top) to its end."""
    return -gz.amplitude_hz_per_m * (gz.flat_s + gz.fall_s) / 2


def min_trapezoid_duration(system: System, channel: str, area: float) -> float:
    """The shortest trapezoid (or triangle) with ``area`` (1/m) on ``channel``, seconds."""
    g = trapezoid(system, channel, area=area)
    return g.duration_s


def trapezoid(system: System, channel: str, *, area: float | None = None, flat_area: float | None = None,
              flat_time_s: float | None = None, duration_s: float | None = None,
              amplitude_hz_per_m: float | None = None, delay_s: float = 0.0) -> Trap:
    """A trapezoid with equal ramps, on the gradient raster and within the axis' limits.

    Give one of: ``area`` (the shortest trapezoid), ``area`` and ``duration_s``, ``flat_area`` and
    ``flat_time_s``, or ``amplitude_hz_per_m`` and ``flat_time_s``. Raises :class:`ConfigError` when the
    request cannot be met within the limits.
    """
    raster = system.rasters.gradient_s
    max_g, max_s = system.limits(channel)
    if flat_time_s is not None:
        if flat_area is not None:
            amplitude_hz_per_m = flat_area / flat_time_s if flat_time_s > 0 else 0.0
        if amplitude_hz_per_m is None or area is not None or duration_s is not None:
            raise TypeError("flat_time_s needs flat_area or amplitude_hz_per_m (and nothing else)")
        flat = ceil_raster(flat_time_s, raster)
        amp = amplitude_hz_per_m
        if abs(amp) > max_g * (1 + 1e-9):
            raise ConfigError(f"{channel} gradient {abs(amp):.6g} Hz/m exceeds the {max_g:.6g} Hz/m limit")
        rise = max(raster, ceil_raster(abs(amp) / max_s, raster))
        return Trap(channel, amp, rise, flat, rise, delay_s)
    if area is None:
        raise TypeError("give area, area and duration_s, or flat_time_s with flat_area or amplitude_hz_per_m")
    a = abs(area)
    if duration_s is None:  # the shortest: a triangle if it stays within the amplitude limit
        rise = max(raster, ceil_raster(math.sqrt(a / max_s), raster))
        flat = 0.0
        if a / rise > max_g:
            rise = max(raster, ceil_raster(max_g / max_s, raster))
            flat = max(0.0, ceil_raster(a / max_g - rise, raster))
        return Trap(channel, area / (rise + flat), rise, flat, rise, delay_s)
    duration = ceil_raster(duration_s, raster)
    if a == 0.0:
        if duration < 2 * raster:
            raise ConfigError(f"{channel} trapezoid duration {duration * 1e3:.3f} ms is below two gradient rasters")
        return Trap(channel, 0.0, raster, duration - 2 * raster, raster, delay_s)
    # amp * (duration - amp / slew) = area at the slew limit; the smaller root is the lowest amplitude.
    disc = duration**2 - 4 * a / max_s
    if disc < 0:
        raise ConfigError(f"{channel} gradient area {area:.6g}/m does not fit in {duration * 1e3:.3f} ms "
                          f"(shortest: {min_trapezoid_duration(system, channel, area) * 1e3:.3f} ms)")
    rise = max(raster, ceil_raster((duration - math.sqrt(disc)) / 2, raster))
    flat = duration - 2 * rise
    amp = a / (rise + flat) if rise + flat > 0 else math.inf
    if flat < -raster * _TOL or amp > max_g * (1 + 1e-9) or amp / rise > max_s * (1 + 1e-9):
        raise ConfigError(f"{channel} gradient area {area:.6g}/m does not fit in {duration * 1e3:.3f} ms "
                          f"(shortest: {min_trapezoid_duration(system, channel, area) * 1e3:.3f} ms)")
    return Trap(channel, math.copysign(amp, area), rise, max(flat, 0.0), rise, delay_s)


def common_duration(system: System, lobes: Iterable[tuple[str, float]]) -> float:
    """The shortest duration in which every ``(channel, area)`` lobe fits."""
    return max((min_trapezoid_duration(system, ch, area) for ch, area in lobes), default=0.0)


def adc(system: System, *, num_samples: int, dwell_s: float, delay_s: float | None = None,
        phase_rad: float = 0.0) -> ADC:
    """A receiver window; the delay defaults to the ADC dead time (both on their rasters)."""
    dwell = round_raster(dwell_s, system.rasters.adc_s)
    delay = ceil_raster(system.adc_dead_time_s if delay_s is None else delay_s, system.rasters.rf_s)
    return ADC(num_samples, dwell, delay, 0.0, phase_rad)


def dwell_step(system: System, num_samples: int, *, reversible: bool = False) -> float:
    """The raster of dwell times for which :func:`readout` can put the k-space centre sample (index
    ``num_samples // 2``) exactly on the RF raster: ``(num_samples + 1) * dwell / 2`` must be a whole number
    of RF raster steps (for 128 samples, 1 µs RF and 100 ns ADC rasters: 2 µs). ``reversible`` also puts
    the dwell itself on the RF raster (for lines read backwards)."""
    adc_r, rf_r = system.rasters.adc_s, system.rasters.rf_s
    ratio = round(rf_r / adc_r)
    if ratio < 1 or abs(ratio * adc_r - rf_r) > 1e-6 * rf_r:
        raise ConfigError(f"RF raster {rf_r:g} s is not a whole multiple of the ADC raster {adc_r:g} s")
    step = 2 * ratio // math.gcd(2 * ratio, num_samples + 1)  # in ADC raster steps
    if reversible:
        step = step * ratio // math.gcd(step, ratio)
    return step * adc_r


def valid_dwell(system: System, num_samples: int, dwell_s: float, *, reversible: bool = False) -> float:
    """The dwell time on :func:`dwell_step`'s raster nearest ``dwell_s`` (at least one step)."""
    step = dwell_step(system, num_samples, reversible=reversible)
    return max(1, round(dwell_s / step)) * step


@dataclass(frozen=True)
class Readout:
    """A Cartesian read-out: the ``grad`` trapezoid with its ``adc`` window whose sample
    ``num_samples // 2`` (k = 0) sits at the flat top's centre, ``centre_s`` from the block's start.
    Sample ``i`` is at ``kx = (i - num_samples // 2) / fov`` after a prephaser of ``-grad.area / 2``.
    ``adc_reversed`` is the window for the same gradient negated (sample ``i`` at
    ``kx = (num_samples // 2 - 1 - i) / fov``), or ``None`` when the dwell is not on the RF raster."""

    grad: Trap
    adc: ADC
    adc_reversed: ADC | None
    centre_s: float

    @property
    def dwell_s(self) -> float:
        return self.adc.dwell_s


def readout(system: System, *, num_samples: int, dwell_s: float, fov_m: float, channel: str = "x",
            flat_time_s: float = 0.0) -> Readout:
    """A read-out gradient and its ADC (see :class:`Readout`); ``dwell_s`` must come from
    :func:`valid_dwell`. The flat top lasts at least ``flat_time_s``. Raises :class:`ConfigError` when the
    read-out gradient ``1 / (fov_m * dwell_s)`` exceeds the limit."""
    g_raster, rf_raster = system.rasters.gradient_s, system.rasters.rf_s
    max_g, max_s = system.limits(channel)
    amp = 1.0 / (fov_m * dwell_s)
    if amp > max_g:
        raise ConfigError(f"read-out gradient {amp:.6g} Hz/m exceeds the {max_g:.6g} Hz/m limit: the shortest "
                          f"dwell time for this field of view is {1 / (fov_m * max_g) * 1e6:.3f} µs")
    rise = max(g_raster, ceil_raster(amp / max_s, g_raster))
    half = ceil_raster(max((num_samples + 1) * dwell_s, flat_time_s) / 2, g_raster)
    lead = (num_samples + 1) / 2 * dwell_s  # from the window's start to the centre sample
    # The window must start after the ADC dead time: lengthen the flat top symmetrically if not.
    short = system.adc_dead_time_s - (rise + half - lead)
    if short > 0:
        half += ceil_raster(short, g_raster)
    grad = Trap(channel, amp, rise, 2 * half, rise)
    centre = rise + half
    delay = round_raster(centre - lead, rf_raster)
    if abs(delay - (centre - lead)) > 1e-3 * rf_raster:
        raise ConfigError(f"dwell time {dwell_s * 1e6:.4f} µs does not put the k-space centre on the RF raster "
                          "(use valid_dwell)")
    fwd = ADC(num_samples, dwell_s, delay)
    rev_delay = delay + dwell_s
    reversible = abs(round_raster(rev_delay, rf_raster) - rev_delay) <= 1e-3 * rf_raster
    rev = ADC(num_samples, dwell_s, round_raster(rev_delay, rf_raster)) if reversible else None
    return Readout(grad, fwd, rev, centre)


def rf_spoil_phases(n: int, increment_deg: float = 117.0) -> FloatArray:
    """Quadratic RF-spoiling phases (radians) for ``n`` excitations: ``inc * k (k + 1) / 2`` degrees.

    Computed in whole degrees modulo 360 when the increment is whole, so phases repeat exactly and
    identical RF and ADC events are stored once.
    """
    k = np.arange(n, dtype=np.int64)
    deg = (k * (k + 1) // 2 % 360 * increment_deg) % 360.0 if float(increment_deg).is_integer() else (
        increment_deg * k * (k + 1) / 2) % 360.0
    return np.deg2rad(deg)


# ----------------------------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------------------------


class SequenceBuilder:
    """Accumulates blocks and produces the columnar :class:`Sequence`.

    >>> b = SequenceBuilder(system)
    >>> b.add_block(rf, gz)                      # duration: the longest event
    >>> b.add_block(gx, adc, Label("LIN", 3))
    >>> b.add_block(min_duration_s=2e-3)         # a pure delay
    >>> seq = b.build({"Name": "demo", "FOV": (0.256, 0.256, 0.005)})
    """

    def __init__(self, system: System) -> None:
        self.system = system
        self._shapes: dict[Shape, int] = {}
        self._rf: dict[tuple[object, ...], int] = {}
        self._grad: dict[tuple[float, ...], int] = {}
        self._adc: dict[tuple[float, ...], int] = {}
        self._labels: dict[tuple[str, str, int], int] = {}  # (kind, name, value) -> row of its spec
        self._label_counts = dict.fromkeys(LABEL_TYPE_IDS, 0)
        self._lists: dict[tuple[tuple[str, int], ...], int] = {}  # label entries -> head row
        self._entries: dict[tuple[int, int, int], int] = {}  # (type id, spec row, next row) -> row
        self._rf_rows: list[RF] = []
        self._adc_rows: list[ADC] = []
        self._grad_rows: list[Trap] = []
        # Block columns: duration ticks, rf, gx, gy, gz, adc, ext
        self._cols: list[list[int]] = [[] for _ in range(7)]
        self._ticks_total = 0

    @property
    def duration_s(self) -> float:
        """The duration of the blocks added so far."""
        return self._ticks_total * self.system.rasters.block_duration_s

    def __len__(self) -> int:
        return len(self._cols[0])

    def add_block(self, *events: RF | Trap | ADC | Label, min_duration_s: float = 0.0) -> float:
        """Append one block; returns its duration (see :meth:`System.block_duration`).

        At most one RF, one ADC and one gradient per axis. Raises ``ValueError`` otherwise.
        """
        rf = gx = gy = gz = a = ext = -1
        labels: list[Label] = []
        timed: list[RF | Trap | ADC] = []
        for e in events:
            if isinstance(e, Trap):
                row = self._grad.get(e._key())
                if row is None:
                    row = self._grad[e._key()] = len(self._grad_rows)
                    self._grad_rows.append(e)
                if e.channel == "x" and gx < 0:
                    gx = row
                elif e.channel == "y" and gy < 0:
                    gy = row
                elif e.channel == "z" and gz < 0:
                    gz = row
                else:
                    raise ValueError(f"a block holds one gradient per axis (x, y, z), got {e.channel!r} again")
                timed.append(e)
            elif isinstance(e, RF):
                if rf >= 0:
                    raise ValueError("a block holds one RF pulse")
                rf = self._rf_row(e)
                timed.append(e)
            elif isinstance(e, ADC):
                if a >= 0:
                    raise ValueError("a block holds one ADC event")
                key = (e.num_samples, e.dwell_s, e.delay_s, e.freq_hz, e.phase_rad)
                a = self._adc.get(key, -1)
                if a < 0:
                    a = self._adc[key] = len(self._adc_rows)
                    self._adc_rows.append(e)
                timed.append(e)
            elif isinstance(e, Label):
                labels.append(e)
            else:
                raise TypeError(f"not a block event: {e!r}")
        if labels:
            ext = self._label_list(labels)
        duration = self.system.block_duration(*timed, min_duration_s=min_duration_s)
        ticks = round(duration / self.system.rasters.block_duration_s)
        for col, value in zip(self._cols, (ticks, rf, gx, gy, gz, a, ext), strict=True):
            col.append(value)
        self._ticks_total += ticks
        return ticks * self.system.rasters.block_duration_s

    def _shape_row(self, shape: Shape) -> int:
        row = self._shapes.get(shape)
        if row is None:
            row = self._shapes[shape] = len(self._shapes)
        return row

    def _rf_row(self, e: RF) -> int:
        key = (e.amplitude_hz, e.magnitude, e.phase, e.duration_s, e.center_s, e.delay_s, e.freq_hz, e.phase_rad,
               e.use)
        row = self._rf.get(key)
        if row is None:
            if e.use not in "erispou" or len(e.use) != 1:
                raise ValueError(f"RF use {e.use!r} is not one of e r i s p o u")
            self._shape_row(e.magnitude)
            self._shape_row(e.phase)
            row = self._rf[key] = len(self._rf_rows)
            self._rf_rows.append(e)
        return row

    def _label_list(self, labels: list[Label]) -> int:
        items = []
        for lab in labels:
            kind = "LABELINC" if lab.increment else "LABELSET"
            key = (kind, lab.name, int(lab.value))
            if key not in self._labels:
                if not (lab.name[:1].isalpha() and lab.name.replace("_", "").isalnum() and lab.name.isupper()):
                    raise ValueError(f"label name {lab.name!r} must be upper-case letters, digits and _")
                self._labels[key] = self._label_counts[kind]
                self._label_counts[kind] += 1
            items.append((kind, self._labels[key]))
        chain = tuple(items)
        head = self._lists.get(chain)
        if head is None:
            nxt = -1
            for kind, spec_row in reversed(chain):  # entries shared with other lists are stored once
                nxt = self._entries.setdefault((LABEL_TYPE_IDS[kind], spec_row, nxt), len(self._entries))
            head = self._lists[chain] = nxt
        return head

    # -- the columnar sequence ----------------------------------------------------------------------
    def build(self, definitions: Mapping[str, object] | None = None) -> Sequence:
        """The sequence of every block added so far. ``definitions`` values are written as text: numbers
        with nine significant digits, sequences of numbers space-separated."""
        if not self._cols[0]:
            raise ValueError("no blocks to build a sequence from")
        n = len(self._cols[0])
        cols = np.array(self._cols, dtype=np.int64)
        blocks = Blocks(
            id=np.arange(1, n + 1, dtype=np.int64),
            duration_ticks=cols[0].copy(),
            rf=cols[1].copy(),
            grad=np.ascontiguousarray(cols[2:5].T),
            adc=cols[5].copy(),
            ext=cols[6].copy(),
        )
        return Sequence(
            version=FORMAT_VERSION,
            definitions={k: _definition_text(v) for k, v in (definitions or {}).items()},
            rasters=self.system.rasters,
            blocks=blocks,
            rf=self._rf_events(),
            grad=self._grad_events(),
            adc=self._adc_events(),
            shapes=self._shape_table(),
            extensions=self._extensions(),
        )

    def _shape_table(self) -> Shapes:
        shapes = list(self._shapes)  # insertion order is row order
        lengths = np.array([len(s) for s in shapes], dtype=np.int64)
        return Shapes(
            id=np.arange(1, len(shapes) + 1, dtype=np.int64),
            offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            samples=np.concatenate([s.samples for s in shapes]) if shapes else np.zeros(0),
        )

    def _rf_events(self) -> RFEvents:
        rows = self._rf_rows
        n = len(rows)

        def col(attr: str) -> FloatArray:
            return np.array([getattr(r, attr) for r in rows], dtype=np.float64)

        zeros = np.zeros(n)
        return RFEvents(
            id=np.arange(1, n + 1, dtype=np.int64),
            amplitude_hz=col("amplitude_hz"),
            mag_shape=np.array([self._shapes[r.magnitude] for r in rows], dtype=np.int64),
            phase_shape=np.array([self._shapes[r.phase] for r in rows], dtype=np.int64),
            time_shape=np.full(n, TIME_DEFAULT, dtype=np.int64),
            center_s=col("center_s"),
            delay_s=col("delay_s"),
            freq_ppm=zeros,
            phase_ppm=zeros.copy(),
            freq_hz=col("freq_hz"),
            phase_rad=col("phase_rad"),
            use=np.frombuffer("".join(r.use for r in rows).encode("ascii"), dtype=np.uint8).copy(),
        )

    def _grad_events(self) -> GradEvents:
        n = len(self._grad_rows)
        v = np.array([g._key() for g in self._grad_rows], dtype=np.float64).reshape(n, 5)
        zeros = np.zeros(n)
        return GradEvents(
            id=np.arange(1, n + 1, dtype=np.int64),
            is_trap=np.ones(n, dtype=bool),
            amplitude_hz_per_m=v[:, 0].copy(),
            rise_s=v[:, 1].copy(),
            flat_s=v[:, 2].copy(),
            fall_s=v[:, 3].copy(),
            delay_s=v[:, 4].copy(),
            first_hz_per_m=zeros,
            last_hz_per_m=zeros.copy(),
            shape=np.full(n, -1, dtype=np.int64),
            time_shape=np.full(n, TIME_DEFAULT, dtype=np.int64),
        )

    def _adc_events(self) -> ADCEvents:
        n = len(self._adc_rows)
        v = np.array([(a.num_samples, a.dwell_s, a.delay_s, a.freq_hz, a.phase_rad) for a in self._adc_rows],
                     dtype=np.float64).reshape(n, 5)
        zeros = np.zeros(n)
        return ADCEvents(
            id=np.arange(1, n + 1, dtype=np.int64),
            num_samples=v[:, 0].astype(np.int64),
            dwell_s=v[:, 1].copy(),
            delay_s=v[:, 2].copy(),
            freq_ppm=zeros,
            phase_ppm=zeros.copy(),
            freq_hz=v[:, 3].copy(),
            phase_rad=v[:, 4].copy(),
            phase_shape=np.full(n, -1, dtype=np.int64),
        )

    def _extensions(self) -> Extensions:
        if not self._entries:
            return Extensions.empty()
        specs: dict[str, ExtensionSpec] = {}
        for kind, type_id in LABEL_TYPE_IDS.items():
            keys = sorted((row, name, value) for (k, name, value), row in self._labels.items() if k == kind)
            if not keys:
                continue
            specs[kind] = ExtensionSpec(
                name=kind,
                type_id=type_id,
                id=np.arange(1, len(keys) + 1, dtype=np.int64),
                columns={"value": np.array([v for _, _, v in keys], dtype=np.int64),
                         "label": np.array([name for _, name, _ in keys], dtype=object)},
            )
        e = np.array(list(self._entries), dtype=np.int64)
        return Extensions(
            id=np.arange(1, e.shape[0] + 1, dtype=np.int64),
            type_id=e[:, 0].copy(),
            ref=e[:, 1] + 1,  # spec ids are rows + 1
            next=e[:, 2].copy(),
            specs=specs,
        )


def _definition_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float | np.integer | np.floating):
        return f"{float(value):.9g}" if not isinstance(value, int | np.integer) else str(int(value))
    if isinstance(value, Iterable):
        return " ".join(_definition_text(v) for v in value)
    raise TypeError(f"cannot write {value!r} as a definition")
