"""What a sequence's k-space trajectory says about each of its ADC windows, for the raw data and the recon.

For a sequence that does not say it with labels, :func:`encoding_of` derives from the trajectory (on the
logical axes: x readout, y phase encoding, z partition):

- ``LIN`` / ``PAR``: the window's k_y / k_z at the readout centre, in steps of 1/FOV (docs/rawdata.md);
- the centre sample (k_x = 0) of every window;
- reversal (``ACQ_IS_REVERSE``): the readout runs towards -k_x;
- the trajectory type: ``cartesian`` when every readout moves along k_x alone; else ``radial`` (straight
  spokes through the centre) or ``other``, and then every sample's k (:func:`trajectory_samples`);
- position: the centre of the slice its excitation selects (the pulse's frequency offset over the
  slice-select gradient), and ``SLC`` from it when the sequence sets no such label (slices numbered in
  position order).

Results are cached per sequence object (a :class:`Sequence` is immutable): the header, the writer and the
recon of one scan all ask.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.sequence.labels import label_values
from scanctl.sequence.model import IntArray, Sequence
from scanctl.sequence.waveforms import axis_waveform, kspace_adc, kspace_at, rf_centres

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
#: k-space values (1/m) closer than this are one value when a sequence gives no FOV: half the step of a
#: 1 m FOV, larger than any a scanner images (so no real encoding step is ever merged), and ~100 times the
#: raster rounding of gradient areas that leaves k not quite 0 where it should be.
MAX_FOV_M = 1.0
K_TOLERANCE_PER_M = 0.5 / MAX_FOV_M
#: Fractions of a sample below this are rounding noise in where a readout crosses k_x = 0.
SAMPLE_TOLERANCE = 0.01
#: Slice positions closer than this (m) are the same slice: far below any slice thickness, far above the
#: rounding of a frequency offset written to a file.
SLICE_TOLERANCE_M = 1e-5


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
    position_m: FloatArray  # (windows, 3): the centre of the slice excited before each window (m)
    trajectory: str = "cartesian"  # the ISMRMRD trajectory type: cartesian, radial or other


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
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)
    rows = seq.blocks.adc[adc_blocks]
    n = seq.adc.num_samples[rows].astype(np.int64)
    labels = {name: values[adc_blocks].astype(np.int64) for name, values in label_values(seq).items()}
    imaging = np.ones(adc_blocks.size, dtype=bool)
    for flag in ("NOISE", "NAV"):
        if flag in labels:
            imaging &= labels[flag] == 0
    t_centre = seq.block_start_s[adc_blocks] + seq.adc.delay_s[rows] + (n // 2 + 0.5) * seq.adc.dwell_s[rows]
    k, slope, centre = _readout_centres(seq, t_centre, seq.adc.dwell_s[rows], n)
    moving = slope != 0
    fov_def = seq.definition_floats("FOV")
    fov = [float("nan")] * 3
    if fov_def is not None and len(fov_def) >= 3:
        fov = [float(f) for f in fov_def[:3]]
    position = _slice_positions(seq, t_centre)
    if "SLC" not in labels:
        slices = _slice_numbers(position, imaging)
        if slices is not None:
            labels["SLC"] = slices
    trajectory, step = _trajectory_type(seq, adc_blocks, rows, n, imaging)
    if not (fov[0] > 0):  # readout FOV from the k-space step between two samples
        read = np.abs(slope[imaging & moving]) if trajectory == "cartesian" else step
        fov[0] = 1.0 / float(np.median(read)) if read.size else 0.0
    if trajectory != "cartesian":  # one FOV in the plane; no lines, no partitions: the samples say where
        fov[1] = fov[1] if fov[1] > 0 else fov[0]
        zero = np.zeros(adc_blocks.size, np.int64)
        return Encoding(labels, imaging, n, centre, zero, zero, (fov[0], fov[1], fov[2] if fov[2] > 0 else 0.0),
                        np.zeros(adc_blocks.size, bool), position, trajectory)
    steps_y, fov[1] = _steps(k[1], imaging, fov[1])
    steps_z, fov[2] = _steps(k[2], imaging, fov[2])
    for name, steps in (("LIN", steps_y), ("PAR", steps_z)):
        if name not in labels and (name == "LIN" or np.any(steps[imaging] != 0)):  # PAR only for 3D
            labels[name] = _lines(steps, imaging)
    return Encoding(labels, imaging, n, centre, steps_y, steps_z, (fov[0], fov[1], fov[2]), slope < 0, position)


def _readout_centres(seq: Sequence, t_centre: FloatArray, dwell: FloatArray,
                     n: IntArray) -> tuple[FloatArray, FloatArray, IntArray]:
    """k at each readout's centre sample ``(3, windows)``, the k_x step per sample (0 for a window whose
    readout does not move), and the sample nearest to k_x = 0 (``N // 2`` where it does not move)."""
    if t_centre.size == 0:
        return np.zeros((3, 0)), np.zeros(0), np.zeros(0, np.int64)
    k = kspace_at(seq, t_centre)
    slope = kspace_at(seq, t_centre + dwell)[0] - k[0]
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


def trajectory_samples(seq: Sequence) -> list[FloatArray]:
    """Per ADC window of ``seq``, its samples' k-space positions ``(samples, 2)`` (k_x, k_y) in units of 1/FOV
    (the :attr:`Encoding.fov_m` of x and y), as the raw data's ``traj`` holds them; ``(samples, 3)`` with k_z
    (1/m times the x FOV) when k_z varies by :data:`K_TOLERANCE_PER_M` or more over the imaging windows."""
    enc = encoding_of(seq)
    k = kspace_adc(seq)
    edges = np.concatenate(([0], np.cumsum(enc.num_samples)))
    in_imaging = np.repeat(enc.imaging, enc.num_samples)
    kz = k[2][in_imaging]
    dims = 3 if kz.size and float(np.ptp(kz)) >= K_TOLERANCE_PER_M else 2
    scale = np.array([enc.fov_m[0], enc.fov_m[1], enc.fov_m[0]])[:dims, np.newaxis]
    kk = (k[:dims] * scale).T
    return [kk[a:b] for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]


def _trajectory_type(seq: Sequence, adc_blocks: IntArray, rows: IntArray, n: IntArray,
                     imaging: BoolArray) -> tuple[str, FloatArray]:
    """``cartesian`` when no imaging readout moves in k_y or k_z by :data:`K_TOLERANCE_PER_M` or more from
    its first sample to its last; else ``radial`` if every such readout is a straight line through the
    centre (within one sample step), else ``other``. Also the in-plane k-space step per sample (1/m) of
    each imaging readout that moves."""
    if adc_blocks.size == 0 or not imaging.any():
        return "cartesian", np.zeros(0)
    start = seq.block_start_s[adc_blocks] + seq.adc.delay_s[rows]
    dwell = seq.adc.dwell_s[rows]
    first = kspace_at(seq, start + 0.5 * dwell)[:, imaging]
    last = kspace_at(seq, start + (n - 0.5) * dwell)[:, imaging]
    middle = kspace_at(seq, start + (n // 2 + 0.5) * dwell)[:, imaging]
    span = last - first
    length = np.hypot(span[0], span[1])
    step = length / np.maximum(n[imaging] - 1, 1)
    if not np.any(np.abs(span[1:]) >= K_TOLERANCE_PER_M):
        return "cartesian", step[step > 0]
    step = step[step > 0]
    tol = float(np.median(step)) if step.size else K_TOLERANCE_PER_M
    direction = np.divide(span[:2], length, out=np.zeros_like(span[:2]), where=length > 0)
    through_centre = np.abs(first[0] * direction[1] - first[1] * direction[0]) < tol  # the line's distance to 0
    off_line = np.abs((middle[0] - first[0]) * direction[1] - (middle[1] - first[1]) * direction[0])
    straight = off_line < tol
    radial = bool(np.all(through_centre & straight & (length > 0)))
    return ("radial" if radial else "other"), step


def _slice_positions(seq: Sequence, t_s: FloatArray) -> FloatArray:
    """``(len(t_s), 3)``: the centre (m) of the slice selected by the last excitation before each time:
    the pulse's frequency offset ``f`` (Hz) with the gradient ``G`` (Hz/m) played at its centre selects the
    plane ``G . r = f``, whose point nearest the isocentre is ``f G / |G|^2``. A pulse without a gradient
    (non-selective), and times before any excitation, give the isocentre. (A ``ppm`` offset shifts with the
    chemical shift, not the position: it is not counted.)"""
    out = np.zeros((np.size(t_s), 3))
    t_rf, _, rows = rf_centres(seq)
    use = seq.rf.use[rows]
    exc = (use == ord("e")) | (use == ord("u"))
    if not exc.any() or out.shape[0] == 0:
        return out
    order = np.argsort(t_rf[exc], kind="stable")
    t_exc, f = t_rf[exc][order], seq.rf.freq_hz[rows[exc]][order]
    g = np.stack([axis_waveform(seq, axis).sample(t_exc) for axis in range(3)], axis=1)  # (pulses, 3)
    g2 = np.sum(g * g, axis=1)
    pos = np.divide(f[:, np.newaxis] * g, g2[:, np.newaxis], out=np.zeros_like(g), where=g2[:, np.newaxis] > 0)
    which = np.searchsorted(t_exc, t_s, side="right") - 1
    out[which >= 0] = pos[which[which >= 0]]
    return out


def _slice_numbers(position: FloatArray, imaging: BoolArray) -> IntArray | None:
    """``SLC`` per window from its slice position: slices numbered 0.. in position order along the
    slice normal (the direction from the first to the last slice), ``None`` when there is one slice."""
    if position.shape[0] == 0:
        return None
    keys = np.rint(position / SLICE_TOLERANCE_M).astype(np.int64)
    distinct = np.unique(keys[imaging] if imaging.any() else keys, axis=0)
    if distinct.shape[0] < 2:
        return None
    normal = (distinct[-1] - distinct[0]).astype(np.float64)
    normal *= np.sign(normal[np.argmax(np.abs(normal))])  # along +x, +y or +z, whichever dominates
    rank = np.argsort(np.argsort(distinct @ normal, kind="stable"), kind="stable")
    # Every window (noise and navigators too) takes the number of the nearest imaging slice.
    nearest = np.argmin(np.abs(keys[:, np.newaxis, :] - distinct[np.newaxis]).sum(axis=2), axis=1)
    return rank[nearest].astype(np.int64)


def _steps(k: FloatArray, imaging: BoolArray, fov: float) -> tuple[IntArray, float]:
    """Integer k-space steps ``round(k * FOV)`` (FOV estimated from the spacing when not positive), and
    the FOV used (0 if k is not encoded). A grid offset by half a step (k = (i + 1/2) / FOV) is shifted
    down by half a step before rounding, so no two lines round to the same step.

    Without a FOV, only real k-space structure counts: values closer than :data:`K_TOLERANCE_PER_M` are
    one value (the rounding of gradient areas to the raster leaves k off by ~1e-3 1/m where it should be
    0: pypulseq's tse and haste examples), and an axis whose k never leaves that band is not encoded."""
    if k.size == 0:
        return np.zeros(0, np.int64), (fov if fov > 0 else 0.0)
    kk = k[imaging] if imaging.any() else k
    if not (fov > 0):
        gaps = _distinct_gaps(kk)
        if gaps.size == 0:
            return np.zeros(k.size, np.int64), 0.0
        fov = 1.0 / float(np.median(gaps))
    x = k * fov
    xi = kk * fov
    offset = float(np.angle(np.mean(np.exp(2j * np.pi * xi))) / (2 * np.pi)) if xi.size else 0.0
    if abs(abs(offset) - 0.5) < 0.25:
        offset = 0.5  # a half-step grid: shift every k down by half a step
    elif abs(offset) < 0.25:
        offset = 0.0
    return np.round(x - offset).astype(np.int64), fov


def _distinct_gaps(k: FloatArray) -> FloatArray:
    """The gaps (1/m) between the distinct values of ``k``: values within :data:`K_TOLERANCE_PER_M` of
    their neighbour are one value (the mean of the cluster)."""
    if k.size == 0 or float(np.max(np.abs(k))) < K_TOLERANCE_PER_M:
        return np.zeros(0)
    ordered = np.sort(k)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ordered) > K_TOLERANCE_PER_M) + 1))
    means = np.add.reduceat(ordered, starts) / np.diff(np.concatenate((starts, [ordered.size])))
    return np.diff(means)
