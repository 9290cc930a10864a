"""The ISMRMRD XML header: what it says about a scan (:class:`RawHeader`), written and parsed, and derived
from the sequence (and the scanner and protocol) before a scan starts."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ismrmrd import xsd

from scanctl.config.profile import SystemProfile
from scanctl.data.rawdata.errors import RawDataError
from scanctl.data.rawdata.mapping import (
    ETL_PARAMETER,
    FOREIGN_TIME_STAMP_TICK_S,
    LABEL_COUNTERS,
    LIMIT_ELEMENTS,
    NOISE_DATASET,
    NOISE_PARAMETER,
    TICK_PARAMETER,
    TIME_STAMP_TICK_S,
    U16_MAX,
    encoding_of,
)
from scanctl.data.rawdata.seqparams import sequence_parameters, slice_thickness_m
from scanctl.sequence.geometry import PATIENT_POSITIONS
from scanctl.sequence.model import IntArray, Sequence

if TYPE_CHECKING:
    from scanctl.config.protocol import Protocol


@dataclass(frozen=True)
class EncodingLimit:
    """The range of one encoding counter and the value at the centre of k-space."""

    minimum: int = 0
    maximum: int = 0
    centre: int = 0


@dataclass(frozen=True)
class RawHeader:
    """What the ISMRMRD XML header says about a scan (one encoding space).

    Units: ``fov_m`` metres (written in mm), ``larmor_hz`` Hz, ``b0_t`` tesla, ``tr_s``/``te_s``/``ti_s``/
    ``echo_spacing_s`` seconds (written in ms). ``coil_names`` names each receive channel (written as
    ``coilLabel``); ``noise_covariance`` (``channels x channels``, complex, at ``noise_dwell_s``) is not XML:
    the writer stores it as the dataset ``/dataset/noise_covariance`` (docs/rawdata.md).
    ``limits`` is keyed by ISMRMRD counter name (``kspace_encode_step_1``,
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
    patient_position: str = "HFS"
    measurement_id: str = ""
    ti_s: tuple[float, ...] = ()
    echo_spacing_s: tuple[float, ...] = ()
    echo_train_length: int | None = None
    coil_names: tuple[str, ...] = ()
    noise_covariance: tuple[tuple[complex, ...], ...] | None = None
    noise_dwell_s: float | None = None

    def limit(self, counter: str) -> EncodingLimit:
        """The limit of ``counter`` (an ISMRMRD counter name, or ``kspace_encode_step_0``)."""
        return self.limits.get(counter, EncodingLimit())

    @property
    def coil_labels(self) -> tuple[str, ...]:
        """A name for each receive channel: ``coil_names``, else ``channel 0``, ``channel 1``, ..."""
        names = tuple(self.coil_names)[: self.channels]
        return names + tuple(f"channel {i}" for i in range(len(names), self.channels))

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
        for counter, element in LIMIT_ELEMENTS.items():
            lim = self.limit(counter)
            limits[element] = xsd.limitType(
                minimum=int(lim.minimum), maximum=int(lim.maximum), center=int(lim.centre))
        if self.patient_position not in PATIENT_POSITIONS:
            raise RawDataError(None, f"unknown patient position {self.patient_position!r} "
                                     f"(known: {', '.join(PATIENT_POSITIONS)})")
        extra: dict[str, int | float | str] = {TICK_PARAMETER: TIME_STAMP_TICK_S}
        if self.echo_train_length is not None:
            extra[ETL_PARAMETER] = int(self.echo_train_length)
        if self.noise_covariance is not None:
            extra[NOISE_PARAMETER] = NOISE_DATASET
        longs, doubles, strings = [], [], []
        for name, value in {**self.user_parameters, **extra}.items():
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
                measurementID=self.measurement_id or None,
                patientPosition=xsd.patientPositionType(self.patient_position),
                protocolName=self.protocol_name or None,
                sequenceName=self.sequence_name or None,
                relativeTablePosition=xsd.threeDimensionalFloat(x=0.0, y=0.0, z=float(self.table_position_mm)),
            ),
            acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
                systemVendor=self.system_vendor,
                systemModel=self.system_model,
                systemFieldStrength_T=None if self.b0_t is None else float(self.b0_t),
                receiverChannels=int(self.channels),
                coilLabel=[xsd.coilLabelType(coilNumber=i, coilName=name) for i, name in enumerate(self.coil_labels)],
            ),
            experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=int(round(self.larmor_hz))),
            encoding=[xsd.encodingType(
                encodedSpace=space(self.encoded_matrix),
                reconSpace=space(self.recon),
                encodingLimits=xsd.encodingLimitsType(**limits),
                trajectory=trajectory,
            )],
            sequenceParameters=xsd.sequenceParametersType(
                TR=[t * 1e3 for t in self.tr_s], TE=[t * 1e3 for t in self.te_s], TI=[t * 1e3 for t in self.ti_s],
                flipAngle_deg=list(self.flip_angle_deg), echo_spacing=[t * 1e3 for t in self.echo_spacing_s]),
            userParameters=xsd.userParametersType(userParameterLong=longs, userParameterDouble=doubles,
                                                  userParameterString=strings),
        )
        return str(xsd.ToXML(header, encoding="utf-8"))

    @classmethod
    def from_xml(cls, text: str | bytes, *, path: str | Path | None = None) -> RawHeader:
        """Parse an ISMRMRD XML header (first encoding space). Raises :class:`RawDataError`."""
        return parse_xml(text, path)[0]

    @classmethod
    def _from_parsed(cls, h: Any, path: str | Path | None) -> RawHeader:
        if not h.encoding:
            raise RawDataError(path, "ISMRMRD XML header has no encoding")
        enc = h.encoding[0]
        fov = enc.encodedSpace.fieldOfView_mm
        lims = enc.encodingLimits
        limits = {}
        for counter, element in LIMIT_ELEMENTS.items():
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
        etl = params.pop(ETL_PARAMETER, None)
        params.pop(NOISE_PARAMETER, None)
        position = meas.patientPosition if meas is not None and meas.patientPosition is not None else "HFS"
        position = str(getattr(position, "value", position))
        if position not in PATIENT_POSITIONS:  # e.g. a decubitus position: never imaged as if supine
            raise RawDataError(path, f"measurementInformation.patientPosition {position!r} is not one scanctl "
                                     f"places images for ({', '.join(PATIENT_POSITIONS)})")
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
            patient_position=position,
            measurement_id=(meas.measurementID or "") if meas is not None else "",
            ti_s=tuple(t * 1e-3 for t in seq.TI) if seq is not None else (),
            echo_spacing_s=tuple(t * 1e-3 for t in seq.echo_spacing) if seq is not None else (),
            echo_train_length=int(etl) if isinstance(etl, int) else None,
            coil_names=tuple(str(c.coilName or "") for c in sorted(system.coilLabel, key=lambda c: c.coilNumber or 0))
            if system is not None else (),
        )

    # -- from a sequence ----------------------------------------------------------------------------------
    @classmethod
    def from_sequence(cls, seq: Sequence, *, larmor_hz: float, protocol_name: str = "", channels: int = 1,
                      b0_t: float | None = None, system_vendor: str = "scanctl", system_model: str = "simulator",
                      tr_s: Iterable[float] | None = None, te_s: Iterable[float] | None = None,
                      flip_angle_deg: Iterable[float] | None = None, table_position_mm: float = 0.0,
                      patient_weight_kg: float | None = None,
                      user_parameters: Mapping[str, int | float | str] | None = None,
                      protocol_params: Any = None, patient_position: str = "HFS", measurement_id: str = "",
                      coil_info: Mapping[str, Any] | None = None) -> RawHeader:
        """The header for acquiring ``seq``: encoding limits from its labels (or, where it has no ``LIN`` /
        ``PAR`` labels, from its k-space trajectory, as :func:`sequence_labels`), the k-space centre from
        the trajectory, the readout matrix from the ADC sample count (a non-Cartesian trajectory: a square
        matrix of that size, the trajectory type from :func:`encoding_of`), the FOV from the ``FOV``
        definition (else from the k-space step; the z FOV of a 2D scan: its slice thickness), name from the
        ``Name`` definition, the sequence parameters (TR, TE, TI, flip angle, echo spacing, echo train
        length) as given, else from ``protocol_params``, the definitions or the sequence's timing
        (:func:`~scanctl.data.rawdata.seqparams.sequence_parameters`). Noise and navigator windows do not
        count towards the limits. ``coil_info``: the receive coil (``name``, ``channels`` or
        ``channel_names`` (one name per channel), ``noise_covariance`` (channels x channels),
        ``noise_dwell_s``), e.g. a simulated RF system's ``coil_info()``. A Cartesian scan that reads along
        logical y or z (pypulseq's ``write_mprage.py``: z) is described on its own axes, read, phase and
        partition (:func:`encoding_of`): x of the matrix and FOV is its readout's, y its lines', z its
        partitions'.

        Raises :class:`RawDataError` if a label value does not fit an ISMRMRD counter (0..65535), or a
        coil's noise covariance is not ``channels x channels`` and finite; :class:`SequenceGeometryError`
        for a geometry the sequence contradicts.
        """
        enc = encoding_of(seq)
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
            if lo < 0 or hi > U16_MAX:
                raise RawDataError(None, f"label {name} takes values {lo}..{hi}, outside an ISMRMRD counter (0..65535)")
            centre = lo
            if name in ("LIN", "PAR"):
                steps = enc.steps_y if name == "LIN" else enc.steps_z
                centre = _centre(v, steps[imaging], lo, hi)
            limits[counter] = EncodingLimit(lo, hi, centre)
        ny = _span(limits.get("kspace_encode_step_1"))
        nz = _span(limits.get("kspace_encode_step_2"))
        if enc.trajectory != "cartesian":  # no lines: a square image of the readout's samples
            ny, nz = nx, 1
        fov = enc.fov_m
        if not fov[2] > 0:  # a 2D scan: its slice thickness
            fov = (fov[0], fov[1], slice_thickness_m(seq))
        params = sequence_parameters(seq, enc, protocol_params)
        names, covariance, dwell = _coil(coil_info, channels)
        return cls(protocol_name=protocol_name, sequence_name=seq.definitions.get("Name", ""), fov_m=fov,
                   encoded_matrix=(nx, ny, nz), larmor_hz=larmor_hz, limits=limits, b0_t=b0_t,
                   tr_s=tuple(tr_s) if tr_s is not None else params.tr_s,
                   te_s=tuple(te_s) if te_s is not None else params.te_s,
                   flip_angle_deg=tuple(flip_angle_deg) if flip_angle_deg is not None else params.flip_angle_deg,
                   ti_s=params.ti_s, echo_spacing_s=params.echo_spacing_s,
                   echo_train_length=params.echo_train_length, channels=channels, system_vendor=system_vendor,
                   system_model=system_model, table_position_mm=table_position_mm, trajectory=enc.trajectory,
                   patient_weight_kg=patient_weight_kg, user_parameters=dict(user_parameters or {}),
                   patient_position=patient_position, measurement_id=measurement_id, coil_names=names,
                   noise_covariance=covariance, noise_dwell_s=dwell)


