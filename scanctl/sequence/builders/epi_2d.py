"""2D single-shot blipped gradient-echo EPI, Cartesian, no ramp sampling.

Per shot (one TR): slice-selective excitation; read prephaser, phase prephaser to ky = -ny/2 and slice
rephaser; TE fill; ``ny`` read-outs of alternating polarity separated by phase blips of 1/FOV; slice and
read spoilers stretched to the TR. Every ADC block sets ``LIN``, ``SLC``, ``AVG`` and ``REV`` (1 on lines
read backwards, whose samples run from kx = (nx/2 - 1)/FOV down to -nx/2/FOV). TE is the time to the
centre sample of line ny/2 (ky = 0). The dwell time is kept on the RF raster so that the backward
lines' windows land on it too.
"""

from __future__ import annotations

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
    quantise,
    require_at_least,
    resolve,
    selective_pulse,
)
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


def epi_2d(profile: SystemProfile, params: EpiParams | None = None, **overrides: Any) -> Sequence:
    """Build the sequence (``overrides`` replace fields of ``params``). Raises
    :class:`~scanctl.sequence.builders.common.ParameterError` when TE or TR is below its minimum (the
    message names it) or the FOV, bandwidth or slice cannot be met within the gradient limits."""
    p = resolve(EpiParams, params, overrides)
    system = System.from_profile(profile)
    nx, ny = p.matrix
    ro = readout(system, num_samples=nx, dwell_s=dwell_time(system, p, reversible=True), fov_m=p.fov_m)
    assert ro.adc_reversed is not None  # the dwell is on the RF raster
    gx_rev = ro.grad.scaled(-1.0)
    rf, gz = selective_pulse(system, p, p.flip_angle_deg, use="e")

    lobes = [("x", -ro.grad.area / 2), ("y", -(ny // 2) / p.fov_m), ("z", rephase(gz))]
    d_pre = common_duration(system, lobes)
    pre = [trapezoid(system, ch, area=a, duration_s=d_pre) for ch, a in lobes]
    blip = trapezoid(system, "y", area=1.0 / p.fov_m)
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
    tr = quantise(system, "tr_s", p.tr_s)
    shot = b_exc + b_pre + fill + ny * b_ro + (ny - 1) * b_blip
    require_at_least("tr_s", tr, shot + b_sp, system, note=f" at TE {te * 1e3:.4g} ms", requested_s=p.tr_s)

    b = SequenceBuilder(system)
    for avg in range(-1, p.averages):  # -1: dummy shots without ADC
        for _ in range(p.dummy_scans) if avg < 0 else range(1):
            b.add_block(rf, gz)
            b.add_block(*pre)
            if fill > 1e-9:
                b.add_block(min_duration_s=fill)
            for j in range(ny):
                reverse = j % 2 == 1
                grad, window = (gx_rev, ro.adc_reversed) if reverse else (ro.grad, ro.adc)
                if avg < 0:
                    b.add_block(grad, min_duration_s=b_ro)
                else:
                    b.add_block(grad, window, Label("LIN", j), Label("SLC", 0), Label("AVG", avg),
                                Label("REV", int(reverse)), min_duration_s=b_ro)
                if j + 1 < ny:
                    b.add_block(blip)
            b.add_block(*sp, min_duration_s=tr - shot)
    return b.build(definitions(NAME, p, te, tr))
