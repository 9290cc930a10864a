"""Cartesian reconstruction and image files.

:func:`reconstruct` turns acquisitions (from the receiver, or read back with
:func:`scanctl.data.rawdata.read_acquisitions`) into magnitude images: every line goes to its place in
k-space by its ``LIN`` (and ``PAR``) label — or, for a sequence without those labels, by its k-space
trajectory (:func:`scanctl.data.rawdata.sequence_labels`) — repeated lines (``AVG``, or the same line
acquired twice) are averaged, lines never acquired stay zero (an aborted scan still gives an image),
and an inverse FFT per channel is combined by root sum of squares.

Conventions (docs/rawdata.md): the signal is ``s(k) = sum_r rho(r) exp(-2 pi i k.r)``; readout sample
``N // 2`` and line ``centre`` (the header's encoding-limit centre) are k = 0; image pixel ``j`` along an
axis of ``n`` pixels sits at ``(j - n // 2) * FOV / n``. Images are indexed ``[y, x]`` (phase, readout).

:func:`save_png` writes an 8-bit grayscale PNG with the standard library only; :func:`save_npy` the
float32 array.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.data.nufft import grid_image
from scanctl.data.rawdata import RawData, RawHeader, centre_samples, sequence_labels
from scanctl.data.rawdata.encoding import encoding_of, trajectory_samples
from scanctl.errors import ScanctlError
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence.model import IntArray, Sequence

log = logging.getLogger(__name__)

FloatImage = npt.NDArray[np.float32]
#: The counters that tell images apart, outermost first (Pulseq label names).
IMAGE_LABELS = ("REP", "SET", "PHS", "ECO", "SLC")
#: ISMRMRD trajectories whose lines go to their place by their counters (an EPI's is Cartesian too).
CARTESIAN = ("cartesian", "epi")


class ReconError(ScanctlError):
    """Acquisitions cannot be reconstructed, or an image file cannot be written (names the file)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(message if path is None else f"{path}: {message}")


@dataclass(frozen=True)
class _Geometry:
    nx: int
    ny: int
    nz: int
    centre_y: int
    centre_z: int


def reconstruct(acquisitions: Iterable[Acquisition], seq: Sequence | None = None, *,
                header: RawHeader | None = None, centres: Iterable[int] | None = None,
                trajectories: list[npt.NDArray[np.floating[Any]]] | None = None) -> FloatImage:
    """Magnitude images ``(images, ny, nx)`` float32 from Cartesian acquisitions.

    ``images`` runs over slices (2D) or partitions (3D), within every combination of repetition,
    set, phase and contrast present (see :func:`reconstruct_indexed` for which row is which; a
    single-contrast 2D scan gives ``(slices, ny, nx)``). ``header`` gives the matrix and the k-space
    centre (else they come from ``seq``, else from the labels); ``seq`` places acquisitions that carry
    no ``LIN`` label by the trajectory. ``centres`` gives each acquisition's sample at k_x = 0 (as
    :attr:`RawData.centre_samples`); else it comes from ``seq`` (:func:`centre_samples`), else it is
    ``N // 2``. A reversed (``REV``) readout is mirrored about that sample. Noise and navigator
    acquisitions are ignored.

    Non-Cartesian data (the header's trajectory, else the sequence's, is not ``cartesian`` or ``epi``) are gridded
    (:mod:`scanctl.data.nufft`) at ``trajectories`` (one ``(samples, 2)`` array per acquisition, units of
    1/FOV, as the raw data's ``traj``; else from ``seq``) into ``n x n`` images, ``n`` the header's readout
    matrix.

    Raises :class:`ReconError` when there is nothing to reconstruct and no header to size an empty image,
    when acquisitions carry no ``LIN`` label and no sequence is given, or non-Cartesian ones no trajectory
    (or a 3D one).
    """
    return reconstruct_indexed(acquisitions, seq, header=header, centres=centres, trajectories=trajectories)[0]


def reconstruct_raw(raw: RawData, seq: Sequence | None = None) -> FloatImage:
    """:func:`reconstruct` of a file read with :func:`scanctl.data.rawdata.read_acquisitions` (its header,
    centre samples and, for non-Cartesian data, trajectories)."""
    return reconstruct(raw.acquisitions, seq, header=raw.header, centres=raw.centre_samples.tolist(),
                       trajectories=raw.trajectories or None)


