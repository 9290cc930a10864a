"""Cartesian data read along any logical axis (pypulseq's ``write_mprage.py`` reads along z, phase-encodes
along x and y): every sample to its k-space point from the sequence's trajectory.

The raw data now encode such a scan as the Cartesian scan it is (its axes in the order read, phase,
partition: :mod:`scanctl.data.rawdata.encoding`), so its file is reconstructed by its counters like any
other, with or without the sequence. This path images the files written before, whose readouts along y
or z are ``other`` in the header (they do not move in k_x): from the sequence,
each imaging window's k (1/m, on its logical axes) at its samples; the axis that moves during every window is
the readout, its step per sample 1/FOV; the other two stay constant through each window and step on their
own 1/FOV grids (:func:`scanctl.data.rawdata.kgrid.grid_step`). The phase axis (image rows) is
:func:`scanctl.data.rawdata.kgrid.phase_axis`'s (the one the ``LIN`` label counts); the third is the
partition axis (one image per partition, FFT along it). Images ``[phase, read]``; ``image.json`` gets the
axes' own directions (``Frame``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.data.rawdata import sequence_labels
from scanctl.data.rawdata.encoding import encoding_of
from scanctl.data.rawdata.kgrid import frame_axes, grid_offset, grid_step, read_axis
from scanctl.data.recon.cartesian import to_images
from scanctl.data.recon.common import IMAGE_LABELS, ComplexArray, FloatArray, Inputs, as_samples, label
from scanctl.sequence.model import Sequence
from scanctl.sequence.waveforms import adc_sample_times, kspace_at

log = logging.getLogger(__name__)

Key = tuple[int, ...]
#: A readout whose sample steps differ from their median by more than this fraction is not evenly sampled
#: (ramp sampling): not Cartesian, left to the gridding.
EVEN_TOLERANCE = 0.01


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
    axes = frame_axes(read, np.stack([k.mean(axis=1) for k in ks], axis=1), lin)
    read, phase, part = axes
    sizes = [_size(np.concatenate([s[a] for s in steps])) for a in axes]
    return _fill(inputs, seq, keep, steps, Frame(axes, (fov[read], fov[phase], fov[part])), sizes)


def _window_k(seq: Sequence) -> list[FloatArray]:
    """Every ADC window's k ``(3, samples)`` (1/m) on its block's logical axes (the block's rotation turned
    back; the encoding's columns are the block's ``axes``, put back in x, y, z order: the axes of the file's
    directions, which this path is for)."""
    enc = encoding_of(seq)
    t, _ = adc_sample_times(seq)
    if t.size == 0:
        return []
    k = kspace_at(seq, t)
    block = np.empty_like(enc.rotation)
    block[:, :, list(enc.axes)] = enc.rotation
    rotation = np.repeat(block, enc.num_samples, axis=0)  # (samples, 3, 3): scanner <- logical
    k = np.einsum("sji,js->is", rotation, k)
    edges = np.concatenate(([0], np.cumsum(enc.num_samples)))
    return [k[:, a:b] for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]


def _read_axis(ks: list[FloatArray]) -> int | None:
    """The one logical axis every window moves along, evenly sampled; None if there is none such."""
    axis = read_axis(np.stack([k[:, 0] for k in ks], axis=1), np.stack([k[:, -1] for k in ks], axis=1))
    if axis is None:
        return None
    for k in ks:
        step = np.diff(k[axis])
        if np.abs(step - np.median(step)).max() > EVEN_TOLERANCE * abs(float(np.median(step))):
            return None
    return axis


def _grid(ks: list[FloatArray], read: int) -> tuple[list[list[npt.NDArray[np.int64]]], list[float]]:
    """Per window, the integer k-space steps of its samples along each axis (``[x, y, z]``: the read axis
    per sample, the others one value per window), and the FOV along each axis (m; 0 where not encoded)."""
    read_step = float(np.median(np.concatenate([np.abs(np.diff(k[read])) for k in ks])))
    fov = [0.0, 0.0, 0.0]
    fov[read] = 1.0 / read_step
    for a in {0, 1, 2} - {read}:
        step = grid_step(np.array([float(np.mean(k[a])) for k in ks]))
        fov[a] = 1.0 / step if step > 0 else 0.0
    offsets = [grid_offset(np.concatenate([k[a] for k in ks]) * fov[a]) for a in range(3)]
    steps = []
    for k in ks:
        per_axis = []
        for a in range(3):
            values = k[a] if a == read else np.array([np.mean(k[a])])
            per_axis.append(np.round(values * fov[a] - offsets[a]).astype(np.int64))
        steps.append(per_axis)
    return steps, fov


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
