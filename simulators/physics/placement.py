"""Where the phantom sits for a scan: the patient position, and a grid laid on the plane a scan selects.

The Shepp–Logan phantom lives in patient coordinates (DICOM LPS, :func:`~.phantom.shepp_logan_at`); the
scanner sees it through the patient position (:data:`PATIENT_TO_SCANNER`, HFS the identity). A scan's
first selective RF pulse says where it looks (:func:`selection`): the slice-select gradient's direction is
the slice normal, the carrier offset over the gradient's strength the position along it
(``freq_offset = γ G·r``, Pulseq's convention), the pulse's bandwidth over the gradient's strength the
thickness. :func:`posed_phantom` then samples the 3D phantom on a grid in that plane's own axes (read,
phase, slice of the base orientation nearest the normal, docs/phantom.md), exactly (the ellipsoids are
analytic):

* a slice (thickness at most :data:`SLAB_3D_M`): a 2D slab through the plane (the phantom's map on the
  plane, uniform through the slab, as the 2D default);
* a slab thicker than that (3D imaging): a 3D grid through the slab and a margin either side, planes as
  thick as the in-plane voxels or 1/16 of the slab, whichever is thinner (:data:`MAX_SLAB_PLANES` at most).

* the slices of a multi-slice scan (:func:`stack_positions`: the same pulse at other carrier offsets):
  a stack of 2D slabs, one plane per slice and every plane between (:func:`stacked_phantom`).

Why the first pulse and its planes only: the simulation's work grows with the planes of a 3D grid (each is
a tissue class of its own), so a volume for every scan would slow the 2D scans several times; one plane in
the slice's own axes keeps a slice anywhere as fast as the 2D default, and a slab as fast as its planes
allow. Before the first pulse every spin is at equilibrium, so the phantom can be chosen then without
changing anything. Later pulses that select other planes (a three-plane localizer) fall outside the grid:
:func:`selections` finds them and the caller says so (docs/phantom.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.errors import ConfigError
from scanctl.hw.program import GradientProgram, RFProgram

from .phantom import DEFAULT_SLAB_M, Phantom, shepp_logan, shepp_logan_at

FloatArray = npt.NDArray[np.float64]

#: (x, y, z)_scanner = M @ (x, y, z)_patient, per DICOM patient position (docs: geometry conventions).
PATIENT_TO_SCANNER: dict[str, FloatArray] = {
    "HFS": np.eye(3),
    "FFS": np.diag([-1.0, 1.0, -1.0]),
    "HFP": np.diag([-1.0, -1.0, 1.0]),
    "FFP": np.diag([1.0, -1.0, -1.0]),
}
#: Base orientations (patient coordinates): slice normal -> (read, phase) directions.
BASES: tuple[tuple[FloatArray, FloatArray, FloatArray], ...] = (
    (np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),  # transverse
    (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])),  # sagittal
    (np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),  # coronal
)
#: The Shepp–Logan phantom's bounding box in patient coordinates, in units of half its field of view:
#: centre, half-sizes (the outer ellipsoid, shifted so its plane z = -0.25 is at z = 0).
OBJECT_BOX = ((0.0, 0.0, 0.25), (0.72, 0.95, 0.93))
#: A selection thicker than this is imaged as a 3D slab (m); thinner, as a 2D slice.
SLAB_3D_M = 0.015
#: Planes of a 3D slab grid at most (each plane multiplies the tissue classes).
MAX_SLAB_PLANES = 64
#: The pulses whose plane is the plane a scan images: excitations, and pulses of undefined use (files
#: before Pulseq 1.5). Refocusing, inversion, saturation and other pulses (e.g. a Bloch–Siegert pulse far
#: off resonance) do not move the phantom.
PLACING_USES = ("e", "u")
#: A pulse whose slab is thicker than this (m) is non-selective: it covers a whole head (a 3D scan's slab
#: is 0.2 m at most).
NON_SELECTIVE_M = 0.2
#: Planes per slab thickness at least (partitions are usually thinner than the in-plane voxels' pitch).
SLAB_PLANES_PER_THICKNESS = 16
#: Extra thickness either side of a 3D slab (fraction of it): the slab profile's transition bands.
SLAB_MARGIN = 0.25
#: Planes of a multi-slice stack at most (every plane between the slices is simulated too).
MAX_STACK_PLANES = 64
#: Isochromats through each slab of a stack (as through the 2D default's slab).
STACK_ISOCHROMATS = 32
#: Two selections are the same plane if their normals agree to this (cosine) and positions to this (m).
SAME_NORMAL = 1.0 - 1e-6
SAME_POSITION_M = 1e-4


@dataclass(frozen=True)
class Selection:
    """A plane an RF pulse selects: unit ``normal`` (scanner coordinates, along the slice-select gradient),
    ``position_m`` along it from the isocentre, ``thickness_m`` (the pulse's bandwidth over the gradient)."""

    normal: FloatArray
    position_m: float
    thickness_m: float
    #: The slice-select gradient's strength (Hz/m) and the pulse's shape (samples, peak |B1| in Hz): the
    #: same pulse played at another carrier offset selects another plane of the same stack.
    strength_hz_per_m: float = 0.0
    shape: tuple[int, float] = (0, 0.0)

    def same_plane(self, other: Selection) -> bool:
        """Whether ``other`` selects the same plane (normals of either sign)."""
        cos = float(np.dot(self.normal, other.normal))
        return abs(cos) >= SAME_NORMAL and abs(self.position_m - math.copysign(1.0, cos) * other.position_m) \
            <= SAME_POSITION_M


def patient_to_scanner(position: str) -> FloatArray:
    """The 3x3 matrix taking patient (LPS) to scanner coordinates for a DICOM patient position (HFS, FFS,
    HFP, FFP). Raises :class:`ConfigError` for another."""
    try:
        return PATIENT_TO_SCANNER[position.upper()].copy()
    except KeyError:
        raise ConfigError(f"patient position {position!r} is not one of {', '.join(PATIENT_TO_SCANNER)}") from None


def selections(gradient: GradientProgram, rf: RFProgram, *, thickness: bool = True) -> list[Selection]:
    """The plane each excitation of a segment selects, in order (:data:`PLACING_USES`); pulses played without
    a gradient or under one too weak to select less than a head (:data:`NON_SELECTIVE_M`: a shim's), or without
    B1, are left out. ``thickness=False`` skips the pulses' spectra (the thickness is
    then 0): enough to tell planes apart, at a fraction of the cost."""
    out = []
    for p in range(rf.n_pulses):
        sel = _selection(gradient, rf, p, thickness)
        if sel is not None:
            out.append(sel)
    return out


def _selection(gradient: GradientProgram, rf: RFProgram, p: int, thickness: bool) -> Selection | None:
    lo, hi = int(rf.offsets[p]), int(rf.offsets[p + 1])
    b1 = np.asarray(rf.b1_hz[lo:hi])
    if hi - lo < 2 or not np.any(b1) or chr(int(rf.use[p])) not in PLACING_USES:
        return None
    t = np.asarray(rf.t_s[lo:hi], np.float64)
    mag = np.abs(b1)
    peak = t[mag >= 0.999 * mag.max()]
    centre = 0.5 * (float(peak[0]) + float(peak[-1]))  # Pulseq's centre: where |B1| peaks
    g = np.array([float(np.interp(centre, ta, ga, left=0.0, right=0.0)) if np.size(ta) else 0.0
                  for ta, ga in zip(gradient.t_s, gradient.g_hz_per_m, strict=True)])
    strength = float(np.linalg.norm(g))
    if strength < 1.0:  # below 1 Hz/m (0.02 µT/m): no selection
        return None
    # A pulse's bandwidth is at least about 1 / its duration: if even that selects a slab wider than a
    # head (a hard pulse under a shim's small static gradient), the pulse excites everything.
    if 1.0 / (max(float(t[-1] - t[0]), 1e-9) * strength) > NON_SELECTIVE_M:
        return None
    normal = g / strength
    width = _bandwidth_hz(t, b1) / strength if thickness else 0.0
    if width > NON_SELECTIVE_M:
        return None
    return Selection(normal, float(rf.freq_hz[p]) / strength, width, strength, _shape(rf, p))


def _shape(rf: RFProgram, p: int) -> tuple[int, float]:
    lo, hi = int(rf.offsets[p]), int(rf.offsets[p + 1])
    return hi - lo, round(float(np.abs(rf.b1_hz[lo:hi]).max(initial=0.0)), 6)


def stack_positions(first: Selection, programs: list[RFProgram]) -> list[float]:
    """The planes (positions along ``first.normal``, m, sorted) that the pulses of ``programs`` of the same
    shape as ``first``'s select, assuming the same slice-select gradient (a multi-slice scan plays one
    pulse at the carrier offset of each slice): ``first.position_m`` and every other carrier offset over
    the gradient's strength, positions within :data:`SAME_POSITION_M` merged."""
    found = [first.position_m]
    for rf in programs:
        for p in range(rf.n_pulses):
            if _shape(rf, p) == first.shape:
                found.append(float(rf.freq_hz[p]) / first.strength_hz_per_m)
    out: list[float] = []
    for pos in sorted(found):
        if not out or pos - out[-1] > SAME_POSITION_M:
            out.append(pos)
    return out


def _bandwidth_hz(t: FloatArray, b1: npt.NDArray[np.complex128]) -> float:
    """The full width at half maximum of the pulse's spectrum (Hz): the excitation's bandwidth in the small-
    tip approximation, from the samples resampled on their smallest spacing and zero-padded 16x."""
    step = float(np.min(np.diff(t))) if t.size > 1 else 1e-6
    step = max(step, 1e-7)
    grid = np.arange(t[0], t[-1] + 0.5 * step, step)
    env = np.interp(grid, t, b1.real) + 1j * np.interp(grid, t, b1.imag)
    n = 1 << int(math.ceil(math.log2(16 * grid.size)))
    spectrum = np.abs(np.fft.fft(env, n))
    return float(np.count_nonzero(spectrum >= 0.5 * spectrum.max())) / (n * step)


def frame(sel: Selection, to_scanner: FloatArray) -> FloatArray:
    """The grid's axes for a selection, ``(3, 3)`` scanner coordinates, columns read, phase, slice: the base
    orientation (patient coordinates) whose normal is nearest ``sel.normal``, its read direction projected
    onto the plane; slice = the normal with the base's sign."""
    n_patient = to_scanner.T @ sel.normal
    normal, read, _ = max(BASES, key=lambda b: abs(float(np.dot(b[0], n_patient))))
    w = n_patient if float(np.dot(normal, n_patient)) >= 0 else -n_patient
    u = read - np.dot(read, w) * w
    u = u / np.linalg.norm(u)
    v = np.cross(w, u)
    return to_scanner @ np.column_stack((u, v, w))


def is_default(sel: Selection, to_scanner: FloatArray) -> bool:
    """Whether the selection is a transverse slice at the isocentre (within :data:`SAME_POSITION_M`) of an
    HFS patient, thin enough for a 2D slab: the 2D default phantom images it as it always has."""
    transverse = abs(float(sel.normal[2])) >= SAME_NORMAL
    return bool(np.array_equal(to_scanner, np.eye(3))) and transverse and abs(sel.position_m) <= SAME_POSITION_M \
        and sel.thickness_m <= SLAB_3D_M


def posed_phantom(sel: Selection, n: int, fov_m: float, b0_t: float, to_scanner: FloatArray) -> Phantom:
    """The Shepp–Logan phantom on a grid laid on the selected plane (module docstring): voxels of ``fov_m /
    n``, ``n`` per side or more where the object reaches beyond ``fov_m``, centred on the isocentre's
    projection; a 2D slab for a slice, a 3D grid for a slab thicker than :data:`SLAB_3D_M`. Raises
    :class:`ConfigError` for a non-positive size."""
    _check_size(n, fov_m)
    d = fov_m / n
    if sel.thickness_m <= SLAB_3D_M:
        w = np.zeros(1)
        voxel = (d, d, max(DEFAULT_SLAB_M, 2.0 * sel.thickness_m))
    else:
        span = sel.thickness_m * (1 + 2 * SLAB_MARGIN)
        pitch = min(d, sel.thickness_m / SLAB_PLANES_PER_THICKNESS)  # finer than the partitions may be
        planes = min(MAX_SLAB_PLANES, max(2, int(math.ceil(span / pitch))))
        dz = span / planes
        w = (np.arange(planes) - planes // 2) * dz
        voxel = (d, d, dz)
    return _sampled(sel, sel.position_m, w, voxel, n, fov_m, b0_t, to_scanner,
                    f"on the plane {np.round(sel.normal, 4).tolist()} at {sel.position_m * 1e3:.2f} mm")


def stacked_phantom(sel: Selection, positions: list[float], n: int, fov_m: float, b0_t: float,
                    to_scanner: FloatArray) -> Phantom | None:
    """The Shepp–Logan phantom on a stack of 2D slabs, one per plane of a multi-slice scan (``positions``
    along ``sel.normal``, m, evenly spaced; every plane between them too), each slab as thick as the
    spacing: the spin system resolves each with its isochromats (``SpinSystem(isochromats=...)``,
    :data:`STACK_ISOCHROMATS`). None when the positions are not on one even spacing, the slices are
    thicker than :data:`SLAB_3D_M`, or the stack would need more than :data:`MAX_STACK_PLANES` planes.
    Raises :class:`ConfigError` for a non-positive size."""
    _check_size(n, fov_m)
    pos = np.sort(np.asarray(positions, np.float64))
    if pos.size < 2 or sel.thickness_m > SLAB_3D_M:
        return None
    spacing = float(np.min(np.diff(pos)))
    steps = (pos - pos[0]) / spacing
    if np.abs(steps - np.round(steps)).max() > 1e-3 or round(float(steps[-1])) + 1 > MAX_STACK_PLANES:
        return None
    planes = round(float(steps[-1])) + 1
    # The grid's planes run up its own z (the frame's slice direction, +-normal); plane nz // 2 sits at
    # its origin: counted from the lowest position along the normal, or from the highest if z = -normal.
    up = float(np.dot(frame(sel, to_scanner)[:, 2], sel.normal)) >= 0
    centre = float(pos[0]) + (planes // 2 if up else planes - 1 - planes // 2) * spacing
    w = (np.arange(planes) - planes // 2) * spacing
    d = fov_m / n
    return _sampled(sel, centre, w, (d, d, spacing), n, fov_m, b0_t, to_scanner,
                    f"on {planes} slabs along {np.round(sel.normal, 4).tolist()} from {pos[0] * 1e3:.2f} to "
                    f"{pos[-1] * 1e3:.2f} mm")


def _check_size(n: int, fov_m: float) -> None:
    if n < 1 or not fov_m > 0:
        raise ConfigError(f"placement: the matrix and field of view must be positive, got {n}, {fov_m}")


def _sampled(sel: Selection, centre_m: float, w: FloatArray, voxel: tuple[float, float, float], n: int,
             fov_m: float, b0_t: float, to_scanner: FloatArray, where: str) -> Phantom:
    """The phantom sampled on the grid of ``sel``'s frame with planes ``w`` (m, along the frame's z, around
    the plane at ``centre_m`` along ``sel.normal``)."""
    axes = frame(sel, to_scanner)
    sign = 1.0 if float(np.dot(axes[:, 2], sel.normal)) >= 0 else -1.0
    origin = axes[:, 2] * (sign * centre_m)
    d = fov_m / n
    # In-plane: the lattice a scan of ``n`` over ``fov_m`` reconstructs ((i - n//2)·d), widened where the
    # object reaches beyond the field of view (the head's top in a sagittal or coronal plane), so that
    # what lies outside folds in as it would on a scanner rather than being cut off.
    u, v = (_lattice(n, d, _half_extent(axes[:, i], fov_m, to_scanner)) for i in (0, 1))
    ww, vv, uu = np.meshgrid(w, v, u, indexing="ij")
    local = np.stack((uu, vv, ww), axis=-1)
    patient = (local @ axes.T + origin) @ to_scanner  # scanner -> patient: to_scannerᵀ r, row by row
    pd, t1, t2 = shepp_logan_at(patient, fov_m=fov_m, b0_t=b0_t)
    if w.size == 1:
        pd, t1, t2 = pd[0], t1[0], t2[0]
    return Phantom(pd=pd, t1_s=t1, t2_s=t2, b0_offset_hz=np.zeros(pd.shape), voxel_size_m=voxel,
                   source=f"shepp_logan({n}) {where}", axes=axes, origin_m=tuple(origin))


def _half_extent(axis: FloatArray, fov_m: float, to_scanner: FloatArray) -> float:
    """How far the phantom reaches along the scanner direction ``axis`` from the isocentre (m; its bounding
    box, :data:`OBJECT_BOX`)."""
    a = to_scanner.T @ axis  # in patient coordinates
    centre, half = (np.asarray(OBJECT_BOX[0]) * fov_m / 2, np.asarray(OBJECT_BOX[1]) * fov_m / 2)
    along = float(np.dot(a, centre))
    spread = float(np.dot(np.abs(a), half))
    return max(abs(along - spread), abs(along + spread))


def _lattice(n: int, d: float, half_extent_m: float) -> FloatArray:
    """Positions ``(i - m//2)·d``, ``m`` >= ``n``, covering ``±half_extent_m`` (m)."""
    m = max(n, 2 * int(math.ceil(half_extent_m / d + 0.5)))
    return (np.arange(m) - m // 2) * d


def default_phantom(n: int, fov_m: float, b0_t: float) -> Phantom:
    """The 2D default (:func:`~.phantom.shepp_logan`): what a transverse slice at the isocentre images."""
    return shepp_logan(n, fov_m=fov_m, b0_t=b0_t)
