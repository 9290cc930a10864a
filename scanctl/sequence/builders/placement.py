"""Where a built-in sequence images (docs/geometry.md, docs/protocol.md#geometry): the geometry parameters
(:class:`Geometry`: the slice stack's centre, orientation, slice count, gap and order, and the patient's
position) and what the builders make of them (:class:`Placement`): the rotation of the logical gradients,
each slice's RF frequency and phase offsets, the ADC offsets that shift the field of view in the plane, and
the check against the gradient system's linear region.

Every problem is a :class:`~scanctl.sequence.builders.common.ParameterError` naming the key
(``geometry.…``, ``patient.patient_position`` or the sequence parameter).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from scanctl.config.profile import SystemProfile
from scanctl.sequence.build import ADC, RF, Rotation, SequenceBuilder, System, Trap
from scanctl.sequence.builders.common import ParameterError, _ParamReader
from scanctl.sequence.geometry import (
    BASE_ORIENTATIONS,
    PATIENT_POSITIONS,
    SLICE_ORDERS,
    FloatArray,
    GeometryError,
    Orientation,
    SliceStack,
)

#: The keys of a protocol's ``[geometry]`` table (``patient_position`` is the ``[patient]`` table's).
GEOMETRY_KEYS = ("position_mm", "orientation", "normal", "inplane_rotation_deg", "slices", "slice_gap_mm",
                 "slice_order")
#: The largest slice count of a stack.
MAX_SLICES = 128


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """Where to image, in the patient's coordinates (DICOM LPS, mm: +x left, +y posterior, +z head).

    ``position_mm`` is the centre of the slice stack (or slab) from the isocentre; the orientation is a base
    one (``orientation``: transverse, sagittal, coronal; default transverse) or an oblique ``normal`` (the
    slice direction, any length) turned by ``inplane_rotation_deg`` about it. ``slices`` parallel slices
    ``slice_gap_mm`` apart (edge to edge, >= 0), excited in ``slice_order``. ``patient_position`` is DICOM's
    Patient Position (HFS, FFS, HFP, FFP): it maps patient into scanner coordinates.
    Raises :class:`ParameterError` naming the key."""

    position_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: str | None = None
    normal: tuple[float, float, float] | None = None
    inplane_rotation_deg: float = 0.0
    slices: int = 1
    slice_gap_mm: float = 0.0
    slice_order: str = "interleaved"
    patient_position: str = "HFS"

    def __post_init__(self) -> None:
        r = _ParamReader()
        object.__setattr__(self, "position_mm", _vector(r, self.position_mm, "geometry.position_mm", 1000.0))
        if self.normal is not None:
            object.__setattr__(self, "normal", _vector(r, self.normal, "geometry.normal", 1e6))
            if self.orientation is not None:
                raise ParameterError("geometry.normal", "give orientation or normal, not both")
        if self.orientation is not None and self.orientation not in BASE_ORIENTATIONS:
            raise ParameterError("geometry.orientation", f"unknown {self.orientation!r} (known: "
                                 f"{', '.join(BASE_ORIENTATIONS)}; an oblique slice: normal = [x, y, z])")
        object.__setattr__(self, "inplane_rotation_deg",
                           r.check_number(self.inplane_rotation_deg, "geometry.inplane_rotation_deg", -360.0, 360.0))
        object.__setattr__(self, "slices", r.check_integer(self.slices, "geometry.slices", 1, MAX_SLICES))
        gap = r.check_number(self.slice_gap_mm, "geometry.slice_gap_mm", -1000.0, 1000.0)
        if gap < 0 and self.slices > 1:
            raise ParameterError("geometry.slice_gap_mm", f"{gap:g} mm makes the slices overlap (a gap must be >= 0)")
        object.__setattr__(self, "slice_gap_mm", gap)
        if self.slice_order not in SLICE_ORDERS:
            raise ParameterError("geometry.slice_order", f"unknown {self.slice_order!r} (known: "
                                                         f"{', '.join(SLICE_ORDERS)})")
        if self.patient_position not in PATIENT_POSITIONS:
            raise ParameterError("patient.patient_position", f"unknown {self.patient_position!r} (known: "
                                                              f"{', '.join(PATIENT_POSITIONS)})")
        self.orientation_of()  # a zero normal is refused here

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], patient_position: str = "HFS") -> Geometry:
        """The geometry of a protocol's ``[geometry]`` table. Raises :class:`ParameterError`."""
        unknown = sorted(set(values) - set(GEOMETRY_KEYS))
        if unknown:
            raise ParameterError(f"geometry.{unknown[0]}", f"unknown key (known: {', '.join(sorted(GEOMETRY_KEYS))})")
        for key in ("orientation", "slice_order"):
            if key in values and not isinstance(values[key], str):
                raise ParameterError(f"geometry.{key}", f"must be a string, got {values[key]!r}")
        if not isinstance(patient_position, str):
            raise ParameterError("patient.patient_position", f"must be a string, got {patient_position!r}")
        return cls(**values, patient_position=patient_position)

    def orientation_of(self) -> Orientation:
        """The slice orientation (patient coordinates)."""
        try:
            if self.normal is not None:
                return Orientation.from_normal(self.normal, self.inplane_rotation_deg)
            base = Orientation.named(self.orientation or "transverse")
            if self.inplane_rotation_deg:
                return Orientation.from_normal(base.slice, self.inplane_rotation_deg)
            return base
        except GeometryError as exc:
            raise ParameterError("geometry.normal", str(exc).split(": ", 1)[-1]) from exc

    def stack(self, thickness_m: float, orientation: Orientation | None = None) -> SliceStack:
        """The slice stack (or, with ``slices`` 1, the slab) of slices ``thickness_m`` thick."""
        return SliceStack(centre_m=np.array(self.position_mm) * 1e-3, orientation=orientation or self.orientation_of(),
                          count=self.slices, thickness_m=thickness_m, gap_m=self.slice_gap_mm * 1e-3,
                          order=self.slice_order)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as a protocol gives it (orientation resolved to its read/phase/slice directions)."""
        o = self.orientation_of()
        return {"position_mm": list(self.position_mm), "orientation": self.orientation,
                "normal": None if self.normal is None else list(self.normal),
                "inplane_rotation_deg": self.inplane_rotation_deg, "slices": self.slices,
                "slice_gap_mm": self.slice_gap_mm, "slice_order": self.slice_order,
                "patient_position": self.patient_position,
                "read_dir": o.read.tolist(), "phase_dir": o.phase.tolist(), "slice_dir": o.slice.tolist()}


def _vector(r: _ParamReader, value: Any, key: str, bound: float) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ParameterError(key, f"must be a list of three numbers [x, y, z], got {value!r}")
    x, y, z = (r.check_number(v, f"{key}[{i}]", -bound, bound) for i, v in enumerate(value))
    return x, y, z


@dataclass(frozen=True)
class Placement:
    """A slice stack as a sequence plays it: ``rotation`` (scanner <- logical), its :class:`Rotation` event
    (None at the identity: no ``ROTATIONS`` extension), and each slice's logical offset (read, phase, slice;
    m) in position order. SLC labels are ``slc_base`` + the position index."""

    stack: SliceStack
    patient_position: str
    rotation: FloatArray
    event: Rotation | None
    offsets_m: FloatArray
    slc_base: int = 0

    @property
    def count(self) -> int:
        return self.stack.count

    def order(self) -> list[int]:
        """The slices' position indices in the order they are excited."""
        return self.stack.acquisition_order()

    def rf(self, rf: RF, select: Trap, index: int) -> RF:
        """``rf`` moved onto slice ``index``: frequency offset = slice-select amplitude x slice offset, phase
        offset -2 pi f (pulse centre from the pulse start), so the pulse's phase at its centre is unchanged."""
        freq = select.amplitude_hz_per_m * float(self.offsets_m[index, 2])
        if freq == 0.0:
            return rf
        return dataclasses.replace(rf, freq_hz=freq, phase_rad=rf.phase_rad - 2 * math.pi * freq * rf.center_s)

    def adc(self, adc: ADC, read_amplitude_hz_per_m: float, centre_sample: float, index: int,
            ky: float = 0.0, kz: float = 0.0) -> ADC:
        """``adc`` with the field of view's centre moved to slice ``index``'s centre: frequency offset = read
        amplitude x read offset, phase offset -2 pi f t_centre (the k-space centre sample's time from the
        window's start) + 2 pi (ky x phase offset + kz x slice offset) (ky, kz in 1/m at this read-out)."""
        d = self.offsets_m[index]
        freq = read_amplitude_hz_per_m * float(d[0])
        shift = 2 * math.pi * (ky * float(d[1]) + kz * float(d[2]))
        if freq == 0.0 and shift == 0.0:
            return adc
        t_centre = (centre_sample + 0.5) * adc.dwell_s
        return dataclasses.replace(adc, freq_hz=freq, phase_rad=adc.phase_rad - 2 * math.pi * freq * t_centre + shift)

    def begin(self, b: SequenceBuilder) -> None:
        """Let the following blocks play in this placement's orientation."""
        b.rotation = self.event


