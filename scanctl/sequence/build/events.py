"""Event makers on a scanner's rasters and limits: :class:`System` and the small immutable events.

The event makers (:func:`sinc_pulse`, :func:`block_pulse`, :func:`trapezoid`, :func:`readout`,
:func:`adc`) return small immutable events in SI units (RF in Hz, gradients in Hz/m, times in s), every
time on the rasters of a :class:`System` and every gradient within its amplitude and slew limits. Only
trapezoid gradients are made here.

Impossible requests (a gradient beyond the limits, an area that does not fit a duration) raise
:class:`~scanctl.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from scanctl.config.profile import AXES, SystemProfile
from scanctl.errors import ConfigError
from scanctl.sequence.model import FloatArray, Rasters

_TOL = 1e-6  # relative tolerance when rounding a time up to a raster


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

    def for_rotations(self, *rotations: FloatArray) -> System:
        """The limits of the logical axes (read, phase, slice) when their gradients are played through each of
        ``rotations`` (3x3, physical <- logical): logical axis ``j`` gets ``min_i max_i / sum_k |R_ik|`` over
        the physical axes ``i`` it drives, so that no physical axis can exceed its own limit whatever the
        logical axes play together. A signed permutation (transverse, sagittal, coronal) keeps the limits
        exactly; any other rotation also leaves a 1e-6 margin for the quaternion's nine written digits."""
        g = np.array(self.max_grad_hz_per_m)
        s = np.array(self.max_slew_hz_per_m_per_s)
        lg, ls = np.full(3, np.inf), np.full(3, np.inf)
        for r in rotations:
            a = np.abs(np.asarray(r, dtype=np.float64))
            a[a < 1e-12] = 0.0
            permutation = bool(np.all((a == 0.0) | (np.abs(a - 1.0) < 1e-12)))
            margin = 1.0 if permutation else 1.0 - 1e-6
            rows = a.sum(axis=1)
            for j in range(3):
                drives = a[:, j] > 0
                lg[j] = min(lg[j], float((g[drives] / rows[drives]).min()) * margin)
                ls[j] = min(ls[j], float((s[drives] / rows[drives]).min()) * margin)
        if not rotations:
            return self
        return dataclasses.replace(self, max_grad_hz_per_m=(float(lg[0]), float(lg[1]), float(lg[2])),
                                   max_slew_hz_per_m_per_s=(float(ls[0]), float(ls[1]), float(ls[2])))

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
class Rotation:
    """A Pulseq ``ROTATIONS`` extension: the unit quaternion ``(w, x, y, z)`` that turns the block's logical
    gradients into the physical ones (:mod:`scanctl.sequence.geometry`)."""

    quaternion: tuple[float, float, float, float]


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
