"""Everything predicted before a scan — SAR, PNS, gradient coil heating, RF amplifier duty cycle and peak
power — against the profile's limits in an IEC 60601-2-33 operating mode (docs/safety.md).

:func:`predict` gives the ``sar``, ``pns`` and ``heating`` objects of ``scanctl check --json`` and the
violations (kinds ``sar_wb``, ``sar_head``, ``pns``, ``gradient_heating``, ``rf_duty``, ``rf_peak``), each
naming the limit, the value, the margin and where in the sequence (block id, time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanctl.config.limits import ASSUMED_WEIGHT_KG, MODES
from scanctl.config.profile import SystemProfile
from scanctl.errors import ConfigError
from scanctl.safety.heating import HeatingPrediction, predict_heating
from scanctl.safety.pns import PNSPrediction, predict_pns
from scanctl.safety.sar import RFPulses, WindowPeak, window_curve, window_peak
from scanctl.sequence.checks import Violation
from scanctl.sequence.model import Sequence


def parse_mode(text: str) -> str:
    """``normal`` or ``first-level`` (``first_level``) to the profile's spelling; ConfigError otherwise."""
    mode = text.replace("-", "_")
    if mode not in MODES:
        raise ConfigError(f"unknown operating mode {text!r} (normal or first-level)")
    return mode


@dataclass
class SafetyPrediction:
    """The prediction of one sequence; ``to_json`` gives the ``sar``, ``pns`` and ``heating`` objects."""

    mode: str
    patient_weight_kg: float
    weight_assumed: bool
    sar: dict[str, Any]
    pns: dict[str, Any]
    heating: dict[str, Any]
    violations: list[Violation] = field(default_factory=list)
    _curves: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"sar": self.sar, "pns": self.pns, "heating": self.heating}


def predict(seq: Sequence, profile: SystemProfile, patient_weight_kg: float | None = None,
            mode: str = "normal") -> SafetyPrediction:
    """SAR, PNS and heating of ``seq`` on ``profile`` for the patient, in ``mode`` (``normal`` or
    ``first_level``). Without a weight, SAR is judged for the supervisor's conservative assumed weight
    (:data:`scanctl.safety.supervisor.ASSUMED_WEIGHT_KG`), and the result says so."""
    mode = parse_mode(mode)
    if patient_weight_kg is not None and not 1.0 <= patient_weight_kg <= 500.0:
        raise ConfigError(f"patient weight {patient_weight_kg} kg is outside 1 to 500 kg")
    weight = ASSUMED_WEIGHT_KG if patient_weight_kg is None else float(patient_weight_kg)
    limits = profile.safety
    ids = seq.blocks.id
    violations: list[Violation] = []

    def violate(kind: str, block: int, t_s: float, value: float, limit: float, what: str, unit: str) -> None:
        block_id = int(ids[block]) if ids.size else None
        violations.append(Violation(kind, block_id, t_s, value, limit,
                                    f"{what} {value:.4g} {unit} exceeds the {mode.replace('_', '-')} limit "
                                    f"{limit:.4g} {unit} by {value - limit:.4g} {unit} (margin {limit - value:.4g}) "
                                    f"in block {block_id} at {t_s:.3f} s", limit - value))

    # -- SAR ----------------------------------------------------------------------------------------------
    rf = limits.rf
    pulses = RFPulses.of(seq, rf, profile.gamma_hz_per_t)
    starts = seq.block_start_s
    masses = {"whole_body": weight / rf.body_absorbed_fraction,
              "head": rf.head_mass_fraction * weight / rf.head_absorbed_fraction}  # SAR = forward power / these kg
    sar: dict[str, Any] = {"patient_weight_kg": weight, "weight_assumed": patient_weight_kg is None, "mode": mode,
                           "forward_energy_j": float(pulses.energy_j.sum())}
    windows = ((limits.sar.window_s, 1.0, "6min"), (limits.sar.short_window_s, limits.sar.short_window_factor, "10s"))
    peaks: dict[float, WindowPeak] = {w: window_peak(pulses.start_s, pulses.end_s, pulses.energy_j, w, starts)
                                      for w, _, _ in windows}
    for region, table, kind in (("whole_body", limits.sar.whole_body_w_per_kg, "sar_wb"),
                                ("head", limits.sar.head_w_per_kg, "sar_head")):
        entry = {}
        for window, factor, name in windows:
            peak = peaks[window]
            value, limit = peak.value / masses[region], table[mode] * factor
            entry[name] = {"window_s": window, "peak_w_per_kg": value, "limit_w_per_kg": limit,
                           "time_s": peak.start_s, "block": int(ids[peak.block]) if ids.size else None}
            if not value <= limit:  # (every comparison here fails closed: a NaN is a violation)
                violate(kind, peak.block, peak.start_s, value, limit,
                        f"{region.replace('_', '-')} SAR over {window:g} s", "W/kg")
        sar[region] = entry

    # -- RF amplifier -------------------------------------------------------------------------------------
    duty = window_peak(pulses.start_s, pulses.end_s, pulses.end_s - pulses.start_s, limits.sar.short_window_s,
                       starts)
    peak_power = float(pulses.peak_power_w.max()) if pulses.peak_power_w.size else 0.0
    peak_pulse = int(np.argmax(pulses.peak_power_w)) if pulses.peak_power_w.size else 0
    rf_amp = {"duty_cycle_peak": duty.value, "duty_cycle_limit": rf.max_duty_cycle, "window_s": duty.window_s,
              "duty_cycle_time_s": duty.start_s, "peak_power_w": peak_power, "peak_power_limit_w": rf.peak_power_w}
    if not duty.value <= rf.max_duty_cycle:
        violate("rf_duty", duty.block, duty.start_s, duty.value, rf.max_duty_cycle,
                f"RF duty cycle over {duty.window_s:g} s", "")
    if not peak_power <= rf.peak_power_w:
        violate("rf_peak", int(pulses.block[peak_pulse]), float(pulses.start_s[peak_pulse]), peak_power,
                rf.peak_power_w, "RF peak forward power", "W")

    # -- PNS ----------------------------------------------------------------------------------------------
    # the peak only: the per-ms curve costs more and only a report draws it (write_report computes it)
    pns: PNSPrediction = predict_pns(seq, limits.pns, profile.gamma_hz_per_t, envelope_s=None)
    pns_limit = limits.pns.limit_percent[mode]
    pns_json = {"peak_percent": pns.peak_percent, "limit_percent": pns_limit, "time_s": pns.peak_time_s,
                "block": int(ids[pns.peak_block]) if ids.size else None,
                "axis_peak_percent": dict(zip("xyz", pns.axis_peak_percent, strict=True))}
    if not pns.peak_percent <= pns_limit:
        violate("pns", pns.peak_block, pns.peak_time_s, pns.peak_percent, pns_limit,
                "PNS (SAFE model, % of the stimulation threshold)", "%")

    # -- gradient coil --------------------------------------------------------------------------------------
    heating: HeatingPrediction = predict_heating(seq, profile)
    coil = limits.gradient_thermal
    heating_json = {"gradient_coil": {"peak_temperature_c": heating.peak_c, "limit_c": coil.max_temp_c,
                                      "time_s": heating.peak_time_s,
                                      "block": int(ids[heating.peak_block]) if ids.size else None},
                    "rf_amplifier": rf_amp}
    if not heating.peak_c <= coil.max_temp_c:
        violate("gradient_heating", heating.peak_block, heating.peak_time_s, heating.peak_c, coil.max_temp_c,
                "gradient coil temperature", "°C")
    curves = {"pulses": pulses, "masses": masses, "pns": pns, "heating": heating}
    return SafetyPrediction(mode, weight, patient_weight_kg is None, sar, pns_json, heating_json, violations, curves)


