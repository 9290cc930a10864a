"""Reconstructed images as DICOM: one MR Image Storage object per image of a run (docs/dicom.md).

A run directory (``raw.h5``, ``sequence.seq``, ``report.json``: :mod:`scanctl.engine.session`) becomes one
DICOM series: the images are reconstructed again from ``raw.h5`` with their counters (slice, echo, …), and
every object carries

* the patient and study of an :class:`Order` when one is given, else clearly marked defaults
  (:data:`NO_ORDER`: patient ``NO ORDER^SCANCTL``, ID ``SCANCTL-NO-ORDER``, and an image comment saying so);
* the series and the acquisition parameters from the raw data header (TR, TE, flip angle, sequence name,
  field strength, imaging frequency, pixel bandwidth from the ADC dwell time);
* the geometry (Image Position/Orientation (Patient), Pixel Spacing, Slice Thickness/Location, Spacing
  Between Slices, Frame of Reference) from the header's field of view and matrix. The acquisition geometry
  is not in the raw data yet (issue 16): every series is **transverse at the isocentre** (scanner axes
  x, y, z taken as the patient's left, posterior and head for a head-first supine patient), 2D slices
  centred on the isocentre, one slice thickness apart;
* 16-bit unsigned pixels with Rescale Slope/Intercept: one slope per series, so that the largest value
  of the series maps to 65535 (stored = round(value / slope));
* UIDs under :data:`UID_ROOT` (``2.25.``: a UUID as a decimal integer, ITU-T X.667 / DICOM PS3.5 B.2,
  which needs no registered organisation root). They are derived from the raw data's content (SHA-256),
  the study and the image number, so exporting a run twice gives the same UIDs and a PACS keeps one copy.

Errors: :class:`DicomError` (a :class:`~scanctl.errors.ScanctlError`) naming the file or field at fault.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from scanctl.data.orders import NO_ORDER, Order
from scanctl.data.outputs import claim_dir, created
from scanctl.data.rawdata import RawHeader
from scanctl.errors import DicomError

log = logging.getLogger(__name__)

#: Root of every UID scanctl makes: ``2.25.`` + a UUID as a decimal integer (ITU-T X.667, DICOM PS3.5
#: B.2): no registered organisation root is needed. The UUIDs are name-based (version 5) on what identifies
#: the object, so the same run gives the same UIDs.
UID_ROOT = "2.25."
#: The namespace of scanctl's name-based UUIDs (itself name-based: the same on every machine).
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "scanctl:dicom")
#: Implementation Class UID of the files scanctl writes (fixed: derived from the name alone).
IMPLEMENTATION_UID = UID(UID_ROOT + str(uuid.uuid5(UID_NAMESPACE, "implementation").int))
IMPLEMENTATION_VERSION = "SCANCTL_01"
#: Largest stored pixel value (16-bit unsigned).
STORED_MAX = 65535
#: Image Orientation (Patient) of every series until the raw data carry the acquisition geometry
#: (issue 16): rows along the patient's left (+x), columns along posterior (+y): transverse.
TRANSVERSE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# --------------------------------------------------------------------------------------------------------
# A run's series
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """The images of one run and what the DICOM objects say about them.

    ``images`` float ``(n, ny, nx)`` (rows: phase encoding y, columns: readout x), ``index`` the counters
    of each image (``SLC``, ``ECO``, ``PAR``, …), ``header`` the raw data header, ``dwell_s`` the ADC dwell
    time (s; None: pixel bandwidth not written), ``acquired`` when the scan started (UTC), ``identity`` a
    digest of the raw data (the UIDs derive from it), ``number`` the series number."""

    images: npt.NDArray[np.float32]
    index: list[dict[str, int]]
    header: RawHeader
    identity: str
    acquired: dt.datetime
    dwell_s: float | None = None
    number: int = 1
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the protocol's sequence parameters


def series_from_run(run_dir: str | os.PathLike[str]) -> Series:
    """The series of the run in ``run_dir``: images reconstructed from ``raw.h5`` (with ``sequence.seq``
    for data without ``LIN`` labels), the scan's start time and protocol from ``report.json`` when there.
    Raises DicomError (no raw data, or nothing to reconstruct), RawDataError (a damaged file)."""
    from scanctl.data.rawdata import read_acquisitions
    from scanctl.data.recon import reconstruct_indexed

    run = Path(run_dir)
    raw_path = run / "raw.h5"
    if not raw_path.is_file():
        raise DicomError(f"{run}: no raw.h5 (not a run directory of scanctl run)")
    raw = read_acquisitions(raw_path)
    if not raw.acquisitions:
        raise DicomError(f"{raw_path}: holds no acquisitions: no image to export")
    seq = _sequence(run / "sequence.seq")
    images, index = reconstruct_indexed(raw.acquisitions, seq, header=raw.header,
                                        centres=raw.centre_samples.tolist())
    report = _report(run / "report.json")
    protocol = report.get("protocol", {}) if isinstance(report.get("protocol"), dict) else {}
    parameters = (protocol.get("sequence") or {}).get("parameters") or {}
    dwell = {float(a.dwell_s) for a in raw.acquisitions}
    acquired = _acquired(report, raw_path)
    # The data and when they were acquired: two scans of a phantom on the simulators can give the same bytes.
    identity = f"{_digest(raw_path)}/{acquired.isoformat()}"
    return Series(images=images, index=index, header=raw.header, identity=identity,
                  acquired=acquired, dwell_s=max(dwell) if dwell else None,
                  number=int(run.name) if run.name.isdigit() else 1,
                  description=str(protocol.get("description") or raw.header.protocol_name),
                  parameters=parameters if isinstance(parameters, dict) else {})


def _sequence(path: Path) -> Any:
    if not path.is_file():
        return None
    from scanctl.sequence.pulseq_read import read

    return read(path)


def _report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no report (a killed run): the raw data alone say enough
        return {}
    return report if isinstance(report, dict) else {}


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _acquired(report: Mapping[str, Any], raw_path: Path) -> dt.datetime:
    """When the scan started: the first journal entry's wall time, else the raw data file's mtime."""
    journal = report.get("journal") or []
    for entry in journal:
        t = entry.get("wall_time_s") if isinstance(entry, dict) else None
        if isinstance(t, int | float) and math.isfinite(t):
            return dt.datetime.fromtimestamp(t, dt.UTC)
    return dt.datetime.fromtimestamp(raw_path.stat().st_mtime, dt.UTC)


# --------------------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------------------


def rescale(images: npt.ArrayLike) -> tuple[npt.NDArray[np.uint16], float]:
    """``images`` as 16-bit stored values and the Rescale Slope that gives them back (value ≈ stored ·
    slope, within slope / 2): the largest value maps to 65535. Raises DicomError for a value that is not
    finite or is negative (a magnitude image has neither: something upstream went wrong)."""
    a = np.asarray(images, dtype=np.float64)
    if a.size and not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise DicomError(f"{bad} pixel(s) are not finite (NaN or inf): refusing to write them as an image")
    if a.size and float(a.min()) < 0:
        raise DicomError(f"negative pixel value {float(a.min()):g}: a magnitude image has none")
    top = float(a.max()) if a.size else 0.0
    slope = top / STORED_MAX
    if not slope >= np.finfo(np.float64).tiny:  # all zero, or so small that the slope underflows: zeros
        slope = 1.0
    stored = np.clip(np.rint(a / slope), 0, STORED_MAX).astype(np.uint16)
    return stored, slope


def build_series(series: Series, order: Order = NO_ORDER, *, created_at: dt.datetime | None = None) -> list[Dataset]:
    """One MR Image Storage dataset (with its file meta) per image of ``series``, for ``order``'s patient
    and study. Raises DicomError (non-finite pixels, an empty series)."""
    images = np.asarray(series.images)
    if images.ndim != 3 or images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise DicomError(f"no images to export (shape {images.shape})")
    if len(series.index) != images.shape[0]:
        raise DicomError(f"{len(series.index)} index entries for {images.shape[0]} images")
    stored, slope = rescale(images)
    study_uid = order.study_uid or _uid(series.identity, "study", order.patient_id)
    series_uid = _uid(series.identity, "series", study_uid)
    frame_uid = _uid(series.identity, "frame", study_uid)
    now = created_at or dt.datetime.now(dt.UTC)
    common = _common(series, order, study_uid, series_uid, frame_uid, now)
    geometry = _Geometry.of(series)
    out = []
    for i in range(images.shape[0]):
        ds = copy.deepcopy(common)  # not update(): that would share (and so overwrite) the common elements
        sop_uid = _uid(series.identity, "image", study_uid, str(i))
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = i + 1
        counters = series.index[i]
        echo = int(counters.get("ECO", 0))
        ds.EchoNumbers = echo + 1
        te = series.header.te_s
        if te:
            ds.EchoTime = _ds(1e3 * te[min(echo, len(te) - 1)])
        geometry.place(ds, counters)
        ds.Rows, ds.Columns = int(images.shape[1]), int(images.shape[2])
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = "0"
        ds.PixelData = stored[i].astype("<u2").tobytes()
        ds.file_meta = _file_meta(sop_uid)
        out.append(ds)
    return out


def _uid(*parts: str) -> str:
    """``2.25.`` + a name-based UUID (RFC 4122 version 5) of ``parts``: the same parts, the same UID.
    (pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and is random every time.)"""
    return UID_ROOT + str(uuid.uuid5(UID_NAMESPACE, "\x1f".join(parts)).int)


def _ds(value: float) -> str:
    """A Decimal String (at most 16 characters) for ``value``."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6g}"
    return text


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _common(series: Series, order: Order, study_uid: str, series_uid: str, frame_uid: str,
            now: dt.datetime) -> Dataset:
    """What every image of the series shares: patient, study, series, equipment, acquisition."""
    h = series.header
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names from a worklist may be in any script
    ds.SOPClassUID = MRImageStorage
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    # Patient
    ds.PatientName = order.patient_name
    ds.PatientID = order.patient_id
    ds.PatientBirthDate = order.birth_date
    ds.PatientSex = order.sex
    weight = h.patient_weight_kg if h.patient_weight_kg is not None else order.weight_kg
    if weight is not None:
        ds.PatientWeight = _ds(weight)
    # Study
    when = series.acquired
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = order.referring_physician
    ds.StudyID = order.accession_number or "1"  # a DICOMDIR needs one
    ds.AccessionNumber = order.accession_number
    ds.StudyDescription = order.study_description or order.requested_procedure
    # Series
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series.number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = (series.description or h.protocol_name)[:64]
    ds.ProtocolName = h.protocol_name[:64]
    ds.PatientPosition = "HFS"
    ds.Laterality = ""  # type 2C: no paired body part is known to be imaged
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    # Equipment
    ds.Manufacturer = h.system_vendor or "scanctl"
    ds.ManufacturerModelName = h.system_model[:64]
    ds.SoftwareVersions = _version()
    # Image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER", "M"]  # value 4: magnitude
    ds.AcquisitionNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDate, ds.AcquisitionTime = date, time
    if order.placeholder:
        ds.ImageComments = "NO ORDER: patient and study are scanctl defaults, not a real patient"
    # Pixels
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    _mr(ds, series)
    return ds


