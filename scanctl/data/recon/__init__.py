"""Reconstruction of any ISMRMRD data into magnitude images, and the image files.

:func:`reconstruct_file` (or :func:`reconstruct` / :func:`reconstruct_indexed` for acquisitions in memory)
turns acquisitions — from the receiver, or read back with :func:`scanctl.data.rawdata.read_acquisitions`,
ours or another tool's — into images ``(images, ny, nx)`` float32 and where each lies:

- Cartesian data (:mod:`.cartesian`): every line to its place by its ``LIN`` (and ``PAR``) label, or by
  the sequence's trajectory; multi-slice 2D gives one image per slice, 3D one per partition (FFT along k_z);
- EPI (:mod:`.epi`): reversed lines mirrored about their centre sample, then the odd/even phase correction
  (from reference lines, else a linear phase fit in hybrid space);
- Cartesian data read along logical y or z (:mod:`.readaxis`: pypulseq's ``write_mprage.py``): every sample
  placed by the sequence's trajectory, one image per point of the third axis;
- any other trajectory (:mod:`.noncart`): the NUFFT of :mod:`scanctl.data.nufft` with density compensation;
- channels (:mod:`.coils`): root sum of squares by default, adaptive combination (Walsh, prewhitened by
  the noise covariance of the file's noise acquisitions) as an option.

Rows: for every combination of ``REP``, ``SET``, ``PHS``, ``ECO`` present (in that order), the slices in
position order along the slice direction (by ``SLC`` where positions are equal), each 3D slab's partitions
in order. Conventions (docs/rawdata.md, docs/recon.md): ``s(k) = sum_r rho(r) exp(-2 pi i k.r)``; pixel
``j`` of ``n`` along an axis at ``(j - n // 2) * FOV / n``; images ``[y, x]`` (phase, readout).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.data.rawdata import RawData, RawHeader
from scanctl.data.recon import epi
from scanctl.data.recon.cartesian import fill, to_images
from scanctl.data.recon.coils import combine as combine_channels
from scanctl.data.recon.coils import noise_covariance
from scanctl.data.recon.common import (
    CARTESIAN,
    COMBINES,
    IMAGE_LABELS,
    ComplexArray,
    FloatImage,
    Inputs,
    ReconError,
    as_samples,
)
from scanctl.data.recon.images import (
    IMAGE_JSON_FORMAT,
    json_bytes,
    mosaic,
    png_bytes,
    save_json,
    save_npy,
    save_png,
    to_uint8,
)
from scanctl.data.recon.noncart import grid
from scanctl.data.recon.readaxis import Frame, read_along_any_axis
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence.model import Sequence

log = logging.getLogger(__name__)

Trajectories = list[npt.NDArray[np.floating[Any]]]


@dataclass
class Reconstruction:
    """Images ``(rows, ny, nx)`` float32, the counters of each row, and ``meta``: what ``image.json``
    holds (docs/recon.md): per row its counters, position, directions, FOV, matrix, channels and
    combination; the trajectory and whether the scan is 3D."""

    images: FloatImage
    index: list[dict[str, int]]
    meta: dict[str, Any] = field(default_factory=dict)


def reconstruct_file(raw: RawData, seq: Sequence | None = None, *, combine: str = "rss",
                     noise: npt.ArrayLike | None = None, epi_correction: bool = True) -> Reconstruction:
    """The reconstruction of a file read with :func:`scanctl.data.rawdata.read_acquisitions`, with its
    header, centre samples, trajectories, flags and geometry (see :func:`reconstruct_indexed`)."""
    return _reconstruct(Inputs.of(raw.acquisitions, raw), seq, raw.header, raw.centre_samples.tolist(),
                        _file_trajectories(raw), combine, noise, epi_correction)


def reconstruct(acquisitions: Iterable[Acquisition], seq: Sequence | None = None, *,
                header: RawHeader | None = None, centres: Iterable[int] | None = None,
                trajectories: Trajectories | None = None, combine: str = "rss",
                epi_correction: bool = True) -> FloatImage:
    """Magnitude images ``(images, ny, nx)`` float32 (see :func:`reconstruct_indexed`)."""
    return reconstruct_indexed(acquisitions, seq, header=header, centres=centres, trajectories=trajectories,
                               combine=combine, epi_correction=epi_correction)[0]


def reconstruct_raw(raw: RawData, seq: Sequence | None = None, *, combine: str = "rss") -> FloatImage:
    """:func:`reconstruct_file`'s images."""
    return reconstruct_file(raw, seq, combine=combine).images


