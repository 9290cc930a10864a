"""Built-in sequence builders, by protocol type name (see docs/protocol.md).

Each builder takes a :class:`~scanctl.config.profile.SystemProfile` and its parameters and returns a
:class:`~scanctl.sequence.model.Sequence` that passes :func:`scanctl.sequence.checks.check` against
that profile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scanctl.config.profile import SystemProfile
from scanctl.sequence.builders.common import ParameterError, Params
from scanctl.sequence.builders.epi_2d import EpiParams, epi_2d
from scanctl.sequence.builders.gre_2d import GreParams, gre_2d
from scanctl.sequence.builders.gre_3d import Gre3dParams, gre_3d
from scanctl.sequence.builders.localizer import DEFAULT_GEOMETRY, LocalizerParams, localizer, localizer_stacks
from scanctl.sequence.builders.placement import Geometry
from scanctl.sequence.builders.se_2d import SeParams, se_2d
from scanctl.sequence.builders.tse_2d import TseParams, tse_2d
from scanctl.sequence.geometry import SliceStack
from scanctl.sequence.model import Sequence

__all__ = ["BUILDERS", "Builder", "Geometry", "ParameterError", "Params", "build"]


@dataclass(frozen=True)
class Builder:
    """A sequence type: its parameter class and the function that builds it
    (``build(profile, params, geometry=None)``)."""

    name: str
    params: type[Params]
    build: Callable[..., Sequence]
    summary: str
    #: The slice stacks the sequence images for given parameters and geometry, in SLC order.
    stacks: Callable[[Any, Geometry | None], list[SliceStack]] | None = None
    #: The geometry the builder takes when given none.
    default_geometry: Geometry = Geometry()

    def geometry(self, geometry: Geometry | None) -> Geometry:
        """The geometry the builder images with: ``geometry`` or its default."""
        return geometry if geometry is not None else self.default_geometry

    def slice_stacks(self, params: Params, geometry: Geometry | None) -> list[SliceStack]:
        """The slice stacks (patient coordinates) in SLC order. Raises :class:`ParameterError`."""
        if self.stacks is not None:
            return self.stacks(params, geometry)
        return [self.geometry(geometry).stack(params.slice_thickness_m)]


BUILDERS: dict[str, Builder] = {
    b.name: b
    for b in (
        Builder("gre_2d", GreParams, gre_2d, "2D RF-spoiled gradient echo"),
        Builder("se_2d", SeParams, se_2d, "2D spin echo"),
        Builder("tse_2d", TseParams, tse_2d, "2D turbo spin echo"),
        Builder("epi_2d", EpiParams, epi_2d, "2D single-shot blipped gradient-echo EPI"),
        Builder("gre_3d", Gre3dParams, gre_3d, "3D RF-spoiled gradient echo, slab-selective"),
        Builder("localizer", LocalizerParams, localizer, "three-plane localizer (fast low-resolution GRE)",
                localizer_stacks, DEFAULT_GEOMETRY),
    )
}


def build(type_name: str, profile: SystemProfile, geometry: Geometry | None = None, **params: Any) -> Sequence:
    """Build the sequence ``type_name`` with ``params`` where ``geometry`` says (default: one transverse slice
    at the isocentre). Raises :class:`ParameterError` (a :class:`~scanctl.errors.ConfigError`)."""
    builder = BUILDERS.get(type_name)
    if builder is None:
        raise ParameterError("type", f"unknown sequence type {type_name!r} (known: {', '.join(BUILDERS)})")
    return builder.build(profile, builder.params.from_mapping(params), geometry=geometry)
