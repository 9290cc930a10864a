"""2D turbo spin echo (fast spin echo, RARE), Cartesian, CPMG.

Per shot (one TR): slice-selective 90° excitation (phase 90°); read prephaser and slice rephaser; fill
to half an echo spacing; then ``etl`` times: crusher (with the previous echo's phase rewinder),
slice-selective refocusing pulse (phase 0°), crusher with the phase encoding, fill, read-out with ADC
(``LIN``, ``SLC``, ``AVG`` and ``SEG`` = echo index set), fill; finally the last rewinder with a crusher and
the read and slice spoilers, stretched to TR / slices (one echo train per slice of the geometry and TR).
Every refocusing pulse sits midway between its echoes, so spin echo and gradient echo coincide at each
read-out's k-space centre sample.

``te_s`` is the effective echo time: that of the echo which acquires ky = 0. With ``linear`` ordering
echo ``e`` of shot ``s`` acquires line ``e * shots + s`` (ky = 0 in echo ``etl / 2``); with ``centric``
ordering the lines sorted by |ky| are dealt out echo by echo (ky = 0 in the first echo). The echo
spacing is ``te_s / (index of that echo + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.config.profile import SystemProfile
from scanctl.sequence.build import Label, SequenceBuilder, System, common_duration, readout, trapezoid
from scanctl.sequence.build import slice_rephase_area as rephase
from scanctl.sequence.builders.common import (
    READ_SPOILER_EXTENT,
    SLICE_SPOILER_CYCLES,
    ParameterError,
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

NAME = "tse_2d"


@dataclass(frozen=True, kw_only=True)
class TseParams(Params):
    """Parameters of :func:`tse_2d`."""

    tr_s: float = param(2.0, unit="s", low=0.001, high=20.0, doc="repetition time (one echo train per TR)")
    te_s: float = param(0.08, unit="s", low=0.0005, high=2.0,
                        doc="effective echo time: that of the echo acquiring ky = 0")
    flip_angle_deg: float = param(90.0, unit="degree", low=1.0, high=180.0, doc="excitation flip angle")
    refocusing_angle_deg: float = param(180.0, unit="degree", low=1.0, high=180.0,
                                        doc="refocusing flip angle")
    etl: int = param(8, low=1, high=256, kind="integer", doc="echo train length; must divide ny")
    ordering: str = param("linear", kind="choice", choices=("linear", "centric"),
                          doc="phase-encoding order: linear or centric")
    DEFAULT_BANDWIDTH = 500.0

    def __post_init__(self) -> None:
        super().__post_init__()
        ny = self.matrix[1]
        if ny % self.etl:
            raise ParameterError("etl", f"{self.etl} does not divide the {ny} phase-encoding lines")


def line_order(ny: int, etl: int, ordering: str) -> np.ndarray:
    """``order[shot, echo]``: the phase-encoding line (0..ny-1, ky = line - ny/2) of each echo."""
    shots = ny // etl
    if ordering == "linear":
        return np.arange(ny).reshape(etl, shots).T.copy()
    ky = np.arange(ny) - ny // 2
    by_distance = np.lexsort((ky > 0, np.abs(ky)))  # 0, -1, 1, -2, 2, ...
    return by_distance.reshape(etl, shots).T.copy()


def tse_2d(profile: SystemProfile, params: TseParams | None = None, *, geometry: Geometry | None = None,
           **overrides: Any) -> Sequence:
    """Build the sequence (``overrides`` replace fields of ``params``) for the slices of ``geometry`` (default:
    one transverse slice at the isocentre). Raises :class:`~scanctl.sequence.builders.common.ParameterError`
    when TE or TR is below its minimum (the message names it) or the FOV, bandwidth, slice or geometry cannot
    be met within the gradient limits and the gradient system's linear region."""
    p = resolve(TseParams, params, overrides)
    pl = place(profile, geometry, p.slice_thickness_m, p.fov_m, p.fov_phase)
    system = logical_system(System.from_profile(profile), pl)
    nx, ny = p.matrix
    ro = readout(system, num_samples=nx, dwell_s=dwell_time(system, p), fov_m=p.fov_m)
    rf_ex, gz_ex = selective_pulse(system, p, p.flip_angle_deg, use="e", phase_rad=math.pi / 2)
    rf_ref, gz_ref = selective_pulse(system, p, p.refocusing_angle_deg, use="r")

    d_pre = common_duration(system, [("x", ro.grad.area / 2), ("z", rephase(gz_ex))])
    gx_pre = trapezoid(system, "x", area=ro.grad.area / 2, duration_s=d_pre)
    gz_reph = trapezoid(system, "z", area=rephase(gz_ex), duration_s=d_pre)
    ky = phase_areas(ny, p.fov_phase)
    crush_area = SLICE_SPOILER_CYCLES / p.slice_thickness_m
    d_cr = common_duration(system, [("z", crush_area), ("y", float(abs(ky).max()))])
    gz_cr = trapezoid(system, "z", area=crush_area, duration_s=d_cr)
    gy_pe = [trapezoid(system, "y", area=float(a), duration_s=d_cr) for a in ky]
    gy_rew = [g.scaled(-1.0) for g in gy_pe]
    spoil = [("x", READ_SPOILER_EXTENT * nx / p.fov_m), ("z", crush_area)]
    d_sp = common_duration(system, spoil)
    gx_sp = trapezoid(system, "x", area=spoil[0][1], duration_s=d_sp)
    gz_sp = trapezoid(system, "z", area=crush_area, duration_s=d_sp)

    order = line_order(ny, p.etl, p.ordering)
    centre_echo = int(np.argwhere(order == ny // 2)[0, 1])
    b_exc = system.block_duration(rf_ex, gz_ex)
    b_pre = system.block_duration(gx_pre, gz_reph)
    b_cr = system.block_duration(gz_cr, gy_pe[0])
    b_ref = system.block_duration(rf_ref, gz_ref)
    b_ro = system.block_duration(ro.grad, ro.adc)
    b_sp = system.block_duration(gx_sp, gz_sp)
    t_ref = rf_ref.centre_in_block_s
    first = (b_exc - rf_ex.centre_in_block_s) + b_pre + b_cr + t_ref  # excitation to the first refocusing
    after = (b_ref - t_ref) + b_cr + ro.centre_s  # refocusing centre to its echo
    before = (b_ro - ro.centre_s) + b_cr + t_ref  # echo to the next refocusing centre
    esp_min = 2 * max(first, after, before)
    n_te = centre_echo + 1
    q = 2 * system.rasters.block_duration_s
    esp = quantise(system, "echo spacing", p.te_s / n_te, steps=2)
    te = n_te * esp
    require_at_least("te_s", te, n_te * math.ceil(esp_min / q - 1e-6) * q, system, steps=2 * n_te,
                     note=f" (echo {n_te} of the train acquires ky = 0)", requested_s=p.te_s)
    fill0, fill_a, fill_b = esp / 2 - first, esp / 2 - after, esp / 2 - before
    train = b_exc + b_pre + fill0 + p.etl * (b_cr + b_ref + b_cr + fill_a + b_ro + fill_b) + b_cr
    tr = repetition_time(system, p, te, train + b_sp, pl.count, note=f", ETL {p.etl}")

    b = SequenceBuilder(system)
    pl.begin(b)
    pulses = [(pl.rf(rf_ex, gz_ex, s), pl.rf(rf_ref, gz_ref, s)) for s in range(pl.count)]
    shots = ny // p.etl
    zero = ny // 2
    for avg in range(-1, p.averages):  # -1: dummy echo trains, phase encoding off, no ADC
        for shot in range(p.dummy_scans) if avg < 0 else range(shots):
            for s in pl.order():
                b.add_block(pulses[s][0], gz_ex)
                b.add_block(gx_pre, gz_reph)
                if fill0 > 1e-9:
                    b.add_block(min_duration_s=fill0)
                previous = -1
                for echo in range(p.etl):
                    line = zero if avg < 0 else int(order[shot, echo])
                    b.add_block(gz_cr, *([gy_rew[previous]] if previous >= 0 else []))
                    b.add_block(pulses[s][1], gz_ref)
                    b.add_block(gz_cr, gy_pe[line])
                    if fill_a > 1e-9:
                        b.add_block(min_duration_s=fill_a)
                    if avg < 0:
                        b.add_block(ro.grad)
                    else:
                        window = pl.adc(ro.adc, ro.grad.amplitude_hz_per_m, nx // 2, s, ky=float(ky[line]))
                        b.add_block(ro.grad, window, Label("LIN", line), Label("SLC", s), Label("AVG", avg),
                                    Label("SEG", echo))
                    if fill_b > 1e-9:
                        b.add_block(min_duration_s=fill_b)
                    previous = line
                b.add_block(gz_cr, gy_rew[previous])
                b.add_block(gx_sp, gz_sp, min_duration_s=tr / pl.count - train)
    return b.build({**definitions(NAME, p, te, tr, ETL=p.etl), **geometry_definitions([pl], p.slice_thickness_m)})
