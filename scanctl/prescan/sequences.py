"""The calibration sequences, built with the sequence builder API (:mod:`scanctl.sequence.build`) on the
scanner's own rasters and limits, and run like any scan (:mod:`scanctl.prescan.runner`).

Every builder takes ``rf_scale``: the transmit scale in force, by which the RF system will multiply every
pulse. The sequence played is built with ``rf_scale=1`` (the driver scales it); the safety prediction judges
the same sequence built with the scale in force, i.e. the B1 actually transmitted (a calibration at a heavy
transmit scale is refused like any scan that would exceed SAR).

- :func:`fid`: a non-selective hard pulse and one long receive window (frequency, receiver gain).
- :func:`bloch_siegert`: two shots, each a small-flip excitation, then an off-resonant Hann-shaped pulse at
  ``+f`` and ``-f`` and a receive window; the phase difference of the two FIDs is twice the Bloch–Siegert
  phase of the pulse at the actual B1 (:func:`scanctl.prescan.analysis.bloch_siegert_phase`).
- :func:`b0_map`: a 2D RF-spoiled gradient echo (Cartesian, read along x, phase along y) at two echo times,
  the two echoes of one line in consecutive TRs, excited by a short hard pulse (:data:`FIELD_MAP_PULSE_S`).
- :func:`bloch_siegert_map`: the Bloch–Siegert pair imaged: a 2D RF-spoiled gradient echo whose every line is
  taken twice, the off-resonant pulse at ``+f`` and at ``-f`` between the excitation and the read-out (a B1 map).
- :func:`b0_projection`: the same two echo times, read along one axis with no phase encoding (a projection:
  the z shim of an object thin in z).
- :func:`noise`: receive windows with no RF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.config.profile import SystemProfile
from scanctl.sequence.build import (
    RF,
    SequenceBuilder,
    Shape,
    System,
    Trap,
    adc,
    block_pulse,
    readout,
    rf_spoil_phases,
    trapezoid,
    valid_dwell,
)
from scanctl.sequence.model import Sequence

#: The hard pulse's duration (s): a 90° in 0.5 ms is 11.7 µT (5.5 kW on the default coil, within the amplifier's
#: 30 kW peak) and flips spins ±300 Hz off resonance within 6 % of it.
HARD_PULSE_S = 500e-6
#: The field maps' 5° hard pulse (s). Before the shim the object's off-resonance spreads over ±1.5 kHz (60 Hz/cm
#: on x and y over 25.6 cm): a 40 µs pulse flips it all within 1 % of 5° (a 500 µs one from 5° down to 1.5°
#: at the corners), at 8.2 µT, below the FID's 90° pulse. Its rotation then hardly varies across the
#: object, which the simulator need not resolve by splitting its tissue classes along the field (a 500 µs
#: pulse split 6 classes into 221 strips at 64 x 64: the first map took 1.6 s to compute, 0.1-0.4 s unsplit).
FIELD_MAP_PULSE_S = 40e-6
#: The Bloch–Siegert pulse: Hann-shaped, this long (s), this far off resonance (Hz), this peak B1 (Hz).
BS_DURATION_S = 4e-3
BS_OFFSET_HZ = 2000.0
BS_PEAK_HZ = 500.0
#: Gradient spoiling after each shot: cycles across this length (m) on every axis.
SPOIL_CYCLES, SPOIL_OVER_M, SPOIL_S = 8.0, 0.01, 2e-3


@dataclass(frozen=True)
class Calibration:
    """A calibration sequence and what its analysis needs to know of it."""

    seq: Sequence
    kind: str
    params: dict[str, Any]


def _system(profile: SystemProfile) -> System:
    return System.from_profile(profile, grad_fraction=0.8, slew_fraction=0.8)  # margin for the shim current


def _spoilers(system: System) -> list[Trap]:
    area = SPOIL_CYCLES / SPOIL_OVER_M
    return [trapezoid(system, axis, area=area, duration_s=SPOIL_S) for axis in "xyz"]  # gentle: no PNS


def _definitions(name: str, fov: tuple[float, float, float]) -> dict[str, object]:
    return {"Name": name, "FOV": fov}


def fid(profile: SystemProfile, *, flip_deg: float = 90.0, samples: int = 1024, dwell_s: float = 20e-6,
        rf_scale: float = 1.0) -> Calibration:
    """One non-selective excitation and one receive window of ``samples`` at ``dwell_s`` (the spectrum's
    resolution is ``1 / (samples dwell_s)``)."""
    system = _system(profile)
    b = SequenceBuilder(system)
    b.add_block(block_pulse(system, flip_angle_rad=math.radians(flip_deg) * rf_scale, duration_s=HARD_PULSE_S))
    window = adc(system, num_samples=samples, dwell_s=valid_dwell(system, samples, dwell_s))
    b.add_block(window)
    b.add_block(*_spoilers(system))
    return Calibration(b.build(_definitions("prescan_fid", (0.256, 0.256, 0.01))), "fid",
                       {"dwell_s": window.dwell_s, "flip_deg": flip_deg})


def _hann_pulse(system: System, *, peak_hz: float, freq_hz: float) -> RF:
    raster = system.rasters.rf_s
    n = round(BS_DURATION_S / raster)
    t = (np.arange(n) + 0.5) / n
    shape = 0.5 - 0.5 * np.cos(2 * np.pi * t)
    delay = math.ceil(system.rf_dead_time_s / raster - 1e-6) * raster
    return RF(peak_hz, Shape(shape), Shape(np.zeros(n)), n * raster, n * raster / 2, delay, freq_hz, 0.0, "o")


def bloch_siegert_b1(system: System, peak_hz: float = BS_PEAK_HZ) -> np.ndarray:
    """The Bloch–Siegert pulse's B1 samples (Hz) at scale 1, one per RF raster."""
    return peak_hz * np.asarray(_hann_pulse(system, peak_hz=peak_hz, freq_hz=0.0).magnitude.samples)


