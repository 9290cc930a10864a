"""DICOM to a real PACS: C-STORE (scanctl/data/pacs.py) to Orthanc (Debian package orthanc, started here on
loopback with a configuration of its own), read back through its REST API and compared pixel for pixel; a
PACS that refuses, is down, answers with a failure or drops the association mid-store (pynetdicom SCPs)
(docs/dicom.md)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage

from scanctl.config import profile as profiles
from scanctl.data.dicom import Series, build_series, write_series
from scanctl.data.pacs import Pacs, PacsError, parse_pacs, store
from scanctl.data.rawdata import RawHeader
from scanctl.engine.session import run_scan
from scanctl.services.orthanc import Orthanc, free_port

ROOT = Path(__file__).resolve().parents[1]
GRE = ROOT / "protocols" / "gre_2d.toml"
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SliceLocation",
            "FrameOfReferenceUID", "RepetitionTime", "EchoTime", "FlipAngle")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def series_files(tmp_path: Path) -> list[Path]:
    """Five slices of a synthetic 2D series (the UIDs differ per test: the identity is the test's path)."""
    h = RawHeader(protocol_name="t", sequence_name="gre_2d", fov_m=(0.2, 0.2, 0.004), encoded_matrix=(32, 32, 1),
                  larmor_hz=63.86e6, b0_t=1.5, tr_s=(0.02,), te_s=(0.005,), flip_angle_deg=(25.0,))
    import datetime as dt

    images = np.random.default_rng(2).random((5, 32, 32)).astype(np.float32) * 7
    series = Series(images=images, index=[{"SLC": s} for s in range(5)], header=h, identity=str(tmp_path),
                    acquired=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dwell_s=1e-5)
    return write_series(build_series(series), tmp_path / "dicom")


def counts(server: Orthanc) -> tuple[int, int, int]:
    stats = server.rest("/statistics")
    return stats["CountStudies"], stats["CountSeries"], stats["CountInstances"]


def test_a_run_stored_to_orthanc_comes_back_pixel_for_pixel(orthanc: Orthanc, tmp_path: Path) -> None:
    from scanctl.data.dicom import export_run

    run = tmp_path / "run"
    assert run_scan(GRE, profiles.load(None), run).ok
    files = export_run(run, tmp_path / "dicom").files
    before = counts(orthanc)
    result = store(files, orthanc.pacs)
    assert result.stored == files and result.associations == 1
    assert counts(orthanc) == (before[0] + 1, before[1] + 1, before[2] + 1)
    for path in files:
        ours = pydicom.dcmread(path)
        theirs = pydicom.dcmread(io.BytesIO(orthanc.instance_file(ours.SOPInstanceUID)))
        assert np.array_equal(theirs.pixel_array, ours.pixel_array)
        assert theirs.RescaleSlope == ours.RescaleSlope
        for keyword in GEOMETRY:
            assert theirs[keyword].value == ours[keyword].value, keyword
        assert theirs.PatientID == ours.PatientID and theirs.StudyInstanceUID == ours.StudyInstanceUID


def test_a_series_stores_every_slice_once(orthanc: Orthanc, series_files: list[Path]) -> None:
    before = counts(orthanc)
    store(series_files, orthanc.pacs)
    assert counts(orthanc) == (before[0] + 1, before[1] + 1, before[2] + 5)
    store(series_files, orthanc.pacs)  # again: the same UIDs, Orthanc keeps one copy
    assert counts(orthanc) == (before[0] + 1, before[1] + 1, before[2] + 5)
    z = []
    for path in series_files:
        uid = pydicom.dcmread(path).SOPInstanceUID
        z.append(float(pydicom.dcmread(io.BytesIO(orthanc.instance_file(uid))).ImagePositionPatient[2]))
    assert z == [-8.0, -4.0, 0.0, 4.0, 8.0]


def test_a_wrong_called_ae_title_is_refused_at_once(orthanc: Orthanc, series_files: list[Path]) -> None:
    slept: list[float] = []
    with pytest.raises(PacsError, match="refused the association") as info:
        store(series_files, Pacs("NOTHERE", orthanc.host, orthanc.dicom_port), retries=3, sleep=slept.append)
    assert slept == []  # a refusal is not retried
    assert "files are kept" in str(info.value) and all(p.is_file() for p in series_files)


def test_a_pacs_that_is_down_is_tried_again_then_named(series_files: list[Path]) -> None:
    slept: list[float] = []
    pacs = Pacs("ORTHANC", "127.0.0.1", free_port())  # nothing listens there
    with pytest.raises(PacsError, match=r"cannot be reached after 3 tries") as info:
        store(series_files, pacs, retries=2, retry_wait_s=1.5, sleep=slept.append, timeout_s=2)
    assert slept == [1.5, 1.5]
    assert str(pacs) in str(info.value) and "\n" not in str(info.value)
    assert all(p.is_file() for p in series_files)


def test_a_pacs_up_again_on_a_retry_takes_everything(tmp_path: Path, series_files: list[Path]) -> None:
    server = Orthanc(tmp_path / "late")
    tries: list[float] = []

    def start_now(seconds: float) -> None:  # the PACS comes up while we wait
        tries.append(seconds)
        server.start()

    try:
        result = store(series_files, server.pacs, retries=1, sleep=start_now)
        assert result.associations == 2 and len(result.stored) == 5 and tries == [2.0]
        assert counts(server) == (1, 1, 5)
    finally:
        server.stop()


def _scp(handler: object) -> tuple[object, int]:
    """A pynetdicom Storage SCP on a free loopback port whose C-STORE handler is ``handler``."""
    ae = AE(ae_title="FAKEPACS")
    ae.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2.1"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)])
    return server, port


def test_an_object_the_pacs_fails_is_named(series_files: list[Path]) -> None:
    seen: list[int] = []

    def handle(event: evt.Event) -> int:
        seen.append(1)
        return 0xA700 if len(seen) == 2 else 0x0000  # out of resources for the second object

    server, port = _scp(handle)
    try:
        with pytest.raises(PacsError, match=r"1 of 5 objects not stored.*IMG0002\.dcm.*0xA700") as info:
            store(series_files, Pacs("FAKEPACS", "127.0.0.1", port))
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert len(info.value.stored) == 4 and [p.name for p, _ in info.value.failed] == ["IMG0002.dcm"]


def test_an_association_dropped_mid_store_keeps_the_rest_named(series_files: list[Path]) -> None:
    seen: list[int] = []
    dropped = threading.Event()

    def handle(event: evt.Event) -> int:
        seen.append(1)
        if len(seen) == 3:  # the PACS goes away in the middle of the third object
            dropped.set()
            event.assoc.abort()
        return 0x0000

    server, port = _scp(handle)
    try:
        with pytest.raises(PacsError, match=r"3 of 5 objects not stored") as info:
            store(series_files, Pacs("FAKEPACS", "127.0.0.1", port), timeout_s=5)
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert dropped.is_set()
    assert [p.name for p in info.value.stored] == ["IMG0001.dcm", "IMG0002.dcm"]
    assert all(p.is_file() for p in series_files)


@pytest.mark.parametrize("text", ["ORTHANC@host", "@host:4242", "ORTHANC@:4242", "ORTHANC@host:0",
                                  "ORTHANC@host:70000", "A_TITLE_LONGER_THAN_16@host:4242", "OR\\TH@host:1"])
def test_a_malformed_pacs_address_is_named(text: str) -> None:
    with pytest.raises(PacsError, match="PACS"):
        parse_pacs(text)


def test_addresses() -> None:
    assert parse_pacs("ORTHANC@127.0.0.1:4242") == Pacs("ORTHANC", "127.0.0.1", 4242)
    assert parse_pacs("PACS@[::1]:104") == Pacs("PACS", "::1", 104)


# -- the command line ------------------------------------------------------------------------------------


def scanctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scanctl", *args], capture_output=True, text=True, timeout=300)


def test_run_dicom_store_from_the_command_line(orthanc: Orthanc, tmp_path: Path) -> None:
    before = counts(orthanc)
    done = scanctl("run", str(GRE), "--out", str(tmp_path / "run"), "--dicom", str(tmp_path / "dicom"),
                   "--store", str(orthanc.pacs))
    assert done.returncode == 0, done.stderr
    assert "wrote 1 DICOM images" in done.stdout and f"stored 1 images to {orthanc.pacs}" in done.stdout
    assert counts(orthanc)[2] == before[2] + 1


def test_export_to_a_pacs_that_is_down_is_one_line_and_keeps_the_files(tmp_path: Path) -> None:
    assert run_scan(GRE, profiles.load(None), tmp_path / "run").ok
    done = scanctl("export", str(tmp_path / "run"), "--dicom", str(tmp_path / "dicom"), "--store",
                   f"ORTHANC@127.0.0.1:{free_port()}", "--retries", "1", "--retry-wait", "0")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("scanctl: error: PACS ORTHANC@127.0.0.1:")
    assert "cannot be reached after 2 tries" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "dicom" / "IMG0001.dcm").is_file() and (tmp_path / "run" / "raw.h5").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--store", "nowhere"], "is not AET@HOST:PORT"),
    (["--order", "missing.toml"], "cannot read the order"),
    (["--calling-aet", "A" * 17], "--calling-aet"),
])
def test_bad_dicom_options_refuse_the_run_before_it_starts(tmp_path: Path, args: list[str], message: str) -> None:
    done = scanctl("run", str(GRE), "--out", str(tmp_path / "run"), "--dicom", str(tmp_path / "dicom"), *args)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "run" / "raw.h5").exists()  # nothing ran
