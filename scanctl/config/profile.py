"""System profiles: a scanner's limits, in one TOML file (documented in docs/system-profile.md).

Limits live here, never in code. Unknown keys, wrong types and out-of-range values are a
:class:`~scanctl.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scanctl.config import limits as safety_limits
from scanctl.config.limits import SafetyLimits
from scanctl.config.tomlcheck import Reader, load_text
from scanctl.config.tomlcheck import parse as parse_toml
from scanctl.errors import ConfigError

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
    grad = r.table("gradient", {"max_amplitude_mt_per_m", "max_slew_t_per_m_per_s", "fov_m"},
                   required={"max_amplitude_mt_per_m", "max_slew_t_per_m_per_s"})
    timing_keys = {f.name for f in dataclasses.fields(TimingLimits)}
    timing = r.table("timing", timing_keys)
    r.no_other_tables({"scanner", "gradient", "timing", "subsystems", "server", "safety"})
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
    slew = r.axes(grad, "gradient.max_slew_t_per_m_per_s", 1.0, 10000.0)
    return SystemProfile(
        name=r.string(scanner, "scanner.name"),
        b0_t=r.number(scanner, "scanner.b0_t", 0.001, 20.0),
        gamma_hz_per_t=r.number(scanner, "scanner.gamma_hz_per_t", 1e6, 1e8),
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
    )
