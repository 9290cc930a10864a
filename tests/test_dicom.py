"""DICOM images out (scanctl/data/dicom.py): objects that dciodvfy passes, pixels and geometry that round-trip,
the order's patient and study, stable UIDs, and bad input refused (docs/dicom.md)."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scanctl.config import profile as profiles
from scanctl.data.dicom import (
    NO_ORDER,
    UID_ROOT,
    DicomError,
    Order,
    Series,
    build_series,
    export_run,
    rescale,
    series_from_run,
    write_series,
)
from scanctl.data.orders import load_order
from scanctl.data.outputs import OutputExistsError
from scanctl.data.rawdata import RawHeader
from scanctl.engine.session import run_scan
from scanctl.errors import ScanctlError

ROOT = Path(__file__).resolve().parents[1]
GRE = ROOT / "protocols" / "gre_2d.toml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed gre_2d run (128 x 128, FOV 256 mm, 5 mm slice, TR 10 ms, TE 4.5 ms, 15°, 3 T)."""
    out = tmp_path_factory.mktemp("run") / "001"
    report = run_scan(GRE, profiles.load(None), out)
    assert report.ok
    return out


def dciodvfy(path: Path) -> tuple[int, list[str]]:
    """dciodvfy's exit code and its error lines for ``path`` (Debian dicom3tools: ./setup-env installs it)."""
    exe = shutil.which("dciodvfy")
    assert exe is not None, "dciodvfy (Debian dicom3tools) is not installed: run ./setup-env test as root"
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in lines if line.startswith("Error")]


def header(**changes: object) -> RawHeader:
    base = dict(protocol_name="gre_2d", sequence_name="gre_2d", fov_m=(0.256, 0.192, 0.005),
                encoded_matrix=(64, 48, 1), larmor_hz=63.86e6, b0_t=1.5, tr_s=(0.02,), te_s=(0.004, 0.009),
                flip_angle_deg=(20.0,), patient_weight_kg=80.0)
    base.update(changes)
    return RawHeader(**base)  # type: ignore[arg-type]


def synthetic(index: list[dict[str, int]], **changes: object) -> Series:
    h = header(**changes)
    rng = np.random.default_rng(1)
    images = rng.random((len(index), h.encoded_matrix[1], h.encoded_matrix[0])).astype(np.float32)
    return Series(images=images, index=index, header=h, identity="x" * 64, acquired=_when(), dwell_s=10e-6)


def _when():  # noqa: ANN202 - a datetime
    import datetime as dt

    return dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


# -- a real run ----------------------------------------------------------------------------------------------