def _mr(ds: Dataset, series: Series) -> None:
    """The MR Image module's acquisition parameters."""
    h = series.header
    name = (h.sequence_name or h.protocol_name).lower()
    ds.ScanningSequence, ds.SequenceVariant = _scanning(name)
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D" if h.encoded_matrix[2] > 1 else "2D"
    ds.SequenceName = (h.sequence_name or h.protocol_name)[:16]
    ds.AngioFlag = "N"
    ds.RepetitionTime = _ds(1e3 * h.tr_s[0]) if h.tr_s else ""
    ds.EchoTime = _ds(1e3 * h.te_s[0]) if h.te_s else ""
    etl = series.parameters.get("etl")
    ds.EchoTrainLength = int(etl) if isinstance(etl, int) else 1
    averages = series.parameters.get("averages")
    ds.NumberOfAverages = _ds(float(averages)) if isinstance(averages, int | float) else "1"
    ds.ImagingFrequency = _ds(h.larmor_hz * 1e-6)
    ds.ImagedNucleus = "1H"
    if h.b0_t is not None:
        ds.MagneticFieldStrength = _ds(h.b0_t)
    if h.flip_angle_deg:
        ds.FlipAngle = _ds(h.flip_angle_deg[0])
    nx, ny = int(series.images.shape[2]), int(series.images.shape[1])
    if series.dwell_s:
        ds.PixelBandwidth = _ds(1.0 / (series.dwell_s * nx))  # Hz per pixel across the read-out
    ds.AcquisitionMatrix = [nx, 0, 0, ny]  # frequency along the rows, phase encoding along the columns
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.ReceiveCoilName = f"{h.channels} channel" if h.channels > 1 else "body"
    ds.TransmitCoilName = "body"


