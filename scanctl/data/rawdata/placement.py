"""Where each ADC window of a sequence images: its logical axes and the centre of its slice (or slab) and
FOV, read from the sequence itself (docs/rawdata.md, "Geometry"), so a file written by any tool gets the
same answer as one of our builders'.

- **Directions**: the ``ROTATIONS`` extension of the readout's block (rotates logical into physical
  gradients; its columns are read, phase and slice in scanner coordinates); a block without one is
  unrotated (the file's axes are the logical axes: transverse for a head-first supine patient).
- **Slice centre**: the last excitation before the window, with frequency offset ``f`` (Hz) and gradient
  ``G`` (Hz/m, physical) at its centre, selects the plane ``G . r = f``; its point nearest the isocentre is
  ``f G / |G|^2``. A non-selective pulse selects nothing: offset 0.
- **In-plane shift** ``d`` (logical read and phase, m), per slice: each window's ADC frequency offset is
  its read gradient times the shift (``f_adc = g . d``, least squares over the windows of the slice), and
  the phase direction, where the read gradient says nothing, from how the ADC phase follows the
  phase-encoding moment: ``phase = spoil + 2 pi k_c . d - 2 pi f_adc (t_c - t_start)`` with ``k_c`` the
  logical k at the readout's centre sample ``t_c`` and ``spoil`` the excitation's own phase (its RF phase
  without the part that keeps the slice's phase, ``-2 pi f_rf t_rf_centre``). The phase only knows ``d``
  modulo the FOV: the shift taken is the one within half a FOV of the slice centre.

Everything here is in scanner coordinates and metres; :mod:`scanctl.sequence.geometry` turns them into the
patient's (the writer does, with the header's patient position). A geometry the sequence contradicts (an
ADC whose rotation differs from its excitation's, a slice-select gradient that does not lie along the slice
direction of a rotated block) raises :class:`SequenceGeometryError` naming the block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.data.rawdata.errors import SequenceGeometryError
from scanctl.data.rawdata.kgrid import clusters
from scanctl.sequence.model import IntArray, Sequence
from scanctl.sequence.waveforms import axis_waveform, rf_centres

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
#: Slice positions closer than this (m) are the same slice: far below any slice thickness, far above the
#: rounding of a frequency offset written to a file.
SLICE_TOLERANCE_M = 1e-5
#: Two rotations whose matrices differ by less than this (per element) are the same orientation.
ROTATION_TOLERANCE = 1e-6
#: A slice-select gradient whose direction is further than this (sine of the angle) from the slice axis of
#: its rotation contradicts it.
DIRECTION_TOLERANCE = 1e-3
#: The ADC phases of a slice must follow one in-plane shift this well (mean resultant length of the
#: line-to-line phase steps) for the phase-direction shift to be taken from them.
PHASE_COHERENCE = 0.9


@dataclass(frozen=True)
class Placement:
    """Per ADC window (acquisition-index order), in scanner coordinates."""

    rotation: FloatArray  # (windows, 3, 3): scanner <- logical (columns read, phase, slice)
    position_m: FloatArray  # (windows, 3): centre of the slice/slab and FOV (m)
    orientation: IntArray  # (windows,): distinct rotations numbered in order of first appearance
    slice_point_m: FloatArray  # (windows, 3): the excited slice's point nearest the isocentre (m)
    slice_normal: FloatArray  # (windows, 3): the direction slices of this window's orientation are ordered by
    excitation_s: FloatArray  # (windows,): centre time of the excitation before the window (NaN: none)


@dataclass(frozen=True)
class Excitations:
    """The excitation pulses of a sequence, in time order."""

    t_s: FloatArray  # centre times
    block: IntArray
    freq_hz: FloatArray
    spoil_rad: FloatArray  # the RF phase without its slice-position part
    gradient: FloatArray  # (pulses, 3) physical gradient at the centre (Hz/m)
    rotation: IntArray  # row into the distinct rotations (0: identity)


def block_rotations(seq: Sequence) -> tuple[FloatArray, IntArray]:
    """The distinct rotation matrices of ``seq`` ``(m, 3, 3)`` (row 0 the identity) and each block's row."""
    index = np.zeros(len(seq.blocks), dtype=np.int64)
    spec = seq.extensions.specs.get("ROTATIONS")
    if spec is None:
        return np.eye(3)[np.newaxis], index
    which, rows = seq.extensions.entries(seq.blocks.ext, "ROTATIONS")
    matrices = np.concatenate((np.eye(3)[np.newaxis], np.asarray(spec.columns["matrix"], dtype=np.float64)))
    keys = np.rint(matrices.reshape(-1, 9) / ROTATION_TOLERANCE).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    # Keep the identity at row 0 and the rest in the file's order.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    index[which] = rank[inverse.reshape(-1)[rows + 1]]
    return matrices[first[order]], index


