"""2D single-shot blipped gradient-echo EPI, Cartesian, no ramp sampling.

Per shot (one shot per slice and TR): slice-selective excitation; read prephaser, phase prephaser to
ky = -ny/2 and slice rephaser; TE fill; ``ny`` read-outs of alternating polarity separated by phase blips of
1/FOV; slice and read spoilers stretched to TR / slices. Every ADC block sets ``LIN``, ``SLC``, ``AVG`` and
``REV`` (1 on lines read backwards, whose samples run from kx = (nx/2 - 1)/FOV down to -nx/2/FOV). TE is the time to the
centre sample of line ny/2 (ky = 0). The dwell time is kept on the RF raster so that the backward
lines' windows land on it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

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
    quantise,
    repetition_time,
    require_at_least,
    resolve,
    selective_pulse,
)
from scanctl.sequence.builders.placement import Geometry, geometry_definitions, logical_system, place
from scanctl.sequence.model import Sequence

NAME = "epi_2d"


@dataclass(frozen=True, kw_only=True)
class EpiParams(Params):
    """Parameters of :func:`epi_2d`."""

    matrix: tuple[int, int] = param((64, 64), unit="samples, lines", low=8, high=256, kind="matrix",
                                    doc="[nx, ny]: read-out samples and phase-encoding lines, both even")
    tr_s: float = param(0.1, unit="s", low=0.001, high=20.0, doc="repetition time (one shot per TR)")
    te_s: float = param(0.03, unit="s", low=0.0005, high=2.0, doc="echo time of the ky = 0 line")
    flip_angle_deg: float = param(90.0, unit="degree", low=1.0, high=90.0, doc="excitation flip angle")
    DEFAULT_BANDWIDTH = 1500.0


def epi_2d(profile: SystemProfile, params: EpiParams | None = None, *, geometry: Geometry | None = None,
           **overrides: Any) -> Sequence:
    """Build the sequence (``overrides`` replace fields of ``params``) for the slices of ``geometry`` (default:
    one transverse slice at the isocentre). Raises :class:`~scanctl.sequence.builders.common.ParameterError`
    when TE or TR is below its minimum (the message names it) or the FOV, bandwidth, slice or geometry cannot
    be met within the gradient limits and the gradient system's linear region."""
    p = resolve(EpiParams, params, overrides)
    pl = place(profile, geometry, p.slice_thickness_m, p.fov_m, p.fov_phase)
    system = logical_system(System.from_profile(profile), pl)
    nx, ny = p.matrix
    ro = readout(system, num_samples=nx, dwell_s=dwell_time(system, p, reversible=True), fov_m=p.fov_m)
    assert ro.adc_reversed is not None  # the dwell is on the RF raster
    gx_rev = ro.grad.scaled(-1.0)
    rf, gz = selective_pulse(system, p, p.flip_angle_deg, use="e")

    lobes = [("x", -ro.grad.area / 2), ("y", -(ny // 2) / p.fov_phase), ("z", rephase(gz))]
    d_pre = common_duration(system, lobes)
    pre = [trapezoid(system, ch, area=a, duration_s=d_pre) for ch, a in lobes]
    blip = trapezoid(system, "y", area=1.0 / p.fov_phase)
    spoil = [("x", READ_SPOILER_EXTENT * nx / p.fov_m), ("z", SLICE_SPOILER_CYCLES / p.slice_thickness_m)]
    d_sp = common_duration(system, spoil)
    sp = [trapezoid(system, ch, area=a, duration_s=d_sp) for ch, a in spoil]

    b_exc = system.block_duration(rf, gz)
    b_pre = system.block_duration(*pre)
    b_ro = max(system.block_duration(ro.grad, ro.adc), system.block_duration(gx_rev, ro.adc_reversed))
    b_blip = system.block_duration(blip)
    b_sp = system.block_duration(*sp)
    te = quantise(system, "te_s", p.te_s)
    te_min = (b_exc - rf.centre_in_block_s) + b_pre + (ny // 2) * (b_ro + b_blip) + ro.centre_s
    require_at_least("te_s", te, te_min, system, requested_s=p.te_s)
    fill = te - te_min
    shot = b_exc + b_pre + fill + ny * b_ro + (ny - 1) * b_blip
    tr = repetition_time(system, p, te, shot + b_sp, pl.count)

    b = SequenceBuilder(system)
    pl.begin(b)
    pulses = [pl.rf(rf, gz, s) for s in range(pl.count)]
    ky = (np.arange(ny) - ny // 2) / p.fov_phase
    # Line j's window: forward (k = 0 at sample nx/2) or backward (k = 0 at sample nx/2 - 1), per slice.
    windows = {(s, j): pl.adc(ro.adc_reversed if j % 2 else ro.adc, -amp if j % 2 else amp,
                              nx // 2 - (j % 2), s, ky=float(ky[j]))
               for amp in (ro.grad.amplitude_hz_per_m,) for s in range(pl.count) for j in range(ny)}
    for avg in range(-1, p.averages):  # -1: dummy shots without ADC
        for _ in range(p.dummy_scans) if avg < 0 else range(1):
            for s in pl.order():
                b.add_block(pulses[s], gz)
                b.add_block(*pre)
                if fill > 1e-9:
                    b.add_block(min_duration_s=fill)
                for j in range(ny):
                    reverse = j % 2 == 1
                    grad = gx_rev if reverse else ro.grad
                    if avg < 0:
                        b.add_block(grad, min_duration_s=b_ro)
                    else:
                        b.add_block(grad, windows[s, j], Label("LIN", j), Label("SLC", s), Label("AVG", avg),
                                    Label("REV", int(reverse)), min_duration_s=b_ro)
                    if j + 1 < ny:
                        b.add_block(blip)
                b.add_block(*sp, min_duration_s=tr / pl.count - shot)
    return b.build({**definitions(NAME, p, te, tr), **geometry_definitions([pl], p.slice_thickness_m)})
