"""What the parts of the recon share: its error, the counters that tell images apart, and the acquisitions
with what the raw data say about each (:class:`Inputs`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from ismrmrd import constants as C

from scanctl.data.rawdata import RawData
from scanctl.data.rawdata.mapping import bit
from scanctl.errors import ScanctlError
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence.model import IntArray

FloatImage = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]
#: The counters that tell images apart, outermost first (Pulseq label names).
IMAGE_LABELS = ("REP", "SET", "PHS", "ECO", "SLC")
#: ISMRMRD trajectories whose lines go to their place by their counters (an EPI's is Cartesian too).
CARTESIAN = ("cartesian", "epi")
#: How the channels of an image are combined.
COMBINES = ("rss", "adaptive")


class ReconError(ScanctlError):
    """Acquisitions cannot be reconstructed, or an image file cannot be written (names the file)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(message if path is None else f"{path}: {message}")


@dataclass(frozen=True)
class Inputs:
    """Acquisitions and, per acquisition, what the raw data say beside the samples: the ISMRMRD flag word
    (0 where unknown), the ``position`` (mm, patient LPS) and the ``read_dir``/``phase_dir``/``slice_dir``
    unit vectors (``(n, 3)`` each; zeros and the identity where unknown)."""

    acquisitions: list[Acquisition]
    flags: npt.NDArray[np.uint64]
    position_mm: FloatArray
    read_dir: FloatArray
    phase_dir: FloatArray
    slice_dir: FloatArray

    @classmethod
    def of(cls, acquisitions: list[Acquisition], raw: RawData | None = None) -> Inputs:
        """``acquisitions`` with the flags and geometry of ``raw`` (the file they were read from), else
        none: flags 0, position 0, directions x, y, z. Raises ReconError for a position or direction that is
        not finite."""
        n = len(acquisitions)
        eye = np.eye(3)
        if raw is None or len(raw.acquisitions) != n:
            return cls(acquisitions, np.zeros(n, np.uint64), np.zeros((n, 3)), np.tile(eye[0], (n, 1)),
                       np.tile(eye[1], (n, 1)), np.tile(eye[2], (n, 1)))
        dirs = [_unit_or(getattr(raw, name), eye[axis], n, name) for axis, name in
                enumerate(("read_dir", "phase_dir", "slice_dir"))]
        position = raw.position_mm if raw.position_mm.shape == (n, 3) else np.zeros((n, 3))
        bad = np.flatnonzero(~np.all(np.isfinite(position), axis=1))
        if bad.size:
            raise ReconError(f"acquisition {int(bad[0])}'s position {position[bad[0]].tolist()} is not finite")
        return cls(acquisitions, np.asarray(raw.flags, np.uint64), position, *dirs)

    def has_flag(self, i: int, flag: int) -> bool:
        return bool(int(self.flags[i]) & bit(flag))

    def is_imaging(self, i: int) -> bool:
        """Not noise, navigator or phase-correction data (those are not imaged)."""
        labels = self.acquisitions[i].labels
        return not (labels.get("NOISE", 0) or labels.get("NAV", 0) or self.has_flag(i, C.ACQ_IS_PHASECORR_DATA))

    def is_reference(self, i: int) -> bool:
        """A navigator or phase-correction line (an EPI's odd/even reference)."""
        return bool(self.acquisitions[i].labels.get("NAV", 0)) or self.has_flag(i, C.ACQ_IS_PHASECORR_DATA)

    def is_noise(self, i: int) -> bool:
        return bool(self.acquisitions[i].labels.get("NOISE", 0))


def _unit_or(values: FloatArray, default: FloatArray, n: int, name: str) -> FloatArray:
    """``values`` ``(n, 3)`` normalised, every zero row (as some files leave them) replaced by ``default``.
    Raises ReconError for a row that is not finite."""
    out = np.tile(default, (n, 1))
    if values.shape == (n, 3):
        norm = np.linalg.norm(values, axis=1)
        if not np.all(np.isfinite(norm)):
            i = int(np.flatnonzero(~np.isfinite(norm))[0])
            raise ReconError(f"acquisition {i}'s {name} {values[i].tolist()} is not finite")
        good = norm > 1e-6
        out[good] = values[good] / norm[good, None]
    return out


def label(acq: Acquisition, name: str, fallback: dict[str, IntArray] | None,
          recounted: frozenset[str] = frozenset()) -> int:
    """``acq``'s counter ``name``: its label, else the sequence's (``fallback``, by acquisition index), else 0;
    the sequence's first for a label in ``recounted`` (one the sequence counts against k, ``Encoding.recounted``)."""
    value = acq.labels.get(name)
    if value is not None and name not in recounted:
        return int(value)
    if fallback is not None and name in fallback and 0 <= acq.index < fallback[name].size:
        return int(fallback[name][acq.index])
    return int(value) if value is not None else 0


def as_samples(acq: Acquisition) -> npt.NDArray[Any]:
    """The samples ``(channels, samples)``."""
    return np.atleast_2d(np.asarray(acq.data))
