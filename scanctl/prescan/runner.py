"""Prescan: the calibrations a scan needs first, each a small sequence (:mod:`scanctl.prescan.sequences`) run
through the scanner like any scan -- the same safety prediction (SAR of the B1 actually transmitted, i.e. at
the transmit scale in force), the same sequence checks, state machine and supervisor -- and analysed
(:mod:`scanctl.prescan.analysis`); what it finds is set on the drivers (:class:`scanctl.hw.interfaces.RFAdjustments`,
:class:`scanctl.hw.interfaces.ShimSystem`) and journaled in the result.

Steps (:data:`STEPS`, run in this order whatever order they are asked in; docs/prescan.md):

- ``gain`` (first: a receiver that clips spoils every other measurement): the receiver gain from a 90° FID of
  the whole object (the most signal any scan of it can give): lowered while the ADC clips, then set so that its
  peak is at :data:`GAIN_HEADROOM` of the ADC's full scale;
- ``frequency``: the FID's frequency, iterated until the correction is below :data:`FREQUENCY_TOL_HZ` (run again
  after ``shim``, whose fit moves the mean field);
- ``shim``: a dual-echo B0 map in the plane (offset, x, y, and the second-order terms that vary over it —
  x2y2, xy, z2 — where the hardware has those shims) and a dual-echo projection along z, fitted over the
  object, applied, and measured again (twice): the residual RMS over the object before and after;
- ``transmit``: the transmit scale by Bloch–Siegert (see docs/prescan.md for why);
- ``b1map``: the Bloch–Siegert pair imaged, a B1 map over the object (what the transmit scale cannot even out):
  its mean, spread and range, measured only (nothing is set);
- ``noise``: the receive channels' noise covariance, from windows with no RF.

A step that does not converge, whose result the hardware refuses (out of its range), or whose sequence the
safety prediction or the checks refuse, leaves the previous values in force and says so; the other steps go on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scanctl.config.profile import SECOND_ORDER, SystemProfile
from scanctl.errors import ConfigError, SafetyLimitError, ScanctlError
from scanctl.hw.interfaces import RFAdjustments, ShimSystem
from scanctl.prescan import analysis
from scanctl.prescan.sequences import (
    Calibration,
    b0_map,
    b0_projection,
    bloch_siegert,
    bloch_siegert_map,
    fid,
    noise,
)

log = logging.getLogger(__name__)

STEPS = ("gain", "frequency", "shim", "transmit", "b1map", "noise")
#: What a prescan runs unless told which: every step that sets something, and the noise scan. ``b1map`` only
#: measures (and costs more to compute than all the others together), so it runs when named.
DEFAULT_STEPS = tuple(s for s in STEPS if s != "b1map")
#: The frequency step has converged when its last correction is below this (Hz).
FREQUENCY_TOL_HZ = 0.2
#: The transmit step has converged when its last correction of the scale is below this (relative).
TRANSMIT_TOL = 0.005
#: The receiver gain puts the largest sample of a 90° FID at this fraction of the ADC's full scale.
GAIN_HEADROOM = 0.5
#: Gain lowered by this much (dB) at each try while the ADC clips.
GAIN_STEP_DB = 12.0
ITERATIONS = 4


class CalibrationRefused(ScanctlError):
    """A calibration's sequence refused before anything moved (the safety prediction or the checks)."""


class CalibrationFailed(ScanctlError):
    """A calibration that ran but gives no usable result (did not converge, ended early, no signal)."""


@dataclass
class StepResult:
    """One step: ``outcome`` ``converged``, ``not_converged``, ``refused`` (the sequence, or the hardware refused
    the result) or ``failed``; ``values`` what it set (or found, when not applied), ``sigma`` their
    uncertainties; ``message`` says why when not converged."""

    step: str
    outcome: str
    values: dict[str, Any] = field(default_factory=dict)
    sigma: dict[str, float] = field(default_factory=dict)
    message: str = ""
    sequence_s: float = 0.0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "converged"


