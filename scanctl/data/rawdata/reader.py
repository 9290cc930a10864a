"""Reading an ISMRMRD file back: header and acquisitions, also from a file whose writer was killed or that
is still being written (what was flushed so far)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
from ismrmrd import constants as C

from scanctl.data.rawdata.errors import RawDataError
from scanctl.data.rawdata.header import RawHeader, parse_xml
from scanctl.data.rawdata.mapping import DATASET, LABEL_COUNTERS, LABEL_FLAGS, USER_INT_BLOCK, bit
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence.model import IntArray


@dataclass(frozen=True)
class RawData:
    """An ISMRMRD file read back: its header, its XML text, and its acquisitions in file order.

    Each acquisition's ``labels`` hold every encoding counter under its Pulseq name (see
    :data:`LABEL_COUNTERS`) and the flag labels that are set (``NOISE``, ``NAV``, ``REV``, ``REF``,
    ``IMA``); ``flags`` is the raw ISMRMRD flag word of each acquisition."""

    path: str
    header: RawHeader
    xml: str
    acquisitions: list[Acquisition]
    flags: npt.NDArray[np.uint64]
    centre_samples: IntArray  # each acquisition's center_sample: the sample at k_x = 0
    #: each acquisition's ``position`` (mm, patient LPS): the centre of the slice or slab it belongs to
    position_mm: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))
    #: each acquisition's trajectory ``(samples, dimensions)`` (empty ``(0, 0)`` for Cartesian data)
    trajectories: list[npt.NDArray[np.float32]] = field(default_factory=list)
    #: each acquisition's ``read_dir``, ``phase_dir``, ``slice_dir`` (unit vectors, patient LPS), ``(n, 3)``
    read_dir: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))
    phase_dir: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))
    slice_dir: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 3)))

    @property
    def positions_mm(self) -> npt.NDArray[np.float64]:
        """The same as :attr:`position_mm` (its former name)."""
        return self.position_mm


def read_acquisitions(path: str | Path, *, dataset: str = DATASET) -> RawData:
    """Read an ISMRMRD file (header and every acquisition). Also reads a file whose writer was killed
    (everything flushed before that) and one still being written (what is flushed so far).

    Raises :class:`RawDataError` naming the file if it is missing, not HDF5, not ISMRMRD, or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise RawDataError(path, "no such raw data file")
    try:
        file = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise RawDataError(path, f"not an HDF5 file (or a damaged one): {exc}") from exc
    try:
        with file:
            group = file.get(dataset)
            if not isinstance(group, h5py.Group):
                raise RawDataError(path, f"not an ISMRMRD file: no '{dataset}' group")
            if "xml" not in group:
                raise RawDataError(path, f"not an ISMRMRD file: no '{dataset}/xml' header")
            raw_xml = group["xml"][0]
            xml = raw_xml.decode("utf-8") if isinstance(raw_xml, bytes) else str(raw_xml)
            header, tick = parse_xml(xml, path)
            records = _read_records(path, group)
        return _to_acquisitions(path, header, xml, records, tick)
    except RawDataError:
        raise
    except Exception as exc:  # h5py and numpy raise OSError/KeyError/ValueError/TypeError for damaged content
        raise RawDataError(path, f"damaged ISMRMRD file: {exc}") from exc


def _read_records(path: Path, group: h5py.Group) -> npt.NDArray[Any] | None:
    if "data" not in group:
        return None
    data = group["data"]
    names = data.dtype.names or ()
    if not isinstance(data, h5py.Dataset) or "head" not in names or "data" not in names:
        raise RawDataError(path, "not an ISMRMRD file: 'data' is not a table of acquisitions")
    return data[...]


def _to_acquisitions(path: Path, header: RawHeader, xml: str, records: npt.NDArray[Any] | None,
                     tick: float) -> RawData:
    if records is None or records.size == 0:
        return RawData(str(path), header, xml, [], np.zeros(0, np.uint64), np.zeros(0, np.int64))
    head = records["head"]
    stamps = head["acquisition_time_stamp"].astype(np.int64)
    wraps = np.concatenate(([0], np.cumsum(np.diff(stamps) < -(1 << 31))))
    start_s = (stamps + wraps * (1 << 32)) * tick
    flags = head["flags"].astype(np.uint64)
    acqs: list[Acquisition] = []
    trajectories: list[npt.NDArray[np.float32]] = []
    for i in range(records.size):
        h = head[i]
        channels, samples = int(h["active_channels"]), int(h["number_of_samples"])
        values = np.asarray(records["data"][i], dtype=np.float32)
        if values.size != 2 * channels * samples:
            raise RawDataError(path, f"damaged ISMRMRD file: acquisition {i} holds {values.size // 2} complex "
                                     f"samples, its header says {channels}x{samples}")
        dims = int(h["trajectory_dimensions"])
        traj = np.asarray(records["traj"][i], dtype=np.float32)
        if traj.size != dims * samples:
            raise RawDataError(path, f"damaged ISMRMRD file: acquisition {i} holds {traj.size} trajectory values, "
                                     f"its header says {samples}x{dims}")
        trajectories.append(traj.reshape(samples, dims) if dims else np.zeros((0, 0), np.float32))
        labels = {name: int(h["idx"][counter]) for name, counter in LABEL_COUNTERS.items()}
        word = int(flags[i])
        for name, flag in LABEL_FLAGS.items():
            if word & bit(flag):
                labels[name] = 1
        if word & bit(C.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING):
            labels["REF"] = 1
            labels["IMA"] = 1
        acqs.append(Acquisition(
            index=int(h["scan_counter"]),
            block=int(h["user_int"][USER_INT_BLOCK]),
            start_s=float(start_s[i]),
            dwell_s=float(h["sample_time_us"]) * 1e-6,
            data=values.view(np.complex64).reshape(channels, samples),
            labels=labels,
        ))
    return RawData(str(path), header, xml, acqs, flags, head["center_sample"].astype(np.int64),
                   head["position"].astype(np.float64), trajectories, *(_directions(head[name]) for name in
                                                                        ("read_dir", "phase_dir", "slice_dir")))


def _directions(values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """``(n, 3)`` unit vectors as stored (a file that leaves them all zero, as some converters do, gets
    zeros: the recon then takes the identity, :class:`scanctl.data.recon.common.Inputs`)."""
    return np.asarray(values, dtype=np.float64).reshape(-1, 3)
