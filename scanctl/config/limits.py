"""The safety limits of a system profile (its ``[safety]`` table, docs/system-profile.md#safety).

Limits live in the profile, never in code: the defaults below are what a profile without a ``[safety]``
table gets, and every one can be set there. SAR limits follow IEC 60601-2-33 (normal and first-level
operating modes); the PNS parameters are those of the SAFE model (per-axis RC filters of the slew rate);
the gradient coil's thermal model is the one the gradient simulator plays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from scanctl.config.tomlcheck import Reader

#: The patient weight assumed when none is given (kg), by the supervisor and the prediction: a light adult,
#: so that SAR is judged conservatively (scanctl.safety.supervisor's docstring). Here, not in the supervisor,
#: so that ``scanctl check`` need not import the supervisor.
ASSUMED_WEIGHT_KG = 40.0

#: The IEC 60601-2-33 operating modes, as profiles and reports spell them (the CLI says ``first-level``).
MODES = ("normal", "first_level")


def _modes(normal: float, first_level: float) -> dict[str, float]:
    return {"normal": normal, "first_level": first_level}


@dataclass(frozen=True)
class SarLimits:
    """SAR limits (W/kg) per operating mode, averaged over ``window_s``; over any ``short_window_s`` the
    average may not exceed ``short_window_factor`` times the limit."""

    whole_body_w_per_kg: dict[str, float] = field(default_factory=lambda: _modes(2.0, 4.0))
    head_w_per_kg: dict[str, float] = field(default_factory=lambda: _modes(3.2, 3.2))
    window_s: float = 360.0
    short_window_s: float = 10.0
    short_window_factor: float = 2.0


@dataclass(frozen=True)
class RFSafety:
    """The RF chain: forward power per µT² of B1 (the coil's calibration, as the RF simulator's
    ``watts_per_ut2``), the fractions of it absorbed by the body and by the head, the head's share of the
    patient's weight, and the amplifier's peak power and duty-cycle limits."""

    watts_per_ut2: float = 40.0
    body_absorbed_fraction: float = 0.8
    head_absorbed_fraction: float = 0.1
    head_mass_fraction: float = 0.08
    peak_power_w: float = 30000.0
    max_duty_cycle: float = 0.1


@dataclass(frozen=True)
class PNSAxis:
    """SAFE model parameters of one gradient axis (time constants in ms, weights, stimulation limit and
    threshold in T/m/s, gradient scale factor)."""

    tau1_ms: float
    tau2_ms: float
    tau3_ms: float
    a1: float
    a2: float
    a3: float
    stim_limit_t_per_m_per_s: float
    stim_thresh_t_per_m_per_s: float
    g_scale: float


#: pypulseq's ``safe_example_hw`` (an example, not a real scanner): the ``safe-example`` profile's, so
#: that predictions can be cross-checked against pypulseq's ``calc_pns``.
EXAMPLE_PNS = {
    "x": PNSAxis(0.20, 0.03, 3.00, 0.40, 0.10, 0.50, 30.0, 24.0, 0.35),
    "y": PNSAxis(1.50, 2.50, 0.15, 0.55, 0.15, 0.30, 15.0, 12.0, 0.31),
    "z": PNSAxis(2.00, 0.12, 1.00, 0.42, 0.40, 0.18, 25.0, 20.0, 0.25),
}
#: The default (and the shipped default profile's): an illustrative whole-body coil, not a real scanner's —
#: the example's time constants and weights with stimulation limits and thresholds 1.5 times higher.
DEFAULT_PNS = {axis: dataclasses.replace(p, stim_limit_t_per_m_per_s=1.5 * p.stim_limit_t_per_m_per_s,
                                         stim_thresh_t_per_m_per_s=1.5 * p.stim_thresh_t_per_m_per_s)
               for axis, p in EXAMPLE_PNS.items()}


@dataclass(frozen=True)
class PNSSafety:
    """Per-axis SAFE parameters and the limit, in percent of the stimulation threshold, per mode."""

    x: PNSAxis = DEFAULT_PNS["x"]
    y: PNSAxis = DEFAULT_PNS["y"]
    z: PNSAxis = DEFAULT_PNS["z"]
    limit_percent: dict[str, float] = field(default_factory=lambda: _modes(80.0, 100.0))


@dataclass(frozen=True)
class GradientThermal:
    """The gradient coil's first-order thermal model: time constant, dissipation at full amplitude on all
    axes, steady temperature rise per watt, ambient and the highest temperature allowed."""

    tau_s: float = 60.0
    watts_at_max: float = 20000.0
    kelvin_per_watt: float = 0.004
    ambient_c: float = 20.0
    max_temp_c: float = 70.0
    #: The fastest the coil may heat beyond the model in a fault it does not report (a coolant failure),
    #: K/s: the supervisor keeps that margin up to its next check, so even a failure that begins between two
    #: checks cannot take the coil over ``max_temp_c``.
    max_rise_k_per_s: float = 0.0


@dataclass(frozen=True)
class TableSafety:
    """The patient table's travel (mm from home) and speed limits."""

    min_mm: float = -1000.0
    max_mm: float = 1000.0
    max_speed_mm_s: float = 100.0


