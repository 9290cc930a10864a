"""The streaming ISMRMRD writer: one acquisition (or one batch) at a time, flushed before each call returns.

A full disk: HDF5 cannot be trusted to leave a readable file once a write of its own has failed half-way (a
failed flush leaves its metadata cache unusable: the file's end and its table of acquisitions may no longer
agree). So the writer never lets a write meet a full disk: before each write it checks the room the file
has to grow (the file system's free space, and the process's file-size limit ``RLIMIT_FSIZE``) against the
batch's size plus :data:`SPARE_BYTES`, and refuses the batch (``RawDataError``, nothing written) when it
does not fit. Everything written before stays readable, and :meth:`RawDataWriter.close` finishes the file.

Crash safety: :meth:`RawDataWriter.append` writes the acquisition and flushes the HDF5 file before it
returns, so a process that is killed afterwards (or a scan that is aborted without :meth:`close`)
leaves a file that reads back with every acquisition appended so far. Flushing hands the data to the
operating system; it does not ``fsync`` (a power cut may lose what the OS had not yet written).
The ``ACQ_LAST_IN_*`` flags can only be known once the following acquisitions are known: they are
set by :meth:`RawDataWriter.close` on the last acquisition of each group actually written, and are
missing from a file whose writer was killed.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
from h5py import h5s, h5t
from ismrmrd import constants as C
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype

from scanctl.data.rawdata.encoding import trajectory_samples
from scanctl.data.rawdata.errors import RawDataError, reason
from scanctl.data.rawdata.header import RawHeader
from scanctl.data.rawdata.mapping import (
    COUNTERS,
    DATASET,
    FLAG_GROUPS,
    LABEL_COUNTERS,
    LABEL_FLAGS,
    NOISE_DATASET,
    TIME_STAMP_TICK_S,
    U16_MAX,
    USER_INT_BLOCK,
    Encoding,
    bit,
    channel_mask,
    encoding_of,
)
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence.geometry import patient_to_scanner
from scanctl.sequence.model import Sequence

log = logging.getLogger(__name__)

_CHUNK = 64  # acquisitions per HDF5 chunk of the data table
#: Bytes a write must leave free besides the batch's records (twice their samples): what HDF5 may add to the
#: file with them (a new chunk of the acquisition table, about 24 kB; B-tree nodes; a global heap
#: collection) and what closing the file needs, with room to spare for other writers on the same disk.
SPARE_BYTES = 256 * 1024


def room_bytes(path: Path) -> tuple[int, int]:
    """How many bytes the file at ``path`` may still grow by, and the errno of what bounds it: the free
    space of its file system (``f_bavail``: what an unprivileged writer may use; ENOSPC) or the process's
    file-size limit less the file's size (RLIMIT_FSIZE; EFBIG). Raises OSError."""
    fs = os.statvfs(path)
    room, bound = fs.f_bavail * fs.f_frsize, errno.ENOSPC
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit - path.stat().st_size < room:
        room, bound = limit - path.stat().st_size, errno.EFBIG
    return room, bound



def _write_noise_covariance(group: h5py.Group, header: RawHeader) -> None:
    """The receive channels' noise covariance as ``/dataset/noise_covariance`` (complex64, channels x
    channels), with the channel names and the dwell time it is given at as attributes (docs/rawdata.md)."""
    cov = np.asarray(header.noise_covariance, dtype=np.complex64)
    ds = group.create_dataset(NOISE_DATASET, data=cov)
    ds.attrs["coil_names"] = np.array([n.encode("utf-8") for n in header.coil_labels], dtype=object)
    if header.noise_dwell_s is not None:
        ds.attrs["noise_dwell_time_us"] = float(header.noise_dwell_s * 1e6)


def read_noise_covariance(path: str | Path) -> npt.NDArray[np.complex64] | None:
    """The noise covariance a file stores (``/dataset/noise_covariance``), or None. Raises RawDataError."""
    try:
        with h5py.File(path, "r", locking=False) as file:
            ds = file.get(f"{DATASET}/{NOISE_DATASET}")
            return None if ds is None else np.asarray(ds[()], dtype=np.complex64)
    except OSError as exc:
        raise RawDataError(path, f"cannot read the noise covariance: {reason(exc)}") from exc


