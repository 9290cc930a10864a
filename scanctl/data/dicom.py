"""Reconstructed images as DICOM: one MR Image Storage object per image of a run (docs/dicom.md).

A run directory (``raw.h5``, ``sequence.seq``, ``report.json``: :mod:`scanctl.engine.session`) becomes one
DICOM series: the images are reconstructed again from ``raw.h5`` with their counters (slice, echo, …), and
every object carries

* the patient and study of an :class:`Order` when one is given, else clearly marked defaults
  (:data:`NO_ORDER`: patient ``NO ORDER^SCANCTL``, ID ``SCANCTL-NO-ORDER``, and an image comment saying so);
* the series and the acquisition parameters from the raw data header (TR, TE, flip angle, sequence name,
  field strength, imaging frequency, pixel bandwidth from the ADC dwell time);
* the geometry (Image Position/Orientation (Patient), Pixel Spacing, Slice Thickness/Location, Spacing
  Between Slices) from the recon's ``image.json`` (:mod:`scanctl.data.dicomgeom`), or transverse at the
  isocentre for a run without one; one Frame of Reference per study and patient position; Instance Numbers
  in slice position order within each contrast;
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

from scanctl.data import dicomgeom
from scanctl.data.dicomgeom import ImageGeometry
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
#: Patient Position when neither the raw data header nor the protocol says: head first supine.
DEFAULT_PATIENT_POSITION = "HFS"


# --------------------------------------------------------------------------------------------------------
# A run's series
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """The images of one run and what the DICOM objects say about them.

    ``images`` float ``(n, ny, nx)`` (rows: phase encoding y, columns: readout x), ``index`` the counters
    of each image (``SLC``, ``ECO``, ``PAR``, …), ``header`` the raw data header, ``dwell_s`` the ADC dwell
    time (s; None: pixel bandwidth not written), ``acquired`` when the scan started (UTC), ``identity`` a
    digest of the raw data (the UIDs derive from it), ``number`` the series number, ``geometry`` each
    image's plane (from image.json; None: transverse at the isocentre from the header), ``three_d`` (None:
    from the header's encoded matrix), ``patient_position`` (DICOM Patient Position)."""

    images: npt.NDArray[np.float32]
    index: list[dict[str, int]]
    header: RawHeader
    identity: str
    acquired: dt.datetime
    dwell_s: float | None = None
    number: int = 1
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the protocol's sequence parameters
    geometry: Sequence[ImageGeometry] | None = None
    three_d: bool | None = None
    patient_position: str = DEFAULT_PATIENT_POSITION

    @property
    def is_3d(self) -> bool:
        return self.three_d if self.three_d is not None else self.header.encoded_matrix[2] > 1


def series_from_run(run_dir: str | os.PathLike[str]) -> Series:
    """The series of the run in ``run_dir``: the recon's ``image.npy`` with its ``image.json`` (counters and
    geometry of each image) when both are there, else images reconstructed again from ``raw.h5`` (with
    ``sequence.seq`` for data without ``LIN`` labels) placed transverse at the isocentre; the scan's start
    time and protocol from ``report.json`` when there. Raises DicomError (no raw data, nothing to
    reconstruct, a malformed image.json), RawDataError (a damaged file)."""
    from scanctl.data.rawdata import read_acquisitions
    from scanctl.data.recon import reconstruct_indexed

    run = Path(run_dir)
    raw_path = run / "raw.h5"
    if not raw_path.is_file():
        raise DicomError(f"{run}: no raw.h5 (not a run directory of scanctl run)")
    raw = read_acquisitions(raw_path)
    if not raw.acquisitions:
        raise DicomError(f"{raw_path}: holds no acquisitions: no image to export")
    geometry: list[ImageGeometry] | None = None
    three_d: bool | None = None
    if (run / "image.json").is_file() and (run / "image.npy").is_file():
        images = _image_npy(run / "image.npy")
        geometry, index, three_d = dicomgeom.read_image_json(run / "image.json", images.shape)
    else:
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
    if geometry is not None:  # the recon's own images: other pixels (another recon of the same data), other UIDs
        identity += f"/{_digest(run / 'image.npy')}/{_digest(run / 'image.json')}"
    return Series(images=images, index=index, header=raw.header, identity=identity,
                  acquired=acquired, dwell_s=max(dwell) if dwell else None,
                  number=int(run.name) if run.name.isdigit() else 1,
                  description=str(protocol.get("description") or raw.header.protocol_name),
                  parameters=parameters if isinstance(parameters, dict) else {}, geometry=geometry,
                  three_d=three_d, patient_position=patient_position(raw.header))


