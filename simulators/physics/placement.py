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

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.errors import ConfigError
from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram

from .phantom import DEFAULT_SLAB_M, Phantom, shepp_logan, shepp_logan_at

FloatArray = npt.NDArray[np.float64]
log = logging.getLogger("scanctl.simulators.physics")

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
#: A window's moment that varies by this much (1/m; a 2 m field of view's step) moves along that axis.
MOVING_PER_M = 0.5


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
    return [sel for sel in pulse_selections(gradient, rf, thickness=thickness) if sel is not None]


def pulse_selections(gradient: GradientProgram, rf: RFProgram, *, thickness: bool = True) -> list[Selection | None]:
    """The plane each pulse of a segment selects, pulse by pulse (None for a pulse that is no selective
    excitation, as :func:`selections` leaves out)."""
    return [_selection(gradient, rf, p, thickness) for p in range(rf.n_pulses)]


def selection_of(gradient: GradientProgram, rf: RFProgram, p: int) -> Selection | None:
    """The plane pulse ``p`` of a segment selects, with its thickness (None as in :func:`selections`)."""
    return _selection(gradient, rf, p, True)


def _selection(gradient: GradientProgram, rf: RFProgram, p: int, thickness: bool) -> Selection | None:
    lo, hi = int(rf.offsets[p]), int(rf.offsets[p + 1])
    b1 = np.asarray(rf.b1_hz[lo:hi])
    if hi - lo < 2 or not np.any(b1) or chr(int(rf.use[p])) not in PLACING_USES:
        return None
    t = np.asarray(rf.t_s[lo:hi], np.float64)
    centre = _centre_s(t, b1)
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


def _samples(rf: RFProgram, p: int) -> tuple[FloatArray, npt.NDArray[np.complex128]]:
    """Pulse ``p``'s sample times (s) and B1 (Hz)."""
    lo, hi = int(rf.offsets[p]), int(rf.offsets[p + 1])
    return np.asarray(rf.t_s[lo:hi], np.float64), np.asarray(rf.b1_hz[lo:hi])


def _centre_s(t: FloatArray, b1: npt.NDArray[np.complex128]) -> float:
    """A pulse's centre (s): Pulseq's, where |B1| peaks (the middle of a flat top)."""
    mag = np.abs(b1)
    peak = t[mag >= 0.999 * mag.max()]
    return 0.5 * (float(peak[0]) + float(peak[-1]))


def encoded_voxel(segments: list[tuple[GradientProgram | None, RFProgram, ADCProgram]]) -> tuple[float, ...] | None:
    """The voxel (m along the scanner's x, y, z) of a scan that encodes a volume after a non-selective
    excitation, from the segments known so far (``(gradient, rf, adc)``; gradient None: not known). Every ADC
    window that follows, in its segment, an excitation (:data:`PLACING_USES`) that selects no plane
    (:func:`selection_of` None) gives the moment since that pulse's centre at its samples: along an axis that
    moves during the window, ``1 / (samples · step per sample)`` (FOV / matrix); along one that stays
    constant, ``1 / (2 · the largest |moment|)`` over the windows (a Cartesian scan steps from -N/2 to N/2 - 1
    steps of 1/FOV, so its first line says it; later lines need not be known yet). None when there is no such
    window, or an axis is not encoded (a voxel wider than :data:`NON_SELECTIVE_M`: a 2D scan)."""
    from .moments import Moments

    reach = np.zeros(3)  # largest |moment| per axis
    read: list[list[float]] = [[] for _ in range(3)]  # FOV / matrix of the axes that move
    for gradient, rf, adc in segments:
        excitations = [p for p in range(rf.n_pulses) if chr(int(rf.use[p])) in PLACING_USES
                       and np.any(_samples(rf, p)[1])]
        if gradient is None or not excitations or adc.n_windows == 0:
            continue
        moments = Moments(gradient)
        centres = np.array([_centre_s(*_samples(rf, p)) for p in excitations])
        for w in range(adc.n_windows):
            before = np.flatnonzero(centres < adc.start_s[w])
            n = int(adc.num_samples[w])
            if not before.size or n < 2 or _selection(gradient, rf, excitations[before[-1]], True) is not None:
                continue
            t = adc.start_s[w] + (np.arange(n) + 0.5) * adc.dwell_s[w]
            centre = float(centres[before[-1]])
            # Less what a gradient already on at the excitation adds (a shim, the magnet's own inhomogeneity:
            # static, it encodes nothing; a non-selective pulse plays with no gradient of the sequence's own).
            k = moments(t) - moments(centre)[:, None] - np.outer(_gradient_at(gradient, centre), t - centre)
            reach = np.maximum(reach, np.abs(k).max(axis=1))
            for axis in np.flatnonzero(np.ptp(k, axis=1) >= MOVING_PER_M).tolist():
                read[axis].append(1.0 / (n * float(np.median(np.abs(np.diff(k[axis]))))))
    voxel = tuple(min(read[a]) if read[a] else 1.0 / (2.0 * reach[a]) if reach[a] > 0 else math.inf
                  for a in range(3))
    return voxel if max(voxel) <= NON_SELECTIVE_M else None