def reconstruct_indexed(acquisitions: Iterable[Acquisition], seq: Sequence | None = None, *,
                        header: RawHeader | None = None, centres: Iterable[int] | None = None,
                        trajectories: Trajectories | None = None, combine: str = "rss",
                        epi_correction: bool = True) -> tuple[FloatImage, list[dict[str, int]]]:
    """Images ``(images, ny, nx)`` float32 and the counters of each row (``REP``, ``SET``, ``PHS``,
    ``ECO``, ``SLC``, and ``PAR`` for 3D).

    ``header`` gives the matrix, the k-space centre and the trajectory (else they come from ``seq``, else
    from the labels); ``seq`` places acquisitions that carry no ``LIN`` label by the trajectory. ``centres``
    gives each acquisition's sample at k_x = 0 (as :attr:`RawData.centre_samples`; else the sequence's,
    else ``N // 2``). Non-Cartesian data are gridded at ``trajectories`` (one ``(samples, 2)`` array per
    acquisition, units of 1/FOV, as the raw data's ``traj``; else the sequence's) into ``n x n`` images,
    ``n`` the header's readout matrix. ``combine``: ``rss`` or ``adaptive``. Noise, navigator and
    phase-correction acquisitions are not imaged.

    Raises :class:`ReconError` when there is nothing to reconstruct and no header to size an empty image,
    when acquisitions carry no ``LIN`` label and no sequence is given, non-Cartesian ones no trajectory
    (or a 3D one), or ``combine`` is unknown.
    """
    result = _reconstruct(Inputs.of(list(acquisitions)), seq, header, centres, trajectories, combine, None,
                          epi_correction)
    return result.images, result.index


def _file_trajectories(raw: RawData) -> Trajectories | None:
    return raw.trajectories if raw.trajectories and any(t.size for t in raw.trajectories) else None


def _reconstruct(inputs: Inputs, seq: Sequence | None, header: RawHeader | None, centres: Iterable[int] | None,
                 trajectories: Trajectories | None, combine: str, noise: npt.ArrayLike | None,
                 epi_correction: bool) -> Reconstruction:
    if combine not in COMBINES:
        raise ReconError(f"unknown coil combination {combine!r}: one of {', '.join(COMBINES)}")
    if header is None and seq is not None:
        header = RawHeader.from_sequence(seq, larmor_hz=0.0)
    trajectory = header.trajectory if header is not None else "cartesian"
    nz = 1
    along = read_along_any_axis(inputs, seq) if trajectory not in CARTESIAN else None
    if along is not None:  # Cartesian, read along another logical axis (pypulseq's write_mprage.py: z)
        trajectory = "cartesian"
        keys, coil_images, members = along.keys, along.images, along.members
        nz = coil_images[0].shape[1]
    elif trajectory not in CARTESIAN:
        keys, coil_images, members = grid(inputs, seq, header, trajectories)  # type: ignore[arg-type]
    else:
        kspace = fill(inputs, seq, header, centres)
        corrected = epi.correct(kspace) if epi_correction else []
        if any(corrected) or (kspace.reversed_rows.any() and (~kspace.reversed_rows).any()):
            trajectory = "epi"  # lines read both ways
        keys, members, nz = kspace.keys, kspace.members, kspace.matrix.nz
        coil_images = list(to_images(kspace.data))
    if combine == "adaptive" and noise is None:
        noise = noise_covariance([as_samples(inputs.acquisitions[i]) for i in range(len(inputs.acquisitions))
                                  if inputs.is_noise(i)])
    channels = max((c.shape[0] for c in coil_images), default=1)
    order = _slice_order(inputs, keys, members)
    stack, index, rows = [], [], []
    for v in order:
        magnitude = combine_channels(coil_images[v], combine, _fitting(noise, coil_images[v].shape[0]))
        for p in range(magnitude.shape[0]):
            stack.append(magnitude[p])
            entry = dict(zip(IMAGE_LABELS, keys[v], strict=True))
            if nz > 1:
                entry["PAR"] = p
            index.append(entry)
            rows.append(_image_geometry(inputs, header, members[v], p, nz, magnitude.shape[1:],
                                        along.frame if along is not None else None))
    images = np.asarray(stack, dtype=np.float32).reshape(len(stack), *coil_images[0].shape[-2:])
    how = "single" if channels == 1 else combine
    meta = {"format": IMAGE_JSON_FORMAT,
            "images": [{"row": r, "counters": {"SLC": 0, "PAR": 0, "ECO": 0, "REP": 0, "SET": 0, "PHS": 0, **i},
                        **g, "channels": channels, "combine": how} for r, (i, g) in enumerate(zip(index, rows,
                                                                                                   strict=True))],
            "trajectory": trajectory, "three_d": nz > 1}
    return Reconstruction(images, index, meta)