def place(profile: SystemProfile, geometry: Geometry | None, thickness_m: float, fov_read_m: float,
          fov_phase_m: float, *, orientation: Orientation | None = None, slc_base: int = 0,
          slab: bool = False) -> Placement:
    """The placement of ``geometry`` (default: one transverse slice at the isocentre) with slices
    ``thickness_m`` thick and the in-plane FOV given; ``orientation`` overrides the geometry's (the
    localizer's planes). Raises :class:`ParameterError` when any corner of any slice lies outside the gradient
    system's linear region (the profile's ``gradient.fov_m``), naming ``geometry.position_mm`` if the stack
    would fit at the isocentre, else ``fov_m``; ``slab``: the sequence images one slab (``geometry.slices``
    must be 1)."""
    g = geometry or Geometry()
    if slab and g.slices != 1:
        raise ParameterError("geometry.slices", f"{g.slices}: a 3D sequence images one slab (slices = 1)")
    stack = g.stack(thickness_m, orientation)
    check_extent(profile, stack, fov_read_m, fov_phase_m)
    r = stack.orientation.in_scanner(g.patient_position)
    event = None if np.allclose(r, np.eye(3), atol=1e-12) else Rotation(tuple(
        float(v) for v in stack.orientation.quaternion(g.patient_position)))  # type: ignore[arg-type]
    return Placement(stack, g.patient_position, r, event, stack.logical_offsets_m(g.patient_position), slc_base)


