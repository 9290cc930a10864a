"""3D RF-spoiled gradient echo, Cartesian: slab-selective excitation, phase encoding along the phase axis and
partition encoding along the slab (slice) axis.

Blocks per TR as ``gre_2d`` (the same code, :func:`~scanctl.sequence.builders.gre_2d.spoiled_gre`): slab-
selective sinc excitation; read prephaser, phase encoding, slab rephaser with the partition encoding; TE fill;
read-out with ADC (``LIN``, ``PAR``, ``SLC`` = 0, ``AVG``); read spoiler, phase rewinder and partition
rewinder with the slab spoiler, stretched to the TR. The partition loop is outside the line loop. Partition
``q`` is at kz = (q - nz/2) / slab thickness: the slab is the FOV along the third axis (``FOV`` definition:
read, phase, slab), each partition ``slab / nz`` thick. RF spoiling: quadratic phase, 117° increment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scanctl.config.profile import SystemProfile
from scanctl.sequence.builders.common import param, resolve
from scanctl.sequence.builders.gre_2d import GreParams, spoiled_gre
from scanctl.sequence.builders.placement import Geometry, place
from scanctl.sequence.model import Sequence

NAME = "gre_3d"


@dataclass(frozen=True, kw_only=True)
class Gre3dParams(GreParams):
    """Parameters of :func:`gre_3d`."""

    # three sizes where the 2D types take two (the checks are the "matrix3" kind's)
    matrix: tuple[int, int, int] = param(  # type: ignore[assignment]
        (64, 64, 32), unit="samples, lines, partitions", low=2, high=256, kind="matrix3",
        doc="[nx, ny, nz]: read-out samples, phase-encoding lines and partitions, all even")
    slice_thickness_m: float = param(0.128, unit="m", low=0.005, high=0.4,
                                     doc="slab thickness: the FOV along the partition axis (partitions slab / nz)")
    tr_s: float = param(0.006, unit="s", low=0.001, high=20.0, doc="repetition time")
    te_s: float = param(0.0025, unit="s", low=0.0005, high=2.0, doc="echo time")
    flip_angle_deg: float = param(10.0, unit="degree", low=1.0, high=90.0, doc="excitation flip angle")
    time_bw_product: float = param(8.0, low=1.0, high=20.0,
                                   doc="time-bandwidth product of the slab-selective sinc pulse")
    DEFAULT_BANDWIDTH = 500.0


def gre_3d(profile: SystemProfile, params: Gre3dParams | None = None, *, geometry: Geometry | None = None,
           **overrides: Any) -> Sequence:
    """Build the sequence (``overrides`` replace fields of ``params``) for the slab ``geometry`` places
    (default: transverse, at the isocentre; ``geometry.slices`` must be 1). Raises
    :class:`~scanctl.sequence.builders.common.ParameterError` as ``gre_2d``."""
    p = resolve(Gre3dParams, params, overrides)
    slab = place(profile, geometry, p.slice_thickness_m, p.fov_m, p.fov_phase, slab=True)
    return spoiled_gre(profile, p, [slab], name=NAME, partitions=p.matrix[2])
