"""Non-Cartesian acquisitions (radial, spiral, ...): the samples of each image (same ``REP``, ``SET``,
``PHS``, ``ECO``, ``SLC``), at their ``traj`` (or the sequence's trajectory), into one ``n x n`` complex
image per channel by the NUFFT of :mod:`scanctl.data.nufft` (FINUFFT, Pipe–Menon density compensation)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.data.nufft import grid_image
from scanctl.data.rawdata import RawHeader, sequence_labels
from scanctl.data.rawdata.encoding import trajectory_samples
from scanctl.data.recon.common import IMAGE_LABELS, ComplexArray, Inputs, ReconError, as_samples, label
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence.model import Sequence

log = logging.getLogger(__name__)

Key = tuple[int, ...]


def grid(inputs: Inputs, seq: Sequence | None, header: RawHeader,
         trajectories: list[npt.NDArray[np.floating[Any]]] | None,
         ) -> tuple[list[Key], list[ComplexArray], list[list[int]]]:
    """Per image: its counters, its complex coil images ``(channels, 1, n, n)`` and its acquisitions
    (indices into ``inputs``). Raises ReconError when an acquisition has no trajectory, k_z varies (3D
    non-Cartesian data), the readouts do not move in k_x / k_y (a readout along z without the sequence that
    places it, :mod:`.readaxis`), or there is nothing to image."""
    every = inputs.acquisitions
    if trajectories is not None and len(trajectories) != len(every):
        raise ReconError(f"{len(trajectories)} trajectories for {len(every)} acquisitions")
    from_seq = trajectory_samples(seq) if trajectories is None and seq is not None else None
    fallback = sequence_labels(seq) if seq is not None else None
    n = max(int(header.encoded_matrix[0]), 1)
    groups: dict[Key, list[int]] = {}
    for i, a in enumerate(every):
        if inputs.is_imaging(i):
            groups.setdefault(tuple(label(a, name, fallback) for name in IMAGE_LABELS), []).append(i)
    if not groups:
        raise ReconError("no imaging acquisitions to reconstruct")
    keys = sorted(groups)
    images = []
    for key in keys:
        members = groups[key]
        data = [as_samples(every[i]).astype(np.complex128) for i in members]
        trajs = [_trajectory_of(every[i], i, trajectories, from_seq, d.shape[1], header.trajectory)
                 for i, d in zip(members, data, strict=True)]
        k = np.concatenate([t[:, :2] for t in trajs])
        if not np.any(np.ptp(k, axis=0) > 0):  # nothing to grid in the plane: an image of it would be noise
            raise ReconError(f"{header.trajectory} acquisitions do not move in k_x or k_y: a readout along the "
                             "slice axis (z: pypulseq's write_mprage.py reads along z) is placed by the "
                             "sequence's trajectory: give the sequence (scanctl recon --seq FILE)")
        kz = np.concatenate([t[:, 2] for t in trajs if t.shape[1] > 2] or [np.zeros(1)])
        if np.ptp(kz) > 0:
            raise ReconError(f"{header.trajectory} acquisitions move along k_z: 3D non-Cartesian data are not "
                             "reconstructed (only 2D gridding is)")
        channels = max(d.shape[0] for d in data)
        samples = np.concatenate([np.pad(d, ((0, channels - d.shape[0]), (0, 0))) for d in data], axis=1)
        images.append(grid_image(k, samples, n)[:, np.newaxis])
    log.info("recon: %s trajectory, %d image(s) of %d x %d gridded", header.trajectory, len(keys), n, n)
    return keys, images, [groups[key] for key in keys]


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
    if not np.all(np.isfinite(traj)):
        raise ReconError(f"{kind} acquisition {acq.index} has a trajectory that is not finite")
    return traj