def _gradient_at(gradient: GradientProgram, t_s: float) -> FloatArray:
    """The gradient (Hz/m, x y z) at ``t_s``: linear between breakpoints, 0 outside them."""
    return np.array([float(np.interp(t_s, t, g, left=0.0, right=0.0)) if t.size else 0.0
                     for t, g in zip(gradient.t_s, gradient.g_hz_per_m, strict=True)])


def volume_phantom(voxel: tuple[float, ...], fov_m: float, b0_t: float, to_scanner: FloatArray) -> Phantom:
    """The Shepp–Logan phantom (``fov_m`` wide) on a 3D grid on the scanner's axes, ``voxel`` (m along x, y,
    z) apart: along each axis the lattice ``(i - m//2)·d`` a scan of that voxel reconstructs, covering the
    object (what lies beyond the scan's FOV folds in). Its planes (each a tissue class of its own) run along
    the axis with the fewest points (the grid's axes a cyclic turn of the scanner's: right-handed); more than
    :data:`MAX_SLAB_PLANES` are sampled coarser (logged). Raises :class:`ConfigError` for a voxel or size that
    is not positive and finite."""
    if not (fov_m > 0 and all(0 < d < math.inf for d in voxel)):
        raise ConfigError(f"placement: a volume needs a positive field of view and voxel, got {fov_m}, {voxel}")
    halves = [_half_extent(np.eye(3)[:, a], fov_m, to_scanner) for a in range(3)]
    lattices = [_lattice(1, d, half) for d, half in zip(voxel, halves, strict=True)]
    planes = int(np.argmin([x.size for x in lattices]))
    order = [(planes + 1) % 3, (planes + 2) % 3, planes]  # grid x, y, z: scanner axes, z the planes'
    sizes = list(voxel)
    if lattices[planes].size > MAX_SLAB_PLANES:
        sizes[planes] = halves[planes] / (MAX_SLAB_PLANES / 2 - 0.5)  # the object on MAX_SLAB_PLANES planes
        log.warning("placement: a volume of %d planes along %s sampled on %d (%.2f mm apart, not %.2f)",
                    lattices[planes].size, "xyz"[planes], MAX_SLAB_PLANES, sizes[planes] * 1e3, voxel[planes] * 1e3)
        lattices[planes] = _lattice(1, sizes[planes], halves[planes])
    axes = np.eye(3)[:, order]
    counts = " x ".join(f"{lattices[a].size}" for a in order)
    mm = " x ".join(f"{sizes[a] * 1e3:.2f}" for a in order)
    return _on_grid(axes, np.zeros(3), (lattices[order[0]], lattices[order[1]], lattices[order[2]]),
                    (sizes[order[0]], sizes[order[1]], sizes[order[2]]), fov_m, b0_t, to_scanner,
                    f"shepp_logan volume of {counts} voxels of {mm} mm (grid axes {''.join('xyz'[a] for a in order)})")


def _shape(rf: RFProgram, p: int) -> tuple[int, float]:
    lo, hi = int(rf.offsets[p]), int(rf.offsets[p + 1])
    return hi - lo, round(float(np.abs(rf.b1_hz[lo:hi]).max(initial=0.0)), 6)