def reconstruct_indexed(acquisitions: Iterable[Acquisition], seq: Sequence | None = None, *,
                        header: RawHeader | None = None, centres: Iterable[int] | None = None,
                        trajectories: list[npt.NDArray[np.floating[Any]]] | None = None,
                        ) -> tuple[FloatImage, list[dict[str, int]]]:
    """As :func:`reconstruct`, with the counters of each image row (``REP``, ``SET``, ``PHS``, ``ECO``,
    ``SLC``, and ``PAR`` for 3D)."""
    every = list(acquisitions)
    if header is None and seq is not None:
        header = RawHeader.from_sequence(seq, larmor_hz=0.0)
    if header is not None and header.trajectory not in CARTESIAN:
        return _gridded(every, seq, header, trajectories)
    given = list(centres) if centres is not None else None
    if given is not None and len(given) != len(every):
        raise ReconError(f"{len(given)} centre samples for {len(every)} acquisitions")
    keep = [i for i, a in enumerate(every) if not (a.labels.get("NOISE", 0) or a.labels.get("NAV", 0))]
    acqs = [every[i] for i in keep]
    seq_centres = centre_samples(seq) if given is None and seq is not None else None
    reverse = [_reversed(every[i], seq) for i in keep]
    centre = []
    for i in keep:
        n = int(np.shape(every[i].data)[-1])
        c = n // 2
        if given is not None:
            c = int(given[i])
        elif seq_centres is not None and 0 <= every[i].index < seq_centres.size:
            c = int(seq_centres[every[i].index])
        centre.append(c if 0 <= c < n else n // 2)
    fallback = sequence_labels(seq) if seq is not None else None
    if fallback is None and any("LIN" not in a.labels for a in acqs):
        raise ReconError("acquisitions carry no LIN label: give the sequence to place them by trajectory")
    lin = np.array([_label(a, "LIN", fallback) for a in acqs], dtype=np.int64)
    par = np.array([_label(a, "PAR", fallback) for a in acqs], dtype=np.int64)
    if not acqs and header is None:
        raise ReconError("no imaging acquisitions to reconstruct")
    geo = _geometry(acqs, lin, par, header)
    channels = max((np.atleast_2d(a.data).shape[0] for a in acqs), default=1)

    image_keys = [tuple(_label(a, name, fallback) for name in IMAGE_LABELS) for a in acqs]
    keys = sorted(set(image_keys)) or [(0,) * len(IMAGE_LABELS)]
    slot = {key: i for i, key in enumerate(keys)}
    kspace = np.zeros((len(keys), channels, geo.nz, geo.ny, geo.nx), dtype=np.complex128)
    hits = np.zeros((len(keys), geo.nz, geo.ny, geo.nx), dtype=np.int32)
    rows = lin - geo.centre_y + geo.ny // 2
    planes = par - geo.centre_z + geo.nz // 2
    for a, key, row, plane, c, rev in zip(acqs, image_keys, rows.tolist(), planes.tolist(), centre, reverse,
                                          strict=True):
        data = np.atleast_2d(a.data)
        n = data.shape[1]
        # Sample i of a readout sits at k = (i - c) steps, of a reversed one at k = (c - i); k = 0 goes to
        # column nx // 2. Columns wrap around: on an nx-point grid k = +nx/2 is the same as k = -nx/2.
        if rev:
            data = data[:, ::-1]
            lo = geo.nx // 2 + c - (n - 1)
        else:
            lo = geo.nx // 2 - c
        cols = (lo + np.arange(n)) % geo.nx
        i = slot[key]
        line = kspace[i, :, plane, row]  # a view: (channels, nx)
        line[: data.shape[0], cols] += data
        hits[i, plane, row, cols] += 1
    kspace /= np.maximum(hits, 1)[:, np.newaxis]
    missing = int(np.count_nonzero(hits.max(axis=-1) == 0))
    if missing:
        log.info("recon: %d of %d k-space lines not acquired (left zero)", missing, hits[..., 0].size)

    axes = (-3, -2, -1) if geo.nz > 1 else (-2, -1)
    image = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(kspace, axes=axes), axes=axes), axes=axes)
    magnitude = np.sqrt(np.sum(np.abs(image) ** 2, axis=1))  # root sum of squares over channels
    images = magnitude.reshape(len(keys) * geo.nz, geo.ny, geo.nx).astype(np.float32)
    index = []
    for key in keys:
        for p in range(geo.nz):
            entry = dict(zip(IMAGE_LABELS, key, strict=True))
            if geo.nz > 1:
                entry["PAR"] = p
            index.append(entry)
    return images, index