def excitations(seq: Sequence, rotation_of_block: IntArray) -> Excitations:
    """The excitation (``e``) and undefined-use (``u``, pypulseq's default) pulses of ``seq``."""
    t_rf, blocks, rows = rf_centres(seq)
    use = seq.rf.use[rows]
    exc = (use == ord("e")) | (use == ord("u"))
    order = np.argsort(t_rf[exc], kind="stable")
    t, b, r = t_rf[exc][order], blocks[exc][order], rows[exc][order]
    g = np.stack([axis_waveform(seq, axis).sample(t) for axis in range(3)], axis=1) if t.size else np.zeros((0, 3))
    f = seq.rf.freq_hz[r]
    spoil = seq.rf.phase_rad[r] + 2 * np.pi * f * seq.rf.center_s[r]
    return Excitations(t, b, f, spoil, g, rotation_of_block[b])


def placement(seq: Sequence, adc_blocks: IntArray, t_centre: FloatArray, k_centre: FloatArray,
              g_read: FloatArray, imaging: BoolArray, axes: tuple[int, int, int] = (0, 1, 2)) -> Placement:
    """The :class:`Placement` of the windows in ``adc_blocks`` (readout centres at ``t_centre``, logical
    k there ``k_centre (3, windows)`` (1/m) and the logical gradient there ``g_read (3, windows)`` (Hz/m)),
    the logical axes in the order read, phase, slice being the blocks' ``axes`` (a readout along logical z:
    ``(2, 1, 0)``). Raises :class:`SequenceGeometryError` for a geometry the sequence contradicts."""
    blocks, rot_of_block = block_rotations(seq)
    matrices = blocks[:, :, list(axes)]
    exc = excitations(seq, rot_of_block)
    n = adc_blocks.size
    rot = rot_of_block[adc_blocks]
    which = np.searchsorted(exc.t_s, t_centre, side="right") - 1
    _check_rotations(seq, exc, which, rot, adc_blocks, blocks)
    point = np.zeros((n, 3))
    normal = matrices[rot][:, :, 2].copy()
    selective = np.zeros(n, dtype=bool)
    if exc.t_s.size:
        g2 = np.sum(exc.gradient ** 2, axis=1)
        pts = np.divide(exc.freq_hz[:, None] * exc.gradient, g2[:, None], out=np.zeros_like(exc.gradient),
                        where=g2[:, None] > 0)
        has = which >= 0
        point[has] = pts[which[has]]
        selective[has] = g2[which[has]] > 0
        # Slices are ordered along the slice-select gradient (signed like the slice axis, else like its
        # largest component): an unrotated file selecting along x still has its slices numbered in order.
        gdir = np.zeros((n, 3))
        gdir[has] = exc.gradient[which[has]] / np.sqrt(np.maximum(g2[which[has]], 1e-300))[:, None]
        sign = np.sign(np.sum(gdir * normal, axis=1))
        dominant = np.sign(gdir[np.arange(n), np.argmax(np.abs(gdir), axis=1)])
        sign = np.where(sign != 0, sign, dominant)
        normal = np.where(selective[:, None], gdir * sign[:, None], normal)
    orientation = _first_appearance(rot, imaging)
    shift = _inplane_shifts(seq, adc_blocks, t_centre, k_centre, g_read, imaging, rot, point, exc, which)
    position = point + np.einsum("wij,wj->wi", matrices[rot], shift)
    t_exc = np.where(which >= 0, exc.t_s[np.maximum(which, 0)], np.nan) if exc.t_s.size else np.full(n, np.nan)
    return Placement(matrices[rot], position, orientation, point, normal, t_exc)


