"""Raw data in ISMRMRD (HDF5): a streaming writer, a reader, and the header a sequence implies.

File layout (the one the ISMRMRD C++/Python libraries read and write): the group ``/dataset`` holds
``xml`` (one variable-length string: the ISMRMRD XML header) and ``data`` (one compound record per
acquisition, :data:`ismrmrd.hdf5.acquisition_dtype`: header, trajectory, samples as interleaved
float32). The mapping from Pulseq labels to ISMRMRD counters and flags is documented in
``docs/rawdata.md`` and encoded in :data:`LABEL_COUNTERS` and :data:`LABEL_FLAGS`.

Crash safety: :meth:`RawDataWriter.append` writes the acquisition and flushes the HDF5 file before it
returns, so a process that is killed afterwards (or a scan that is aborted without :meth:`close`)
leaves a file that reads back with every acquisition appended so far. Flushing hands the data to the
operating system; it does not ``fsync`` (a power cut may lose what the OS had not yet written).
The ``ACQ_LAST_IN_*`` flags can only be known once the following acquisitions are known: they are
set by :meth:`RawDataWriter.close` on the last acquisition of each group actually written, and are
missing from a file whose writer was killed.

Timing: ``acquisition_time_stamp`` counts microseconds from the start of the scan
(:data:`TIME_STAMP_TICK_S`, also recorded in the XML user parameters), modulo 2**32 (71.6 minutes);
the reader unwraps it, since acquisitions are stored in time order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import numpy.typing as npt
from h5py import h5s, h5t
from ismrmrd import constants as C
from ismrmrd import xsd
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype

from scanctl.config.profile import SystemProfile
from scanctl.errors import ScanctlError
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence.labels import label_values
from scanctl.sequence.model import IntArray, Sequence
from scanctl.sequence.waveforms import kspace_at

if TYPE_CHECKING:
    from scanctl.config.protocol import Protocol

log = logging.getLogger(__name__)

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
_TICK_PARAMETER = "acquisition_time_stamp_tick_s"
#: ``head.user_int`` slot holding the sequence block index of the acquisition.
USER_INT_BLOCK = 0

_COUNTERS = tuple(LABEL_COUNTERS.values())
#: XML ``encodingLimits`` element of each counter (the XML says "encoding", the header "encode").
_LIMIT_ELEMENTS = {c: c.replace("encode_step", "encoding_step") for c in ("kspace_encode_step_0", *_COUNTERS)}
_ORDER = ("kspace_encode_step_1", "kspace_encode_step_2", "average", "slice", "contrast", "phase", "set",
          "repetition")
#: (first flag, last flag, counters that identify the group). The k-space steps mark the first and last
#: acquisition of their loop (each 2D k-space / each volume); the other counters mark the first and last
#: acquisition having each value (within the enclosing counters). See docs/rawdata.md.
_FLAG_GROUPS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (C.ACQ_FIRST_IN_ENCODE_STEP1, C.ACQ_LAST_IN_ENCODE_STEP1, _ORDER[1:]),
    (C.ACQ_FIRST_IN_ENCODE_STEP2, C.ACQ_LAST_IN_ENCODE_STEP2, _ORDER[2:]),
    (C.ACQ_FIRST_IN_AVERAGE, C.ACQ_LAST_IN_AVERAGE, _ORDER[2:]),
    (C.ACQ_FIRST_IN_SLICE, C.ACQ_LAST_IN_SLICE, _ORDER[3:]),
    (C.ACQ_FIRST_IN_CONTRAST, C.ACQ_LAST_IN_CONTRAST, _ORDER[4:]),
    (C.ACQ_FIRST_IN_PHASE, C.ACQ_LAST_IN_PHASE, _ORDER[5:]),
    (C.ACQ_FIRST_IN_SET, C.ACQ_LAST_IN_SET, _ORDER[6:]),
    (C.ACQ_FIRST_IN_REPETITION, C.ACQ_LAST_IN_REPETITION, _ORDER[7:]),
    (C.ACQ_FIRST_IN_SEGMENT, C.ACQ_LAST_IN_SEGMENT, ("segment", *_ORDER[2:])),
)
_U16_MAX = 0xFFFF
_DATASET = "dataset"
_CHUNK = 64  # acquisitions per HDF5 chunk of the data table


def _bit(flag: int) -> int:
    return 1 << (flag - 1)


def _channel_mask(channels: int) -> npt.NDArray[np.uint64]:
    """ISMRMRD's channel mask (16 x 64 bits) with channels ``0..channels-1`` active."""
    mask = np.zeros(16, dtype=np.uint64)
    for c in range(min(channels, 1024)):
        mask[c // 64] |= np.uint64(1 << (c % 64))
    return mask


class RawDataError(ScanctlError):
    """A raw-data file cannot be written or read; the message names the file."""

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path or '<raw data>'}: {message}")