def write_report(prediction: SafetyPrediction, seq: Sequence, profile: SystemProfile,
                 out_dir: str | Path) -> list[Path]:
    """Draw the SAR, PNS and coil temperature curves against their limits as PNGs in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c, limits, mode = prediction._curves, profile.safety, prediction.mode
    pulses: RFPulses = c["pulses"]
    t = np.linspace(0.0, max(seq.duration_s, 1e-3), 2000)
    written = []

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for ax, window, factor in ((axes[0], limits.sar.short_window_s, limits.sar.short_window_factor),
                               (axes[1], limits.sar.window_s, 1.0)):
        energy = window_curve(pulses.start_s, pulses.end_s, pulses.energy_j, window, t)
        for region, table, colour in (("whole_body", limits.sar.whole_body_w_per_kg, "C0"),
                                      ("head", limits.sar.head_w_per_kg, "C1")):
            ax.plot(t, energy / c["masses"][region], colour, label=f"{region.replace('_', '-')} SAR")
            ax.axhline(table[mode] * factor, color=colour, linestyle="--", label=f"{region.replace('_', '-')} limit")
        ax.set_ylabel(f"W/kg over {window:g} s")
        ax.legend(loc="upper right", fontsize="small")
    axes[1].set_xlabel("time (s)")
    fig.suptitle(f"SAR, {prediction.patient_weight_kg:g} kg, {mode.replace('_', '-')} mode")
    written.append(_save(fig, out / "sar.png"))

    pns = predict_pns(seq, limits.pns, profile.gamma_hz_per_t, envelope_s=1e-3)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(pns.t_s, pns.percent, "k", linewidth=0.7, label="SAFE response (max per ms)")
    ax.axhline(limits.pns.limit_percent[mode], color="r", linestyle="--", label=f"{mode.replace('_', '-')} limit")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("% of stimulation threshold")
    ax.set_title(f"PNS: peak {pns.peak_percent:.1f} % at {pns.peak_time_s:.4f} s")
    ax.legend(loc="upper right", fontsize="small")
    written.append(_save(fig, out / "pns.png"))

    heating: HeatingPrediction = c["heating"]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(heating.t_s, heating.temperature_c, "C3", label="coil temperature")
    ax.axhline(limits.gradient_thermal.max_temp_c, color="r", linestyle="--", label="limit")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("°C")
    ax.set_title(f"Gradient coil: peak {heating.peak_c:.2f} °C")
    ax.legend(loc="lower right", fontsize="small")
    written.append(_save(fig, out / "temperature.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