def _gridded(every: list[Acquisition], seq: Sequence | None, header: RawHeader,
             trajectories: list[npt.NDArray[np.floating[Any]]] | None) -> tuple[FloatImage, list[dict[str, int]]]:
    """Non-Cartesian acquisitions gridded into one ``n x n`` image per combination of the image counters."""
    if trajectories is not None and len(trajectories) != len(every):
        raise ReconError(f"{len(trajectories)} trajectories for {len(every)} acquisitions")
    from_seq = trajectory_samples(seq) if trajectories is None and seq is not None else None
    fallback = sequence_labels(seq) if seq is not None else None
    n = max(int(header.encoded_matrix[0]), 1)
    groups: dict[tuple[int, ...], list[tuple[npt.NDArray[np.float64], npt.NDArray[np.complex128]]]] = {}
    for i, a in enumerate(every):
        if a.labels.get("NOISE", 0) or a.labels.get("NAV", 0):
            continue
        data = np.atleast_2d(np.asarray(a.data, dtype=np.complex128))
        traj = _trajectory_of(a, i, trajectories, from_seq, data.shape[1], header.trajectory)
        key = tuple(_label(a, name, fallback) for name in IMAGE_LABELS)
        groups.setdefault(key, []).append((traj, data))
    if not groups:
        raise ReconError("no imaging acquisitions to reconstruct")
    keys = sorted(groups)
    images = np.zeros((len(keys), n, n), dtype=np.float32)
    for j, key in enumerate(keys):
        k = np.concatenate([t[:, :2] for t, _ in groups[key]])
        kz = np.concatenate([t[:, 2] for t, _ in groups[key] if t.shape[1] > 2] or [np.zeros(1)])
        if np.ptp(kz) > 0:
            raise ReconError(f"{header.trajectory} acquisitions move along k_z: 3D non-Cartesian data are not "
                             "reconstructed (only 2D gridding is)")
        channels = max(d.shape[0] for _, d in groups[key])
        data = np.concatenate([np.pad(d, ((0, channels - d.shape[0]), (0, 0))) for _, d in groups[key]], axis=1)
        complex_images = grid_image(k, data, n)
        images[j] = np.sqrt(np.sum(np.abs(complex_images) ** 2, axis=0))  # root sum of squares over channels
    log.info("recon: %s trajectory, %d image(s) of %d x %d gridded", header.trajectory, len(keys), n, n)
    return images, [dict(zip(IMAGE_LABELS, key, strict=True)) for key in keys]


def _trajectory_of(acq: Acquisition, i: int, given: list[npt.NDArray[np.floating[Any]]] | None,
                   from_seq: list[npt.NDArray[np.float64]] | None, samples: int,
                   kind: str) -> npt.NDArray[np.float64]:
    """Acquisition ``i``'s ``(samples, dimensions)`` k-space positions (units of 1/FOV). Raises ReconError
    when there are none."""
    traj = None
    if given is not None:
        traj = np.asarray(given[i], dtype=np.float64)
    elif from_seq is not None and 0 <= acq.index < len(from_seq):
        traj = from_seq[acq.index]
    if traj is None or traj.ndim != 2 or traj.shape[0] != samples or traj.shape[1] < 2:
        raise ReconError(f"{kind} acquisition {acq.index} has no trajectory of its {samples} samples: a "
                         "non-Cartesian scan is reconstructed from its trajectory (in the raw data, or the sequence)")
    return traj


def _reversed(acq: Acquisition, seq: Sequence | None) -> bool:
    """Whether ``acq``'s readout runs towards -k_x: its ``REV`` label (or flag, read back), else the
    sequence's trajectory (:attr:`Encoding.reverse`), else not."""
    if "REV" in acq.labels or seq is None:
        return bool(acq.labels.get("REV", 0))
    reverse = encoding_of(seq).reverse
    return bool(reverse[acq.index]) if 0 <= acq.index < reverse.size else False


