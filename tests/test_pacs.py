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
    assert result.stored == files and result.associations == 2 and result.verified  # the store, the C-FIND
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
    assert slept == [1.5, 3.0]  # backing off: the wait doubles
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
        assert result.associations == 3 and len(result.stored) == 5 and tries == [2.0] and result.verified
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
        with pytest.raises(PacsError, match=r"association was lost mid-store; 2 of 5 objects stored, 3 not") as info:
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


# -- verified store with retry --------------------------------------------------------------------------------


class FakePacs:
    """A pynetdicom Storage SCP with a C-FIND (Study Root) that lists what it kept. ``drop_at``: abort the
    association in the middle of these C-STOREs (1-based, counted over the PACS's life); ``lose``: answer
    Success for these SOP Instance UIDs and not keep them; ``find``: offer C-FIND at all."""

    def __init__(self, *, drop_at: tuple[int, ...] = (), lose: tuple[str, ...] = (), find: bool = True) -> None:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        self.kept: dict[str, int] = {}  # SOP Instance UID -> times received
        self.calls = 0
        self.drop_at, self.lose = drop_at, lose
        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2.1"])
        if find:
            ae.add_supported_context(FIND)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find)])

    @property
    def pacs(self) -> Pacs:
        return Pacs("FAKEPACS", "127.0.0.1", self.port)

    def _store(self, event: evt.Event) -> int:
        self.calls += 1
        if self.calls in self.drop_at:
            event.assoc.abort()
            return 0x0000
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid not in self.lose:
            self.kept[uid] = self.kept.get(uid, 0) + 1
        return 0x0000

    def _find(self, event: evt.Event) -> Iterator[tuple[int, object]]:
        from pydicom.dataset import Dataset

        for uid in list(self.kept):
            found = Dataset()
            found.QueryRetrieveLevel = "IMAGE"
            found.SOPInstanceUID = uid
            yield 0xFF00, found

    def close(self) -> None:
        self.server.shutdown()  # type: ignore[attr-defined]


def _uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p).SOPInstanceUID) for p in files}


def test_an_association_dropped_mid_series_is_resumed_and_verified(series_files: list[Path]) -> None:
    fake = FakePacs(drop_at=(3,))
    slept: list[float] = []
    try:
        result = store(series_files, fake.pacs, retries=2, retry_wait_s=0.5, sleep=slept.append, timeout_s=5)
    finally:
        fake.close()
    assert result.verified and result.stored == series_files and slept == [0.5]
    assert set(fake.kept) == _uids(series_files) and all(n == 1 for n in fake.kept.values())
    assert result.resent == 3  # the object under which it dropped and the two after it


def test_a_store_that_never_succeeds_is_one_clear_message_and_the_files_stay(series_files: list[Path]) -> None:
    fake = FakePacs(drop_at=(2, 3, 4))  # drops under every try's first object after the first one
    slept: list[float] = []
    try:
        with pytest.raises(PacsError) as info:
            store(series_files, fake.pacs, retries=2, retry_wait_s=1.0, sleep=slept.append, timeout_s=5)
    finally:
        fake.close()
    message = str(info.value)
    assert "\n" not in message and "association was lost mid-store after 3 tries" in message
    assert "1 of 5 objects stored, 4 not" in message and "the files are kept" in message
    assert slept == [1.0, 2.0] and all(p.is_file() for p in series_files)
    assert [p.name for p, _ in info.value.failed] == [f"IMG000{i}.dcm" for i in range(2, 6)]


def test_an_object_acknowledged_but_not_kept_is_caught_by_the_verification(series_files: list[Path]) -> None:
    lost = str(pydicom.dcmread(series_files[3]).SOPInstanceUID)
    fake = FakePacs(lose=(lost,))
    try:
        with pytest.raises(PacsError, match=r"1 objects acknowledged but not found again by C-FIND \(first: "
                                            r"IMG0004\.dcm\)") as info:
            store(series_files, fake.pacs)
    finally:
        fake.close()
    assert series_files[3] not in info.value.stored and len(info.value.stored) == 4


def test_a_pacs_without_c_find_cannot_verify_unless_told(series_files: list[Path]) -> None:
    fake = FakePacs(find=False)
    try:
        with pytest.raises(PacsError, match=r"cannot verify the store: it does not answer C-FIND.*--no-verify"):
            store(series_files, fake.pacs)
        result = store(series_files, fake.pacs, verify=False)
    finally:
        fake.close()
    assert not result.verified and result.stored == series_files


def test_orthanc_stopped_mid_series_and_started_again_gets_every_instance_once(tmp_path: Path,
                                                                               series_files: list[Path]) -> None:
    server = Orthanc(tmp_path / "flaky")
    sent: list[Path] = []

    def stop_after_two(path: Path) -> None:  # the PACS goes down in the middle of the series
        sent.append(path)
        if len(sent) == 2:
            server.stop()

    def start_again(seconds: float) -> None:
        server.start()

    server.start()
    try:
        result = store(series_files, server.pacs, retries=3, retry_wait_s=0.1, sleep=start_again,
                       progress=stop_after_two, timeout_s=5)
        assert result.verified and sorted(result.stored) == series_files
        assert counts(server) == (1, 1, 5)  # all five, none twice
        found = {i["MainDicomTags"]["SOPInstanceUID"] for i in server.rest("/instances?expand")}
        assert found == _uids(series_files)
    finally:
        server.stop()
    assert all(p.is_file() for p in series_files)


def test_oblique_geometry_round_trips_through_orthanc_rest(orthanc: Orthanc, tmp_path: Path) -> None:
    from scanctl.data.dicom import export_run
    from tests.test_dicom import oblique_centre, oblique_run

    run = tmp_path / "plain"
    assert run_scan(GRE, profiles.load(None), run).ok
    files = export_run(oblique_run(run, tmp_path / "oblique"), tmp_path / "dicom").files
    assert store(files, orthanc.pacs).verified
    for k, path in enumerate(files):
        ours = pydicom.dcmread(path)
        found = orthanc.rest("/tools/lookup", str(ours.SOPInstanceUID).encode())
        tags = orthanc.rest(f"/instances/{found[0]['ID']}/simplified-tags")
        ipp = [float(v) for v in tags["ImagePositionPatient"].split("\\")]
        iop = [float(v) for v in tags["ImageOrientationPatient"].split("\\")]
        assert ipp == [float(v) for v in ours.ImagePositionPatient]
        assert int(tags["InstanceNumber"]) == k + 1
        spacing = float(tags["PixelSpacing"].split("\\")[0])
        centre = np.array(ipp) + 64 * spacing * np.array(iop[:3]) + 48 * spacing * np.array(iop[3:])
        assert np.allclose(centre, oblique_centre(k), atol=1e-4)
