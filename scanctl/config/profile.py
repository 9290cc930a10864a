"""System profiles: a scanner's limits, in one TOML file (documented in docs/system-profile.md).

Limits live here, never in code. Unknown keys, wrong types and out-of-range values are a
:class:`~scanctl.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scanctl.config import limits as safety_limits
from scanctl.config.limits import SafetyLimits
from scanctl.config.tomlcheck import Reader, load_text
from scanctl.config.tomlcheck import parse as parse_toml
from scanctl.errors import ConfigError, SafetyLimitError

AXES = ("x", "y", "z")
#: The gradient system's usable field of view (diameter of the linear region, m) when a profile gives none:
#: a typical whole-body gradient coil's 50 cm sphere.
DEFAULT_GRADIENT_FOV_M = 0.5
DEFAULT_SUBSYSTEMS = {"gradient": "sim://", "rf": "sim://", "table": "sim://"}
#: Where ``scanctl serve`` / ``scanctl up`` serve and clients connect, unless the profile's ``[server]`` says.
DEFAULT_ENDPOINTS = {"control": "tcp://127.0.0.1:5555", "events": "tcp://127.0.0.1:5556",
                     "data": "tcp://127.0.0.1:5557"}


@dataclass(frozen=True)
class GradientLimits:
    """Per-axis limits in SI units (T/m and T/m/s), and the diameter (m) of the sphere about the isocentre
    in which the gradients are linear: every imaged slice or slab must lie inside it."""

    max_amplitude_t_per_m: tuple[float, float, float]
    max_slew_t_per_m_per_s: tuple[float, float, float]
    fov_m: float = DEFAULT_GRADIENT_FOV_M


#: Second-order shim channels (spherical-harmonic names, as consoles label them): the field each adds is
#: ``z2: z² - (x² + y²)/2``, ``zx: z x``, ``zy: z y``, ``x2y2: x² - y²``, ``xy: 2 x y`` (Hz/m² x m² = Hz).
SECOND_ORDER = ("z2", "zx", "zy", "x2y2", "xy")


def _within(value: float, low: float, high: float) -> bool:
    """``low <= value <= high`` for a finite number (a NaN or an infinity is never within: fail closed)."""
    return isinstance(value, int | float) and math.isfinite(value) and low <= value <= high


@dataclass(frozen=True)
class AdjustmentLimits:
    """What the hardware can be set to (the ``[rf]`` table and ``[gradient]`` shim keys of the profile): the
    synthesiser's frequency offset range (±Hz), the transmit amplifier's largest scale, the receiver's gain
    range (dB), the shim supplies' largest linear terms per axis (Hz/m) and second-order terms (Hz/m², by
    channel; none: the hardware has no second-order shim). Every ``check_*`` raises SafetyLimitError naming
    the value and the limit (a non-finite value included)."""

    max_frequency_offset_hz: float = 50_000.0
    max_tx_scale: float = 2.0
    receiver_gain_db: tuple[float, float] = (-20.0, 40.0)
    max_shim_hz_per_m: tuple[float, float, float] = (0.5e-3 * 42.576e6,) * 3
    max_shim_second_order_hz_per_m2: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def shim_channels(self) -> tuple[str, ...]:
        """The shim channels this hardware has: ``x``, ``y``, ``z`` and its second-order ones."""
        return (*AXES, *(c for c in SECOND_ORDER if c in self.max_shim_second_order_hz_per_m2))

    def check_frequency_offset(self, hz: float) -> float:
        limit = self.max_frequency_offset_hz
        if not _within(hz, -limit, limit):
            raise SafetyLimitError(f"rf: frequency offset {hz!r} Hz is beyond the synthesiser's range ±{limit:g} Hz")
        return float(hz)

    def check_tx_scale(self, scale: float) -> float:
        if not _within(scale, 0.0, self.max_tx_scale) or scale == 0:
            raise SafetyLimitError(f"rf: transmit scale {scale!r} is outside (0, {self.max_tx_scale:g}] "
                                   "(the amplifier's largest scale)")
        return float(scale)

    def check_receiver_gain(self, db: float) -> float:
        low, high = self.receiver_gain_db
        if not _within(db, low, high):
            raise SafetyLimitError(f"rf: receiver gain {db!r} dB is outside the receiver's {low:g} to {high:g} dB")
        return float(db)

    def check_shim(self, values: Mapping[str, float]) -> dict[str, float]:
        """``values`` (channel → Hz/m or Hz/m²) checked against the supplies; returns them as floats."""
        limits = dict(zip(AXES, self.max_shim_hz_per_m, strict=True))
        limits.update(self.max_shim_second_order_hz_per_m2)
        out: dict[str, float] = {}
        for channel, value in values.items():
            if channel not in limits:
                raise SafetyLimitError(f"gradient: no shim channel {channel!r} on this hardware (channels: "
                                       f"{', '.join(self.shim_channels)})")
            unit = "Hz/m" if channel in AXES else "Hz/m²"
            if not _within(value, -limits[channel], limits[channel]):
                raise SafetyLimitError(f"gradient: shim {channel} {value!r} {unit} exceeds the shim supply's "
                                       f"±{limits[channel]:g} {unit}")
            out[channel] = float(value)
        return out


@dataclass(frozen=True)
class TimingLimits:
    """Hardware rasters and dead times, seconds."""

    gradient_raster_s: float
    rf_raster_s: float
    adc_raster_s: float
    block_duration_raster_s: float
    rf_dead_time_s: float
    rf_ringdown_time_s: float
    adc_dead_time_s: float


@dataclass(frozen=True)
class SystemProfile:
    """One scanner's limits."""

    name: str
    b0_t: float
    gamma_hz_per_t: float
    gradient: GradientLimits
    timing: TimingLimits
    source: str
    #: URL of each subsystem (see scanctl/hw/registry.py); the default is all simulators.
    subsystems: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SUBSYSTEMS))
    #: The control server's ``control``, ``events`` and ``data`` endpoints.
    endpoints: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_ENDPOINTS))
    #: SAR, PNS, heating, table and heartbeat limits (the ``[safety]`` table; defaults without it).
    safety: SafetyLimits = dataclasses.field(default_factory=SafetyLimits)
    #: The ranges a console may set the RF and the shims to (``[rf]``, ``[gradient]`` shim keys).
    adjustments: AdjustmentLimits = dataclasses.field(default_factory=AdjustmentLimits)

    def max_gradient_hz_per_m(self) -> tuple[float, float, float]:
        g = self.gamma_hz_per_t
        a = self.gradient.max_amplitude_t_per_m
        return (a[0] * g, a[1] * g, a[2] * g)

    def max_slew_hz_per_m_per_s(self) -> tuple[float, float, float]:
        g = self.gamma_hz_per_t
        s = self.gradient.max_slew_t_per_m_per_s
        return (s[0] * g, s[1] * g, s[2] * g)