def test_run_exports_as_valid_mr_images(run_dir: Path, tmp_path: Path) -> None:
    done = export_run(run_dir, tmp_path / "dicom")
    assert [p.name for p in done.files] == ["IMG0001.dcm"]
    code, errors = dciodvfy(done.files[0])
    assert errors == [] and code == 0
    ds = pydicom.dcmread(done.files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
        assert uid.startswith(UID_ROOT) and pydicom.uid.UID(uid).is_valid


def test_pixels_round_trip_within_half_a_step(run_dir: Path, tmp_path: Path) -> None:
    done = export_run(run_dir, tmp_path / "dicom")
    ds = pydicom.dcmread(done.files[0])
    image = np.load(run_dir / "image.npy")[0]
    assert (ds.Rows, ds.Columns) == image.shape
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    slope = float(ds.RescaleSlope)
    assert float(ds.RescaleIntercept) == 0
    assert int(ds.pixel_array.max()) == 65535
    back = ds.pixel_array * slope
    assert np.max(np.abs(back - image)) <= slope / 2 * (1 + 1e-6)


def test_geometry_and_parameters_from_the_raw_data_header(run_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(export_run(run_dir, tmp_path / "dicom").files[0])
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]  # transverse (until issue 16)
    assert [float(v) for v in ds.PixelSpacing] == [2.0, 2.0]  # 256 mm / 128
    assert [float(v) for v in ds.ImagePositionPatient] == [-128.0, -128.0, 0.0]  # pixel (0, 0) at -FOV/2
    assert float(ds.SliceThickness) == 5.0 and float(ds.SliceLocation) == 0.0
    assert float(ds.RepetitionTime) == 10.0 and float(ds.EchoTime) == 4.5 and float(ds.FlipAngle) == 15.0
    assert float(ds.MagneticFieldStrength) == 3.0
    assert float(ds.ImagingFrequency) == pytest.approx(127.728, abs=1e-3)
    assert float(ds.PixelBandwidth) == pytest.approx(1 / (30e-6 * 128), rel=1e-6)  # dwell 30 µs, 128 samples
    assert ds.MRAcquisitionType == "2D" and ds.ScanningSequence == "GR" and ds.SequenceVariant == "SP"
    assert ds.SeriesNumber == 1 and ds.ProtocolName == "gre_2d" and ds.PatientPosition == "HFS"
    assert float(ds.PatientWeight) == 70.0  # the weight the scan's SAR was judged with


def test_no_order_is_marked_as_such(run_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(export_run(run_dir, tmp_path / "dicom").files[0])
    assert str(ds.PatientName) == "NO ORDER^SCANCTL" and ds.PatientID == "SCANCTL-NO-ORDER"
    assert "NO ORDER" in ds.ImageComments


def test_order_from_toml_gives_patient_and_study(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "order.toml"
    path.write_text('[order]\npatient_id = "P123"\npatient_name = "Müller^Jürgen"\nbirth_date = 1970-05-31\n'
                    'sex = "M"\nweight_kg = 82\naccession_number = "ACC42"\nrequested_procedure = "MR head"\n'
                    'study_uid = "1.2.826.0.1.3680043.8.498.1"\n', encoding="utf-8")
    order = load_order(path)
    ds = pydicom.dcmread(export_run(run_dir, tmp_path / "dicom", order).files[0])
    assert str(ds.PatientName) == "Müller^Jürgen" and ds.PatientID == "P123"
    assert ds.PatientBirthDate == "19700531" and ds.PatientSex == "M" and ds.AccessionNumber == "ACC42"
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1" and ds.StudyDescription == "MR head"
    assert "ImageComments" not in ds
    assert dciodvfy(tmp_path / "dicom" / "IMG0001.dcm")[1] == []


def test_the_same_run_gives_the_same_uids(run_dir: Path, tmp_path: Path) -> None:
    """A run exported twice is the same series to a PACS (it keeps one copy), another patient's is not."""
    first = pydicom.dcmread(export_run(run_dir, tmp_path / "a").files[0])
    again = pydicom.dcmread(export_run(run_dir, tmp_path / "b").files[0])
    other = pydicom.dcmread(export_run(run_dir, tmp_path / "c", Order("P9", "Other^Pat")).files[0])
    uids = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    assert [first[k].value for k in uids] == [again[k].value for k in uids]
    assert all(first[k].value != other[k].value for k in uids)


def test_two_runs_of_the_same_protocol_are_two_series(run_dir: Path, tmp_path: Path) -> None:
    """The simulators can give the same raw data bytes twice: the scan's start time tells the runs apart."""
    again = tmp_path / "002"
    assert run_scan(GRE, profiles.load(None), again).ok
    first = pydicom.dcmread(export_run(run_dir, tmp_path / "a").files[0])
    second = pydicom.dcmread(export_run(again, tmp_path / "b").files[0])
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_export_never_writes_over_files(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "IMG0001.dcm").write_bytes(b"earlier")
    with pytest.raises(OutputExistsError):
        export_run(run_dir, tmp_path / "dicom")
    assert (tmp_path / "dicom" / "IMG0001.dcm").read_bytes() == b"earlier"


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match="no raw.h5"):
        series_from_run(tmp_path)


# -- several images: slices, echoes, partitions -------------------------------------------------------------


def test_multi_slice_multi_echo_geometry(tmp_path: Path) -> None:
    index = [{"ECO": e, "SLC": s} for e in range(2) for s in range(3)]
    datasets = build_series(synthetic(index))
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert z == [-5.0, 0.0, 5.0] * 2  # three slices 5 mm apart, centred on the isocentre
    assert [float(ds.EchoTime) for ds in datasets] == [4.0] * 3 + [9.0] * 3
    assert [ds.EchoNumbers for ds in datasets] == [1] * 3 + [2] * 3
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 7))
    assert [float(v) for v in datasets[0].PixelSpacing] == [4.0, 4.0]  # 192/48 rows, 256/64 columns
    assert len({ds.SOPInstanceUID for ds in datasets}) == 6
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    for path in write_series(datasets, tmp_path / "dicom"):
        assert dciodvfy(path)[1] == []


def test_3d_partitions(tmp_path: Path) -> None:
    index = [{"PAR": p} for p in range(4)]
    datasets = build_series(synthetic(index, encoded_matrix=(64, 48, 4), fov_m=(0.256, 0.192, 0.02)))
    assert [float(ds.ImagePositionPatient[2]) for ds in datasets] == [-10.0, -5.0, 0.0, 5.0]  # (p - nz//2)·5 mm
    assert all(ds.MRAcquisitionType == "3D" and float(ds.SliceThickness) == 5.0 for ds in datasets)
    assert dciodvfy(write_series(datasets, tmp_path / "dicom")[0])[1] == []


