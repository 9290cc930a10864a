"""Three-plane localizer: a fast, low-resolution RF-spoiled gradient echo of a few slices in each of the
transverse, sagittal and coronal planes, in one sequence.

The planes play one after the other, each with its own ``ROTATIONS`` quaternion (none for the transverse
plane, at the identity for a head-first supine patient) and all of its slices in every TR (as ``gre_2d``).
The geometry's ``position_mm`` is the centre of all three stacks; ``slices``, ``slice_gap_mm`` and
``slice_order`` apply to each plane; ``orientation`` and ``normal`` are refused (the planes are fixed).
``SLC`` numbers the slices plane by plane, each in position order along its plane's slice direction:
transverse ``0 .. n-1`` (foot to head), sagittal ``n .. 2n-1`` (left to right: the sagittal slice
direction is -x), coronal ``2n .. 3n-1`` (anterior to posterior), ``n`` = ``slices``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scanctl.config.profile import SystemProfile
from scanctl.sequence.builders.common import ParameterError, param, resolve
from scanctl.sequence.builders.gre_2d import GreParams, spoiled_gre
from scanctl.sequence.builders.placement import Geometry, place
from scanctl.sequence.geometry import Orientation, SliceStack
from scanctl.sequence.model import Sequence

NAME = "localizer"
#: The planes, in the order they are played and numbered.
PLANES = ("transverse", "sagittal", "coronal")
#: The fraction of the slew-rate limit the localizer's gradients ramp at: every plane puts the slice axis on
#: another physical axis, and the one with the lowest stimulation threshold (y, in the shipped profiles' PNS
#: model) would otherwise reach 107 % of it with the coronal plane's slice-select ramps (PNS limit: 80 %).
SLEW_FRACTION = 0.5
#: The geometry when none is given: three slices per plane, 20 mm apart (centre to centre at 5 mm thickness).
DEFAULT_GEOMETRY = Geometry(slices=3, slice_gap_mm=15.0)


@dataclass(frozen=True, kw_only=True)
class LocalizerParams(GreParams):
    """Parameters of :func:`localizer`."""

    matrix: tuple[int, int] = param((64, 64), unit="samples, lines", low=8, high=256, kind="matrix",
                                    doc="[nx, ny]: read-out samples and phase-encoding lines, both even")
    tr_s: float = param(0.021, unit="s", low=0.001, high=20.0, doc="repetition time (all slices of a plane)")
    te_s: float = param(0.003, unit="s", low=0.0005, high=2.0, doc="echo time")
    flip_angle_deg: float = param(20.0, unit="degree", low=1.0, high=90.0, doc="excitation flip angle")
    DEFAULT_BANDWIDTH = 500.0


def _geometry(geometry: Geometry | None) -> Geometry:
    g = geometry or DEFAULT_GEOMETRY
    if g.orientation is not None or g.normal is not None:
        raise ParameterError("geometry.orientation" if g.orientation is not None else "geometry.normal",
                             "the localizer images three fixed planes (transverse, sagittal, coronal): give no "
                             "orientation or normal")
    if g.inplane_rotation_deg:
        raise ParameterError("geometry.inplane_rotation_deg", "the localizer's planes are not rotated in-plane")
    return g


def localizer_stacks(params: LocalizerParams, geometry: Geometry | None) -> list[SliceStack]:
    """The three stacks (patient coordinates), in SLC order."""
    g = _geometry(geometry)
    return [g.stack(params.slice_thickness_m, Orientation.named(plane)) for plane in PLANES]


def localizer(profile: SystemProfile, params: LocalizerParams | None = None, *, geometry: Geometry | None = None,
              **overrides: Any) -> Sequence:
    """Build the localizer (``overrides`` replace fields of ``params``); ``geometry``: the stacks' centre, slice
    count, gap and order (default :data:`DEFAULT_GEOMETRY`). Raises
    :class:`~scanctl.sequence.builders.common.ParameterError` as ``gre_2d``, and for an orientation."""
    p = resolve(LocalizerParams, params, overrides)
    g = _geometry(geometry)
    placements = [place(profile, g, p.slice_thickness_m, p.fov_m, p.fov_phase, orientation=Orientation.named(plane),
                        slc_base=i * g.slices) for i, plane in enumerate(PLANES)]
    return spoiled_gre(profile, p, placements, name=NAME, slew_fraction=SLEW_FRACTION)