def patient_position(header: RawHeader) -> str:
    """DICOM Patient Position: the raw data header's (``measurementInformation.patientPosition``, which the
    run takes from the protocol; head first supine in a file that has none). Raises DicomError for one
    scanctl does not know."""
    from scanctl.sequence.geometry import PATIENT_POSITIONS

    value = str(getattr(header.patient_position, "value", header.patient_position))
    if value not in PATIENT_POSITIONS:
        raise DicomError(f"raw data header: patient position {value!r} is not one of {', '.join(PATIENT_POSITIONS)}")
    return value


def _image_npy(path: Path) -> npt.NDArray[np.float32]:
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DicomError(f"{path}: cannot be read ({exc})") from None
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or not np.issubdtype(images.dtype, np.number):
        raise DicomError(f"{path}: not a stack of images (shape {images.shape}, {images.dtype})")
    return np.abs(images).astype(np.float32)


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
    # One frame of reference for the study's patient lying one way: the series of an exam share it (a viewer
    # can draw one series' slices on another's images); patient coordinates do not move with the table.
    frame_uid = _uid("frame", study_uid, series.patient_position)
    now = created_at or dt.datetime.now(dt.UTC)
    common = _common(series, order, study_uid, series_uid, frame_uid, now)
    geometry = (list(series.geometry) if series.geometry is not None
                else dicomgeom.from_header(series.header, series.index, images.shape))
    if len(geometry) != images.shape[0]:
        raise DicomError(f"{len(geometry)} image planes for {images.shape[0]} images")
    between = dicomgeom.spacing_between(geometry)
    out = []
    for number, i in enumerate(dicomgeom.instance_order(series.index, geometry), start=1):
        ds = copy.deepcopy(common)  # not update(): that would share (and so overwrite) the common elements
        sop_uid = _uid(series.identity, "image", study_uid, str(i))
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = number
        counters = series.index[i]
        echo = int(counters.get("ECO", 0))
        ds.EchoNumbers = echo + 1
        te = _sequence_values(series, "te_s", "te_s")
        if te:
            ds.EchoTime = _ds(1e3 * te[min(echo, len(te) - 1)])
        _place(ds, geometry[i], between)
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
    ds.PatientPosition = series.patient_position
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
    ds.MRAcquisitionType = "3D" if series.is_3d else "2D"
    ds.SequenceName = (h.sequence_name or h.protocol_name)[:16]
    ds.AngioFlag = "N"
    tr, te, flip = (_sequence_values(series, k, k) for k in ("tr_s", "te_s", "flip_angle_deg"))
    ds.RepetitionTime = _ds(1e3 * tr[0]) if tr else ""
    ds.EchoTime = _ds(1e3 * te[0]) if te else ""
    etl = getattr(h, "echo_train_length", None) or series.parameters.get("etl")
    ds.EchoTrainLength = int(etl) if isinstance(etl, int) and etl > 0 else 1
    averages = series.parameters.get("averages")
    ds.NumberOfAverages = _ds(float(averages)) if isinstance(averages, int | float) else "1"
    ds.ImagingFrequency = _ds(h.larmor_hz * 1e-6)
    ds.ImagedNucleus = "1H"
    if h.b0_t is not None:
        ds.MagneticFieldStrength = _ds(h.b0_t)
    if flip:
        ds.FlipAngle = _ds(flip[0])
    nx, ny = int(series.images.shape[2]), int(series.images.shape[1])
    bandwidth: Any = series.parameters.get("readout_bandwidth_hz_per_pixel")
    if series.dwell_s:
        ds.PixelBandwidth = _ds(1.0 / (series.dwell_s * nx))  # Hz per pixel across the read-out
    elif _finite(bandwidth):
        ds.PixelBandwidth = _ds(float(bandwidth))
    ds.AcquisitionMatrix = [nx, 0, 0, ny]  # frequency along the rows, phase encoding along the columns
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.ReceiveCoilName = f"{h.channels} channel" if h.channels > 1 else "body"
    ds.TransmitCoilName = "body"


def _sequence_values(series: Series, header_field: str, parameter: str) -> tuple[float, ...]:
    """TR, TE (s) or flip angles (degrees): the raw data header's sequenceParameters, else the protocol's
    parameter (a number or a list; a Pulseq file run without a protocol has none: empty)."""
    values = tuple(getattr(series.header, header_field, ()) or ())
    if values:
        return values
    given = series.parameters.get(parameter)
    given = given if isinstance(given, list) else [given]
    return tuple(float(v) for v in given if _finite(v))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


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


def _place(ds: Dataset, g: ImageGeometry, between: float) -> None:
    """The Image Plane module of one image (mm)."""
    d_read, d_phase = g.spacing
    ds.ImageOrientationPatient = [_ds(v) for v in (*g.read, *g.phase)]
    ds.ImagePositionPatient = [_ds(v) for v in g.first_pixel]
    ds.PixelSpacing = [_ds(d_phase), _ds(d_read)]  # between rows (phase), between columns (read)
    ds.SliceThickness = _ds(g.fov[2])
    ds.SpacingBetweenSlices = _ds(between)
    ds.SliceLocation = _ds(g.location)


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