@dataclass
class PrescanResult:
    """What a prescan found and left in force (``adjustments``: the RF's read-back, ``shim``: the gradient's),
    the noise covariance (``noise_covariance``: ``[[re, im], …]`` per channel pair, in the receiver's units
    per sample at ``noise_dwell_s``), and every step's journal entry."""

    steps: list[StepResult]
    adjustments: dict[str, float]
    shim: dict[str, float]
    noise_covariance: list[list[list[float]]] | None = None
    noise_dwell_s: float | None = None
    sequence_s: float = 0.0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        """One object (``scanctl prescan --json``, the run report's ``prescan``)."""
        sigma: dict[str, Any] = {}
        for s in self.steps:
            sigma.update(s.sigma)
        return {"frequency_offset_hz": self.adjustments.get("frequency_offset_hz"),
                "tx_scale": self.adjustments.get("tx_scale"), "shim": dict(self.shim),
                "receiver_gain_db": self.adjustments.get("receiver_gain_db"), "uncertainty": sigma,
                "noise_covariance": self.noise_covariance, "noise_dwell_s": self.noise_dwell_s,
                "ok": self.ok, "sequence_s": self.sequence_s, "wall_s": self.wall_s,
                "steps": [asdict(s) for s in self.steps]}


def ordered(steps: Iterable[str] | None) -> tuple[str, ...]:
    """``steps`` (when None: :data:`DEFAULT_STEPS`) in :data:`STEPS` order. Raises ConfigError naming an unknown
    step."""
    wanted = set(DEFAULT_STEPS if steps is None else steps)
    unknown = sorted(wanted - set(STEPS))
    if unknown:
        raise ConfigError(f"unknown prescan step {unknown[0]!r} (steps: {', '.join(STEPS)})")
    return tuple(s for s in STEPS if s in wanted)