def test_non_finite_pixels_are_refused() -> None:
    series = synthetic([{}])
    series.images[0, 3, 4] = np.nan
    with pytest.raises(DicomError, match="not finite"):
        build_series(series)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=8),
                  elements=st.floats(0, 1e30, allow_nan=False, allow_infinity=False)))
def test_rescale_keeps_every_value_within_half_a_step(values: np.ndarray) -> None:
    stored, slope = rescale(values)
    assert stored.dtype == np.uint16 and slope > 0 and math.isfinite(slope)
    assert np.all(np.abs(stored * slope - values) <= slope / 2 * (1 + 1e-9) + 1e-300)
    if values.max() / 65535 >= np.finfo(np.float64).tiny:  # below that, the slope would underflow: zeros
        assert int(stored.max()) == 65535


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0])
def test_rescale_refuses_what_no_magnitude_image_holds(bad: float) -> None:
    with pytest.raises(DicomError):
        rescale(np.array([1.0, bad]))


# -- orders --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "names"), [
    ('patient_name = "A^B"', "patient_id is missing"),
    ('patient_id = "P1"', "patient_name is missing"),
    ('patient_id = ""\npatient_name = "A^B"', "patient_id is empty"),
    ('patient_id = "P1"\npatient_name = "A^B"\nbirth_date = "19701332"', "birth_date"),
    ('patient_id = "P1"\npatient_name = "A^B"\nsex = "X"', "sex"),
    ('patient_id = "P1"\npatient_name = "A^B"\nweight_kg = -3', "weight_kg"),
    ('patient_id = "P1"\npatient_name = "A^B"\nweight_kg = nan', "weight_kg"),
    ('patient_id = "P1"\npatient_name = "A^B"\nstudy_uid = "1.02.x"', "study_uid"),
    ('patient_id = "P1"\npatient_name = "A^B"\naccession_number = "12345678901234567"', "accession_number"),
    ('patient_id = "P\\\\1"\npatient_name = "A^B"', "patient_id"),
    ('patient_id = "P1"\npatient_name = "A^B"\nward = 3', "ward: unknown key"),
    ('patient_id = 7\npatient_name = "A^B"', "patient_id: expected a str"),
])
def test_a_malformed_order_is_named(tmp_path: Path, body: str, names: str) -> None:
    path = tmp_path / "order.toml"
    path.write_text(f"[order]\n{body}\n")
    with pytest.raises(DicomError, match=names) as info:
        load_order(path)
    assert str(path) in str(info.value)


def test_order_file_not_toml_or_without_table(tmp_path: Path) -> None:
    path = tmp_path / "order.toml"
    path.write_text("[order\n")
    with pytest.raises(DicomError, match="not a TOML file"):
        load_order(path)
    path.write_text("[patient]\nid = 1\n")
    with pytest.raises(DicomError, match=r"no \[order\] table"):
        load_order(path)


def test_no_order_placeholder_is_a_valid_order() -> None:
    assert NO_ORDER.placeholder and NO_ORDER.patient_id


