"""The one in-memory sequence model: columnar numpy tables over blocks and events (Pulseq's model).

Blocks are rows of :class:`Blocks`; each event column holds a *row index* into its event table
(``-1`` = no event), never a per-block Python object. Event tables keep the file's ids for writing.
Shapes are stored once, decompressed, in one flat buffer with offsets.

Units are SI throughout: seconds, Hz, Hz/m (gradients, as Pulseq stores them), radians.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Gradient ``time_shape`` codes besides a shape row index.
TIME_DEFAULT = -1  # samples at the centre of each gradient raster interval
TIME_OVERSAMPLED = -2  # Pulseq time_id -1: samples on the half gradient raster, edges included

#: RF ``use`` initials (Pulseq 1.5) and what they mean.
RF_USES = {
    "e": "excitation",
    "r": "refocusing",
    "i": "inversion",
    "s": "saturation",
    "p": "preparation",
    "o": "other",
    "u": "undefined",
}


@dataclass(frozen=True, eq=False)
class Rasters:
    """The time rasters a sequence is defined on (seconds)."""

    gradient_s: float = 10e-6
    rf_s: float = 1e-6
    adc_s: float = 100e-9
    block_duration_s: float = 10e-6


@dataclass(frozen=True, eq=False)
class Shapes:
    """Decompressed shapes: ``samples[offsets[k]:offsets[k+1]]`` is the shape with file id ``id[k]``."""

    id: IntArray
    offsets: IntArray
    samples: FloatArray

    def __len__(self) -> int:
        return int(self.id.size)

    def get(self, row: int) -> FloatArray:
        return self.samples[self.offsets[row] : self.offsets[row + 1]]

    def length(self, rows: IntArray) -> IntArray:
        return self.offsets[rows + 1] - self.offsets[rows]


@dataclass(frozen=True, eq=False)
class RFEvents:
    """RF pulses. ``*_shape`` are rows of :class:`Shapes` (``time_shape`` -1: default RF raster)."""

    id: IntArray
    amplitude_hz: FloatArray
    mag_shape: IntArray
    phase_shape: IntArray
    time_shape: IntArray
    center_s: FloatArray
    delay_s: FloatArray
    freq_ppm: FloatArray
    phase_ppm: FloatArray
    freq_hz: FloatArray
    phase_rad: FloatArray
    use: npt.NDArray[np.uint8]  # ASCII initial, see RF_USES


@dataclass(frozen=True, eq=False)
class GradEvents:
    """Trapezoid and arbitrary gradients in one table (``is_trap`` tells which fields apply).

    Amplitudes in Hz/m. Arbitrary gradients: ``shape`` row, ``time_shape`` row or TIME_DEFAULT /
    TIME_OVERSAMPLED, ``first``/``last`` the values at the start and end of the waveform.
    """

    id: IntArray
    is_trap: npt.NDArray[np.bool_]
    amplitude_hz_per_m: FloatArray
    rise_s: FloatArray
    flat_s: FloatArray
    fall_s: FloatArray
    delay_s: FloatArray
    first_hz_per_m: FloatArray
    last_hz_per_m: FloatArray
    shape: IntArray
    time_shape: IntArray


@dataclass(frozen=True, eq=False)
class ADCEvents:
    """Receiver windows; ``phase_shape`` is a shape row or -1."""

    id: IntArray
    num_samples: IntArray
    dwell_s: FloatArray
    delay_s: FloatArray
    freq_ppm: FloatArray
    phase_ppm: FloatArray
    freq_hz: FloatArray
    phase_rad: FloatArray
    phase_shape: IntArray


@dataclass(frozen=True, eq=False)
class ExtensionSpec:
    """One extension's table (``extension NAME TYPE_ID``): ids and named columns (numbers or strings)."""

    name: str
    type_id: int
    id: IntArray
    columns: dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True, eq=False)
class Extensions:
    """The [EXTENSIONS] linked lists and the specifications they point to.

    A list entry row ``r`` has ``type_id[r]``, ``ref[r]`` (an id in that extension's table) and
    ``next[r]`` (row of the next entry, -1 at the end).
    """

    id: IntArray
    type_id: IntArray
    ref: IntArray
    next: IntArray
    specs: dict[str, ExtensionSpec]

    @staticmethod
    def empty() -> Extensions:
        z = np.zeros(0, dtype=np.int64)
        return Extensions(z, z, z, z, {})

    def entries(self, list_rows: IntArray, name: str) -> tuple[IntArray, IntArray]:
        """For each element of ``list_rows`` (an extension-list head row, or -1), the spec rows of type ``name``.

        Returns ``(which, spec_row)``: ``which`` indexes ``list_rows``. Lists are walked once per distinct head.
        """
        spec = self.specs.get(name)
        empty = np.zeros(0, dtype=np.int64)
        if spec is None or list_rows.size == 0:
            return empty, empty
        heads, inverse = np.unique(list_rows, return_inverse=True)
        per_head: list[list[int]] = []
        id_to_row = {int(i): r for r, i in enumerate(spec.id.tolist())}
        for head in heads.tolist():
            found: list[int] = []
            row = head
            while row >= 0:
                if self.type_id[row] == spec.type_id:
                    found.append(id_to_row[int(self.ref[row])])
                row = int(self.next[row])
            per_head.append(found)
        counts = np.array([len(f) for f in per_head], dtype=np.int64)
        flat = np.array([r for f in per_head for r in f], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        n = counts[inverse]
        which = np.repeat(np.arange(list_rows.size), n)
        starts = np.repeat(offsets[inverse], n)
        pos = np.arange(which.size) - np.repeat(np.cumsum(n) - n, n)
        return which, flat[starts + pos] if flat.size else empty


@dataclass(frozen=True, eq=False)
class Blocks:
    """The block table, in play order. Event columns are row indices (-1: none)."""

    id: IntArray
    duration_ticks: IntArray  # in units of Rasters.block_duration_s
    rf: IntArray
    grad: IntArray  # shape (n, 3): x, y, z
    adc: IntArray
    ext: IntArray  # head row in Extensions, -1: none

    def __len__(self) -> int:
        return int(self.id.size)


@dataclass(frozen=True, eq=False)
class Sequence:
    """A complete sequence. Build one with :func:`scanctl.sequence.pulseq.read` or a builder."""

    version: tuple[int, int, int]
    definitions: dict[str, str]
    rasters: Rasters
    blocks: Blocks
    rf: RFEvents
    grad: GradEvents
    adc: ADCEvents
    shapes: Shapes
    extensions: Extensions = field(default_factory=Extensions.empty)
    signature: str | None = None  # the MD5 the file carried, if any

    # -- block timing -------------------------------------------------------------------------------
    @cached_property
    def block_duration_s(self) -> FloatArray:
        return self.blocks.duration_ticks * np.float64(self.rasters.block_duration_s)

    @cached_property
    def block_start_s(self) -> FloatArray:
        """Start time of every block; one extra element at the end is the total duration."""
        ticks = np.concatenate(([0], np.cumsum(self.blocks.duration_ticks)))
        return ticks * self.rasters.block_duration_s

    @property
    def duration_s(self) -> float:
        return float(self.block_start_s[-1])

    def definition_floats(self, key: str) -> tuple[float, ...] | None:
        """A definition parsed as numbers, or ``None`` if absent or not numeric."""
        text = self.definitions.get(key)
        if text is None:
            return None
        try:
            return tuple(float(t) for t in text.split())
        except ValueError:
            return None
