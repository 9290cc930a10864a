"""2D RF-spoiled gradient echo (FLASH / SPGR), Cartesian, multi-slice.

Blocks per slice and TR: slice-selective sinc excitation; read prephaser, phase encoding and slice rephaser;
TE fill (if any); read-out with ADC (``LIN``, ``SLC``, ``AVG`` set); read and slice spoilers with the
phase-encoding rewinder, stretched to TR / slices. Every slice is excited once per TR, in the geometry's
slice order. RF spoiling: quadratic phase, 117° increment per TR, the ADC following the RF phase. Lines run
from ky = -ny/2 to ny/2 - 1; averages repeat the whole k-space. :func:`spoiled_gre` is shared with
``gre_3d`` and the localizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.config.profile import SystemProfile
from scanctl.sequence.build import (
    ADC,
    RF,
    Label,
    SequenceBuilder,
    System,
    common_duration,
    readout,
    rf_spoil_phases,
    trapezoid,
)
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
from scanctl.sequence.builders.placement import Geometry, Placement, geometry_definitions, logical_system, place
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


def gre_2d(profile: SystemProfile, params: GreParams | None = None, *, geometry: Geometry | None = None,
           **overrides: Any) -> Sequence:
    """Build the sequence (``overrides`` replace fields of ``params``) for the slices of ``geometry`` (default:
    one transverse slice at the isocentre). Raises :class:`~scanctl.sequence.builders.common.ParameterError`
    when TE or TR is below its minimum (the message names it) or the FOV, bandwidth, slice or geometry cannot
    be met within the gradient limits and the gradient system's linear region."""
    p = resolve(GreParams, params, overrides)
    return spoiled_gre(profile, p, [place(profile, geometry, p.slice_thickness_m, p.fov_m, p.fov_phase)], name=NAME)


def spoiled_gre(profile: SystemProfile, p: GreParams, placements: list[Placement], *, name: str,
                partitions: int = 1, slew_fraction: float = 1.0) -> Sequence:
    """The RF-spoiled gradient echo of every placement in turn (each: all its slices in every TR), with
    ``partitions`` > 1 a 3D one (the slab ``p.slice_thickness_m`` thick, ``PAR`` labels, partition loop
    outside the line loop), its gradients ramped at ``slew_fraction`` of the limit. Raises
    :class:`ParameterError` as :func:`gre_2d`."""
    system = logical_system(System.from_profile(profile, slew_fraction=slew_fraction), *placements)
    nx, ny = p.matrix[0], p.matrix[1]
    nz = partitions
    ro = readout(system, num_samples=nx, dwell_s=dwell_time(system, p), fov_m=p.fov_m)
    rf, gz = selective_pulse(system, p, p.flip_angle_deg, use="e")

    # Prephasing block: read prephaser, phase encoding and slice rephaser (+ partition encoding), one duration.
    ky = phase_areas(ny, p.fov_phase)
    kz = phase_areas(nz, p.slice_thickness_m) if nz > 1 else np.zeros(1)
    z_pre = [rephase(gz) + float(k) for k in kz]
    lobes = [("x", -ro.grad.area / 2), ("z", max(z_pre, key=abs)), ("y", float(abs(ky).max()))]
    d_pre = common_duration(system, lobes)
    gx_pre = trapezoid(system, "x", area=-ro.grad.area / 2, duration_s=d_pre)
    gz_reph = [trapezoid(system, "z", area=a, duration_s=d_pre) for a in z_pre]
    gy_pe = [trapezoid(system, "y", area=float(a), duration_s=d_pre) for a in ky]
    # Spoiling block: read and slice (partition) spoilers, phase (and partition) rewinders.
    z_sp = [SLICE_SPOILER_CYCLES / (p.slice_thickness_m / nz) - float(k) for k in kz]
    spoil = [("x", READ_SPOILER_EXTENT * nx / p.fov_m), ("z", max(z_sp, key=abs)), ("y", float(abs(ky).max()))]
    d_sp = common_duration(system, spoil)
    gx_sp = trapezoid(system, "x", area=spoil[0][1], duration_s=d_sp)
    gz_sp = [trapezoid(system, "z", area=a, duration_s=d_sp) for a in z_sp]
    gy_rew = [g.scaled(-1.0) for g in gy_pe]

    n_slices = placements[0].count
    b_exc = system.block_duration(rf, gz)
    b_pre = system.block_duration(gx_pre, gz_reph[0], gy_pe[0])
    b_ro = system.block_duration(ro.grad, ro.adc)
    b_sp = system.block_duration(gx_sp, gz_sp[0], gy_rew[0])
    te = quantise(system, "te_s", p.te_s)
    te_min = (b_exc - rf.centre_in_block_s) + b_pre + ro.centre_s
    require_at_least("te_s", te, te_min, system, requested_s=p.te_s)
    te_fill = te - te_min
    tr = repetition_time(system, p, te, b_exc + b_pre + te_fill + b_ro + b_sp, n_slices)
    last = tr / n_slices - (b_exc + b_pre + te_fill + b_ro)

    b = SequenceBuilder(system)
    n_tr = p.dummy_scans + p.averages * ny * nz
    phases = rf_spoil_phases(n_tr, SPOIL_INCREMENT_DEG)
    rf_at: dict[tuple[int, int, float], RF] = {}
    adc_at: dict[tuple[int, int, float, int, int], ADC] = {}
    zero, centre = ny // 2, nz // 2  # the ky = 0 line and kz = 0 partition, played by the dummy scans
    for pl in placements:
        pl.begin(b)
        k = 0
        for avg in range(-1, p.averages):  # -1: dummy scans
            steps = [(centre, zero)] * p.dummy_scans if avg < 0 else [(q, j) for q in range(nz) for j in range(ny)]
            for q, j in steps:
                ph = float(phases[k])
                k += 1
                for s in pl.order():
                    key = (id(pl), s, ph)
                    if key not in rf_at:
                        rf_at[key] = pl.rf(rf.with_phase(ph), gz, s)
                    b.add_block(rf_at[key], gz)
                    b.add_block(gx_pre, gy_pe[j], gz_reph[q])
                    if te_fill > 1e-9:
                        b.add_block(min_duration_s=te_fill)
                    if avg < 0:
                        b.add_block(ro.grad)
                    else:
                        akey = (id(pl), s, ph, j, q)
                        if akey not in adc_at:
                            adc_at[akey] = pl.adc(ro.adc.with_phase(ph), ro.grad.amplitude_hz_per_m, nx // 2, s,
                                                  ky=float(ky[j]), kz=float(kz[q]))
                        par = [Label("PAR", q)] if nz > 1 else []
                        b.add_block(ro.grad, adc_at[akey], Label("LIN", j), *par, Label("SLC", pl.slc_base + s),
                                    Label("AVG", avg))
                    b.add_block(gx_sp, gy_rew[j], gz_sp[q], min_duration_s=last)
    return b.build({**definitions(name, p, te, tr), **geometry_definitions(placements, p.slice_thickness_m)})