def new_measurement_id(system_model: str) -> str:
    """A measurement ID unique per run: the system's name and a random UUID."""
    return f"{system_model or 'scanctl'}_{uuid.uuid4().hex}"


def header_for(seq: Sequence, profile: SystemProfile, protocol: Protocol | None = None, *,
               channels: int = 1, patient_position: str | None = None, coil_info: Mapping[str, Any] | None = None,
               measurement_id: str | None = None) -> RawHeader:
    """:meth:`RawHeader.from_sequence` for a scan of ``seq`` on the scanner ``profile`` describes (B0,
    Larmor frequency, model name) under ``protocol`` (name, sequence parameters, table position, patient
    weight; ``None`` for a bare Pulseq file: the sequence's ``Name``). ``patient_position``: as given, else
    the protocol's (``protocol.patient_position`` or ``protocol.patient.position``), else ``HFS``.
    ``coil_info``: the receive coil (see :meth:`RawHeader.from_sequence`). ``measurement_id``: as given,
    else a new one (:func:`new_measurement_id`)."""
    params = protocol.sequence_params if protocol is not None else None
    if patient_position is None and protocol is not None:
        patient_position = (getattr(protocol, "patient_position", None)
                            or getattr(getattr(protocol, "patient", None), "position", None))
    return RawHeader.from_sequence(
        seq,
        larmor_hz=profile.gamma_hz_per_t * profile.b0_t,
        b0_t=profile.b0_t,
        protocol_name=protocol.name if protocol is not None else seq.definitions.get("Name", ""),
        channels=channels,
        system_model=profile.name,
        protocol_params=params,
        table_position_mm=protocol.table_position_mm if protocol is not None else 0.0,
        patient_weight_kg=protocol.patient.weight_kg if protocol is not None else None,
        patient_position=str(patient_position or "HFS"),
        measurement_id=measurement_id or new_measurement_id(profile.name),
        coil_info=coil_info,
    )