@dataclass(frozen=True)
class SafetyLimits:
    """Everything ``[safety]`` holds; ``heartbeat_max_age_s`` is the oldest a subsystem's status may be
    while a scan runs."""

    sar: SarLimits = field(default_factory=SarLimits)
    rf: RFSafety = field(default_factory=RFSafety)
    pns: PNSSafety = field(default_factory=PNSSafety)
    gradient_thermal: GradientThermal = field(default_factory=GradientThermal)
    table: TableSafety = field(default_factory=TableSafety)
    heartbeat_max_age_s: float = 1.0


# -- parsing ------------------------------------------------------------------------------------------------
#: Accepted range of every number (inclusive), by key.
_RANGES: dict[str, tuple[float, float]] = {
    "window_s": (1.0, 3600.0), "short_window_s": (0.1, 3600.0), "short_window_factor": (1.0, 10.0),
    "watts_per_ut2": (1e-3, 1e4), "body_absorbed_fraction": (0.0, 1.0), "head_absorbed_fraction": (0.0, 1.0),
    "head_mass_fraction": (0.01, 0.5), "peak_power_w": (1.0, 1e6), "max_duty_cycle": (1e-3, 1.0),
    "tau1_ms": (1e-3, 1e3), "tau2_ms": (1e-3, 1e3), "tau3_ms": (1e-3, 1e3), "a1": (0.0, 1.0), "a2": (0.0, 1.0),
    "a3": (0.0, 1.0), "stim_limit_t_per_m_per_s": (0.1, 1e4), "stim_thresh_t_per_m_per_s": (0.1, 1e4),
    "g_scale": (0.0, 1.0), "tau_s": (1e-3, 1e5), "watts_at_max": (0.0, 1e7), "kelvin_per_watt": (0.0, 10.0),
    "ambient_c": (-50.0, 60.0), "max_temp_c": (0.0, 200.0), "max_rise_k_per_s": (0.0, 1000.0),
    "min_mm": (-1e4, 1e4), "max_mm": (-1e4, 1e4),
    "max_speed_mm_s": (1e-3, 1e4), "heartbeat_max_age_s": (1e-3, 60.0),
    "whole_body_w_per_kg": (0.0, 100.0), "head_w_per_kg": (0.0, 100.0), "limit_percent": (0.0, 1000.0),
}


def parse(r: Reader, data: dict[str, Any]) -> SafetyLimits:
    """The ``[safety]`` table of a profile (already read as ``data``; every key optional). Raises ConfigError
    naming the key."""
    if "safety" not in data:
        return SafetyLimits()
    sections = {"sar", "rf", "pns", "gradient_thermal", "table"}
    top = r.table("safety", sections | {"heartbeat_max_age_s"}, required=False)
    values: dict[str, Any] = {}
    if "heartbeat_max_age_s" in top:
        values["heartbeat_max_age_s"] = _number(r, top, "safety", "heartbeat_max_age_s")
    plain = {"sar": SarLimits, "rf": RFSafety, "gradient_thermal": GradientThermal, "table": TableSafety}
    for name, cls in plain.items():
        if name in top:
            values[name] = _section(r, top, name, cls)
    if "pns" in top:
        values["pns"] = _pns(r, top)
    limits = SafetyLimits(**values)
    if not limits.table.min_mm < limits.table.max_mm:
        raise r.fail("safety.table", f"min_mm {limits.table.min_mm} must be below max_mm {limits.table.max_mm}")
    if limits.gradient_thermal.max_temp_c <= limits.gradient_thermal.ambient_c:
        raise r.fail("safety.gradient_thermal", "max_temp_c must be above ambient_c")
    return limits


def _number(r: Reader, table: dict[str, Any], where: str, key: str) -> float:
    low, high = _RANGES[key]
    return r.number(table, f"{where}.{key}", low, high)


def _section(r: Reader, top: dict[str, Any], name: str, cls: type[Any]) -> Any:
    keys = {f.name for f in dataclasses.fields(cls)}
    table = r.table(f"safety.{name}", keys, required=False)
    values: dict[str, Any] = {}
    for key in table:
        if key in ("whole_body_w_per_kg", "head_w_per_kg"):
            values[key] = _per_mode(r, table, f"safety.{name}", key, getattr(cls(), key))
        else:
            values[key] = _number(r, table, f"safety.{name}", key)
    return cls(**values)


def _per_mode(r: Reader, table: dict[str, Any], where: str, key: str, default: dict[str, float]) -> dict[str, float]:
    given = r.table(f"{where}.{key}", set(MODES), required=False)
    low, high = _RANGES[key]
    return {**default, **{mode: r.number(given, f"{where}.{key}.{mode}", low, high) for mode in given}}


def _pns(r: Reader, top: dict[str, Any]) -> PNSSafety:
    table = r.table("safety.pns", {"x", "y", "z", "limit_percent"}, required=False)
    default = PNSSafety()
    values: dict[str, Any] = {}
    if "limit_percent" in table:
        values["limit_percent"] = _per_mode(r, table, "safety.pns", "limit_percent", default.limit_percent)
    keys = {f.name for f in dataclasses.fields(PNSAxis)}
    for axis in ("x", "y", "z"):
        if axis in table:
            given = r.table(f"safety.pns.{axis}", keys)  # an axis is given whole: all nine parameters
            values[axis] = PNSAxis(**{k: _number(r, given, f"safety.pns.{axis}", k) for k in sorted(keys)})
    return PNSSafety(**values)