# -- geometry from image.json (the recon's sidecar), patient position, parameters ---------------------------


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    """Rz · Rx: columns read, phase, slice of an oblique plane (right-handed)."""
    a, b = math.radians(z_deg), math.radians(x_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


#: The oblique stack oblique_run writes: three slices 6 mm apart (4 mm thick) along the normal of a plane
#: turned 20° about z and 30° about x, centred on CENTRE; image rows stored in the order ROWS_K.
R_OBLIQUE = _rotation(20.0, 30.0)
CENTRE = np.array([10.0, -20.0, 30.0])
ROWS_K = [2, 0, 1]


def oblique_centre(k: int) -> np.ndarray:
    return CENTRE + (k - 1) * 6.0 * R_OBLIQUE[:, 2]


def oblique_run(run_dir: Path, out: Path, patient_position: str | None = None) -> Path:
    """A copy of ``run_dir`` with a 3-image image.npy (96 rows x 128 columns) and an oblique image.json
    written by hand (images.md), as the recon will write them; ``patient_position`` replaces the raw data
    header's."""
    import json

    import h5py

    out.mkdir(parents=True)
    for name in ("raw.h5", "sequence.seq", "report.json"):
        shutil.copy(run_dir / name, out / name)
    if patient_position is not None:
        with h5py.File(out / "raw.h5", "r+") as f:
            xml = f["dataset/xml"][0].decode()
            assert "<patientPosition>HFS</patientPosition>" in xml
            f["dataset/xml"][0] = xml.replace("<patientPosition>HFS", f"<patientPosition>{patient_position}")
    image = np.load(run_dir / "image.npy")[0][16:112]
    np.save(out / "image.npy", np.stack([image * (1 + k) for k in ROWS_K]).astype(np.float32))
    entries = [{"row": row, "counters": {"SLC": k, "PAR": 0, "ECO": 0, "REP": 0, "SET": 0, "PHS": 0},
                "position_mm": oblique_centre(k).tolist(), "read_dir": R_OBLIQUE[:, 0].tolist(),
                "phase_dir": R_OBLIQUE[:, 1].tolist(), "slice_dir": R_OBLIQUE[:, 2].tolist(),
                "fov_mm": [256.0, 192.0, 4.0], "matrix": [128, 96], "channels": 1, "combine": "single"}
               for row, k in enumerate(ROWS_K)]
    (out / "image.json").write_text(json.dumps({"format": 1, "images": entries, "trajectory": "cartesian",
                                                "three_d": False}))
    return out


def test_oblique_multi_slice_geometry_from_image_json(run_dir: Path, tmp_path: Path) -> None:
    done = export_run(oblique_run(run_dir, tmp_path / "run"), tmp_path / "dicom")
    datasets = [pydicom.dcmread(p) for p in done.files]
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3]  # files and instance numbers in position order
    for k, ds in enumerate(datasets):
        assert dciodvfy(done.files[k])[1] == []
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        assert np.allclose(iop, np.r_[R_OBLIQUE[:, 0], R_OBLIQUE[:, 1]], atol=1e-8)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        assert (row_spacing, column_spacing) == (2.0, 2.0)
        # DICOM PS3.3 C.7.6.2.1.1: pixel (column i, row j) at IPP + i·Δcol·row_dir + j·Δrow·col_dir; the
        # image's centre pixel (64, 48) must be the slice centre image.json gave.
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        centre = ipp + 64 * column_spacing * iop[:3] + 48 * row_spacing * iop[3:]
        assert np.allclose(centre, oblique_centre(k), atol=1e-5)
        assert float(ds.SliceThickness) == 4.0 and float(ds.SpacingBetweenSlices) == pytest.approx(6.0)
        assert float(ds.SliceLocation) == pytest.approx(float(oblique_centre(k) @ R_OBLIQUE[:, 2]), abs=1e-5)
        # the pixels are those of the row that holds slice k (rows were stored 2, 0, 1)
        assert float(ds.pixel_array.max()) * float(ds.RescaleSlope) == pytest.approx(
            float(np.load(tmp_path / "run" / "image.npy")[ROWS_K.index(k)].max()), rel=1e-4)


def test_a_run_without_image_json_stays_transverse_at_the_isocentre(run_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(export_run(run_dir, tmp_path / "dicom").files[0])
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.ImagePositionPatient] == [-128.0, -128.0, 0.0]


@pytest.mark.parametrize(("position", "expected"), [("FFS", "FFS"), ("HFP", "HFP"), (None, "HFS")])
def test_patient_position_from_the_raw_data_header(run_dir: Path, tmp_path: Path, position: str | None,
                                                   expected: str) -> None:
    done = export_run(oblique_run(run_dir, tmp_path / "run", position), tmp_path / "dicom")
    ds = pydicom.dcmread(done.files[0])
    assert ds.PatientPosition == expected
    assert dciodvfy(done.files[0])[1] == []


def test_an_unknown_patient_position_is_named(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ScanctlError, match=r"patientPosition 'SIDEWAYS' is not one scanctl places images for"):
        export_run(oblique_run(run_dir, tmp_path / "run", patient_position="SIDEWAYS"), tmp_path / "dicom")


def test_series_of_one_study_share_a_frame_of_reference(run_dir: Path, tmp_path: Path) -> None:
    order = Order("P1", "A^B", study_uid="1.2.3.4")
    first = pydicom.dcmread(export_run(run_dir, tmp_path / "a", order).files[0])
    second = pydicom.dcmread(export_run(oblique_run(run_dir, tmp_path / "run"), tmp_path / "b", order).files[0])
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID


def _damage(path: Path, change: object) -> None:
    import json

    info = json.loads(path.read_text())
    change(info)  # type: ignore[operator]
    path.write_text(json.dumps(info))