def _fitting(noise: npt.ArrayLike | None, channels: int) -> npt.ArrayLike | None:
    """The noise covariance if it is one for ``channels`` channels (noise scans of another coil: none)."""
    if noise is None or np.shape(noise) != (channels, channels):
        if noise is not None:
            log.warning("recon: noise covariance of shape %s for %d channels: not prewhitened", np.shape(noise),
                        channels)
        return None
    return noise


def _slice_order(inputs: Inputs, keys: list[tuple[int, ...]], members: list[list[int]]) -> list[int]:
    """Volume order: by ``REP``, ``SET``, ``PHS``, ``ECO``, then the position along the slice direction,
    then ``SLC``."""
    def where(v: int) -> float:
        if not members[v]:
            return 0.0
        i = members[v][0]
        return float(np.dot(np.mean(inputs.position_mm[members[v]], axis=0), inputs.slice_dir[i]))

    return sorted(range(len(keys)), key=lambda v: (*keys[v][:-1], round(where(v), 6), keys[v][-1]))


def _image_geometry(inputs: Inputs, header: RawHeader | None, members: list[int], p: int, nz: int,
                    shape: tuple[int, ...], frame: Frame | None = None) -> dict[str, Any]:
    """``image.json``'s geometry of partition ``p`` of ``nz`` of the volume acquired by ``members``: the
    volume's mean position (mm) moved along the slice direction to the partition's centre, the first
    acquisition's directions, the header's FOV (mm; the third: slice or partition thickness). With a
    ``frame`` (a readout along another logical axis): the directions and FOVs of its read, phase and
    partition axes."""
    i = members[0] if members else None
    position = np.mean(inputs.position_mm[members], axis=0) if members else np.zeros(3)
    logical = ((inputs.read_dir[i], inputs.phase_dir[i], inputs.slice_dir[i]) if i is not None
               else tuple(np.eye(3)))
    fov_m = header.fov_m if header is not None else (0.0, 0.0, 0.0)
    if frame is not None:
        logical = tuple(logical[a] for a in frame.axes)
        fov_m = frame.fov_m
    read, phase, normal = logical
    fov = np.asarray(fov_m, dtype=np.float64) * 1e3
    thickness = fov[2] / nz
    position = position + (p - nz // 2) * thickness * normal
    return {"position_mm": _floats(position), "read_dir": _floats(read), "phase_dir": _floats(phase),
            "slice_dir": _floats(normal), "fov_mm": _floats((fov[0], fov[1], thickness)),
            "matrix": [int(shape[-1]), int(shape[-2])]}


def _floats(values: Any) -> list[float]:
    return [round(float(v), 6) for v in np.ravel(values)]


__all__ = [
    "IMAGE_LABELS",
    "ComplexArray",
    "ReconError",
    "Reconstruction",
    "json_bytes",
    "mosaic",
    "png_bytes",
    "reconstruct",
    "reconstruct_file",
    "reconstruct_indexed",
    "reconstruct_raw",
    "save_json",
    "save_npy",
    "save_png",
    "to_uint8",
]