def _coil(info: Mapping[str, Any] | None, channels: int
          ) -> tuple[tuple[str, ...], tuple[tuple[complex, ...], ...] | None, float | None]:
    """Channel names, noise covariance and its dwell time from a coil description (``None``: none known)."""
    if not info:
        return (), None, None
    names = info.get("channel_names", info.get("channels"))
    coil = str(info.get("name", "") or "")
    if isinstance(names, int | np.integer) or names is None:
        names = [f"{coil} {i}".strip() for i in range(channels)] if coil else []
    names = tuple(str(n) for n in names)
    cov = info.get("noise_covariance")
    covariance = None
    if cov is not None:
        m = np.asarray(cov, dtype=np.complex128)
        if m.shape != (channels, channels) or not np.isfinite(m).all():
            raise RawDataError(None, f"coil {coil!r}: the noise covariance must be {channels} x {channels} and "
                                     f"finite (one row and column per receive channel), got shape {m.shape}")
        covariance = tuple(tuple(complex(v) for v in row) for row in m)
    dwell = info.get("noise_dwell_s")
    return names, covariance, float(dwell) if dwell is not None else None


def parse_xml(text: str | bytes, path: str | Path | None) -> tuple[RawHeader, float]:
    """The header and the unit of ``acquisition_time_stamp`` (the ``acquisition_time_stamp_tick_s`` user
    parameter scanctl writes; files from elsewhere: 2.5 ms, the convention of the Siemens converter)."""
    try:
        h = xsd.CreateFromDocument(text)
    except Exception as exc:  # xsdata raises its own parser errors and ElementTree's
        raise RawDataError(path, f"invalid ISMRMRD XML header: {exc}") from exc
    header = RawHeader._from_parsed(h, path)
    params = dict(header.user_parameters)
    tick = params.pop(TICK_PARAMETER, None)
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
