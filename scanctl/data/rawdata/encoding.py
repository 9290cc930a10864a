"""What a sequence's k-space trajectory says about each of its ADC windows, for the raw data and the recon.

For a sequence that does not say it with labels, :func:`encoding_of` derives from the trajectory (on the
logical axes: x readout, y phase encoding, z partition):

- ``LIN`` / ``PAR``: the window's k_y / k_z at the readout centre, in steps of 1/FOV (docs/rawdata.md);
- the centre sample (k_x = 0) of every window;
- reversal (``ACQ_IS_REVERSE``): the readout runs towards -k_x;
- the trajectory type: ``cartesian`` when every readout moves along k_x alone; else ``radial`` (straight
  spokes through the centre) or ``other``, and then every sample's k (:func:`trajectory_samples`);
- a Cartesian scan that reads along logical y or z (pypulseq's ``write_mprage.py`` reads along z): its
  logical axes taken in the order read, phase, partition (:mod:`~scanctl.data.rawdata.kgrid`; the phase axis
  the one the ``LIN`` label counts), so it is encoded as the Cartesian scan it is: its readout along k_x,
  lines and partitions, FOV and directions per axis (``axes``, and ``rotation``'s columns in that order);
- geometry (:mod:`~scanctl.data.rawdata.placement`): each window's rotation (its block's ``ROTATIONS``) and
  the centre of its slice and FOV, and ``SLC`` from them when the sequence sets no such label (slices
  numbered in position order per orientation).

k-space is taken on each window's logical axes (the physical k turned back by the window's rotation), so an
oblique scan is encoded as the same scan unrotated.

Results are cached per sequence object (a :class:`Sequence` is immutable): the header, the writer and the
recon of one scan all ask.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.data.rawdata.errors import SequenceGeometryError
from scanctl.data.rawdata.kgrid import K_TOLERANCE_PER_M, frame_axes, grid_offset, grid_step, read_axis
from scanctl.data.rawdata.placement import SLICE_TOLERANCE_M, Placement, block_rotations, placement
from scanctl.sequence.labels import label_values
from scanctl.sequence.model import IntArray, Sequence
from scanctl.sequence.waveforms import adc_sample_times, axis_waveform, kspace_at

logger = logging.getLogger(__name__)
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
#: Fractions of a sample below this are rounding noise in where a readout crosses k_x = 0.
SAMPLE_TOLERANCE = 0.01
#: A readout's sample a quarter of the way further than this (in samples) from where evenly spaced samples put it is
#: ramp sampling: not a Cartesian read-out.
RAMP_TOLERANCE = 0.25
#: A ``FOV`` definition the k-space steps are further than this (in steps) from a grid of its 1/FOV
#: contradicts them.
GRID_TOLERANCE = 0.1


@dataclass(frozen=True)
class Encoding:
    """Per ADC window of a sequence (in acquisition-index order)."""

    labels: dict[str, IntArray]  # labels (with LIN/PAR from the trajectory if unlabelled)
    imaging: BoolArray  # not a noise or navigator window
    num_samples: IntArray
    centre_sample: IntArray  # the sample of each window nearest to k_x = 0
    steps_y: IntArray  # k-space step of each window's centre along y and z (k * FOV, rounded)
    steps_z: IntArray
    fov_m: tuple[float, float, float]
    reverse: BoolArray  # the readout runs towards -k_x (ACQ_IS_REVERSE)
    position_m: FloatArray  # (windows, 3): centre of the slice/slab and FOV of each window (m, scanner axes)
    rotation: FloatArray  # (windows, 3, 3): scanner <- logical (columns read, phase, slice: the block's ``axes``)
    echo_s: FloatArray  # (windows,): when the readout crosses k_x = 0 (s from the start; NaN: it does not move)
    excitation_s: FloatArray  # (windows,): centre of the excitation before the window (NaN: none)
    trajectory: str = "cartesian"  # the ISMRMRD trajectory type: cartesian, radial or other
    #: the labels whose values here replace the sequence's own (a LIN / PAR counting towards -k: the
    #: trajectory's lines, :func:`_counting_up`); the raw data and the recon take these over the acquisitions'
    recounted: frozenset[str] = frozenset()
    #: the block's logical axes (0 x, 1 y, 2 z) that are the readout, the phase encoding and the partitions
    axes: tuple[int, int, int] = (0, 1, 2)


_CACHE: weakref.WeakKeyDictionary[Sequence, Encoding] = weakref.WeakKeyDictionary()


def sequence_labels(seq: Sequence) -> dict[str, IntArray]:
    """Label values of every ADC window of ``seq`` (in acquisition-index order). Where the sequence sets
    no ``LIN`` (``PAR``) label, ``LIN`` (``PAR``, if the sequence phase-encodes along z) is derived from
    the k-space trajectory: the line of a window is its k_y at the readout centre (sample N/2) times the
    FOV, rounded, offset so that k_y = 0 is line ``ny // 2``. Logical axes are assumed: x readout,
    y phase, z partition (an unrotated Cartesian scan)."""
    return encoding_of(seq).labels


def centre_samples(seq: Sequence) -> IntArray:
    """For every ADC window of ``seq``, the sample nearest to k_x = 0 (from the trajectory at samples
    N/2 and N/2 + 1; ``N // 2`` for a window without a readout gradient)."""
    return encoding_of(seq).centre_sample


def encoding_of(seq: Sequence) -> Encoding:
    """The :class:`Encoding` of every ADC window of ``seq`` (cached per sequence object)."""
    cached = _CACHE.get(seq)
    if cached is None:
        cached = _CACHE[seq] = _encoding(seq)
    return cached


def _encoding(seq: Sequence) -> Encoding:
    """The encoding on the blocks' logical axes; for a Cartesian scan that reads along logical y or z, on
    its axes in the order read, phase, partition (the module)."""
    block = _encoding_on(seq, (0, 1, 2))
    axes = _read_frame(seq, block)
    if axes is None:
        return block
    turned = _encoding_on(seq, axes)
    if turned.trajectory != "cartesian":  # not evenly sampled along its read axis: the samples say where
        return block
    logger.info("raw data: readout along logical %s, phase %s, partitions %s", *("xyz"[a] for a in axes))
    return turned


def _read_frame(seq: Sequence, enc: Encoding) -> tuple[int, int, int] | None:
    """The logical axes (read, phase, partition) of a scan whose every imaging readout moves along one
    logical axis other than x (the others constant through it); None for any other scan."""
    if enc.trajectory == "cartesian" or not enc.imaging.any():
        return None
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)[enc.imaging]
    rows = seq.blocks.adc[adc_blocks]
    n, dwell = seq.adc.num_samples[rows].astype(np.int64), seq.adc.dwell_s[rows]
    start = seq.block_start_s[adc_blocks] + seq.adc.delay_s[rows]
    rotation = enc.rotation[enc.imaging]
    first = _logical(rotation, kspace_at(seq, start + 0.5 * dwell))
    last = _logical(rotation, kspace_at(seq, start + (n - 0.5) * dwell))
    read = read_axis(first, last)
    if read is None or read == 0:
        return None
    centres = _logical(rotation, kspace_at(seq, start + (n // 2 + 0.5) * dwell))
    lin = enc.labels.get("LIN")
    return frame_axes(read, centres, None if lin is None else lin[enc.imaging])


def _encoding_on(seq: Sequence, axes: tuple[int, int, int]) -> Encoding:
    """The encoding with the blocks' logical ``axes`` as read, phase and partition."""
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)
    rows = seq.blocks.adc[adc_blocks]
    n = seq.adc.num_samples[rows].astype(np.int64)
    labels = {name: values[adc_blocks].astype(np.int64) for name, values in label_values(seq).items()}
    imaging = np.ones(adc_blocks.size, dtype=bool)
    for flag in ("NOISE", "NAV"):
        if flag in labels:
            imaging &= labels[flag] == 0
    t_centre = seq.block_start_s[adc_blocks] + seq.adc.delay_s[rows] + (n // 2 + 0.5) * seq.adc.dwell_s[rows]
    matrices, rot_of_block = block_rotations(seq)
    rotation = matrices[rot_of_block[adc_blocks]][:, :, list(axes)]
    k, slope, centre = _readout_centres(seq, t_centre, seq.adc.dwell_s[rows], n, rotation)
    moving = slope != 0
    echo = np.where(moving, t_centre - np.divide(k[0], slope, out=np.zeros_like(slope), where=moving)
                    * seq.adc.dwell_s[rows], np.nan)
    fov_def = seq.definition_floats("FOV")
    fov = [float("nan")] * 3
    if fov_def is not None and len(fov_def) >= 3:
        fov = [float(fov_def[a]) for a in axes]  # the definition's x, y, z: the block's logical axes
    g_read = _logical(rotation, np.stack([axis_waveform(seq, a).sample(t_centre) for a in range(3)]))
    where = placement(seq, adc_blocks, t_centre, k, g_read, imaging, axes)
    if "SLC" not in labels:
        slices = _slice_numbers(where, imaging)
        if slices is not None:
            labels["SLC"] = slices
    trajectory, step = _trajectory_type(seq, adc_blocks, rows, n, imaging, rotation)
    if not (fov[0] > 0):  # readout FOV from the k-space step between two samples
        read = np.abs(slope[imaging & moving]) if trajectory == "cartesian" else step
        fov[0] = 1.0 / float(np.median(read)) if read.size else 0.0
    if trajectory != "cartesian":  # one FOV in the plane; no lines, no partitions: the samples say where
        fov[1] = fov[1] if fov[1] > 0 else fov[0]
        zero = np.zeros(adc_blocks.size, np.int64)
        return Encoding(labels, imaging, n, centre, zero, zero, (fov[0], fov[1], fov[2] if fov[2] > 0 else 0.0),
                        np.zeros(adc_blocks.size, bool), where.position_m, rotation, echo, where.excitation_s,
                        trajectory, axes=axes)
    steps_y, fov[1] = _steps(k[1], imaging, fov[1], "xyz"[axes[1]])
    recounted: set[str] = set()
    steps_z, fov[2] = _steps(k[2], imaging, fov[2], "xyz"[axes[2]])
    for name, steps in (("LIN", steps_y), ("PAR", steps_z)):
        if name not in labels and (name == "LIN" or np.any(steps[imaging] != 0)):  # PAR only for 3D
            labels[name] = _lines(steps, imaging)
        elif name in labels:
            counted = _counting_up(labels[name], steps, imaging, name)
            if counted is not labels[name]:
                labels[name] = counted
                recounted.add(name)
    return Encoding(labels, imaging, n, centre, steps_y, steps_z, (fov[0], fov[1], fov[2]), slope < 0,
                    where.position_m, rotation, echo, where.excitation_s, recounted=frozenset(recounted), axes=axes)


def _logical(rotation: FloatArray, v: FloatArray) -> FloatArray:
    """Physical vectors ``(3, windows)`` on each window's logical axes: ``R^T v`` per window."""
    return np.einsum("wji,jw->iw", rotation, v) if v.shape[1] else v


def _readout_centres(seq: Sequence, t_centre: FloatArray, dwell: FloatArray, n: IntArray,
                     rotation: FloatArray) -> tuple[FloatArray, FloatArray, IntArray]:
    """Logical k at each readout's centre sample ``(3, windows)``, the k_x step per sample (0 for a window
    whose readout does not move), and the sample nearest to k_x = 0 (``N // 2`` where it does not move)."""
    if t_centre.size == 0:
        return np.zeros((3, 0)), np.zeros(0), np.zeros(0, np.int64)
    k = _logical(rotation, kspace_at(seq, t_centre))
    slope = _logical(rotation, kspace_at(seq, t_centre + dwell))[0] - k[0]
    moving = np.abs(slope) > 1e-9 * max(float(np.max(np.abs(slope), initial=0.0)), 1e-30)
    slope = np.where(moving, slope, 0.0)
    offset = np.divide(k[0], slope, out=np.zeros_like(slope), where=moving)
    # Where k_x = 0 falls between two samples (k = (i + 1/2) / FOV), the raster rounding of gradient areas
    # moves it by ~1e-3 of a sample, alternately either way after each refocusing pulse (pypulseq's tse and
    # haste: 31.499, 31.501, ...); rounded as it is, every other echo would be shifted by one sample (an
    # N/2 ghost). So the position is first rounded to SAMPLE_TOLERANCE, then to a whole sample.
    position = np.round((n // 2 - np.clip(offset, -n, n)) / SAMPLE_TOLERANCE) * SAMPLE_TOLERANCE
    centre = np.where(moving, np.rint(position), n // 2)
    return k, slope, np.clip(centre, 0, np.maximum(n - 1, 0)).astype(np.int64)


def _lines(steps: IntArray, imaging: BoolArray) -> IntArray:
    """Counter values from k-space steps: offset so that step 0 is line ``n // 2`` of a matrix symmetric
    about it (one line only: line 0)."""
    img = steps[imaging]
    if img.size == 0:
        return steps.copy()
    if img.min() == img.max():
        return steps - int(img.min())
    return steps + max(-int(img.min()), int(img.max()) + 1)


def _counting_up(values: IntArray, steps: IntArray, imaging: BoolArray, name: str) -> IntArray:
    """A ``LIN`` / ``PAR`` label as the line in k-space: where the label counts against the trajectory's steps
    (step = c - label on every imaging window, as pypulseq's ``write_gre_label.py`` and
    ``write_epi_label.py`` do with phase areas -(i - N/2)/FOV), the line of each step on the label's
    ``n`` lines (step + n // 2, modulo n), the same map applied to the other windows (a navigator at
    k_y = 0 gets line n // 2); otherwise the label as it is. Without this the recon, which puts
    line ``LIN`` at k_y = (LIN - centre)/FOV, mirrors the image along the phase direction."""
    img_values, img_steps = values[imaging], steps[imaging]
    if img_values.size < 2 or img_values.min() == img_values.max():
        return values
    sums = img_steps + img_values
    if not np.all(sums == sums[0]):
        return values
    # Line of step s: s + n // 2 on the label's n lines, wrapped: k_y = +n/2 (line 0 counting down from it,
    # as these scripts do) is the alias of -n/2 on the n-point grid, so the matrix stays n lines.
    n = int(img_values.max() - img_values.min()) + 1
    flipped = np.mod(int(sums[0]) - values + n // 2, n)
    logger.info("label %s counts towards -k (step = %d - %s): placed by the trajectory's lines",
                name, int(sums[0]), name)
    return flipped.astype(np.int64)


def trajectory_samples(seq: Sequence) -> list[FloatArray]:
    """Per ADC window of ``seq``, its samples' k-space positions ``(samples, 2)`` (k_x, k_y) in units of 1/FOV
    (the :attr:`Encoding.fov_m` of x and y), as the raw data's ``traj`` holds them; ``(samples, 3)`` with k_z
    (1/m times the x FOV) when k_z varies by :data:`K_TOLERANCE_PER_M` or more over the imaging windows."""
    enc = encoding_of(seq)
    t, _ = adc_sample_times(seq)
    k = kspace_at(seq, t)
    if enc.rotation.shape[0] and not np.allclose(enc.rotation, np.eye(3)):  # on each window's logical axes
        k = _logical(np.repeat(enc.rotation, enc.num_samples, axis=0), k)
    edges = np.concatenate(([0], np.cumsum(enc.num_samples)))
    in_imaging = np.repeat(enc.imaging, enc.num_samples)
    kz = k[2][in_imaging]
    dims = 3 if kz.size and float(np.ptp(kz)) >= K_TOLERANCE_PER_M else 2
    scale = np.array([enc.fov_m[0], enc.fov_m[1], enc.fov_m[0]])[:dims, np.newaxis]
    kk = (k[:dims] * scale).T
    return [kk[a:b] for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]


def _trajectory_type(seq: Sequence, adc_blocks: IntArray, rows: IntArray, n: IntArray, imaging: BoolArray,
                     rotation: FloatArray) -> tuple[str, FloatArray]:
    """``cartesian`` when no imaging readout moves in k_y or k_z by :data:`K_TOLERANCE_PER_M` or more from
    its first sample to its last; else ``radial`` if every such readout is a straight line through the
    centre (within one sample step), else ``other``. Also the in-plane k-space step per sample (1/m) of
    each imaging readout that moves."""
    if adc_blocks.size == 0 or not imaging.any():
        return "cartesian", np.zeros(0)
    start = seq.block_start_s[adc_blocks] + seq.adc.delay_s[rows]
    dwell = seq.adc.dwell_s[rows]
    first = _logical(rotation, kspace_at(seq, start + 0.5 * dwell))[:, imaging]
    last = _logical(rotation, kspace_at(seq, start + (n - 0.5) * dwell))[:, imaging]
    middle = _logical(rotation, kspace_at(seq, start + (n // 2 + 0.5) * dwell))[:, imaging]
    span = last - first
    length = np.hypot(span[0], span[1])
    step = length / np.maximum(n[imaging] - 1, 1)
    if not np.any(np.abs(span[1:]) >= K_TOLERANCE_PER_M):
        # Samples evenly spaced along k_x, or not (ramp sampling: pypulseq's epi_se_rs samples the ramps too,
        # so the samples bunch up at both ends): gridded as columns they would stretch the image's middle.
        # (A quarter of the way, where ramps on both ends shift the sample; halfway they need not.)
        quarter = _logical(rotation, kspace_at(seq, start + (n // 4 + 0.5) * dwell))[:, imaging]
        fraction = (n[imaging] // 4) / np.maximum(n[imaging] - 1, 1)
        uneven = np.abs(quarter[0] - first[0] - fraction * span[0]) > RAMP_TOLERANCE * np.maximum(step, 1e-12)
        if not np.any(uneven & (step > 0)):
            return "cartesian", step[step > 0]
        # The FOV is the step where the samples are furthest apart (the flat top's), not the mean step.
        after = _logical(rotation, kspace_at(seq, start + (n // 2 + 1.5) * dwell))[:, imaging]
        flat = np.hypot(after[0] - middle[0], after[1] - middle[1])
        return "other", flat[flat > 0]
    step = step[step > 0]
    tol = float(np.median(step)) if step.size else K_TOLERANCE_PER_M
    direction = np.divide(span[:2], length, out=np.zeros_like(span[:2]), where=length > 0)
    through_centre = np.abs(first[0] * direction[1] - first[1] * direction[0]) < tol  # the line's distance to 0
    off_line = np.abs((middle[0] - first[0]) * direction[1] - (middle[1] - first[1]) * direction[0])
    straight = off_line < tol
    radial = bool(np.all(through_centre & straight & (length > 0)))
    return ("radial" if radial else "other"), step


def _slice_numbers(where: Placement, imaging: BoolArray) -> IntArray | None:
    """``SLC`` per window from its slice: the orientations in the order they first appear, each one's slices
    numbered in position order along its slice direction, continuing from the previous orientation's
    (a three-plane localizer: the transverse slices, then the sagittal, then the coronal); ``None`` when
    there is one slice."""
    n = where.position_m.shape[0]
    if n == 0:
        return None
    keys = np.column_stack((where.orientation, np.rint(where.slice_point_m / SLICE_TOLERANCE_M).astype(np.int64)))
    use = imaging if imaging.any() else np.ones(n, dtype=bool)
    distinct, first = np.unique(keys[use], axis=0, return_index=True)
    if distinct.shape[0] < 2:
        return None
    rows = np.flatnonzero(use)[first]
    along = np.sum(where.slice_point_m[rows] * where.slice_normal[rows], axis=1)
    rank = np.empty(distinct.shape[0], dtype=np.int64)
    rank[np.lexsort((along, distinct[:, 0]))] = np.arange(distinct.shape[0])
    # Every window (noise and navigators too) takes the number of the nearest imaging slice of its orientation.
    cost = np.abs(keys[:, np.newaxis, 1:] - distinct[np.newaxis, :, 1:]).sum(axis=2).astype(np.float64)
    cost += np.where(keys[:, np.newaxis, 0] == distinct[np.newaxis, :, 0], 0.0, np.inf)
    nearest = np.argmin(np.where(np.isfinite(cost), cost, np.finfo(np.float64).max), axis=1)
    return rank[nearest].astype(np.int64)


def _steps(k: FloatArray, imaging: BoolArray, fov: float, axis: str = "y") -> tuple[IntArray, float]:
    """Integer k-space steps ``round(k * FOV)`` (FOV estimated from the spacing when not positive), and
    the FOV used (0 if k is not encoded). A grid offset by half a step (k = (i + 1/2) / FOV) is shifted
    down by half a step before rounding, so no two lines round to the same step.

    Without a FOV, only real k-space structure counts: values closer than :data:`K_TOLERANCE_PER_M` are
    one value (the rounding of gradient areas to the raster leaves k off by ~1e-3 1/m where it should be
    0: pypulseq's tse and haste examples), and an axis whose k never leaves that band is not encoded."""
    if k.size == 0:
        return np.zeros(0, np.int64), (fov if fov > 0 else 0.0)
    kk = k[imaging] if imaging.any() else k
    defined = fov > 0
    if not defined:
        step = grid_step(kk)
        if step <= 0:
            return np.zeros(k.size, np.int64), 0.0
        fov = 1.0 / step
    x = k * fov
    xi = kk * fov
    offset = grid_offset(xi)
    off_grid = np.abs(xi - offset - np.round(xi - offset))
    if defined and xi.size and float(off_grid.max()) > GRID_TOLERANCE:
        worst = int(np.argmax(off_grid))
        raise SequenceGeometryError(None, f"the FOV definition ({fov * 1e3:g} mm along {axis}) contradicts the "
                                          f"k-space steps: a readout at k_{axis} = {kk[worst]:.6g} 1/m lies "
                                          f"{float(off_grid[worst]):.2f} of a step off the grid of 1/FOV")
    return np.round(x - offset).astype(np.int64), fov