def _label(acq: Acquisition, name: str, fallback: dict[str, IntArray] | None) -> int:
    value = acq.labels.get(name)
    if value is not None:
        return int(value)
    if fallback is not None and name in fallback and 0 <= acq.index < fallback[name].size:
        return int(fallback[name][acq.index])
    return 0


def _geometry(acqs: list[Acquisition], lin: IntArray, par: IntArray, header: RawHeader | None) -> _Geometry:
    """Matrix and k-space centre: the header's where they hold every line, else from the lines."""
    nx = max((int(np.shape(a.data)[-1]) for a in acqs), default=0)
    if header is not None:
        nx = max(nx, header.encoded_matrix[0]) if header.encoded_matrix[0] > 0 else nx
    ny, cy = _axis(lin, header, "kspace_encode_step_1", 1)
    nz, cz = _axis(par, header, "kspace_encode_step_2", 2)
    return _Geometry(max(nx, 1), ny, nz, cy, cz)


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


# ----------------------------------------------------------------------------------------------------------
# Image files
# ----------------------------------------------------------------------------------------------------------


def to_uint8(image: npt.ArrayLike, *, vmin: float | None = None, vmax: float | None = None) -> npt.NDArray[np.uint8]:
    """Scale ``image`` linearly so that ``vmin`` -> 0 and ``vmax`` -> 255 (defaults: 0, or the minimum if
    negative, and the maximum), clipping outside. NaN maps to 0; if ``vmax <= vmin`` every pixel is 0."""
    a = np.asarray(image, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo = float(vmin) if vmin is not None else min(0.0, float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 0.0)
    if not hi > lo:
        return np.zeros(a.shape, dtype=np.uint8)
    scaled = np.nan_to_num((a - lo) * (255.0 / (hi - lo)), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def png_bytes(image: npt.ArrayLike, *, vmin: float | None = None, vmax: float | None = None) -> bytes:
    """An 8-bit grayscale PNG of a 2D image (row 0 at the top; a stack ``(n, ny, nx)`` is tiled with
    :func:`mosaic`), scaled as :func:`to_uint8`."""
    pixels = np.asarray(image)
    if pixels.ndim == 3:
        pixels = mosaic(pixels)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ReconError(f"a PNG needs a non-empty 2D image or (n, ny, nx) stack, got shape {pixels.shape}")
    pixels = pixels if pixels.dtype == np.uint8 and vmin is None and vmax is None else to_uint8(pixels, vmin=vmin,
                                                                                                   vmax=vmax)
    height, width = pixels.shape
    # Each scanline starts with its filter type (0: none).
    raw = np.hstack([np.zeros((height, 1), np.uint8), pixels]).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def save_png(image: npt.ArrayLike, path: str | Path, *, vmin: float | None = None, vmax: float | None = None) -> Path:
    """Write ``image`` (2D, or a stack ``(n, ny, nx)`` tiled by :func:`mosaic`) as an 8-bit grayscale
    PNG. Raises :class:`ReconError`."""
    path = Path(path)
    data = png_bytes(image, vmin=vmin, vmax=vmax)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise ReconError(f"cannot write PNG: {exc.strerror or exc}", path) from exc
    return path


def save_npy(images: npt.ArrayLike, path: str | Path) -> Path:
    """Write the image array as ``.npy`` (exactly at ``path``). Raises :class:`ReconError`."""
    path = Path(path)
    try:
        with path.open("wb") as f:
            np.save(f, np.asarray(images))
    except OSError as exc:
        raise ReconError(f"cannot write array: {exc.strerror or exc}", path) from exc
    return path


def mosaic(images: npt.ArrayLike, columns: int | None = None) -> npt.NDArray[np.float32]:
    """Tile a stack ``(n, ny, nx)`` into one 2D image, ``columns`` wide (default: a near-square grid);
    a 2D image is returned as is."""
    stack = np.asarray(images, dtype=np.float32)
    if stack.ndim == 2:
        return stack
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ReconError(f"a mosaic needs (n, ny, nx) images, got shape {stack.shape}")
    n, ny, nx = stack.shape
    cols = columns if columns is not None else int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.zeros((rows * ny, cols * nx), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx] = stack[i]
    return out


__all__ = [
    "IMAGE_LABELS",
    "ReconError",
    "mosaic",
    "png_bytes",
    "reconstruct",
    "reconstruct_indexed",
    "reconstruct_raw",
    "save_npy",
    "save_png",
    "to_uint8",
]