def bloch_siegert(profile: SystemProfile, *, flip_deg: float = 20.0, samples: int = 128, dwell_s: float = 10e-6,
                  rf_scale: float = 1.0) -> Calibration:
    """Two shots: excitation, the off-resonant pulse at ``+BS_OFFSET_HZ`` then (second shot) ``-BS_OFFSET_HZ``,
    a receive window, spoilers."""
    system = _system(profile)
    b = SequenceBuilder(system)
    window = adc(system, num_samples=samples, dwell_s=valid_dwell(system, samples, dwell_s))
    for sign in (1.0, -1.0):
        b.add_block(block_pulse(system, flip_angle_rad=math.radians(flip_deg) * rf_scale, duration_s=HARD_PULSE_S))
        b.add_block(_hann_pulse(system, peak_hz=BS_PEAK_HZ * rf_scale, freq_hz=sign * BS_OFFSET_HZ))
        b.add_block(window)
        b.add_block(*_spoilers(system), min_duration_s=20e-3)
    return Calibration(b.build(_definitions("prescan_bloch_siegert", (0.256, 0.256, 0.01))), "bloch_siegert",
                       {"b1_hz": bloch_siegert_b1(system), "raster_s": system.rasters.rf_s, "offset_hz": BS_OFFSET_HZ})


def _echo_pair(b: SequenceBuilder, system: System, *, read: str, fov_m: float, samples: int, dwell_s: float,
               shots: list[tuple[float, RF | None]], tr_s: float, flip_rad: float, phase_areas: list[float],
               phase_axis: str | None) -> None:
    """For each phase-encoding area, one TR per shot ``(echo time, pulse played after the excitation or None)``
    (RF-spoiled, the ADC and the extra pulse following the RF phase)."""
    ro = readout(system, num_samples=samples, dwell_s=valid_dwell(system, samples, dwell_s), fov_m=fov_m,
                 channel=read)
    rf = block_pulse(system, flip_angle_rad=flip_rad, duration_s=FIELD_MAP_PULSE_S)
    phases = iter(rf_spoil_phases(len(shots) * len(phase_areas)))
    for area in phase_areas:
        for te, extra in shots:
            phase = float(next(phases))
            d_rf = b.add_block(rf.with_phase(phase))
            if extra is not None:
                d_rf += b.add_block(extra.with_phase(phase))
            pre = [trapezoid(system, read, area=-ro.grad.area / 2, duration_s=1e-3)]
            if phase_axis is not None:
                pre.append(trapezoid(system, phase_axis, area=area, duration_s=1e-3))
            d_pre = b.add_block(*pre)
            fill = te - (d_rf - rf.delay_s - rf.center_s) - d_pre - ro.centre_s
            if fill < -1e-9:
                raise ValueError(f"echo time {te * 1e3:.3f} ms is below the shortest {(te - fill) * 1e3:.3f} ms")
            if fill > 1e-9:
                b.add_block(min_duration_s=fill)
            d_ro = b.add_block(ro.grad, ro.adc.with_phase(phase))
            spoil = [trapezoid(system, axis, area=SPOIL_CYCLES / SPOIL_OVER_M, duration_s=SPOIL_S) for axis in "xyz"
                     if axis != phase_axis]
            if phase_axis is not None:
                spoil.append(trapezoid(system, phase_axis, area=-area, duration_s=2e-3))
            used = d_rf + d_pre + max(fill, 0.0) + d_ro
            b.add_block(*spoil, min_duration_s=max(2e-3, tr_s - used))


