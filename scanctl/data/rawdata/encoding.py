"""What a sequence's k-space trajectory says about each of its ADC windows, for the raw data and the recon.

For a sequence that does not say it with labels, :func:`encoding_of` derives from the trajectory (on the
logical axes: x readout, y phase encoding, z partition):

- ``LIN`` / ``PAR``: the window's k_y / k_z at the readout centre, in steps of 1/FOV (docs/rawdata.md);
- the centre sample (k_x = 0) of every window;
- reversal (``ACQ_IS_REVERSE``): the readout runs towards -k_x.

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
from scanctl.sequence.waveforms import kspace_at

BoolArray = npt.NDArray[np.bool_]


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
    dwell = seq.adc.dwell_s[rows]
    t_centre = seq.block_start_s[adc_blocks] + seq.adc.delay_s[rows] + (n // 2 + 0.5) * dwell
    if adc_blocks.size:
        k = kspace_at(seq, t_centre)
        slope = kspace_at(seq, t_centre + dwell)[0] - k[0]  # k_x per sample along each readout
    else:
        k, slope = np.zeros((3, 0)), np.zeros(0)
    moving = np.abs(slope) > 1e-9 * max(float(np.max(np.abs(slope), initial=0.0)), 1e-30)
    offset = np.divide(k[0], slope, out=np.zeros_like(slope), where=moving)
    centre = np.where(moving, np.rint(n // 2 - np.clip(offset, -n, n)), n // 2)
    centre = np.clip(centre, 0, np.maximum(n - 1, 0)).astype(np.int64)
    fov_def = seq.definition_floats("FOV")
    fov = [float("nan")] * 3
    if fov_def is not None and len(fov_def) >= 3:
        fov = [float(f) for f in fov_def[:3]]
    if not (fov[0] > 0):  # readout FOV from the k-space step between two samples
        read = np.abs(slope[imaging & moving])
        fov[0] = 1.0 / float(np.median(read)) if read.size else 0.0
    steps_y, fov[1] = _steps(k[1], imaging, fov[1])
    steps_z, fov[2] = _steps(k[2], imaging, fov[2])
    for name, steps in (("LIN", steps_y), ("PAR", steps_z)):
        if name in labels:
            continue
        if name == "PAR" and not np.any(steps[imaging] != 0):
            continue  # 2D: no partition encoding
        img = steps[imaging]
        half = max(-int(img.min()), int(img.max()) + 1) if img.size else 0
        if img.size and img.min() == img.max():
            half = -int(img.min())  # one line: it is line 0
        labels[name] = steps + half
    reverse = moving & (slope < 0)
    return Encoding(labels, imaging, n, centre, steps_y, steps_z, (fov[0], fov[1], fov[2]), reverse)


def _steps(k: npt.NDArray[np.float64], imaging: BoolArray, fov: float) -> tuple[IntArray, float]:
    """Integer k-space steps ``round(k * FOV)`` (FOV estimated from the spacing when not positive), and
    the FOV used (0 if k never varies). A grid offset by half a step (k = (i + 1/2) / FOV) is shifted
    down by half a step before rounding, so no two lines round to the same step."""
    if k.size == 0:
        return np.zeros(0, np.int64), (fov if fov > 0 else 0.0)
    kk = k[imaging] if imaging.any() else k
    if not (fov > 0):
        scale = float(np.max(np.abs(kk))) if kk.size else 0.0
        distinct = np.unique(np.round(kk / scale, 6)) * scale if scale > 0 else np.zeros(1)
        gaps = np.diff(distinct)
        gaps = gaps[gaps > 1e-6 * max(scale, 1e-30)]
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
