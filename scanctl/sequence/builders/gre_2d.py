"""2D RF-spoiled gradient echo (FLASH / SPGR), Cartesian.

Blocks per TR: slice-selective sinc excitation; read prephaser, phase encoding and slice rephaser; TE
fill (if any); read-out with ADC (``LIN``, ``SLC``, ``AVG`` set); read and slice spoilers with the
phase-encoding rewinder, stretched to the TR. RF spoiling: quadratic phase, 117° increment, the ADC
following the RF phase. Lines run from ky = -ny/2 to ny/2 - 1; averages repeat the whole k-space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scanctl.config.profile import SystemProfile
from scanctl.sequence.build import Label, SequenceBuilder, System, common_duration, readout, rf_spoil_phases, trapezoid
from scanctl.sequence.build import slice_rephase_area as rephase
from scanctl.sequence.builders.common import (
    READ_SPOILER_EXTENT,
    SLICE_SPOILER_CYCLES,
    Params,
    definitions,
    dwell_time,
    param,
    phase_areas,
    quantise,
    require_at_least,
    resolve,
    selective_pulse,
)
from scanctl.sequence.model import Sequence

NAME = "gre_2d"
#: RF-spoiling phase increment, degrees.
SPOIL_INCREMENT_DEG = 117.0


@dataclass(frozen=True, kw_only=True)
class GreParams(Params):
    """Parameters of :func:`gre_2d`."""

    tr_s: float = param(0.010, unit="s", low=0.001, high=20.0, doc="repetition time")
    te_s: float = param(0.0045, unit="s", low=0.0005, high=2.0, doc="echo time")
    flip_angle_deg: float = param(15.0, unit="degree", low=1.0, high=90.0, doc="excitation flip angle")


def gre_2d(profile: SystemProfile, params: GreParams | None = None, **overrides: Any) -> Sequence:
    """Build the sequence (``overrides`` replace fields of ``params``). Raises
    :class:`~scanctl.sequence.builders.common.ParameterError` when TE or TR is below its minimum (the
    message names it) or the FOV, bandwidth or slice cannot be met within the gradient limits."""
    p = resolve(GreParams, params, overrides)
    system = System.from_profile(profile)
    nx, ny = p.matrix
    ro = readout(system, num_samples=nx, dwell_s=dwell_time(system, p), fov_m=p.fov_m)
    rf, gz = selective_pulse(system, p, p.flip_angle_deg, use="e")

    # Prephasing block: read prephaser, slice rephaser and phase encoding, all with one duration.
    ky = phase_areas(ny, p.fov_m)
    lobes = [("x", -ro.grad.area / 2), ("z", rephase(gz)), ("y", float(abs(ky).max()))]
    d_pre = common_duration(system, lobes)
    gx_pre = trapezoid(system, "x", area=-ro.grad.area / 2, duration_s=d_pre)
    gz_reph = trapezoid(system, "z", area=rephase(gz), duration_s=d_pre)
    gy_pe = [trapezoid(system, "y", area=float(a), duration_s=d_pre) for a in ky]
    # Spoiling block: read and slice spoilers, phase rewinder.
    spoil = [("x", READ_SPOILER_EXTENT * nx / p.fov_m), ("z", SLICE_SPOILER_CYCLES / p.slice_thickness_m),
             ("y", float(abs(ky).max()))]
    d_sp = common_duration(system, spoil)
    gx_sp = trapezoid(system, "x", area=spoil[0][1], duration_s=d_sp)
    gz_sp = trapezoid(system, "z", area=spoil[1][1], duration_s=d_sp)
    gy_rew = [g.scaled(-1.0) for g in gy_pe]

    b_exc = system.block_duration(rf, gz)
    b_pre = system.block_duration(gx_pre, gz_reph, gy_pe[0])
    b_ro = system.block_duration(ro.grad, ro.adc)
    b_sp = system.block_duration(gx_sp, gz_sp, gy_rew[0])
    te = quantise(system, "te_s", p.te_s)
    te_min = (b_exc - rf.centre_in_block_s) + b_pre + ro.centre_s
    require_at_least("te_s", te, te_min, system, requested_s=p.te_s)
    te_fill = te - te_min
    tr = quantise(system, "tr_s", p.tr_s)
    tr_min = b_exc + b_pre + te_fill + b_ro + b_sp
    require_at_least("tr_s", tr, tr_min, system, note=f" at TE {te * 1e3:.4g} ms", requested_s=p.tr_s)
    last = tr - (b_exc + b_pre + te_fill + b_ro)

    b = SequenceBuilder(system)
    n_tr = p.dummy_scans + p.averages * ny
    phases = rf_spoil_phases(n_tr, SPOIL_INCREMENT_DEG)
    rf_at = {ph: rf.with_phase(ph) for ph in set(phases.tolist())}
    adc_at = {ph: ro.adc.with_phase(ph) for ph in rf_at}
    zero = ny // 2  # the ky = 0 line, played by the dummy scans
    k = 0
    for avg in range(-1, p.averages):  # -1: dummy scans
        lines = range(p.dummy_scans) if avg < 0 else range(ny)
        for j in lines:
            ph = float(phases[k])
            k += 1
            line = zero if avg < 0 else j
            b.add_block(rf_at[ph], gz)
            b.add_block(gx_pre, gy_pe[line], gz_reph)
            if te_fill > 1e-9:
                b.add_block(min_duration_s=te_fill)
            if avg < 0:
                b.add_block(ro.grad)
            else:
                b.add_block(ro.grad, adc_at[ph], Label("LIN", j), Label("SLC", 0), Label("AVG", avg))
            b.add_block(gx_sp, gy_rew[line], gz_sp, min_duration_s=last)
    return b.build(definitions(NAME, p, te, tr))
