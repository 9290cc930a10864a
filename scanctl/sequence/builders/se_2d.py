"""2D spin echo, Cartesian: 90° – 180° with crushers.

Blocks per TR: slice-selective excitation; read prephaser (positive: it is mirrored by the refocusing
pulse) and slice rephaser; fill to TE/2; crusher; slice-selective refocusing pulse (90° phase shift);
crusher with the phase encoding; fill; read-out with ADC (``LIN``, ``SLC``, ``AVG`` set); read and slice
spoilers with the phase-encoding rewinder, stretched to TR / slices: every slice of the geometry once per TR.
The refocusing pulse's centre is at exactly TE/2, so the spin echo and the gradient echo coincide at the
k-space centre sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scanctl.config.profile import SystemProfile
from scanctl.sequence.build import Label, SequenceBuilder, System, common_duration, readout, trapezoid
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
    repetition_time,
    require_at_least,
    resolve,
    selective_pulse,
)
from scanctl.sequence.builders.placement import Geometry, geometry_definitions, logical_system, place
from scanctl.sequence.model import Sequence

NAME = "se_2d"


@dataclass(frozen=True, kw_only=True)
class SeParams(Params):
    """Parameters of :func:`se_2d`."""

    tr_s: float = param(0.5, unit="s", low=0.001, high=20.0, doc="repetition time")
    te_s: float = param(0.015, unit="s", low=0.0005, high=2.0, doc="echo time (realised on a 20 µs grid)")
    flip_angle_deg: float = param(90.0, unit="degree", low=1.0, high=180.0, doc="excitation flip angle")
    refocusing_angle_deg: float = param(180.0, unit="degree", low=1.0, high=180.0,
                                        doc="refocusing flip angle")


def se_2d(profile: SystemProfile, params: SeParams | None = None, *, geometry: Geometry | None = None,
          **overrides: Any) -> Sequence:
    """Build the sequence (``overrides`` replace fields of ``params``) for the slices of ``geometry`` (default:
    one transverse slice at the isocentre). Raises :class:`~scanctl.sequence.builders.common.ParameterError`
    when TE or TR is below its minimum (the message names it) or the FOV, bandwidth, slice or geometry cannot
    be met within the gradient limits and the gradient system's linear region."""
    p = resolve(SeParams, params, overrides)
    pl = place(profile, geometry, p.slice_thickness_m, p.fov_m, p.fov_phase)
    system = logical_system(System.from_profile(profile), pl)
    nx, ny = p.matrix
    ro = readout(system, num_samples=nx, dwell_s=dwell_time(system, p), fov_m=p.fov_m)
    rf_ex, gz_ex = selective_pulse(system, p, p.flip_angle_deg, use="e")
    rf_ref, gz_ref = selective_pulse(system, p, p.refocusing_angle_deg, use="r", phase_rad=math.pi / 2)

    d_pre = common_duration(system, [("x", ro.grad.area / 2), ("z", rephase(gz_ex))])
    gx_pre = trapezoid(system, "x", area=ro.grad.area / 2, duration_s=d_pre)
    gz_reph = trapezoid(system, "z", area=rephase(gz_ex), duration_s=d_pre)
    ky = phase_areas(ny, p.fov_phase)
    crush_area = SLICE_SPOILER_CYCLES / p.slice_thickness_m
    d_cr = common_duration(system, [("z", crush_area), ("y", float(abs(ky).max()))])
    gz_cr = trapezoid(system, "z", area=crush_area, duration_s=d_cr)
    gy_pe = [trapezoid(system, "y", area=float(a), duration_s=d_cr) for a in ky]
    spoil = [("x", READ_SPOILER_EXTENT * nx / p.fov_m), ("z", crush_area), ("y", float(abs(ky).max()))]
    d_sp = common_duration(system, spoil)
    gx_sp = trapezoid(system, "x", area=spoil[0][1], duration_s=d_sp)
    gz_sp = trapezoid(system, "z", area=crush_area, duration_s=d_sp)
    gy_rew = [trapezoid(system, "y", area=-float(a), duration_s=d_sp) for a in ky]

    b_exc = system.block_duration(rf_ex, gz_ex)
    b_pre = system.block_duration(gx_pre, gz_reph)
    b_cr = system.block_duration(gz_cr, gy_pe[0])
    b_ref = system.block_duration(rf_ref, gz_ref)
    b_ro = system.block_duration(ro.grad, ro.adc)
    b_sp = system.block_duration(gx_sp, gz_sp, gy_rew[0])
    t_ref = rf_ref.centre_in_block_s
    left = (b_exc - rf_ex.centre_in_block_s) + b_pre + b_cr + t_ref  # excitation centre to refocusing centre
    right = (b_ref - t_ref) + b_cr + ro.centre_s  # refocusing centre to the echo
    te = quantise(system, "te_s", p.te_s, steps=2)
    require_at_least("te_s", te, 2 * max(left, right), system, steps=2, requested_s=p.te_s)
    fill1, fill2 = te / 2 - left, te / 2 - right
    head = b_exc + b_pre + fill1 + b_cr + b_ref + b_cr + fill2 + b_ro
    tr = repetition_time(system, p, te, head + b_sp, pl.count)

    b = SequenceBuilder(system)
    pl.begin(b)
    slices = [(pl.rf(rf_ex, gz_ex, s), pl.rf(rf_ref, gz_ref, s)) for s in range(pl.count)]
    zero = ny // 2
    for avg in range(-1, p.averages):  # -1: dummy scans
        for j in range(p.dummy_scans) if avg < 0 else range(ny):
            line = zero if avg < 0 else j
            for s in pl.order():
                b.add_block(slices[s][0], gz_ex)
                b.add_block(gx_pre, gz_reph)
                if fill1 > 1e-9:
                    b.add_block(min_duration_s=fill1)
                b.add_block(gz_cr)
                b.add_block(slices[s][1], gz_ref)
                b.add_block(gz_cr, gy_pe[line])
                if fill2 > 1e-9:
                    b.add_block(min_duration_s=fill2)
                if avg < 0:
                    b.add_block(ro.grad)
                else:
                    window = pl.adc(ro.adc, ro.grad.amplitude_hz_per_m, nx // 2, s, ky=float(ky[j]))
                    b.add_block(ro.grad, window, Label("LIN", j), Label("SLC", s), Label("AVG", avg))
                b.add_block(gx_sp, gy_rew[line], gz_sp, min_duration_s=tr / pl.count - head)
    return b.build({**definitions(NAME, p, te, tr), **geometry_definitions([pl], p.slice_thickness_m)})
