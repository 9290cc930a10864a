"""Cartesian k-space: every line to its place by its counters (or the sequence's trajectory).

Each imaging line goes to row ``LIN - centre + ny // 2`` (and partition ``PAR - centre + nz // 2``) of the
k-space of its image (same ``REP``, ``SET``, ``PHS``, ``ECO``, ``SLC``); along the readout the centre
sample (k_x = 0) goes to column ``nx // 2``, a reversed readout mirrored about it. Repeated lines are
averaged, lines never acquired stay zero (an aborted scan still gives an image).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.data.rawdata import RawHeader, centre_samples, sequence_labels
from scanctl.data.rawdata.encoding import encoding_of
from scanctl.data.recon.common import IMAGE_LABELS, ComplexArray, Inputs, ReconError, as_samples, label
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence.model import IntArray, Sequence

log = logging.getLogger(__name__)

Key = tuple[int, ...]
#: The most complex k-space values the recon allocates (2**28: 4 GiB): a header asking for more is refused.
MAX_VALUES = 1 << 28


@dataclass(frozen=True)
class Matrix:
    """Matrix and the k-space centre (the ``LIN`` / ``PAR`` value at k = 0)."""

    nx: int
    ny: int
    nz: int
    centre_y: int
    centre_z: int


@dataclass
class Line:
    """One readout placed along k_x: ``data`` ``(channels, samples)`` at columns ``cols`` of the row
    ``row`` of partition ``plane``; ``reverse`` when it was read towards -k_x (mirrored already)."""

    key: Key
    plane: int
    row: int
    cols: IntArray
    data: npt.NDArray[np.complexfloating]
    reverse: bool


@dataclass
class KSpace:
    """The k-space of every image volume: ``data`` ``(volumes, channels, nz, ny, nx)``; ``reversed_rows``
    ``(volumes, nz, ny)`` marks rows filled by reversed readouts; ``members`` the acquisitions (indices into
    the inputs) of each volume; ``references`` each volume's navigator / phase-correction lines."""

    keys: list[Key]
    data: ComplexArray
    reversed_rows: npt.NDArray[np.bool_]
    members: list[list[int]]
    references: list[list[Line]]
    matrix: Matrix