_ERRNO = re.compile(r"errno = (\d+)")


def _reason(exc: BaseException) -> str:
    """What went wrong, in a few words: the system's message for the errno HDF5 reports ("No space left on
    device") rather than its multi-line error stack, else the first line of the error."""
    number = getattr(exc, "errno", None)
    if not isinstance(number, int) or number <= 0:
        found = _ERRNO.search(str(exc))
        number = int(found.group(1)) if found else None
    if number:
        return os.strerror(number)
    first = str(exc).strip().splitlines()
    return first[0] if first else type(exc).__name__


# ----------------------------------------------------------------------------------------------------------
# Header
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodingLimit:
    """The range of one encoding counter and the value at the centre of k-space."""

    minimum: int = 0
    maximum: int = 0
    centre: int = 0


@dataclass(frozen=True)
class RawHeader:
    """What the ISMRMRD XML header says about a scan (one encoding space).

    Units: ``fov_m`` metres (written in mm), ``larmor_hz`` Hz, ``b0_t`` tesla, ``tr_s``/``te_s``
    seconds (written in ms). ``limits`` is keyed by ISMRMRD counter name (``kspace_encode_step_1``,
    ``slice``, ... and ``kspace_encode_step_0`` for the readout); absent counters are ``0..0``.
    ``user_parameters`` become XML user parameters (int -> long, float -> double, str -> string).
    """

    protocol_name: str
    fov_m: tuple[float, float, float]
    encoded_matrix: tuple[int, int, int]
    larmor_hz: float
    sequence_name: str = ""
    recon_matrix: tuple[int, int, int] | None = None  # None: same as encoded_matrix
    limits: Mapping[str, EncodingLimit] = field(default_factory=dict)
    b0_t: float | None = None
    tr_s: tuple[float, ...] = ()
    te_s: tuple[float, ...] = ()
    flip_angle_deg: tuple[float, ...] = ()
    channels: int = 1
    system_vendor: str = "scanctl"
    system_model: str = "simulator"
    trajectory: str = "cartesian"
    table_position_mm: float = 0.0
    patient_weight_kg: float | None = None
    user_parameters: Mapping[str, int | float | str] = field(default_factory=dict)

    def limit(self, counter: str) -> EncodingLimit:
        """The limit of ``counter`` (an ISMRMRD counter name, or ``kspace_encode_step_0``)."""
        return self.limits.get(counter, EncodingLimit())

    @property
    def recon(self) -> tuple[int, int, int]:
        return self.recon_matrix if self.recon_matrix is not None else self.encoded_matrix

    # -- XML ----------------------------------------------------------------------------------------------
    def to_xml(self) -> str:
        """The ISMRMRD XML header text. Raises :class:`RawDataError` for values ISMRMRD cannot hold."""
        try:
            trajectory = xsd.trajectoryType(self.trajectory)
        except ValueError as exc:
            raise RawDataError(None, f"unknown ISMRMRD trajectory {self.trajectory!r}") from exc

        def space(matrix: tuple[int, int, int]) -> Any:
            return xsd.encodingSpaceType(
                matrixSize=xsd.matrixSizeType(x=int(matrix[0]), y=int(matrix[1]), z=int(matrix[2])),
                fieldOfView_mm=xsd.fieldOfViewMm(x=self.fov_m[0] * 1e3, y=self.fov_m[1] * 1e3,
                                                 z=self.fov_m[2] * 1e3),
            )

        limits: dict[str, Any] = {}
        for counter, element in _LIMIT_ELEMENTS.items():
            lim = self.limit(counter)
            limits[element] = xsd.limitType(
                minimum=int(lim.minimum), maximum=int(lim.maximum), center=int(lim.centre))
        longs, doubles, strings = [], [], []
        for name, value in {**self.user_parameters, _TICK_PARAMETER: TIME_STAMP_TICK_S}.items():
            if isinstance(value, bool | int | np.integer):
                longs.append(xsd.userParameterLongType(name=name, value=int(value)))
            elif isinstance(value, float | np.floating):
                doubles.append(xsd.userParameterDoubleType(name=name, value=float(value)))
            else:
                strings.append(xsd.userParameterStringType(name=name, value=str(value)))
        header = xsd.ismrmrdHeader(
            version=2,
            subjectInformation=(None if self.patient_weight_kg is None
                                else xsd.subjectInformationType(patientWeight_kg=float(self.patient_weight_kg))),
            measurementInformation=xsd.measurementInformationType(
                patientPosition=xsd.patientPositionType.HFS,
                protocolName=self.protocol_name or None,
                sequenceName=self.sequence_name or None,
                relativeTablePosition=xsd.threeDimensionalFloat(x=0.0, y=0.0, z=float(self.table_position_mm)),
            ),
            acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
                systemVendor=self.system_vendor,
                systemModel=self.system_model,
                systemFieldStrength_T=None if self.b0_t is None else float(self.b0_t),
                receiverChannels=int(self.channels),
            ),
            experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=int(round(self.larmor_hz))),
            encoding=[xsd.encodingType(
                encodedSpace=space(self.encoded_matrix),
                reconSpace=space(self.recon),
                encodingLimits=xsd.encodingLimitsType(**limits),
                trajectory=trajectory,
            )],
            sequenceParameters=xsd.sequenceParametersType(
                TR=[t * 1e3 for t in self.tr_s], TE=[t * 1e3 for t in self.te_s],
                flipAngle_deg=list(self.flip_angle_deg)),
            userParameters=xsd.userParametersType(userParameterLong=longs, userParameterDouble=doubles,
                                                  userParameterString=strings),
        )
        return str(xsd.ToXML(header, encoding="utf-8"))

    @classmethod
    def from_xml(cls, text: str | bytes, *, path: str | Path | None = None) -> RawHeader:
        """Parse an ISMRMRD XML header (first encoding space). Raises :class:`RawDataError`."""
        return _parse_xml(text, path)[0]

    @classmethod
    def _from_parsed(cls, h: Any, path: str | Path | None) -> RawHeader:
        if not h.encoding:
            raise RawDataError(path, "ISMRMRD XML header has no encoding")
        enc = h.encoding[0]
        fov = enc.encodedSpace.fieldOfView_mm
        lims = enc.encodingLimits
        limits = {}
        for counter, element in _LIMIT_ELEMENTS.items():
            lim = getattr(lims, element, None)
            if lim is not None:
                limits[counter] = EncodingLimit(int(lim.minimum), int(lim.maximum), int(lim.center))
        meas, system, seq = h.measurementInformation, h.acquisitionSystemInformation, h.sequenceParameters
        params: dict[str, int | float | str] = {}
        if h.userParameters is not None:
            for p in h.userParameters.userParameterLong:
                params[p.name] = int(p.value)
            for q in h.userParameters.userParameterDouble:
                params[q.name] = float(q.value)
            for s in h.userParameters.userParameterString:
                params[s.name] = str(s.value)
        m_enc, m_rec = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize
        table = meas.relativeTablePosition if meas is not None else None
        return cls(
            protocol_name=(meas.protocolName or "") if meas is not None else "",
            sequence_name=(meas.sequenceName or "") if meas is not None else "",
            fov_m=(fov.x * 1e-3, fov.y * 1e-3, fov.z * 1e-3),
            encoded_matrix=(int(m_enc.x), int(m_enc.y), int(m_enc.z)),
            recon_matrix=(int(m_rec.x), int(m_rec.y), int(m_rec.z)),
            limits=limits,
            larmor_hz=float(h.experimentalConditions.H1resonanceFrequency_Hz),
            b0_t=(None if system is None or system.systemFieldStrength_T is None
                  else float(system.systemFieldStrength_T)),
            tr_s=tuple(t * 1e-3 for t in seq.TR) if seq is not None else (),
            te_s=tuple(t * 1e-3 for t in seq.TE) if seq is not None else (),
            flip_angle_deg=tuple(seq.flipAngle_deg) if seq is not None else (),
            channels=int(system.receiverChannels or 1) if system is not None else 1,
            system_vendor=(system.systemVendor or "") if system is not None else "",
            system_model=(system.systemModel or "") if system is not None else "",
            trajectory=enc.trajectory.value,
            table_position_mm=float(table.z) if table is not None else 0.0,
            patient_weight_kg=(None if h.subjectInformation is None or h.subjectInformation.patientWeight_kg is None
                               else float(h.subjectInformation.patientWeight_kg)),
            user_parameters=params,
        )

    # -- from a sequence ----------------------------------------------------------------------------------
    @classmethod
    def from_sequence(cls, seq: Sequence, *, larmor_hz: float, protocol_name: str = "", channels: int = 1,
                      b0_t: float | None = None, system_vendor: str = "scanctl", system_model: str = "simulator",
                      tr_s: Iterable[float] | None = None, te_s: Iterable[float] | None = None,
                      flip_angle_deg: Iterable[float] = (), table_position_mm: float = 0.0,
                      patient_weight_kg: float | None = None,
                      user_parameters: Mapping[str, int | float | str] | None = None) -> RawHeader:
        """The header for acquiring ``seq``: encoding limits from its labels (or, where it has no ``LIN`` /
        ``PAR`` labels, from its k-space trajectory, as :func:`sequence_labels`), the k-space centre from
        the trajectory, the readout matrix from the ADC sample count, the FOV from the ``FOV``
        definition (else from the k-space step), name/TR/TE from the ``Name``/``TR``/``TE`` definitions
        unless given. Noise and navigator windows do not count towards the limits.

        Raises :class:`RawDataError` if a label value does not fit an ISMRMRD counter (0..65535).
        """
        enc = _encoding(seq)
        labels, imaging = enc.labels, enc.imaging
        nx = int(enc.num_samples[imaging].max()) if imaging.any() else 0
        cx = _commonest(enc.centre_sample[imaging & (enc.num_samples == nx)], nx // 2)
        limits: dict[str, EncodingLimit] = {"kspace_encode_step_0": EncodingLimit(0, max(nx - 1, 0), cx)}
        for name, counter in LABEL_COUNTERS.items():
            values = labels.get(name)
            if values is None or not imaging.any():
                continue
            v = values[imaging]
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi > _U16_MAX:
                raise RawDataError(None, f"label {name} takes values {lo}..{hi}, outside an ISMRMRD counter (0..65535)")
            centre = lo
            if name in ("LIN", "PAR"):
                steps = enc.steps_y if name == "LIN" else enc.steps_z
                centre = _centre(v, steps[imaging], lo, hi)
            limits[counter] = EncodingLimit(lo, hi, centre)
        ny = _span(limits.get("kspace_encode_step_1"))
        nz = _span(limits.get("kspace_encode_step_2"))
        fov = enc.fov_m
        tr = tuple(tr_s) if tr_s is not None else _definition(seq, "TR")
        te = tuple(te_s) if te_s is not None else _definition(seq, "TE")
        return cls(protocol_name=protocol_name, sequence_name=seq.definitions.get("Name", ""), fov_m=fov,
                   encoded_matrix=(nx, ny, nz), larmor_hz=larmor_hz, limits=limits, b0_t=b0_t, tr_s=tr, te_s=te,
                   flip_angle_deg=tuple(flip_angle_deg), channels=channels, system_vendor=system_vendor,
                   system_model=system_model, table_position_mm=table_position_mm,
                   patient_weight_kg=patient_weight_kg, user_parameters=dict(user_parameters or {}))


def header_for(seq: Sequence, profile: SystemProfile, protocol: Protocol | None = None, *,
               channels: int = 1) -> RawHeader:
    """:meth:`RawHeader.from_sequence` for a scan of ``seq`` on the scanner ``profile`` describes (B0,
    Larmor frequency, model name) under ``protocol`` (name, flip angle, table position, patient weight;
    ``None`` for a bare Pulseq file: the sequence's ``Name``)."""
    params = protocol.sequence_params if protocol is not None else None
    flip = getattr(params, "flip_angle_deg", None)
    return RawHeader.from_sequence(
        seq,
        larmor_hz=profile.gamma_hz_per_t * profile.b0_t,
        b0_t=profile.b0_t,
        protocol_name=protocol.name if protocol is not None else seq.definitions.get("Name", ""),
        channels=channels,
        system_model=profile.name,
        flip_angle_deg=() if flip is None else (float(flip),),
        table_position_mm=protocol.table_position_mm if protocol is not None else 0.0,
        patient_weight_kg=protocol.patient.weight_kg if protocol is not None else None,
    )


def _parse_xml(text: str | bytes, path: str | Path | None) -> tuple[RawHeader, float]:
    """The header and the unit of ``acquisition_time_stamp`` (the ``acquisition_time_stamp_tick_s`` user
    parameter scanctl writes; files from elsewhere: 2.5 ms, the convention of the Siemens converter)."""
    try:
        h = xsd.CreateFromDocument(text)
    except Exception as exc:  # xsdata raises its own parser errors and ElementTree's
        raise RawDataError(path, f"invalid ISMRMRD XML header: {exc}") from exc
    header = RawHeader._from_parsed(h, path)
    params = dict(header.user_parameters)
    tick = params.pop(_TICK_PARAMETER, None)
    header = dataclasses.replace(header, user_parameters=params)
    return header, float(tick) if isinstance(tick, float) and tick > 0 else FOREIGN_TIME_STAMP_TICK_S


def _span(limit: EncodingLimit | None) -> int:
    """Matrix size along a phase-encoding counter: symmetric about the centre, so partial Fourier fits."""
    if limit is None or limit.minimum == limit.maximum:
        return 1
    return 2 * max(limit.centre - limit.minimum, limit.maximum + 1 - limit.centre)


def _centre(values: IntArray, steps: IntArray, lo: int, hi: int) -> int:
    """The counter value at the k-space centre: the commonest value among windows with k = 0 there."""
    if steps.size and np.any(steps != 0):
        return _commonest(values[steps == 0], (lo + hi + 1) // 2)
    return (lo + hi + 1) // 2


def _commonest(values: IntArray, default: int) -> int:
    if values.size == 0:
        return default
    uniq, counts = np.unique(values, return_counts=True)
    return int(uniq[np.argmax(counts)])


def _definition(seq: Sequence, key: str) -> tuple[float, ...]:
    values = seq.definition_floats(key)
    return tuple(values) if values else ()


# ----------------------------------------------------------------------------------------------------------
# Encoding of a sequence's ADC windows
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoding:
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
    return _encoding(seq).labels


def centre_samples(seq: Sequence) -> IntArray:
    """For every ADC window of ``seq``, the sample nearest to k_x = 0 (from the trajectory at samples
    N/2 and N/2 + 1; ``N // 2`` for a window without a readout gradient)."""
    return _encoding(seq).centre_sample


def _encoding(seq: Sequence) -> _Encoding:
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
    return _Encoding(labels, imaging, n, centre, steps_y, steps_z, (fov[0], fov[1], fov[2]))


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


# ----------------------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------------------


class RawDataWriter:
    """Writes one ISMRMRD file, one acquisition at a time, flushed after every write.

    Not thread-safe: call it from one thread (the executor's run loop). Use :meth:`open`.
    """

    def __init__(self, path: Path, file: h5py.File, data: h5py.Dataset, header: RawHeader,
                 encoding: _Encoding | None) -> None:
        self.path = path
        self.header = header
        self._file: h5py.File | None = file
        self._data = data
        self._fallback = encoding.labels if encoding is not None else {}
        self._centres = encoding.centre_sample if encoding is not None else np.zeros(0, np.int64)
        self._mtype = h5t.py_create(acquisition_dtype)
        self._head_only = np.dtype([("head", acquisition_header_dtype)])
        self._count = 0
        # The header fields every acquisition shares.
        self._template = np.zeros((), dtype=acquisition_header_dtype)
        self._template["version"] = 1
        self._template["read_dir"] = (1.0, 0.0, 0.0)
        self._template["phase_dir"] = (0.0, 1.0, 0.0)
        self._template["slice_dir"] = (0.0, 0.0, 1.0)
        self._template["patient_table_position"] = (0.0, 0.0, header.table_position_mm)
        self._template["channel_mask"] = _channel_mask(header.channels)
        # Per flag group: the row of the last acquisition written of each group key.
        self._last: list[dict[tuple[int, ...], int]] = [{} for _ in _FLAG_GROUPS]

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
            raise RawDataError(path, f"cannot create raw data file: {_reason(exc)}") from exc
        try:
            group = file.create_group(_DATASET)
            # A variable-length ASCII string, as the ISMRMRD libraries write it (UTF-8 bytes pass through).
            text = group.create_dataset("xml", (1,), dtype=h5py.special_dtype(vlen=bytes))
            text[0] = xml.encode("utf-8")
            data = group.create_dataset("data", (0,), maxshape=(None,), dtype=acquisition_dtype, chunks=(_CHUNK,))
            file.flush()
        except Exception as exc:
            file.close()
            raise RawDataError(path, f"cannot write raw data file: {_reason(exc)}") from exc
        log.debug("raw data: writing %s", path)
        return cls(path, file, data, header, _encoding(seq) if seq is not None else None)

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
        records = self._records(batch)
        start = self._count
        try:
            self._data.id.set_extent((start + len(batch),))
            fspace = self._data.id.get_space()
            fspace.select_hyperslab((start,), (len(batch),))
            self._data.id.write(h5s.create_simple((len(batch),)), fspace, records, self._mtype)
            self._file.flush()
        except Exception as exc:
            raise RawDataError(self.path, f"cannot write acquisition {batch[0].index}: {_reason(exc)}") from exc
        self._count += len(batch)

    def _records(self, batch: list[Acquisition]) -> npt.NDArray[Any]:
        """The ISMRMRD records of ``batch`` (validated before anything is recorded as written)."""
        m = len(batch)
        arrays: list[npt.NDArray[np.complex64]] = []
        for acq in batch:
            data = np.asarray(acq.data)
            data = data[np.newaxis] if data.ndim == 1 else data
            if data.ndim != 2 or data.shape[0] > _U16_MAX or data.shape[1] > _U16_MAX:
                raise RawDataError(self.path, f"acquisition {acq.index}: data must be (channels, samples) with at "
                                              f"most 65535 of each, got shape {data.shape}")
            arrays.append(np.ascontiguousarray(data, dtype=np.complex64))
        counters, flags, imaging = self._batch_counters(batch)
        # ACQ_FIRST_IN_*: the first acquisition written of each group (ACQ_LAST_IN_* are set by close()).
        # Worked on the distinct keys of the batch, not per acquisition.
        rows = np.flatnonzero(imaging)
        column = {name: j for j, name in enumerate(_COUNTERS)}
        for g, (first, _, names) in enumerate(_FLAG_GROUPS):
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
                    flags[rows[i_first]] |= np.uint64(_bit(first))
                self._last[g][key] = self._count + int(rows[i_last])

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
        for j, counter in enumerate(_COUNTERS):
            head["idx"][counter] = counters[:, j]
        head["user_int"][:, USER_INT_BLOCK] = [a.block for a in batch]
        for i in np.flatnonzero(channels != self.header.channels).tolist():
            head["channel_mask"][i] = _channel_mask(int(channels[i]))
        empty = np.zeros(0, dtype=np.float32)
        for i, data in enumerate(arrays):
            records["data"][i] = data.view(np.float32).ravel()
            records["traj"][i] = empty
        return records

    def _centre(self, acq: Acquisition, samples: int) -> int:
        i = acq.index
        if 0 <= i < self._centres.size and self._centres[i] < samples:
            return int(self._centres[i])
        return samples // 2

    def _batch_counters(
        self, batch: list[Acquisition]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
        """Per acquisition: the encoding counters (in ``_COUNTERS`` order), the flag word, and whether it
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
            column = np.array([d if g is None else g for g, d in zip(given, default.tolist(), strict=True)],
                              dtype=np.int64)
            bad = np.flatnonzero((column < 0) | (column > _U16_MAX))
            if bad.size:
                k = int(bad[0])
                raise RawDataError(self.path, f"acquisition {batch[k].index}: label {name}={column[k]} is outside "
                                              f"an ISMRMRD counter (0..65535)")
            counters[:, j] = column
        flags = np.zeros(m, dtype=np.uint64)
        on = {name: np.array([bool(lab.get(name, 0)) for lab in labels]) for name in (*LABEL_FLAGS, "REF", "IMA",
                                                                                      "NOISE", "NAV")}
        for name, flag in LABEL_FLAGS.items():
            flags[on[name]] |= np.uint64(_bit(flag))
        flags[on["REF"] & on["IMA"]] |= np.uint64(_bit(C.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING))
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
            raise RawDataError(self.path, f"cannot finish raw data file: {_reason(failure)}") from failure
        log.debug("raw data: closed %s (%d acquisitions)", self.path, self._count)

    def _mark_last(self) -> None:
        if self._count == 0:
            return
        bits: dict[int, int] = {self._count - 1: _bit(C.ACQ_LAST_IN_MEASUREMENT)}
        for g, (_, last, _) in enumerate(_FLAG_GROUPS):
            for row in self._last[g].values():
                bits[row] = bits.get(row, 0) | _bit(last)
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


# ----------------------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------------------


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


def read_acquisitions(path: str | Path, *, dataset: str = _DATASET) -> RawData:
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
            header, tick = _parse_xml(xml, path)
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
    for i in range(records.size):
        h = head[i]
        channels, samples = int(h["active_channels"]), int(h["number_of_samples"])
        values = np.asarray(records["data"][i], dtype=np.float32)
        if values.size != 2 * channels * samples:
            raise RawDataError(path, f"damaged ISMRMRD file: acquisition {i} holds {values.size // 2} complex "
                                     f"samples, its header says {channels}x{samples}")
        labels = {name: int(h["idx"][counter]) for name, counter in LABEL_COUNTERS.items()}
        word = int(flags[i])
        for name, flag in LABEL_FLAGS.items():
            if word & _bit(flag):
                labels[name] = 1
        if word & _bit(C.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING):
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
    return RawData(str(path), header, xml, acqs, flags, head["center_sample"].astype(np.int64))


def is_set(flags: int | np.integer[Any], flag: int) -> bool:
    """Whether ISMRMRD ``flag`` (a 1-based ``ismrmrd.ACQ_*`` constant) is set in a flag word."""
    return bool(int(flags) & _bit(flag))


__all__ = [
    "LABEL_COUNTERS",
    "LABEL_FLAGS",
    "TIME_STAMP_TICK_S",
    "UNSTORED_LABELS",
    "EncodingLimit",
    "RawData",
    "RawDataError",
    "RawDataWriter",
    "RawHeader",
    "header_for",
    "is_set",
    "read_acquisitions",
    "centre_samples",
    "sequence_labels",
]