def _scanning(name: str) -> tuple[list[str], list[str]]:
    """Scanning Sequence and Sequence Variant from the sequence's name (research mode when unknown)."""
    if "epi" in name:
        return ["GR", "EP"] if "gre" in name or "gr" not in name else ["GR"], ["NONE"]
    if "tse" in name or "se" in name.split("_"):
        return ["SE"], ["NONE"]
    if "gre" in name or "flash" in name:
        return ["GR"], ["SP"]  # RF-spoiled
    return ["RM"], ["NONE"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"scanctl {version('scanctl')}"
    except PackageNotFoundError:
        return "scanctl"


@dataclass(frozen=True)
class _Geometry:
    """Where each image lies (see the module docstring: transverse at the isocentre for now). Pixel ``j``
    of ``n`` along an axis sits at ``(j - n // 2) · FOV / n`` (docs/rawdata.md); mm."""

    spacing_x: float
    spacing_y: float
    thickness: float
    step: float  # between the centres of adjacent slices / partitions
    three_d: bool
    nx: int
    ny: int
    slices: int  # 2D: slices in the series; 3D: partitions

    @classmethod
    def of(cls, series: Series) -> _Geometry:
        h = series.header
        n, ny, nx = series.images.shape
        fov = [1e3 * f for f in h.fov_m]
        if not all(math.isfinite(f) and f > 0 for f in fov[:2]):
            raise DicomError(f"the raw data header's field of view {h.fov_m} m is not positive: no pixel spacing")
        three_d = h.encoded_matrix[2] > 1
        if three_d:
            slices = max(int(c.get("PAR", 0)) for c in series.index) + 1
            nz = max(h.encoded_matrix[2], slices)
            thickness = step = fov[2] / nz
        else:
            slices = max(int(c.get("SLC", 0)) for c in series.index) + 1
            thickness = step = fov[2] if math.isfinite(fov[2]) and fov[2] > 0 else 1.0
        return cls(fov[0] / nx, fov[1] / ny, thickness, step, three_d, nx, ny, slices)

    def place(self, ds: Dataset, counters: Mapping[str, int]) -> None:
        k = int(counters.get("PAR" if self.three_d else "SLC", 0))
        # 3D: partition p at (p - slices // 2) · step; 2D: slices centred on the isocentre.
        z = (k - self.slices // 2) * self.step if self.three_d else (k - (self.slices - 1) / 2) * self.step
        x0 = -(self.nx // 2) * self.spacing_x
        y0 = -(self.ny // 2) * self.spacing_y
        ds.ImageOrientationPatient = [_ds(v) for v in TRANSVERSE]
        ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
        ds.PixelSpacing = [_ds(self.spacing_y), _ds(self.spacing_x)]  # row spacing (y), column spacing (x)
        ds.SliceThickness = _ds(self.thickness)
        ds.SpacingBetweenSlices = _ds(self.step)
        ds.SliceLocation = _ds(z)


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------


def write_series(datasets: Sequence[Dataset], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each dataset as a DICOM Part 10 file ``IMG0001.dcm``, … into ``out_dir`` (new or empty:
    :func:`scanctl.data.outputs.claim_dir`); every file new, never over another. Returns the paths.
    Raises OutputError naming a file that cannot be written."""
    from pydicom import dcmwrite

    out = claim_dir(out_dir)
    paths = []
    for i, ds in enumerate(datasets, start=1):
        path = out / f"IMG{i:04d}.dcm"
        with created(path) as fh:
            dcmwrite(fh, ds, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Export:
    """What :func:`export_run` wrote: the files, the series' UIDs and how long it took (s)."""

    files: list[Path]
    study_uid: str
    series_uid: str
    seconds: float


def export_run(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], order: Order | None = None,
               ) -> Export:
    """The run in ``run_dir`` as a DICOM series in ``out_dir`` (new or empty). Raises DicomError,
    RawDataError, OutputError."""
    import time

    t0 = time.perf_counter()
    series = series_from_run(run_dir)
    if order is not None and order.weight_kg is None and series.header.patient_weight_kg is not None:
        order = replace(order, weight_kg=series.header.patient_weight_kg)
    datasets = build_series(series, order or NO_ORDER)
    files = write_series(datasets, out_dir)
    log.info("dicom: %d images of %s written into %s", len(files), run_dir, out_dir)
    return Export(files, str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID),
                  time.perf_counter() - t0)


__all__ = ["NO_ORDER", "UID_ROOT", "DicomError", "Export", "Order", "Series", "build_series", "export_run",
           "rescale", "series_from_run", "write_series"]
