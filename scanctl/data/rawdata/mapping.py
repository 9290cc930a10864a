"""How scanctl's acquisitions map onto ISMRMRD: Pulseq labels to encoding counters and flags, the
first/last flag groups, the time-stamp unit, and each ADC window's labels and k-space centre from a sequence.

The mapping is documented in ``docs/rawdata.md``. :func:`sequence_labels` and :func:`centre_samples` place
the windows of a sequence that carries no ``LIN`` / ``PAR`` labels by its k-space trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from ismrmrd import constants as C

from scanctl.sequence.labels import label_values
from scanctl.sequence.model import IntArray, Sequence
from scanctl.sequence.waveforms import kspace_at

#: Pulseq counter labels and the ISMRMRD encoding counter (``head.idx`` field) each one fills.
LABEL_COUNTERS: dict[str, str] = {
    "LIN": "kspace_encode_step_1",
    "PAR": "kspace_encode_step_2",
    "AVG": "average",
    "SLC": "slice",
    "ECO": "contrast",
    "PHS": "phase",
    "REP": "repetition",
    "SET": "set",
    "SEG": "segment",
}
#: Pulseq flag labels (set when non-zero) and the ISMRMRD acquisition flag (1-based bit) each sets.
#: ``REF`` together with ``IMA`` also sets ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``.
LABEL_FLAGS: dict[str, int] = {
    "NOISE": C.ACQ_IS_NOISE_MEASUREMENT,
    "NAV": C.ACQ_IS_NAVIGATION_DATA,
    "REV": C.ACQ_IS_REVERSE,
    "REF": C.ACQ_IS_PARALLEL_CALIBRATION,
}
#: Pulseq labels that steer how a sequence is played, not what its data are: not stored.
UNSTORED_LABELS = frozenset({"IMA", "SMS", "PMC", "NOROT", "NOPOS", "NOSCL", "ONCE", "TRID"})
#: Unit of ``acquisition_time_stamp`` in the files scanctl writes, and the one assumed for other files.
TIME_STAMP_TICK_S = 1e-6
FOREIGN_TIME_STAMP_TICK_S = 2.5e-3
TICK_PARAMETER = "acquisition_time_stamp_tick_s"
#: ``head.user_int`` slot holding the sequence block index of the acquisition.
USER_INT_BLOCK = 0

COUNTERS = tuple(LABEL_COUNTERS.values())
#: XML ``encodingLimits`` element of each counter (the XML says "encoding", the header "encode").
LIMIT_ELEMENTS = {c: c.replace("encode_step", "encoding_step") for c in ("kspace_encode_step_0", *COUNTERS)}
ORDER = ("kspace_encode_step_1", "kspace_encode_step_2", "average", "slice", "contrast", "phase", "set",
          "repetition")
#: (first flag, last flag, counters that identify the group). The k-space steps mark the first and last
#: acquisition of their loop (each 2D k-space / each volume); the other counters mark the first and last
#: acquisition having each value (within the enclosing counters). See docs/rawdata.md.
FLAG_GROUPS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (C.ACQ_FIRST_IN_ENCODE_STEP1, C.ACQ_LAST_IN_ENCODE_STEP1, ORDER[1:]),
    (C.ACQ_FIRST_IN_ENCODE_STEP2, C.ACQ_LAST_IN_ENCODE_STEP2, ORDER[2:]),
    (C.ACQ_FIRST_IN_AVERAGE, C.ACQ_LAST_IN_AVERAGE, ORDER[2:]),
    (C.ACQ_FIRST_IN_SLICE, C.ACQ_LAST_IN_SLICE, ORDER[3:]),
    (C.ACQ_FIRST_IN_CONTRAST, C.ACQ_LAST_IN_CONTRAST, ORDER[4:]),
    (C.ACQ_FIRST_IN_PHASE, C.ACQ_LAST_IN_PHASE, ORDER[5:]),
    (C.ACQ_FIRST_IN_SET, C.ACQ_LAST_IN_SET, ORDER[6:]),
    (C.ACQ_FIRST_IN_REPETITION, C.ACQ_LAST_IN_REPETITION, ORDER[7:]),
    (C.ACQ_FIRST_IN_SEGMENT, C.ACQ_LAST_IN_SEGMENT, ("segment", *ORDER[2:])),
)
U16_MAX = 0xFFFF
DATASET = "dataset"


def bit(flag: int) -> int:
    """The bit of ISMRMRD ``flag`` (a 1-based ``ismrmrd.ACQ_*`` constant) in a flag word."""
    return 1 << (flag - 1)


def is_set(flags: int | np.integer[Any], flag: int) -> bool:
    """Whether ISMRMRD ``flag`` (a 1-based ``ismrmrd.ACQ_*`` constant) is set in a flag word."""
    return bool(int(flags) & bit(flag))


def channel_mask(channels: int) -> npt.NDArray[np.uint64]:
    """ISMRMRD's channel mask (16 x 64 bits) with channels ``0..channels-1`` active."""
    mask = np.zeros(16, dtype=np.uint64)
    for c in range(min(channels, 1024)):
        mask[c // 64] |= np.uint64(1 << (c % 64))
    return mask


@dataclass(frozen=True)
class Encoding:
    labels: dict[str, IntArray]  # per ADC window, labels (with LIN/PAR from the trajectory if unlabelled)
    imaging: npt.NDArray[np.bool_]  # not a noise or navigator window
    num_samples: IntArray
    centre_sample: IntArray  # the sample of each window nearest to k_x = 0
    steps_y: IntArray  # k-space step of each window's centre along y and z (k * FOV, rounded)
    steps_z: IntArray
    fov_m: tuple[float, float, float]


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
    return Encoding(labels, imaging, n, centre, steps_y, steps_z, (fov[0], fov[1], fov[2]))


def _steps(k: npt.NDArray[np.float64], imaging: npt.NDArray[np.bool_], fov: float) -> tuple[IntArray, float]:
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