def _check_rotations(seq: Sequence, exc: Excitations, which: IntArray, rot: IntArray, adc_blocks: IntArray,
                     matrices: FloatArray) -> None:
    """An imaging window must be rotated as its (selective) excitation is, and a rotated excitation's
    slice-select gradient must lie along its slice axis."""
    if matrices.shape[0] == 1 or exc.t_s.size == 0:
        return
    g = exc.gradient
    g_norm = np.linalg.norm(g, axis=1)
    selective = g_norm > 0
    axis = matrices[exc.rotation][:, :, 2]
    off = np.linalg.norm(np.cross(g, axis), axis=1) / np.maximum(g_norm, 1e-300)
    bad = np.flatnonzero(selective & (exc.rotation > 0) & (off > DIRECTION_TOLERANCE))
    if bad.size:
        i = int(bad[0])
        raise SequenceGeometryError(
            int(seq.blocks.id[exc.block[i]]),
            f"the excitation's slice-select gradient points along {_vec(g[i] / g_norm[i])}, not along the "
            f"slice axis {_vec(axis[i])} of the block's rotation: the slice offset cannot be placed")
    before = np.maximum(which, 0)
    turned = np.any(np.abs(matrices[rot] - matrices[exc.rotation[before]]) > ROTATION_TOLERANCE, axis=(1, 2))
    w = np.flatnonzero((which >= 0) & selective[before] & turned)
    if w.size:
        i = int(w[0])
        e = int(which[i])
        raise SequenceGeometryError(
            int(seq.blocks.id[adc_blocks[i]]),
            f"the ADC's rotation (slice axis {_vec(matrices[rot[i]][:, 2])}) differs from that of its "
            f"excitation in block {int(seq.blocks.id[exc.block[e]])} (slice axis "
            f"{_vec(matrices[exc.rotation[e]][:, 2])}): the readout would not image the excited slice")