@pytest.mark.parametrize(("change", "names"), [
    (lambda i: i["images"].pop(), "2 images described for 3"),
    (lambda i: i["images"][1].update(read_dir=[1, 1, 0]), r"images\[1\]\.read_dir: .* not a unit vector"),
    (lambda i: i["images"][0].update(phase_dir=i["images"][0]["read_dir"]), "not orthogonal"),
    (lambda i: i["images"][2].update(position_mm=[0, "x", 0]), r"images\[2\]\.position_mm"),
    (lambda i: i["images"][0].update(position_mm=[0, float("nan"), 0]), r"images\[0\]\.position_mm"),
    (lambda i: i["images"][0].update(fov_mm=[256, 0, 4]), r"fov_mm: .* must be positive"),
    (lambda i: i["images"][0].update(matrix=[96, 128]), r"matrix: .* not the image's"),
    (lambda i: i.update(format=2), "not an image.json of format 1"),
])
def test_a_malformed_image_json_is_named(run_dir: Path, tmp_path: Path, change: object, names: str) -> None:
    run = oblique_run(run_dir, tmp_path / "run")
    _damage(run / "image.json", change)
    with pytest.raises(DicomError, match=names) as info:
        export_run(run, tmp_path / "dicom")
    assert "image.json" in str(info.value)
    assert not (tmp_path / "dicom").exists() or not any((tmp_path / "dicom").iterdir())


def test_parameters_fall_back_to_the_protocol(tmp_path: Path) -> None:
    """A raw data header without sequenceParameters: TR, TE, flip angle, echo train length and bandwidth from
    the protocol's parameters (report.json)."""
    import dataclasses

    series = dataclasses.replace(
        synthetic([{}], tr_s=(), te_s=(), flip_angle_deg=()), dwell_s=None,
        parameters={"tr_s": 0.5, "te_s": [0.01, 0.02], "flip_angle_deg": 90.0, "etl": 7,
                    "readout_bandwidth_hz_per_pixel": 130.0})
    ds = build_series(series)[0]
    assert (float(ds.RepetitionTime), float(ds.EchoTime), float(ds.FlipAngle)) == (500.0, 10.0, 90.0)
    assert ds.EchoTrainLength == 7 and float(ds.PixelBandwidth) == 130.0
    assert dciodvfy(write_series([ds], tmp_path / "d")[0])[1] == []


_finite = st.floats(-500, 500, allow_nan=False)


@settings(max_examples=80, deadline=None)
@given(st.tuples(_finite, _finite, _finite), st.floats(0, 360), st.floats(-180, 180), st.floats(0, 360),
       st.integers(4, 64), st.integers(4, 64), st.floats(50, 400), st.floats(50, 400))
def test_any_plane_round_trips_through_the_dicom_image_plane(position: tuple[float, float, float], a: float,
                                                             b: float, c: float, nx: int, ny: int, fov_read: float,
                                                             fov_phase: float) -> None:
    """Any orientation and position: the pixel DICOM's equation puts at [ny//2, nx//2] is image.json's centre,
    and IOP is read_dir, phase_dir (PS3.3 C.7.6.2.1.1)."""
    from pydicom.dataset import Dataset

    from scanctl.data.dicom import _place
    from scanctl.data.dicomgeom import ImageGeometry

    r = _rotation(a, b) @ _rotation(c, 0.0)
    g = ImageGeometry(position, tuple(r[:, 0]), tuple(r[:, 1]), (fov_read, fov_phase, 3.0), (nx, ny))
    ds = Dataset()
    _place(ds, g, 3.0)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    centre = ipp + (nx // 2) * col_spacing * iop[:3] + (ny // 2) * row_spacing * iop[3:]
    assert np.allclose(centre, position, atol=1e-3)  # Decimal Strings hold 10 significant digits
    assert np.allclose(iop, np.r_[r[:, 0], r[:, 1]], atol=1e-8)
    assert float(ds.SliceLocation) == pytest.approx(float(np.dot(position, r[:, 2])), abs=1e-3)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["position_mm", "read_dir", "phase_dir", "fov_mm", "matrix", "counters"]), _json)
def test_a_damaged_image_json_entry_is_a_dicom_error_or_valid(key: str, value: object) -> None:
    import json
    import tempfile

    from scanctl.data.dicomgeom import read_image_json

    entry = {"counters": {"SLC": 0}, "position_mm": [0, 0, 0], "read_dir": [1, 0, 0], "phase_dir": [0, 1, 0],
             "fov_mm": [256, 256, 5], "matrix": [8, 8], key: value}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.json"
        path.write_text(json.dumps({"format": 1, "images": [entry]}))
        try:
            geometry, index, _ = read_image_json(path, (1, 8, 8))
        except DicomError as exc:
            assert "image.json: images[0]" in str(exc)
            return
    assert len(geometry) == 1 and len(index) == 1
    assert all(math.isfinite(v) for v in (*geometry[0].position, *geometry[0].fov))