def stack_positions(first: Selection, programs: list[RFProgram],
                    gradients: list[GradientProgram | None] | None = None) -> list[float]:
    """The planes (positions along ``first.normal``, m, sorted) that the pulses of ``programs`` of the same
    shape as ``first``'s select (a multi-slice scan plays one pulse at the carrier offset of each slice):
    ``first.position_m`` and the others, positions within :data:`SAME_POSITION_M` merged. A program whose
    gradients are known (``gradients[i]``, the segment's; None: not known) gives the planes its pulses select
    along ``first.normal`` (a pulse selecting another orientation is left out: a localizer's other planes);
    one whose gradients are not known, the carrier offsets over ``first``'s gradient strength (the same
    slice-select gradient assumed)."""
    found = [first.position_m]
    for rf, gradient in zip(programs, gradients or [None] * len(programs), strict=True):
        for p in range(rf.n_pulses):
            if _shape(rf, p) != first.shape:
                continue
            if gradient is None:
                found.append(float(rf.freq_hz[p]) / first.strength_hz_per_m)
                continue
            sel = _selection(gradient, rf, p, False)
            cos = float(np.dot(sel.normal, first.normal)) if sel is not None else 0.0
            if abs(cos) >= SAME_NORMAL:
                found.append(math.copysign(1.0, cos) * sel.position_m)  # type: ignore[union-attr]
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
        w = (np.arange(planes, dtype=np.float64) - planes // 2) * dz
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
    planes = stack_planes(sel, positions)
    if planes is None:
        return None
    pos = np.sort(np.asarray(positions, np.float64))
    spacing = float(np.min(np.diff(pos)))
    # The grid's planes run up its own z (the frame's slice direction, +-normal); plane nz // 2 sits at
    # its origin: counted from the lowest position along the normal, or from the highest if z = -normal.
    up = float(np.dot(frame(sel, to_scanner)[:, 2], sel.normal)) >= 0
    centre = float(pos[0]) + (planes // 2 if up else planes - 1 - planes // 2) * spacing
    w = (np.arange(planes, dtype=np.float64) - planes // 2) * spacing
    d = fov_m / n
    return _sampled(sel, centre, w, (d, d, spacing), n, fov_m, b0_t, to_scanner,
                    f"on {planes} slabs along {np.round(sel.normal, 4).tolist()} from {pos[0] * 1e3:.2f} to "
                    f"{pos[-1] * 1e3:.2f} mm")


def stack_planes(sel: Selection, positions: list[float]) -> int | None:
    """How many planes a stack of 2D slabs through ``positions`` (m along ``sel.normal``) takes (every plane
    between them on their spacing included), or None when they are no such stack (:func:`stacked_phantom`):
    fewer than two, slices thicker than :data:`SLAB_3D_M`, not on one even spacing, or more than
    :data:`MAX_STACK_PLANES` planes."""
    pos = np.sort(np.asarray(positions, np.float64))
    if pos.size < 2 or sel.thickness_m > SLAB_3D_M:
        return None
    spacing = float(np.min(np.diff(pos)))
    steps = (pos - pos[0]) / spacing
    if np.abs(steps - np.round(steps)).max() > 1e-3 or round(float(steps[-1])) + 1 > MAX_STACK_PLANES:
        return None
    return round(float(steps[-1])) + 1


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
    return _on_grid(axes, origin, (u, v, w), voxel, fov_m, b0_t, to_scanner, f"shepp_logan({n}) {where}")


def _on_grid(axes: FloatArray, origin: FloatArray, uvw: tuple[FloatArray, FloatArray, FloatArray],
             voxel: tuple[float, float, float], fov_m: float, b0_t: float, to_scanner: FloatArray,
             source: str) -> Phantom:
    """The phantom sampled exactly at the grid points ``origin + axes @ (u, v, w)`` (m, scanner coordinates;
    ``uvw`` each axis' positions): a 2D slab for one plane (``w`` of size 1), else a 3D grid."""
    u, v, w = uvw
    ww, vv, uu = np.meshgrid(w, v, u, indexing="ij")
    local = np.stack((uu, vv, ww), axis=-1)
    patient = (local @ axes.T + origin) @ to_scanner  # scanner -> patient: to_scannerᵀ r, row by row
    pd, t1, t2 = shepp_logan_at(patient, fov_m=fov_m, b0_t=b0_t)
    if w.size == 1:
        pd, t1, t2 = pd[0], t1[0], t2[0]
    return Phantom(pd=pd, t1_s=t1, t2_s=t2, b0_offset_hz=np.zeros(pd.shape), voxel_size_m=voxel,
                   source=source, axes=axes, origin_m=tuple(origin))


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
    return (np.arange(m, dtype=np.float64) - m // 2) * d


def default_phantom(n: int, fov_m: float, b0_t: float) -> Phantom:
    """The 2D default (:func:`~.phantom.shepp_logan`): what a transverse slice at the isocentre images."""
    return shepp_logan(n, fov_m=fov_m, b0_t=b0_t)


def pulses_of(rf: RFProgram, pulses: list[int]) -> RFProgram:
    """The segment's RF program with only ``pulses`` (indices, in order): what one plane's spin system
    plays when the segment's pulses excite several planes (same span, raster and sample times)."""
    idx = np.asarray(pulses, np.int64)
    counts = np.diff(rf.offsets)[idx] if idx.size else np.zeros(0, np.int64)
    samples = (np.concatenate([np.arange(rf.offsets[p], rf.offsets[p + 1]) for p in idx.tolist()])
               if idx.size else np.zeros(0, np.int64))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(rf.offsets.dtype)
    return RFProgram(rf.t0_s, rf.t1_s, rf.raster_s, rf.start_s[idx], offsets, rf.t_s[samples], rf.b1_hz[samples],
                     rf.freq_hz[idx], rf.use[idx], rf.block[idx])


def windows_of(adc: ADCProgram, windows: list[int]) -> ADCProgram:
    """The segment's ADC program with only ``windows`` (indices, in order)."""
    idx = np.asarray(windows, np.int64)
    return ADCProgram(adc.t0_s, adc.t1_s, adc.start_s[idx], adc.num_samples[idx], adc.dwell_s[idx],
                      adc.freq_hz[idx], adc.phase_rad[idx], adc.block[idx], adc.index[idx],
                      {name: column[idx] for name, column in adc.labels.items()})