def b0_map(profile: SystemProfile, *, matrix: int = 32, fov_m: float = 0.256,
           te_s: tuple[float, float] = (3e-3, 3.5e-3), tr_s: float = 10e-3, flip_deg: float = 5.0,
           rf_scale: float = 1.0) -> Calibration:
    """A 2D dual-echo gradient echo, ``matrix`` square over ``fov_m``: lines ky = -n/2 … n/2-1, each at both
    echo times (``te_s``; their difference sets the unambiguous range ``±1 / (2 ΔTE)``)."""
    system = _system(profile)
    b = SequenceBuilder(system)
    ky = (np.arange(matrix) - matrix // 2) / fov_m
    _echo_pair(b, system, read="x", fov_m=fov_m, samples=matrix, dwell_s=20e-6, shots=[(te, None) for te in te_s],
               tr_s=tr_s, flip_rad=math.radians(flip_deg) * rf_scale, phase_areas=[float(k) for k in ky],
               phase_axis="y")
    return Calibration(b.build(_definitions("prescan_b0map", (fov_m, fov_m, 0.01))), "b0_map",
                       {"matrix": matrix, "fov_m": fov_m, "delta_te_s": te_s[1] - te_s[0]})


def bloch_siegert_map(profile: SystemProfile, *, matrix: int = 32, fov_m: float = 0.256, te_s: float = 7e-3,
                      tr_s: float = 20e-3, flip_deg: float = 5.0, rf_scale: float = 1.0) -> Calibration:
    """A 2D RF-spoiled gradient echo, ``matrix`` square over ``fov_m``, each line taken twice: the Bloch–Siegert
    pulse of :func:`bloch_siegert` at ``+BS_OFFSET_HZ``, then at ``-BS_OFFSET_HZ``, between the excitation and the
    read-out (one echo time: the B0 phase cancels in the difference). A small flip (5°): the spoiled steady
    state's own phase, which the echo pathways of earlier shots (of either sign) add, stays small (at 20° it
    spoils the map by tens of per cent in long-T2 tissue)."""
    system = _system(profile)
    b = SequenceBuilder(system)
    ky = (np.arange(matrix) - matrix // 2) / fov_m
    shots: list[tuple[float, RF | None]] = [
        (te_s, _hann_pulse(system, peak_hz=BS_PEAK_HZ * rf_scale, freq_hz=sign * BS_OFFSET_HZ)) for sign in (1.0, -1.0)]
    _echo_pair(b, system, read="x", fov_m=fov_m, samples=matrix, dwell_s=20e-6, shots=shots, tr_s=tr_s,
               flip_rad=math.radians(flip_deg) * rf_scale, phase_areas=[float(k) for k in ky], phase_axis="y")
    return Calibration(b.build(_definitions("prescan_b1map", (fov_m, fov_m, 0.01))), "bloch_siegert_map",
                       {"matrix": matrix, "fov_m": fov_m, "b1_hz": bloch_siegert_b1(system),
                        "raster_s": system.rasters.rf_s, "offset_hz": BS_OFFSET_HZ})


def b0_projection(profile: SystemProfile, *, axis: str = "z", fov_m: float = 0.04, samples: int = 64,
                  te_s: tuple[float, float] = (4e-3, 4.5e-3), tr_s: float = 20e-3, flip_deg: float = 5.0,
                  rf_scale: float = 1.0) -> Calibration:
    """A dual-echo projection read along ``axis`` (no phase encoding) over ``fov_m``."""
    system = _system(profile)
    b = SequenceBuilder(system)
    _echo_pair(b, system, read=axis, fov_m=fov_m, samples=samples, dwell_s=20e-6, shots=[(te, None) for te in te_s],
               tr_s=tr_s, flip_rad=math.radians(flip_deg) * rf_scale, phase_areas=[0.0], phase_axis=None)
    return Calibration(b.build(_definitions("prescan_b0proj", (0.256, 0.256, fov_m))), "b0_projection",
                       {"samples": samples, "fov_m": fov_m, "delta_te_s": te_s[1] - te_s[0]})


def noise(profile: SystemProfile, *, windows: int = 4, samples: int = 2048, dwell_s: float = 10e-6,
          rf_scale: float = 1.0) -> Calibration:
    """``windows`` receive windows of ``samples`` with no RF (``rf_scale`` unused: nothing is transmitted)."""
    system = _system(profile)
    b = SequenceBuilder(system)
    window = adc(system, num_samples=samples, dwell_s=valid_dwell(system, samples, dwell_s))
    for _ in range(windows):
        b.add_block(window)
    return Calibration(b.build(_definitions("prescan_noise", (0.256, 0.256, 0.01))), "noise",
                       {"dwell_s": window.dwell_s})
