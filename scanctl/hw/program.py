"""Programs: what the executor streams to the subsystems, one segment at a time (compiled from a sequence
by :mod:`scanctl.engine.segments`), on the scan's single timebase (seconds from the start of the
sequence):

- :class:`GradientProgram`: per axis, the piecewise-linear waveform's breakpoints (Hz/m);
- :class:`RFProgram`: every RF pulse's complex samples (Hz), their times and frequency offsets;
- :class:`ADCProgram`: every receive window (start, samples, dwell, frequency/phase, labels).

Every program is validated where it is made (fail closed: a non-finite value is refused). The types need
numpy only: a driver author imports them without the sequence model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from numbers import Real
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.errors import SafetyLimitError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ComplexArray = npt.NDArray[np.complex128]
_AXES = ("x", "y", "z")
#: The second-order shim channels (Hz/m²), as ``scanctl.config.profile.SECOND_ORDER`` names them:
#: ``z² − (x² + y²)/2``, ``zx``, ``zy``, ``x² − y²``, ``2xy``.
SECOND_ORDER_TERMS = ("z2", "zx", "zy", "x2y2", "xy")


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
    and values ``g_hz_per_m``, linear in between and 0 where an axis has no breakpoints.

    ``shim_hz_per_m2``: the second-order shim field in force while it plays (channel of
    :data:`SECOND_ORDER_TERMS` -> Hz/m²; none: 0). A console leaves it empty (the gradient system plays its
    own shim, ``set_shim``); a gradient simulator fills it in the programs it posts to its simulated magnet
    room, as it adds its linear shim to the waveforms, so the physics sees the shim coils' field."""

    t0_s: float
    t1_s: float
    t_s: tuple[FloatArray, FloatArray, FloatArray]
    g_hz_per_m: tuple[FloatArray, FloatArray, FloatArray]
    shim_hz_per_m2: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        """As every program (:func:`validate_program`), and a shim channel that is not second order is refused
        (SafetyLimitError naming it)."""
        super().validate()
        unknown = sorted(set(self.shim_hz_per_m2) - set(SECOND_ORDER_TERMS))
        wrong = [k for k, v in self.shim_hz_per_m2.items() if not isinstance(v, Real) or isinstance(v, bool)]
        if wrong:
            raise SafetyLimitError(f"GradientProgram: shim_hz_per_m2[{wrong[0]}] is "
                                   f"{self.shim_hz_per_m2[wrong[0]]!r}, not a number")
        if unknown:
            raise SafetyLimitError(f"GradientProgram: shim_hz_per_m2 has no channel {unknown[0]!r} (second-order "
                                   f"channels: {', '.join(SECOND_ORDER_TERMS)})")

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