class RawDataWriter:
    """Writes one ISMRMRD file, one acquisition at a time, flushed after every write.

    Not thread-safe: call it from one thread (the executor's run loop). Use :meth:`open`.
    """

    def __init__(self, path: Path, file: h5py.File, data: h5py.Dataset, header: RawHeader,
                 encoding: Encoding | None, seq: Sequence | None = None) -> None:
        self.path = path
        self.header = header
        self._file: h5py.File | None = file
        self._data = data
        self._fallback = encoding.labels if encoding is not None else {}
        self._recounted = encoding.recounted if encoding is not None else frozenset()
        self._centres = encoding.centre_sample if encoding is not None else np.zeros(0, np.int64)
        self._reverse = encoding.reverse if encoding is not None else np.zeros(0, bool)
        #: windows whose readout moves along k_x: there the trajectory, not a REV label, says the direction
        self._moving = np.isfinite(encoding.echo_s) if encoding is not None else np.zeros(0, bool)
        # Geometry in the patient's coordinates (LPS): scanner = P patient, P diagonal, so patient = P scanner.
        to_patient = patient_to_scanner(header.patient_position).T
        self._position_mm = (encoding.position_m @ to_patient.T * 1e3 if encoding is not None
                             else np.zeros((0, 3)))
        self._directions = (np.einsum("ij,wjk->wki", to_patient, encoding.rotation) if encoding is not None
                            else np.zeros((0, 3, 3)))  # (windows, read/phase/slice, xyz)
        self._unrotated = to_patient.T  # rows: an unrotated window's read, phase, slice directions (patient)
        # Non-Cartesian: every window's k-space samples (units of 1/FOV) go into its traj.
        self._traj = (trajectory_samples(seq) if seq is not None and encoding is not None
                      and encoding.trajectory != "cartesian" else [])
        self._mtype = h5t.py_create(acquisition_dtype)
        self._head_only = np.dtype([("head", acquisition_header_dtype)])
        self._count = 0
        self._refused: str | None = None  # why writing stopped (the disk is full): every later batch too
        # The header fields every acquisition shares.
        self._template = np.zeros((), dtype=acquisition_header_dtype)
        self._template["version"] = 1
        self._template["read_dir"] = self._unrotated[0]
        self._template["phase_dir"] = self._unrotated[1]
        self._template["slice_dir"] = self._unrotated[2]
        self._template["patient_table_position"] = (0.0, 0.0, header.table_position_mm)
        self._template["channel_mask"] = channel_mask(header.channels)
        # Per flag group: the row of the last acquisition written of each group key.
        self._last: list[dict[tuple[int, ...], int]] = [{} for _ in FLAG_GROUPS]

    @classmethod
    def open(cls, path: str | Path, header: RawHeader, *, seq: Sequence | None = None) -> RawDataWriter:
        """Create ``path`` as a new file and write the XML header. A file (or a symlink) already at
        ``path`` is refused, never truncated or written through (``O_EXCL``).

        ``seq``, the sequence being acquired, supplies what an acquisition does not carry: ``LIN`` /
        ``PAR`` for a sequence without those labels (:func:`sequence_labels`), and the sample at the
        k-space centre of each window (``center_sample``, :func:`centre_samples`; else ``N // 2``).
        Raises :class:`RawDataError`.
        """
        path = Path(path)
        xml = header.to_xml()
        try:
            # No HDF5 file lock, so the file can be read (by a monitor, or this process) while it is written.
            file = h5py.File(path, "x", locking=False)
        except OSError as exc:
            raise RawDataError(path, f"cannot create raw data file: {reason(exc)}") from exc
        try:
            group = file.create_group(DATASET)
            # A variable-length ASCII string, as the ISMRMRD libraries write it (UTF-8 bytes pass through).
            text = group.create_dataset("xml", (1,), dtype=h5py.special_dtype(vlen=bytes))
            text[0] = xml.encode("utf-8")
            data = group.create_dataset("data", (0,), maxshape=(None,), dtype=acquisition_dtype, chunks=(_CHUNK,))
            if header.noise_covariance is not None:
                _write_noise_covariance(group, header)
            file.flush()
        except Exception as exc:
            file.close()
            raise RawDataError(path, f"cannot write raw data file: {reason(exc)}") from exc
        log.debug("raw data: writing %s", path)
        return cls(path, file, data, header, encoding_of(seq) if seq is not None else None, seq)

    @property
    def count(self) -> int:
        """Acquisitions written so far."""
        return self._count

    @property
    def closed(self) -> bool:
        return self._file is None

    def append(self, acq: Acquisition) -> None:
        """Write one acquisition and flush. Raises :class:`RawDataError` (closed writer, a label outside
        an ISMRMRD counter, data not ``(channels, samples)``, I/O error)."""
        self.extend((acq,))

    def extend(self, acqs: Iterable[Acquisition]) -> None:
        """Write several acquisitions with one HDF5 write and one flush (for callers that receive them
        in batches); same guarantees and errors as :meth:`append`, per call."""
        if self._file is None:
            raise RawDataError(self.path, "raw data writer is closed")
        batch = list(acqs)
        if not batch:
            return
        self._make_room(batch)
        records, last = self._records(batch)
        start = self._count
        try:
            self._data.id.set_extent((start + len(batch),))
            fspace = self._data.id.get_space()
            fspace.select_hyperslab((start,), (len(batch),))
            self._data.id.write(h5s.create_simple((len(batch),)), fspace, records, self._mtype)
            self._file.flush()
        except Exception as exc:
            raise RawDataError(self.path, f"cannot write acquisition {batch[0].index}: {reason(exc)}") from exc
        for g, key, row in last:
            self._last[g][key] = row
        self._count += len(batch)

    def _make_room(self, batch: list[Acquisition]) -> None:
        """Refuse ``batch`` (RawDataError, nothing written) when the file has no room for it: see the
        module's documentation. After a refusal every later batch is refused too (a scan's data stay in
        order, without a gap), and the file keeps what was written before."""
        if self._refused is None:
            samples = sum(np.asarray(acq.data).size for acq in batch)
            need = 2 * 8 * samples + len(batch) * acquisition_dtype.itemsize + SPARE_BYTES
            try:
                room, bound = room_bytes(self.path)
            except OSError as exc:
                room, bound = -1, exc.errno or errno.EIO
            if room >= need:
                return
            self._refused = (f"{os.strerror(bound)} (room for {max(room, 0)} bytes, {need} needed); the "
                             f"{self._count} acquisitions before it are kept")
            log.debug("raw data: %s: acquisition %d and after not written: %s", self.path, batch[0].index,
                      self._refused)
        raise RawDataError(self.path, f"cannot write acquisition {batch[0].index}: {self._refused}")

    def _records(self, batch: list[Acquisition]) -> tuple[npt.NDArray[Any], list[tuple[int, tuple[int, ...], int]]]:
        """The ISMRMRD records of ``batch`` (validated), and the last row of each flag group's keys in it
        ``(group, key, row)``, to be recorded once the batch is written (a batch not written leaves no trace
        for :meth:`close`)."""
        m = len(batch)
        arrays: list[npt.NDArray[np.complex64]] = []
        for acq in batch:
            data = np.asarray(acq.data)
            data = data[np.newaxis] if data.ndim == 1 else data
            if data.ndim != 2 or data.shape[0] > U16_MAX or data.shape[1] > U16_MAX:
                raise RawDataError(self.path, f"acquisition {acq.index}: data must be (channels, samples) with at "
                                              f"most 65535 of each, got shape {data.shape}")
            arrays.append(np.ascontiguousarray(data, dtype=np.complex64))
        counters, flags, imaging = self._batch_counters(batch)
        # ACQ_FIRST_IN_*: the first acquisition written of each group (ACQ_LAST_IN_* are set by close()).
        # Worked on the distinct keys of the batch, not per acquisition.
        rows = np.flatnonzero(imaging)
        last: list[tuple[int, tuple[int, ...], int]] = []
        column = {name: j for j, name in enumerate(COUNTERS)}
        for g, (first, _, names) in enumerate(FLAG_GROUPS):
            if rows.size == 0:
                break
            keys = counters[np.ix_(rows, np.array([column[c] for c in names]))]
            # Counters fit 16 bits: each row packed into one opaque value makes the grouping a 1-D unique.
            packed = np.ascontiguousarray(keys.astype(np.uint16)).view(f"V{2 * len(names)}").ravel()
            _, first_at = np.unique(packed, return_index=True)
            _, last_from_end = np.unique(packed[::-1], return_index=True)
            last_at = keys.shape[0] - 1 - last_from_end
            unique = keys[first_at]
            for key, i_first, i_last in zip(map(tuple, unique.tolist()), first_at.tolist(), last_at.tolist(),
                                            strict=True):
                if key not in self._last[g]:
                    flags[rows[i_first]] |= np.uint64(bit(first))
                last.append((g, key, self._count + int(rows[i_last])))

        records = np.zeros(m, dtype=acquisition_dtype)
        head = records["head"]
        head[:] = self._template
        channels = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        samples = np.array([a.shape[1] for a in arrays], dtype=np.int64)
        head["flags"] = flags
        head["scan_counter"] = [a.index for a in batch]
        start_ticks = np.rint(np.array([a.start_s for a in batch]) / TIME_STAMP_TICK_S).astype(np.int64)
        head["acquisition_time_stamp"] = start_ticks % (1 << 32)
        head["number_of_samples"] = samples
        head["active_channels"] = channels
        head["available_channels"] = np.maximum(channels, self.header.channels)
        head["center_sample"] = [self._centre(a, int(n)) for a, n in zip(batch, samples.tolist(), strict=True)]
        head["sample_time_us"] = [a.dwell_s * 1e6 for a in batch]
        head["position"], directions = self._geometry([a.index for a in batch])
        head["read_dir"], head["phase_dir"], head["slice_dir"] = directions[:, 0], directions[:, 1], directions[:, 2]
        for j, counter in enumerate(COUNTERS):
            head["idx"][counter] = counters[:, j]
        head["user_int"][:, USER_INT_BLOCK] = [a.block for a in batch]
        for i in np.flatnonzero(channels != self.header.channels).tolist():
            head["channel_mask"][i] = channel_mask(int(channels[i]))
        empty = np.zeros(0, dtype=np.float32)
        for i, (acq, data) in enumerate(zip(batch, arrays, strict=True)):
            records["data"][i] = data.view(np.float32).ravel()
            traj = self._trajectory(acq.index, data.shape[1])
            records["traj"][i] = empty if traj is None else traj.astype(np.float32).ravel()
            head["trajectory_dimensions"][i] = 0 if traj is None else traj.shape[1]
        return records, last

    def _trajectory(self, index: int, samples: int) -> npt.NDArray[np.float64] | None:
        """The window's ``(samples, 2)`` k-space positions for a non-Cartesian sequence, else None."""
        if 0 <= index < len(self._traj) and self._traj[index].shape[0] == samples:
            return self._traj[index]
        return None

    def _geometry(self, index: list[int]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(len(index), 3)``: the centre (mm, patient LPS) of each window's slice and FOV, and
        ``(len(index), 3, 3)``: its read, phase and slice directions (patient LPS), from the sequence (else
        the isocentre, unrotated)."""
        i = np.array(index, dtype=np.int64)
        known = (i >= 0) & (i < self._position_mm.shape[0])
        position = np.zeros((i.size, 3))
        position[known] = self._position_mm[i[known]]
        directions = np.repeat(self._unrotated[np.newaxis], i.size, axis=0)
        directions[known] = self._directions[i[known]]
        return position, directions

    def _centre(self, acq: Acquisition, samples: int) -> int:
        i = acq.index
        if 0 <= i < self._centres.size and self._centres[i] < samples:
            return int(self._centres[i])
        return samples // 2

    def _batch_counters(
        self, batch: list[Acquisition]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
        """Per acquisition: the encoding counters (in ``COUNTERS`` order), the flag word, and whether it
        is imaging data; one column at a time over the batch."""
        m = len(batch)
        index = np.array([a.index for a in batch], dtype=np.int64)
        labels = [a.labels for a in batch]
        counters = np.zeros((m, len(LABEL_COUNTERS)), dtype=np.int64)
        for j, name in enumerate(LABEL_COUNTERS):
            given = [lab.get(name) for lab in labels]
            fallback = self._fallback.get(name)
            if fallback is not None:
                usable = (index >= 0) & (index < fallback.size)
                default = np.where(usable, fallback[np.clip(index, 0, max(fallback.size - 1, 0))], 0)
            else:
                default = np.zeros(m, dtype=np.int64)
            if name in self._recounted:  # the sequence's label counts against k: its lines (encoding_of)
                given = [None if ok else g for g, ok in zip(given, usable.tolist(), strict=True)]
            column = np.array([d if g is None else g for g, d in zip(given, default.tolist(), strict=True)],
                              dtype=np.int64)
            bad = np.flatnonzero((column < 0) | (column > U16_MAX))
            if bad.size:
                k = int(bad[0])
                raise RawDataError(self.path, f"acquisition {batch[k].index}: label {name}={column[k]} is outside "
                                              f"an ISMRMRD counter (0..65535)")
            counters[:, j] = column
        flags = np.zeros(m, dtype=np.uint64)
        on = {name: np.array([bool(lab.get(name, 0)) for lab in labels]) for name in (*LABEL_FLAGS, "REF", "IMA",
                                                                                      "NOISE", "NAV")}
        # The trajectory says whether a readout runs towards -k_x, over a REV label (pypulseq's gre_label sets
        # REV = 1 on readouts towards +k_x, for a vendor's image orientation: honoured, it mirrors the image);
        # a REV label counts where the trajectory cannot say (no sequence, or no readout gradient).
        if self._reverse.size:
            known = (index >= 0) & (index < self._reverse.size)
            at = np.clip(index, 0, self._reverse.size - 1)
            known &= self._moving[at] | np.array(["REV" not in lab for lab in labels])
            on["REV"] = np.where(known, self._reverse[at], on["REV"])
        for name, flag in LABEL_FLAGS.items():
            flags[on[name]] |= np.uint64(bit(flag))
        flags[on["REF"] & on["IMA"]] |= np.uint64(bit(C.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING))
        return counters, flags, ~(on["NOISE"] | on["NAV"])

    def close(self) -> None:
        """Set the ``ACQ_LAST_IN_*`` flags on what was written, flush and close. Safe to call twice.
        Raises :class:`RawDataError` if the flags cannot be written (the file is closed anyway)."""
        file, self._file = self._file, None
        if file is None:
            return
        failure: Exception | None = None
        try:
            self._mark_last()
            file.flush()
        except Exception as exc:
            failure = exc
        try:  # after a failed write (a full disk) HDF5 may refuse to close too: still one RawDataError
            file.close()
        except Exception as exc:
            failure = failure or exc
        if failure is not None:
            raise RawDataError(self.path, f"cannot finish raw data file: {reason(failure)}") from failure
        log.debug("raw data: closed %s (%d acquisitions)", self.path, self._count)

    def _mark_last(self) -> None:
        if self._count == 0:
            return
        bits: dict[int, int] = {self._count - 1: bit(C.ACQ_LAST_IN_MEASUREMENT)}
        for g, (_, last, _) in enumerate(FLAG_GROUPS):
            for row in self._last[g].values():
                bits[row] = bits.get(row, 0) | bit(last)
        rows = np.array(sorted(bits), dtype=np.int64)
        heads = np.zeros(rows.size, dtype=self._head_only)
        htype = h5t.py_create(self._head_only)
        fspace = self._data.id.get_space()
        fspace.select_elements(rows.reshape(-1, 1))
        mspace = h5s.create_simple((rows.size,))
        self._data.id.read(mspace, fspace, heads, htype)
        heads["head"]["flags"] |= np.array([bits[r] for r in rows.tolist()], dtype=np.uint64)
        self._data.id.write(mspace, fspace, heads, htype)

    def __enter__(self) -> RawDataWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