def _vec(v: FloatArray) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def _first_appearance(values: IntArray, imaging: BoolArray) -> IntArray:
    """``values`` renumbered 0, 1, ... in the order they first appear among the imaging windows (others
    after them)."""
    if values.size == 0:
        return values.copy()
    key = np.where(imaging, 0, 1) * values.size + np.arange(values.size)
    order = np.argsort(key, kind="stable")
    uniq, first = np.unique(values[order], return_index=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    return rank[np.searchsorted(uniq, values)]


def _inplane_shifts(seq: Sequence, adc_blocks: IntArray, t_centre: FloatArray, k_centre: FloatArray,
                    g_read: FloatArray, imaging: BoolArray, rot: IntArray, point: FloatArray, exc: Excitations,
                    which: IntArray) -> FloatArray:
    """``(windows, 3)``: each window's logical in-plane shift (read, phase, 0) in m, one per slice."""
    out = np.zeros((adc_blocks.size, 3))
    rows = seq.blocks.adc[adc_blocks]
    f_adc = seq.adc.freq_hz[rows]
    if not np.any(f_adc != 0) and not np.any(seq.adc.phase_rad[rows] != 0):
        return out
    start = seq.block_start_s[adc_blocks] + seq.adc.delay_s[rows]
    spoil = np.where(which >= 0, exc.spoil_rad[np.maximum(which, 0)], 0.0) if exc.t_s.size else np.zeros(which.size)
    residual = seq.adc.phase_rad[rows] - spoil + 2 * np.pi * f_adc * (t_centre - start)
    keys = np.column_stack((rot, np.rint(point / SLICE_TOLERANCE_M).astype(np.int64)))
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for gi in np.unique(group[imaging]).tolist():
        members = np.flatnonzero((group == gi) & imaging)
        d = _slice_shift(g_read[:2, members], f_adc[members], k_centre[:2, members], residual[members],
                         int(seq.blocks.id[adc_blocks[members[0]]]))
        out[group == gi, :2] = d
    return out


def _slice_shift(g: FloatArray, f: FloatArray, k: FloatArray, residual: FloatArray, block_id: int) -> FloatArray:
    """The in-plane shift (m) of one slice: ``f = g . d`` by least squares, and along the direction the read
    gradients leave undetermined (the phase direction of a Cartesian scan), from the ADC phases."""
    moving = np.linalg.norm(g, axis=0) > 0
    d = np.zeros(2)
    if moving.any():
        d = np.linalg.lstsq(g[:, moving].T, f[moving], rcond=None)[0]
        misfit = np.abs(g[:, moving].T @ d - f[moving])
        tolerance = 1e-6 * np.abs(f[moving]).max() + 1e-3
        if float(misfit.max()) > tolerance:
            raise SequenceGeometryError(
                block_id, f"the ADC frequency offsets of this slice do not fit one read-direction shift "
                          f"(off by up to {float(misfit.max()):.3g} Hz): the FOV centre is contradictory")
        rank = np.linalg.matrix_rank(g[:, moving].T, tol=1e-9 * float(np.abs(g).max()))
    else:
        rank = 0
    if rank != 1:
        return d
    # The direction the read gradients do not see, and the shift along it from the phases.
    read = g[:, moving][:, 0] / np.linalg.norm(g[:, moving][:, 0])
    u = np.array([-read[1], read[0]])
    q = u @ k
    r = residual - 2 * np.pi * (k.T @ d)
    alpha = _phase_slope(q, r)
    return d + alpha * u


def _phase_slope(q: FloatArray, r: FloatArray) -> float:
    """The ``a`` (m) with ``r = 2 pi q a + c`` (mod 2 pi) from windows at k-space positions ``q`` (1/m): from
    the phase steps between neighbouring distinct positions one grid step apart, so ``a`` is taken within half
    a FOV (1 / step) of 0. 0 when the positions do not vary, or when the phases do not follow a shift."""
    z = np.exp(1j * r)
    # Positions closer than K_TOLERANCE_PER_M are one position (raster rounding of the phase-encoding areas).
    inverse = clusters(q)
    if q.size == 0 or inverse.max() == 0:
        return 0.0
    means = np.bincount(inverse, weights=z.real) + 1j * np.bincount(inverse, weights=z.imag)
    counts = np.bincount(inverse)
    mean_q = np.bincount(inverse, weights=q) / counts
    means = means / counts
    gaps = np.diff(mean_q)
    step = float(np.min(gaps))
    pair = np.abs(gaps - step) < 0.01 * step
    products = means[1:][pair] * np.conj(means[:-1][pair])
    resultant = np.abs(products.sum()) / max(float(np.abs(products).sum()), 1e-300)
    if resultant < PHASE_COHERENCE:
        log.warning("raw data: the ADC phases do not follow one phase-direction shift (coherence %.2f): "
                    "the FOV is taken as centred along phase", resultant)
        return 0.0
    coarse = float(np.angle(products.sum()) / (2 * np.pi * step))
    # Refined by least squares over every position (not only neighbours): the phases a file holds are
    # rounded (pypulseq writes 6 significant digits), and the slope over the whole range averages that out.
    left = means * np.exp(-2j * np.pi * mean_q * coarse)
    wrapped = np.angle(left * np.conj(left.sum()))
    weights = counts.astype(np.float64)
    qc = mean_q - np.average(mean_q, weights=weights)
    slope = float(np.sum(weights * qc * wrapped) / max(float(np.sum(weights * qc * qc)), 1e-300))
    return coarse + slope / (2 * np.pi)
