"""Cartesian data read along any logical axis (pypulseq's ``write_mprage.py`` reads along z, phase-encodes
along x and y): every sample to its k-space point from the sequence's trajectory.

The raw data's Cartesian path places lines by ``LIN`` / ``PAR`` along a readout on logical x; data whose
readout runs along y or z is ``other`` in the raw data (it does not move in k_x). Here, from the sequence:
each imaging window's k (1/m, on its logical axes) at its samples; the axis that moves during every window is
the readout, its step per sample 1/FOV; the other two stay constant through each window and step on their
own 1/FOV grids (the smallest gap between their distinct values). The phase axis (image rows) is the one the
``LIN`` label counts, else logical y, else z; the third is the partition axis (one image per partition,
FFT along it). Images ``[phase, read]``; ``image.json`` gets the axes' own directions (``Frame``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.data.rawdata import sequence_labels
from scanctl.data.rawdata.encoding import encoding_of
from scanctl.data.recon.cartesian import to_images
from scanctl.data.recon.common import IMAGE_LABELS, ComplexArray, FloatArray, Inputs, as_samples, label
from scanctl.sequence.model import Sequence
from scanctl.sequence.waveforms import adc_sample_times, kspace_at

log = logging.getLogger(__name__)

Key = tuple[int, ...]
#: k-space values (1/m) closer than this are one value (the raster rounding of gradient areas; half the
#: step of a 1 m FOV), and an axis that varies less than this through a window does not move in it.
K_TOLERANCE_PER_M = 0.5
#: A readout whose sample steps differ from their median by more than this fraction is not evenly sampled
#: (ramp sampling): not Cartesian, left to the gridding.
EVEN_TOLERANCE = 0.01
#: Preferred phase axis (logical y, then z, then x) when the ``LIN`` label does not say.
PHASE_PREFERENCE = (1, 2, 0)


@dataclass(frozen=True)
class Frame:
    """The logical axes (0 x, 1 y, 2 z) of the image's columns (read), rows (phase) and partitions, and the
    FOV along each (m; the partitions' whole FOV)."""

    axes: tuple[int, int, int]
    fov_m: tuple[float, float, float]


@dataclass(frozen=True)
class AxisVolumes:
    """Per image volume: its counters, complex coil images ``(channels, partitions, rows, columns)`` and
    acquisitions (indices into the inputs); the frame they share."""

    keys: list[Key]
    images: list[ComplexArray]
    members: list[list[int]]
    frame: Frame


def read_along_any_axis(inputs: Inputs, seq: Sequence | None) -> AxisVolumes | None:
    """The volumes of ``inputs`` if the sequence reads every imaging window along one logical axis, evenly
    sampled, the other two constant through each window (see the module); None when it does not, or there
    is no sequence, no imaging window of it, or an acquisition that is no window of it or has not the
    window's samples (the other paths then decide: a file's own trajectories need no sequence)."""
    if seq is None:
        return None
    keep = [i for i in range(len(inputs.acquisitions)) if inputs.is_imaging(i)]
    windows = _window_k(seq)
    if not keep or not windows:
        return None
    ks = []
    for i in keep:
        a = inputs.acquisitions[i]
        if not 0 <= a.index < len(windows) or windows[a.index].shape[1] != as_samples(a).shape[1]:
            return None
        ks.append(windows[a.index])
    read = _read_axis(ks)
    if read is None:
        return None
    steps, fov = _grid(ks, read)
    fallback = sequence_labels(seq)
    lin = np.array([label(inputs.acquisitions[i], "LIN", fallback) for i in keep])
    phase = _phase_axis(read, steps, lin)
    part = 3 - read - phase
    axes = (read, phase, part)
    sizes = [_size(np.concatenate([s[a] for s in steps])) for a in axes]
    return _fill(inputs, seq, keep, steps, Frame(axes, (fov[read], fov[phase], fov[part])), sizes)


def _window_k(seq: Sequence) -> list[FloatArray]:
    """Every ADC window's k ``(3, samples)`` (1/m) on its logical axes (the block's rotation turned back)."""
    enc = encoding_of(seq)
    t, _ = adc_sample_times(seq)
    if t.size == 0:
        return []
    k = kspace_at(seq, t)
    rotation = np.repeat(enc.rotation, enc.num_samples, axis=0)  # (samples, 3, 3): scanner <- logical
    k = np.einsum("sji,js->is", rotation, k)
    edges = np.concatenate(([0], np.cumsum(enc.num_samples)))
    return [k[:, a:b] for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]


def _read_axis(ks: list[FloatArray]) -> int | None:
    """The one logical axis every window moves along, evenly sampled; None if there is none such."""
    moving = {tuple(np.flatnonzero(np.ptp(k, axis=1) >= K_TOLERANCE_PER_M).tolist()) for k in ks}
    if len(moving) != 1:
        return None
    (axes,) = moving
    if len(axes) != 1:
        return None
    for k in ks:
        step = np.diff(k[axes[0]])
        if np.abs(step - np.median(step)).max() > EVEN_TOLERANCE * abs(float(np.median(step))):
            return None
    return int(axes[0])


def _grid(ks: list[FloatArray], read: int) -> tuple[list[list[npt.NDArray[np.int64]]], list[float]]:
    """Per window, the integer k-space steps of its samples along each axis (``[x, y, z]``: the read axis
    per sample, the others one value per window), and the FOV along each axis (m; 0 where not encoded)."""
    read_step = float(np.median(np.concatenate([np.abs(np.diff(k[read])) for k in ks])))
    fov = [0.0, 0.0, 0.0]
    fov[read] = 1.0 / read_step
    for a in {0, 1, 2} - {read}:
        gaps = _distinct_gaps(np.array([float(np.mean(k[a])) for k in ks]))
        fov[a] = 1.0 / float(gaps.min()) if gaps.size else 0.0
    offsets = [_offset(np.concatenate([k[a] for k in ks]) * fov[a]) for a in range(3)]
    steps = []
    for k in ks:
        per_axis = []
        for a in range(3):
            values = k[a] if a == read else np.array([np.mean(k[a])])
            per_axis.append(np.round(values * fov[a] - offsets[a]).astype(np.int64))
        steps.append(per_axis)
    return steps, fov


def _offset(x: FloatArray) -> float:
    """0, or 0.5 for k on a half-step grid (k = (i + 1/2) / FOV): then shifted down by half a step, so no two
    points round to the same step."""
    if not x.size or not np.any(x):
        return 0.0
    offset = float(np.angle(np.mean(np.exp(2j * np.pi * x))) / (2 * np.pi))
    return 0.5 if abs(abs(offset) - 0.5) < 0.25 else 0.0


def _distinct_gaps(k: FloatArray) -> FloatArray:
    """The gaps (1/m) between the distinct values of ``k`` (values within :data:`K_TOLERANCE_PER_M` of their
    neighbour are one)."""
    ordered = np.sort(k)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ordered) > K_TOLERANCE_PER_M) + 1))
    means = np.add.reduceat(ordered, starts) / np.diff(np.concatenate((starts, [ordered.size])))
    return np.diff(means)