def fill(inputs: Inputs, seq: Sequence | None, header: RawHeader | None,
         centres: Iterable[int] | None) -> KSpace:
    """Place the imaging lines of ``inputs`` (see the module). ``centres``: each acquisition's sample at
    k_x = 0 (else the sequence's, else ``N // 2``). Raises ReconError when lines carry no ``LIN`` label
    and no sequence is given, or there is nothing to image and no header to size an empty image."""
    every = inputs.acquisitions
    given = list(centres) if centres is not None else None
    if given is not None and len(given) != len(every):
        raise ReconError(f"{len(given)} centre samples for {len(every)} acquisitions")
    keep = [i for i in range(len(every)) if inputs.is_imaging(i)]
    refs = [i for i in range(len(every)) if inputs.is_reference(i)]
    fallback = sequence_labels(seq) if seq is not None else None
    if fallback is None and any("LIN" not in every[i].labels for i in keep):
        raise ReconError("acquisitions carry no LIN label: give the sequence to place them by trajectory")
    if not keep and header is None:
        raise ReconError("no imaging acquisitions to reconstruct")
    recounted = encoding_of(seq).recounted if seq is not None else frozenset()
    lin = np.array([label(every[i], "LIN", fallback, recounted) for i in keep], dtype=np.int64)
    par = np.array([label(every[i], "PAR", fallback, recounted) for i in keep], dtype=np.int64)
    m = _matrix([every[i] for i in keep], lin, par, header)
    centre = _centres(every, given, seq)
    reverse = _reverse_of(seq)
    moving = np.isfinite(encoding_of(seq).echo_s) if seq is not None else None

    def place(i: int, row: int, plane: int) -> Line:
        a = every[i]
        rev = _reversed(a, reverse, moving)
        data, cols = columns(as_samples(a), centre[i], rev, m.nx)
        key = tuple(label(a, name, fallback) for name in IMAGE_LABELS)
        return Line(key, plane, row, cols, data, rev)

    rows = (lin - m.centre_y + m.ny // 2).tolist()
    planes = (par - m.centre_z + m.nz // 2).tolist()
    lines = [place(i, r, p) for i, r, p in zip(keep, rows, planes, strict=True)]
    keys = sorted({line.key for line in lines}) or [(0,) * len(IMAGE_LABELS)]
    slot = {key: v for v, key in enumerate(keys)}
    channels = max((line.data.shape[0] for line in lines), default=1)
    size = len(keys) * channels * m.nz * m.ny * m.nx
    if size > MAX_VALUES:
        raise ReconError(f"k-space of {len(keys)} image(s) x {channels} channel(s) x {m.nz} x {m.ny} x {m.nx} is "
                         f"too large ({size} values, at most {MAX_VALUES})")
    data = np.zeros((len(keys), channels, m.nz, m.ny, m.nx), dtype=np.complex128)
    hits = np.zeros((len(keys), m.nz, m.ny, m.nx), dtype=np.int32)
    reversed_rows = np.zeros((len(keys), m.nz, m.ny), dtype=bool)
    members: list[list[int]] = [[] for _ in keys]
    for i, line in zip(keep, lines, strict=True):
        v = slot[line.key]
        target = data[v, :, line.plane, line.row]  # a view: (channels, nx)
        target[: line.data.shape[0], line.cols] += line.data
        hits[v, line.plane, line.row, line.cols] += 1
        reversed_rows[v, line.plane, line.row] |= line.reverse
        members[v].append(i)
    data /= np.maximum(hits, 1)[:, np.newaxis]
    missing = int(np.count_nonzero(hits.max(axis=-1) == 0))
    if missing:
        log.info("recon: %d of %d k-space lines not acquired (left zero)", missing, hits[..., 0].size)
    references: list[list[Line]] = [[] for _ in keys]
    for i in refs:
        line = place(i, 0, 0)
        if line.key in slot:
            references[slot[line.key]].append(line)
    return KSpace(keys, data, reversed_rows, members, references, m)


def columns(data: npt.NDArray[np.complexfloating], c: int, reverse: bool,
            nx: int) -> tuple[npt.NDArray[np.complexfloating], IntArray]:
    """A readout's samples in k_x order and the grid columns they go to: sample i of a readout sits at
    k = (i - c) steps, of a reversed one at k = (c - i); k = 0 goes to column nx // 2. Columns wrap around
    (on an nx-point grid k = +nx/2 is k = -nx/2)."""
    n = data.shape[1]
    if reverse:
        data = data[:, ::-1]
        lo = nx // 2 + c - (n - 1)
    else:
        lo = nx // 2 - c
    return data, (lo + np.arange(n)) % nx


def _centres(every: list[Acquisition], given: list[int] | None, seq: Sequence | None) -> list[int]:
    """Each acquisition's sample at k_x = 0: given, else the sequence's, else N // 2 (also where the given
    one lies outside the readout)."""
    from_seq = centre_samples(seq) if given is None and seq is not None else None
    out = []
    for i, a in enumerate(every):
        n = int(np.shape(a.data)[-1])
        c = n // 2
        if given is not None:
            c = int(given[i])
        elif from_seq is not None and 0 <= a.index < from_seq.size:
            c = int(from_seq[a.index])
        out.append(c if 0 <= c < n else n // 2)
    return out


def _reversed(acq: Acquisition, reverse: npt.NDArray[np.bool_] | None,
              moving: npt.NDArray[np.bool_] | None) -> bool:
    """Whether ``acq`` was read towards -k_x: the sequence's trajectory where its readout moves along k_x
    (over a REV label that says otherwise, as the raw data writer), else its REV label, else False."""
    known = reverse is not None and moving is not None and 0 <= acq.index < reverse.size
    if known and (moving[acq.index] or "REV" not in acq.labels):  # type: ignore[index]
        return bool(reverse[acq.index])  # type: ignore[index]
    return bool(acq.labels.get("REV", 0))


def _reverse_of(seq: Sequence | None) -> npt.NDArray[np.bool_] | None:
    """Which windows of ``seq`` read towards -k_x (for acquisitions without a ``REV`` label)."""
    return None if seq is None else encoding_of(seq).reverse


def _matrix(acqs: list[Acquisition], lin: IntArray, par: IntArray, header: RawHeader | None) -> Matrix:
    """Matrix and k-space centre: the header's where they hold every line, else from the lines."""
    nx = max((int(np.shape(a.data)[-1]) for a in acqs), default=0)
    if header is not None:
        nx = max(nx, header.encoded_matrix[0]) if header.encoded_matrix[0] > 0 else nx
    ny, cy = _axis(lin, header, "kspace_encode_step_1", 1)
    nz, cz = _axis(par, header, "kspace_encode_step_2", 2)
    return Matrix(max(nx, 1), ny, nz, cy, cz)


def _axis(values: IntArray, header: RawHeader | None, counter: str, dim: int) -> tuple[int, int]:
    """Size and centre along one phase-encoding axis; grown (symmetrically about the centre) if some
    line would not fit the header's matrix."""
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if header is not None:
        n, centre = max(int(header.encoded_matrix[dim]), 1), header.limit(counter).centre
    else:
        n, centre = 1, (lo + hi + 1) // 2 if hi > lo else lo
    if values.size:
        need = 1 if lo == hi == centre else 2 * max(centre - lo, hi + 1 - centre)
        n = max(n, need)
    return n, centre


def to_images(kspace: ComplexArray) -> ComplexArray:
    """Complex coil images of ``kspace`` ``(..., nz, ny, nx)``: inverse FFT over the encoded axes (k_z too
    when there are partitions), k = 0 at index n // 2 and pixel 0 of n at -n // 2."""
    axes = (-3, -2, -1) if kspace.shape[-3] > 1 else (-2, -1)
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(kspace, axes=axes), axes=axes), axes=axes)