class Prescan:
    """Runs the calibrations on a connected ``scanner`` (:class:`scanctl.engine.executor.Scanner`) whose RF system
    has :class:`RFAdjustments` and gradient system :class:`ShimSystem`, for the patient (``patient_weight_kg``,
    ``mode``, as any scan)."""

    def __init__(self, scanner: Any, *, patient_weight_kg: float | None = None, mode: str = "normal",
                 table_position_mm: float = 0.0) -> None:
        if not isinstance(scanner.rf, RFAdjustments):
            raise ConfigError("the RF system offers no adjustments (frequency, transmit scale, gain): no prescan")
        self.scanner = scanner
        self.profile: SystemProfile = scanner.profile
        self.patient_weight_kg = patient_weight_kg
        self.mode = mode
        self.table_position_mm = table_position_mm  # adjust where the scan images: the patient loads the coil there
        self.sequence_s = 0.0
        self._step_sequence_s = 0.0
        #: The last ``b1map`` step's map: B1 actual over programmed (at the transmit scale then in force) per
        #: voxel, row y and column x as :func:`analysis.image_2d` places them; NaN outside the object.
        self.b1_map: np.ndarray | None = None

    # -- running one calibration sequence -------------------------------------------------------------------------
    def acquire(self, build: Callable[..., Calibration], **params: Any) -> tuple[Calibration, list[Any]]:
        """Build, judge, prepare and play one calibration; its acquisitions in index order. Raises
        CalibrationRefused (nothing moved) or CalibrationFailed (it did not complete)."""
        from scanctl.safety.predict import predict

        tx_scale = float(self.scanner.rf.adjustments()["tx_scale"])
        played = build(self.profile, **params)
        judged = build(self.profile, rf_scale=tx_scale, **params) if tx_scale != 1.0 else played
        safety = predict(judged.seq, self.profile, self.patient_weight_kg, self.mode)
        if not safety.ok:
            raise CalibrationRefused(f"{played.kind} refused before anything moved (safety prediction at transmit "
                                     f"scale {tx_scale:g}): " + "; ".join(v.message for v in safety.violations[:3]))
        try:
            self.scanner.prepare(played.seq)
        except SafetyLimitError as exc:
            raise CalibrationRefused(f"{played.kind}: {exc}") from None
        acquisitions: list[Any] = []
        result = self.scanner.run(on_acquisitions=acquisitions.extend, patient_weight_kg=self.patient_weight_kg,
                                  mode=self.mode, table_position_mm=self.table_position_mm)
        self.sequence_s += played.seq.duration_s
        self._step_sequence_s += played.seq.duration_s
        if result.outcome != "completed":
            raise CalibrationFailed(f"{played.kind} ended {result.outcome}: {result.message}")
        acquisitions.sort(key=lambda a: a.index)
        return played, acquisitions

    # -- the steps -------------------------------------------------------------------------------------------------
    def run(self, steps: Iterable[str] | None = None) -> PrescanResult:
        """Run ``steps`` (all by default) in order; never raises for a step (its result says what happened)."""
        t0 = time.perf_counter()
        todo = ordered(steps)
        results: list[StepResult] = []
        noise_out: dict[str, Any] = {}
        for step in todo:
            # Before the shim a linear field broadens the line and moves its centroid: one FID for a coarse centre,
            # then the centre again, iterated, once the shim has made the line narrow.
            coarse = step == "frequency" and "shim" in todo
            results.append(self._step(step, noise_out, coarse=coarse))
            if step == "shim" and "frequency" in todo:
                results.append(self._step("frequency", noise_out))
        shim = self.scanner.gradient.adjustments() if isinstance(self.scanner.gradient, ShimSystem) else {}
        return PrescanResult(results, self.scanner.rf.adjustments(), shim, noise_out.get("covariance"),
                             noise_out.get("dwell_s"), self.sequence_s, time.perf_counter() - t0)

    def _step(self, step: str, noise_out: dict[str, Any], *, coarse: bool = False) -> StepResult:
        before = self._snapshot()
        t0 = time.perf_counter()
        self._step_sequence_s = 0.0
        try:
            if step == "noise":
                result = self._noise(noise_out)
            elif step == "frequency":
                result = self._frequency(iterations=1 if coarse else ITERATIONS)
            else:
                result = getattr(self, f"_{step}")()
        except CalibrationRefused as exc:
            result = StepResult(step, "refused", message=str(exc))
        except SafetyLimitError as exc:  # the hardware refused the result (out of its range)
            result = StepResult(step, "refused", message=f"result out of the hardware's range: {exc}")
        except (CalibrationFailed, ScanctlError) as exc:
            result = StepResult(step, "failed", message=str(exc))
        if not result.ok:
            self._restore(before)
            result.values = {}  # nothing it found is in force
            result.message = (result.message + "; " if result.message else "") + "previous values kept"
            log.warning("prescan %s: %s: %s", step, result.outcome, result.message)
        else:
            log.info("prescan %s: %s", step, result.values)
        result.sequence_s, result.wall_s = self._step_sequence_s, time.perf_counter() - t0
        return result

    def _snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        shim = self.scanner.gradient.adjustments() if isinstance(self.scanner.gradient, ShimSystem) else {}
        return self.scanner.rf.adjustments(), shim

    def _restore(self, before: tuple[dict[str, float], dict[str, float]]) -> None:
        rf, shim = before
        self.scanner.rf.set_frequency_offset(rf["frequency_offset_hz"])
        self.scanner.rf.set_tx_scale(rf["tx_scale"])
        self.scanner.rf.set_receiver_gain(rf["receiver_gain_db"])
        if shim:
            self.scanner.gradient.set_shim(shim)

    def _frequency(self, iterations: int = ITERATIONS) -> StepResult:
        """FIDs until the correction is below the tolerance (``iterations`` 1: one FID, a coarse centre)."""
        rf = self.scanner.rf
        for _ in range(iterations):
            cal, acq = self.acquire(fid, flip_deg=90.0)
            est = analysis.fid_frequency(acq[0].data[0], cal.params["dwell_s"])
            if not math.isfinite(est.value):
                raise CalibrationFailed("frequency: no signal in the FID")
            offset = rf.adjustments()["frequency_offset_hz"] + est.value
            rf.set_frequency_offset(offset)
            if iterations == 1 or abs(est.value) < max(FREQUENCY_TOL_HZ, 3 * est.sigma):
                return StepResult("frequency", "converged", {"frequency_offset_hz": offset},
                                  {"frequency_offset_hz": est.sigma},
                                  "coarse (one FID, before the shim)" if iterations == 1 else "")
        return StepResult("frequency", "not_converged", {"frequency_offset_hz": offset},
                          message=f"last correction {est.value:.3g} Hz after {iterations} FIDs")

    def _transmit(self) -> StepResult:
        rf = self.scanner.rf
        for _ in range(ITERATIONS):
            cal, acq = self.acquire(bloch_siegert)
            est = analysis.bloch_siegert_scale(acq[0].data[0], acq[1].data[0], cal.params["b1_hz"],
                                               cal.params["raster_s"], cal.params["offset_hz"])
            if not (math.isfinite(est.value) and 0.1 < est.value < 10):
                raise CalibrationFailed(f"transmit: no usable Bloch-Siegert phase (B1 scale {est.value:.3g})")
            tx = rf.adjustments()["tx_scale"] / est.value
            rf.set_tx_scale(tx)
            if abs(est.value - 1.0) < max(TRANSMIT_TOL, 3 * est.sigma):
                return StepResult("transmit", "converged", {"tx_scale": tx}, {"tx_scale": tx * est.sigma})
        return StepResult("transmit", "not_converged", {"tx_scale": tx},
                          message=f"B1 scale still {est.value:.4g} after {ITERATIONS} tries")

    def _b1map(self) -> StepResult:
        cal, acq = self.acquire(bloch_siegert_map)
        plus = analysis.image_2d([a.data[0] for a in acq[0::2]])
        minus = analysis.image_2d([a.data[0] for a in acq[1::2]])
        p = cal.params
        b1 = analysis.bloch_siegert_map(plus, minus, p["b1_hz"], p["raster_s"], p["offset_hz"])
        inside = b1[np.isfinite(b1)]
        if inside.size < 8:
            raise CalibrationFailed("b1map: too little of the object in the map")
        self.b1_map = b1
        mean = float(inside.mean())
        return StepResult("b1map", "converged", {
            "b1_mean": mean, "b1_sd": float(inside.std()), "b1_min": float(inside.min()),
            "b1_max": float(inside.max()), "b1_spread": float(inside.std() / mean), "voxels": int(inside.size)},
            message="measured (B1 actual over programmed at the transmit scale in force); nothing set")

    def _shim_terms(self) -> tuple[str, ...]:
        """What the transverse map can fit: the offset, x, y, and the second-order terms the hardware has that
        vary over the plane z = 0 (x2y2, xy, and z2 as -(x² + y²)/2; zx and zy vanish there)."""
        have = self.profile.adjustments.max_shim_second_order_hz_per_m2
        return ("offset", "x", "y", *(t for t in ("z2", "x2y2", "xy") if t in have))

    def _measure_plane(self) -> analysis.FieldFit:
        cal, acq = self.acquire(b0_map)
        n, fov = int(cal.params["matrix"]), cal.params["fov_m"]
        first = analysis.image_2d([a.data[0] for a in acq[0::2]])
        second = analysis.image_2d([a.data[0] for a in acq[1::2]])
        df, weight = analysis.field_map(first, second, cal.params["delta_te_s"])
        p = analysis.positions(n, fov)
        fit = analysis.fit_field(df, weight, (p[None, :], p[:, None], np.zeros(1)), self._shim_terms())
        if fit is None:
            raise CalibrationFailed("shim: too little of the object in the B0 map to fit")
        return fit

    def _measure_z(self) -> analysis.FieldFit | None:
        cal, acq = self.acquire(b0_projection, axis="z")
        first, second = (analysis.projection(a.data[0]) for a in acq)
        df, weight = analysis.field_map(first, second, cal.params["delta_te_s"])
        z = analysis.positions(int(cal.params["samples"]), cal.params["fov_m"])
        return analysis.fit_field(df, weight, (np.zeros(1), np.zeros(1), z), ("offset", "z"))

    def _shim(self) -> StepResult:
        grad, rf = self.scanner.gradient, self.scanner.rf
        if not isinstance(grad, ShimSystem):
            raise CalibrationFailed("the gradient system offers no shim")
        fits = []
        for _ in range(2):  # a second pass measures what the first left, and takes it out too
            plane = self._measure_plane()
            fits.append(plane)
            shim = grad.adjustments()
            grad.set_shim({t: shim[t] - v for t, v in plane.terms.items() if t != "offset"})
            rf.set_frequency_offset(rf.adjustments()["frequency_offset_hz"] + plane.terms["offset"])
            # Along z after the plane: the projection sums the plane, whose own field would blur its phase.
            zfit = self._measure_z()
            if zfit is not None:
                grad.set_shim({"z": grad.adjustments()["z"] - zfit.terms["z"]})
        after = self._measure_plane()
        values: dict[str, Any] = {"shim": grad.adjustments(), "rms_before_hz": fits[0].rms_hz,
                                  "rms_after_hz": after.rms_hz, "voxels": after.voxels}
        sigma = {f"shim_{t}": s for t, s in fits[-1].sigma.items() if t != "offset"}
        if zfit is not None:
            sigma["shim_z"] = zfit.sigma["z"]
        outcome = "converged" if after.rms_hz <= fits[0].rms_hz else "not_converged"
        message = "" if outcome == "converged" else "the residual field grew: the shim made it worse"
        return StepResult("shim", outcome, values, sigma, message)

    def _gain(self) -> StepResult:
        rf = self.scanner.rf
        for _ in range(ITERATIONS + 1):
            cal, acq = self.acquire(fid, flip_deg=90.0, samples=256)
            telemetry = rf.status().telemetry
            gain = rf.adjustments()["receiver_gain_db"]
            if telemetry.get("adc_clipped_samples", 0.0) > 0:
                low = self.profile.adjustments.receiver_gain_db[0]
                if gain <= low:
                    raise CalibrationFailed(f"gain: the ADC clips even at the lowest gain {low:g} dB")
                rf.set_receiver_gain(max(low, gain - GAIN_STEP_DB))
                continue
            peak = analysis.peak_amplitude(acq[0].data)
            full_scale = telemetry.get("adc_full_scale")
            if full_scale is None or peak <= 0:  # the ADC's range is not known: the unclipped gain stays
                return StepResult("gain", "converged", {"receiver_gain_db": gain, "peak": peak},
                                  message="ADC full scale not reported: gain left where nothing clips")
            low, high = self.profile.adjustments.receiver_gain_db
            want = float(np.clip(20 * math.log10(GAIN_HEADROOM * full_scale / peak), low, high))
            rf.set_receiver_gain(want)
            fraction = peak * 10 ** (want / 20) / full_scale
            return StepResult("gain", "converged", {"receiver_gain_db": want, "peak": peak,
                                                    "peak_fraction_of_full_scale": fraction})
        raise CalibrationFailed(f"gain: the ADC still clips after {ITERATIONS} gain steps")

    def _noise(self, out: dict[str, Any]) -> StepResult:
        cal, acq = self.acquire(noise)
        cov = analysis.noise_covariance([a.data for a in acq])
        out["covariance"] = [[[float(v.real), float(v.imag)] for v in row] for row in cov]
        out["dwell_s"] = cal.params["dwell_s"]
        std = float(np.sqrt(np.real(np.trace(cov)) / cov.shape[0]))
        return StepResult("noise", "converged", {"channels": int(cov.shape[0]), "noise_std": std,
                                                 "dwell_s": cal.params["dwell_s"]})


__all__ = ["STEPS", "SECOND_ORDER", "CalibrationFailed", "CalibrationRefused", "Prescan", "PrescanResult",
           "StepResult", "ordered"]