def load(name_or_path: str | Path | None = None) -> SystemProfile:
    """Load a profile: ``None`` for the default, a shipped profile's name, or a path to a TOML file.

    Raises :class:`ConfigError`.
    """
    if name_or_path is None:
        name_or_path = "default"
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        text = load_text(path, "system profile")
        source = str(path)
    else:
        shipped = resources.files("scanctl.profiles") / f"{name_or_path}.toml"
        if not shipped.is_file():
            known = sorted(p.name[:-5] for p in resources.files("scanctl.profiles").iterdir()
                           if p.name.endswith(".toml"))
            raise ConfigError(f"no system profile named {str(name_or_path)!r} (shipped: {', '.join(known)})")
        text = shipped.read_text(encoding="utf-8")
        source = f"<shipped:{name_or_path}>"
    return parse(text, source)


def parse(text: str, source: str = "<profile>") -> SystemProfile:
    """Parse profile TOML text. Raises :class:`ConfigError`."""
    data = parse_toml(text, source)
    r = Reader(data, source)
    scanner = r.table("scanner", {"name", "b0_t", "gamma_hz_per_t"})
    grad = r.table("gradient", {"max_amplitude_mt_per_m", "max_slew_t_per_m_per_s", "fov_m", *_SHIM_KEYS},
                   required={"max_amplitude_mt_per_m", "max_slew_t_per_m_per_s"})
    timing_keys = {f.name for f in dataclasses.fields(TimingLimits)}
    timing = r.table("timing", timing_keys)
    r.no_other_tables({"scanner", "gradient", "timing", "subsystems", "server", "safety", "rf"})
    subsystems = dict(DEFAULT_SUBSYSTEMS)
    if "subsystems" in data:
        given = r.table("subsystems", set(DEFAULT_SUBSYSTEMS), required=False)
        subsystems.update({k: r.string(given, f"subsystems.{k}") for k in given})
    endpoints = dict(DEFAULT_ENDPOINTS)
    if "server" in data:
        given = r.table("server", set(DEFAULT_ENDPOINTS), required=False)
        for key in given:
            endpoint = r.string(given, f"server.{key}")
            if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
                raise r.fail(f"server.{key}", f"{endpoint!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
            endpoints[key] = endpoint
    amp = r.axes(grad, "gradient.max_amplitude_mt_per_m", 0.1, 1000.0)
    gamma = r.number(scanner, "scanner.gamma_hz_per_t", 1e6, 1e8)
    slew = r.axes(grad, "gradient.max_slew_t_per_m_per_s", 1.0, 10000.0)
    return SystemProfile(
        name=r.string(scanner, "scanner.name"),
        b0_t=r.number(scanner, "scanner.b0_t", 0.001, 20.0),
        gamma_hz_per_t=gamma,
        gradient=GradientLimits(
            max_amplitude_t_per_m=tuple(a * 1e-3 for a in amp),  # type: ignore[arg-type]
            max_slew_t_per_m_per_s=slew,
            fov_m=r.number(grad, "gradient.fov_m", 0.05, 2.0) if "fov_m" in grad else DEFAULT_GRADIENT_FOV_M,
        ),
        timing=TimingLimits(**{k: r.number(timing, f"timing.{k}", 0.0, 1.0) for k in sorted(timing_keys)}),
        source=source,
        subsystems=subsystems,
        endpoints=endpoints,
        safety=safety_limits.parse(r, data),
        adjustments=_adjustments(r, grad, gamma),
    )


_SHIM_KEYS = ("shim_max_mt_per_m", "shim_second_order_max_mt_per_m2")
_RF_KEYS = ("max_frequency_offset_hz", "max_tx_scale", "receiver_gain_db")


def _adjustments(r: Reader, grad: dict[str, object], gamma_hz_per_t: float) -> AdjustmentLimits:
    """The ``[rf]`` table and the ``[gradient]`` shim keys (each optional: the defaults of AdjustmentLimits)."""
    rf = r.table("rf", set(_RF_KEYS), required=False, optional=True)
    given: dict[str, object] = {}
    if "max_frequency_offset_hz" in rf:
        given["max_frequency_offset_hz"] = r.number(rf, "rf.max_frequency_offset_hz", 1.0, 1e7)
    if "max_tx_scale" in rf:
        given["max_tx_scale"] = r.number(rf, "rf.max_tx_scale", 0.01, 100.0)
    if "receiver_gain_db" in rf:
        gain = rf["receiver_gain_db"]
        if not isinstance(gain, dict) or set(gain) != {"min", "max"}:
            raise r.fail("rf.receiver_gain_db", "must be a table with exactly min and max")
        low = r.number(gain, "rf.receiver_gain_db.min", -100.0, 100.0)
        high = r.number(gain, "rf.receiver_gain_db.max", low, 100.0)
        given["receiver_gain_db"] = (low, high)
    if "shim_max_mt_per_m" in grad:
        shim = r.axes(grad, "gradient.shim_max_mt_per_m", 0.0, 100.0)
        given["max_shim_hz_per_m"] = tuple(v * 1e-3 * gamma_hz_per_t for v in shim)
    if "shim_second_order_max_mt_per_m2" in grad:
        second = grad["shim_second_order_max_mt_per_m2"]
        key = "gradient.shim_second_order_max_mt_per_m2"
        if not isinstance(second, dict) or not second or set(second) - set(SECOND_ORDER):
            raise r.fail(key, f"must be a table of some of {', '.join(SECOND_ORDER)}")
        given["max_shim_second_order_hz_per_m2"] = {
            c: r.number(second, f"{key}.{c}", 0.0, 1e4) * 1e-3 * gamma_hz_per_t for c in SECOND_ORDER if c in second}
    return AdjustmentLimits(**given)  # type: ignore[arg-type]