def check_extent(profile: SystemProfile, stack: SliceStack, fov_read_m: float, fov_phase_m: float) -> None:
    """:class:`ParameterError` if a corner of the stack's boxes lies outside the linear region's sphere."""
    radius = profile.gradient.fov_m / 2
    corners = stack.extent_corners_m(fov_read_m, fov_phase_m)
    dist = np.linalg.norm(corners, axis=1)
    worst = int(np.argmax(dist))
    if dist[worst] <= radius * (1 + 1e-9):
        return
    centred = dataclasses.replace(stack, centre_m=np.zeros(3))
    fits_centred = np.linalg.norm(centred.extent_corners_m(fov_read_m, fov_phase_m), axis=1).max() <= radius
    key = "geometry.position_mm" if fits_centred else "fov_m"
    corner = ", ".join(f"{v * 1e3:.1f}" for v in corners[worst])
    raise ParameterError(key, f"the imaged volume reaches ({corner}) mm (patient LPS), {dist[worst] * 1e3:.1f} mm "
                              f"from the isocentre: outside the gradient system's linear region, a sphere of "
                              f"{profile.gradient.fov_m * 1e3:g} mm diameter (gradient.fov_m of the system profile)"
                              + ("" if fits_centred else "; reduce the FOV, slices or gap"))


def logical_system(system: System, *placements: Placement) -> System:
    """``system``'s limits for logical gradients played through every placement's rotation."""
    return system.for_rotations(*(p.rotation for p in placements))


def geometry_definitions(placements: list[Placement], thickness_m: float) -> dict[str, object]:
    """Definitions that let a reader of the file find the slices without the protocol (none for the default,
    one transverse slice at the isocentre, so such files are unchanged): ``SliceThickness`` (m) and
    ``SlicePositions``: each slice's centre (x y z, m, patient coordinates) in SLC order, and
    ``PatientPosition``."""
    default = (len(placements) == 1 and placements[0].count == 1 and placements[0].event is None
               and not np.any(placements[0].stack.centre_m) and placements[0].patient_position == "HFS")
    if default:
        return {}
    centres = np.concatenate([p.stack.centres_m() for p in placements])
    return {"SliceThickness": thickness_m, "SlicePositions": [float(v) for v in centres.ravel()],
            "PatientPosition": placements[0].patient_position}