def _phase_axis(read: int, steps: list[list[npt.NDArray[np.int64]]], lin: npt.NDArray[np.int64]) -> int:
    """The axis of the image rows: the encoded one whose step the ``LIN`` label determines (one step per
    ``LIN`` value), if just one of the two does; else the first of :data:`PHASE_PREFERENCE`."""
    others = [a for a in PHASE_PREFERENCE if a != read]
    counted = []
    for a in others:
        values = np.array([s[a][0] for s in steps])
        pairs = np.unique(np.column_stack((lin, values)), axis=0)
        if np.unique(values).size > 1 and pairs.shape[0] == np.unique(lin).size:
            counted.append(a)
    return counted[0] if len(counted) == 1 else others[0]


def _size(steps: npt.NDArray[np.int64]) -> int:
    """Points along an axis (step 0 at index n // 2) holding every step: ``2 · max(-lo, hi)``, so that a scan
    stepping from +N/2 down to -N/2 + 1 (pypulseq's ``write_mprage.py``) is N points, +N/2 the alias of -N/2
    on that grid (as the raw data's lines counted against k, docs/recon.md); more where the steps span more."""
    lo, hi = int(steps.min()), int(steps.max())
    return max(2 * max(-lo, hi), hi - lo + 1)


def _fill(inputs: Inputs, seq: Sequence, keep: list[int], steps: list[list[npt.NDArray[np.int64]]], frame: Frame,
          sizes: list[int]) -> AxisVolumes:
    """The k-space of every volume (same counters), samples averaged where repeated, and its coil images."""
    fallback = sequence_labels(seq)
    read, phase, part = frame.axes
    n_read, n_phase, n_part = sizes
    groups: dict[Key, list[int]] = {}
    for j, i in enumerate(keep):
        groups.setdefault(tuple(label(inputs.acquisitions[i], name, fallback) for name in IMAGE_LABELS), []).append(j)
    keys = sorted(groups)
    volumes, members = [], []
    for key in keys:
        data = [as_samples(inputs.acquisitions[keep[j]]) for j in groups[key]]
        channels = max(d.shape[0] for d in data)
        kspace = np.zeros((channels, n_part, n_phase, n_read), np.complex128)
        hits = np.zeros((n_part, n_phase, n_read), np.int32)
        for j, d in zip(groups[key], data, strict=True):
            s = steps[j]
            cols = (s[read] + n_read // 2) % n_read
            row, plane = (int(s[phase][0]) + n_phase // 2) % n_phase, (int(s[part][0]) + n_part // 2) % n_part
            target = kspace[: d.shape[0], plane, row]  # (channels, read): each channel's samples at cols
            for c in range(d.shape[0]):
                np.add.at(target[c], cols, d[c])
            np.add.at(hits[plane, row], cols, 1)
        kspace /= np.maximum(hits, 1)
        volumes.append(to_images(kspace))
        members.append([keep[j] for j in groups[key]])
    log.info("recon: read along logical %s, phase %s, partitions %s: %d volume(s) of %d x %d x %d",
             "xyz"[read], "xyz"[phase], "xyz"[part], len(keys), n_part, n_phase, n_read)
    return AxisVolumes(keys, volumes, members, frame)
