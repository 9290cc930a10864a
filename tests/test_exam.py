"""The exam layer in one process: exam cards and bad cards, the queue (skip, repeat, append) and its
journal in exam.json, the patient weight (missing: refused, nothing moves; given: it judges SAR), MPPS
against a pynetdicom MPPS SCP (N-CREATE and N-SET with the right attributes; a peer that is down), and
resume after the process running an exam is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.data.orders import Order
from scanctl.data.pacs import Pacs
from scanctl.data.rawdata import read_acquisitions
from scanctl.engine.session import LocalPort, ScanSession
from scanctl.errors import ConfigError
from scanctl.exam import record
from scanctl.exam.cards import CARDS_DIR, UnknownProcedureError, card_for, load_card, load_cards, resolve_card
from scanctl.exam.exam import Exam
from scanctl.exam.mpps import MPPS_SOP_CLASS
from scanctl.exam.record import ExamError
from scanctl.services.orthanc import free_port

DATA = Path(__file__).parent / "data" / "exam"
CARD = DATA / "head32.toml"
GRE32 = DATA / "gre32.toml"
FAST = {"rf": "sim://?physics=0"}
ORDER = Order(patient_id="P1", patient_name="Doe^Jane", birth_date="19700531", sex="F", weight_kg=82.5,
              accession_number="ACC1", requested_procedure="MR head", requested_procedure_code="MRHEAD",
              study_uid="1.2.826.0.1.3680043.8.498.1", procedure_step_id="SPS1")


@pytest.fixture(scope="module")
def port() -> Iterator[LocalPort]:
    with LocalPort(profiles.load(), FAST) as p:
        yield p


def journal_events(exam_dir: Path) -> list[str]:
    return [e["event"] for e in json.loads((exam_dir / "exam.json").read_text())["journal"]]


# -- cards ---------------------------------------------------------------------------------------------------
def test_the_shipped_cards_load_and_the_head_card_serves_the_head_order():
    cards = load_cards(CARDS_DIR)
    head = card_for("MRHEAD", "", cards)
    assert head.name == "head" and [p.name for p in head.protocols] == ["localizer", "t1_gre", "t2_tse"]
    assert card_for("", "  mr   HEAD ", cards) is head  # the description, case and spaces aside
    assert all(p.path.is_file() for p in head.protocols)


def test_an_unknown_procedure_is_one_error_listing_the_known_ones():
    with pytest.raises(UnknownProcedureError) as err:
        resolve_card(None, "MRKNEE", "MR knee")
    text = str(err.value)
    assert "'MR knee'" in text and "'MRKNEE'" in text and "head (MRHEAD" in text


@pytest.mark.parametrize(("body", "where"), [
    ('[card]\nname = "x"\nprotocols = ["gre32.toml"]', "card.codes"),  # serves nothing
    ('[card]\nname = "x"\ncodes = ["A"]\nprotocols = []', "card.protocols"),
    ('[card]\nname = "x"\ncodes = ["A"]\nprotocols = ["nowhere.toml"]', "card.protocols[0].path"),
    ('[card]\nname = "x"\ncodes = ["A"]\nprotocols = [{ path = "gre32.toml", nmae = "a" }]', "card.protocols[0]"),
    ('[card]\nname = "x"\ncodes = ["A"]\nprotocols = [{ path = "gre32.toml", name = "a/b" }]',
     "card.protocols[0].name"),
    ('[card]\nname = "x"\ncodes = [3]\nprotocols = ["gre32.toml"]', "card.codes"),
    ('[card]\nname = "x"\ncodes = ["A"]\nprotocol = ["gre32.toml"]', "card.protocol"),
    ('[card]\ncodes = ["A"]\nprotocols = ["gre32.toml"]', "card.name"),
    ('[cards]\nname = "x"', "cards"),
    ('[card]\nname = "x"\ncodes = ["A"]\nprotocols = ["bad.toml"]', "bad.toml"),  # the protocol itself is checked
    ('[card\n', "not valid TOML"),
])
def test_a_bad_card_is_one_error_naming_the_file_and_key(tmp_path, body, where):
    (tmp_path / "gre32.toml").write_text(GRE32.read_text())
    (tmp_path / "bad.toml").write_text(GRE32.read_text().replace("fov_m = 0.256", "fov_m = -1"))
    card = tmp_path / "card.toml"
    card.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_card(card)
    assert str(card) in str(err.value) and where in str(err.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["name", "description", "codes", "procedures", "protocols"]),
       value=st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                       st.lists(st.one_of(st.integers(), st.text(max_size=8)), max_size=3)))
def test_any_value_in_a_card_gives_a_card_or_a_config_error(tmp_path, key, value):
    doc: dict[str, Any] = {"card": {"name": "x", "codes": ["A"], "protocols": [str(GRE32)]}}
    if value is None:
        doc["card"].pop(key, None)
    else:
        doc["card"][key] = value
    path = tmp_path / "card.toml"
    path.write_text("[card]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in doc["card"].items()),
                    encoding="utf-8")
    try:
        card = load_card(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
    else:
        assert card.protocols and (card.codes or card.procedures)


def toml_value(value: Any) -> str:
    """``value`` as TOML (strings as JSON strings, which TOML reads the same, but for a few characters
    TOML refuses: the card is then not valid TOML, which must be a ConfigError too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else "inf" if value == float("inf") else "-inf" if value == -float("inf") \
            else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# -- the queue and its journal ---------------------------------------------------------------------------------
def test_the_queue_runs_skips_repeats_appends_and_journals_every_step(tmp_path, port):
    exam_dir = tmp_path / "exam"
    with Exam.open(exam_dir, ORDER, load_card(CARD), source="test") as exam:
        session = ScanSession(port)
        first = exam.run_next(session)
        assert first["status"] == "done" and first["run_dir"] == "runs/01-localizer"
        assert first["dicom"]["files"] == 1 and (exam_dir / "dicom" / "01-localizer" / "IMG0001.dcm").is_file()
        assert exam.repeat(1)["n"] == 3  # a new step, run next (before step 2)
        assert exam.append(GRE32, "extra")["n"] == 4
        exam.skip(2)
        with pytest.raises(ExamError, match="step 1 .* is done, not pending"):
            exam.skip(1)
        with pytest.raises(ExamError, match="no step 9"):
            exam.repeat(9)
        assert [s["n"] for s in exam.steps] == [1, 3, 2, 4]
        ran = exam.run_all(session)
        assert [(s["n"], s["run_dir"]) for s in ran] == [(3, "runs/02-localizer"), (4, "runs/03-extra")]
        with pytest.raises(ExamError, match="no pending step"):
            exam.run_next(session)
        exam.close()
        with pytest.raises(ExamError, match="is closed: cannot append"):
            exam.append(GRE32)
    doc = record.read(exam_dir)
    assert doc["state"] == "closed" and doc["closed"]
    assert [s["status"] for s in doc["steps"]] == ["done", "done", "skipped", "done"]
    assert journal_events(exam_dir) == [
        "opened", "step_started", "step_ended", "dicom_written", "repeated", "appended", "skipped",
        "step_started", "step_ended", "dicom_written", "step_started", "step_ended", "dicom_written", "closed"]
    for step in doc["steps"]:  # every run's files where the contract says
        if step["run_dir"]:
            report = json.loads((exam_dir / step["run_dir"] / "report.json").read_text())
            assert report["outcome"] == "completed"
            assert report["safety"]["sar"]["patient_weight_kg"] == 82.5  # the order's, not the protocol's 70 kg


def test_an_exam_in_use_by_another_process_is_refused(tmp_path):
    with Exam.open(tmp_path / "e", ORDER, load_card(CARD)), pytest.raises(ExamError, match="in use"):
        Exam.resume(tmp_path / "e")


def test_a_refused_protocol_is_a_refused_step_and_the_exam_goes_on(tmp_path, port):
    with Exam.open(tmp_path / "e", ORDER, load_card(CARD)) as exam:
        for step in exam.steps:
            exam.skip(step["n"])
        exam.append(DATA / "hot32.toml")
        exam.append(GRE32)
        steps = exam.run_all(ScanSession(port))
        assert [s["status"] for s in steps] == ["refused"]  # run_all stops at it
        assert "RF duty cycle" in steps[0]["message"] and steps[0]["dicom"] is None
        assert exam.run_next(ScanSession(port))["status"] == "done"


# -- the patient's weight --------------------------------------------------------------------------------------
def test_an_order_without_a_weight_is_refused_before_anything_moves(tmp_path, port, capsys):
    from dataclasses import replace

    exam_dir = tmp_path / "e"
    with Exam.open(exam_dir, replace(ORDER, weight_kg=None), load_card(CARD)) as exam:
        with pytest.raises(ExamError, match="no patient weight: SAR cannot be judged"):
            exam.run_next(ScanSession(port))
        assert exam.steps[0]["status"] == "pending" and exam.steps[0]["run_dir"] is None
        assert not (exam_dir / "runs").exists()  # nothing ran
        assert journal_events(exam_dir)[-1] == "weight_missing"
        step = exam.run_next(ScanSession(port), weight_kg=90.0)  # a weight given: it judges SAR
    report = json.loads((exam_dir / step["run_dir"] / "report.json").read_text())
    assert report["safety"]["sar"]["patient_weight_kg"] == 90.0
    order = tmp_path / "order.toml"
    order.write_text('[order]\npatient_id = "P2"\npatient_name = "No^Weight"\nrequested_procedure = "MR head"\n')
    assert main(["exam", "open", str(tmp_path / "cli"), "--order", str(order), "--card", str(CARD)]) == 0
    assert main(["exam", "next", str(tmp_path / "cli")]) == 2
    assert "SAR cannot be judged for this patient" in capsys.readouterr().err


# -- MPPS ------------------------------------------------------------------------------------------------------
class MppsScp:
    """A pynetdicom MPPS SCP on a free loopback port, keeping what it was sent."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt

        self.created: list[tuple[str, Any]] = []
        self.set: list[tuple[str, Any]] = []
        self.ae = AE(ae_title="MPPSSCP")
        self.ae.add_supported_context(MPPS_SOP_CLASS)
        self.port = free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_N_CREATE, self._create), (evt.EVT_N_SET, self._set)])
        self.peer = Pacs("MPPSSCP", "127.0.0.1", self.port)

    def _create(self, event: Any) -> tuple[int, Any]:
        ds = event.attribute_list
        self.created.append((str(event.request.AffectedSOPInstanceUID), ds))
        return 0x0000, ds

    def _set(self, event: Any) -> tuple[int, Any]:
        ds = event.modification_list
        self.set.append((str(event.request.RequestedSOPInstanceUID), ds))
        return 0x0000, ds

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def mpps_scp() -> Iterator[MppsScp]:
    scp = MppsScp()
    yield scp
    scp.close()


def test_mpps_in_progress_at_the_first_run_and_completed_at_close(tmp_path, port, mpps_scp):
    exam_dir = tmp_path / "e"
    with Exam.open(exam_dir, ORDER, load_card(CARD), mpps=mpps_scp.peer) as exam:
        assert mpps_scp.created == []  # not at open: nothing is performed yet
        exam.run_next(ScanSession(port))
        assert len(mpps_scp.created) == 1
        uid, ds = mpps_scp.created[0]
        assert ds.PerformedProcedureStepStatus == "IN PROGRESS" and ds.Modality == "MR"
        assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) == ("P1", "Doe^Jane", "19700531")
        scheduled = ds.ScheduledStepAttributesSequence[0]
        assert (scheduled.StudyInstanceUID, scheduled.AccessionNumber, scheduled.ScheduledProcedureStepID) == \
            (ORDER.study_uid, "ACC1", "SPS1")
        exam.run_next(ScanSession(port))
        assert len(mpps_scp.created) == 1  # once per exam
        mpps = exam.close()
    assert mpps == {"uid": uid, "state": "COMPLETED", "message": None, "peer": str(mpps_scp.peer)}
    [(set_uid, mod)] = mpps_scp.set
    assert set_uid == uid and mod.PerformedProcedureStepStatus == "COMPLETED" and mod.PerformedProcedureStepEndTime
    doc = record.read(exam_dir)
    series = {s.SeriesInstanceUID: s for s in mod.PerformedSeriesSequence}
    assert set(series) == {s["dicom"]["series_uid"] for s in doc["steps"]}
    for step in doc["steps"]:
        item = series[step["dicom"]["series_uid"]]
        assert item.ProtocolName == step["protocol"] and len(item.ReferencedImageSequence) == 1
        assert item.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.4"


def test_mpps_discontinued(tmp_path, port, mpps_scp):
    with Exam.open(tmp_path / "e", ORDER, load_card(CARD), mpps=mpps_scp.peer) as exam:
        exam.run_next(ScanSession(port))
        assert exam.discontinue("patient moved")["state"] == "DISCONTINUED"
        assert [s["status"] for s in exam.steps] == ["done", "skipped"]
        assert "discontinued (patient moved)" in exam.steps[1]["message"]
    assert mpps_scp.set[0][1].PerformedProcedureStepStatus == "DISCONTINUED"


def test_an_mpps_peer_that_is_down_does_not_stop_the_exam_and_is_tried_again_at_close(tmp_path, port):
    down = Pacs("MPPSSCP", "127.0.0.1", free_port())
    exam_dir = tmp_path / "e"
    with Exam.open(exam_dir, ORDER, load_card(CARD), mpps=down) as exam:
        steps = exam.run_all(ScanSession(port))
        assert [s["status"] for s in steps] == ["done", "done"]  # the exam went on
        assert "cannot be reached" in exam.doc["mpps"]["message"]
        assert journal_events(exam_dir).count("mpps_failed") == 1
        mpps = exam.close()
    assert mpps["state"] is None and "not sent (COMPLETED)" in mpps["message"]
    assert journal_events(exam_dir).count("mpps_failed") == 2  # tried again at close
    assert record.read(exam_dir)["state"] == "closed"  # closed, and it says MPPS was not sent


def test_an_mpps_peer_that_comes_back_gets_the_whole_step_at_close(tmp_path, port):
    exam_dir = tmp_path / "e"
    later = MppsScp()
    later.server.shutdown()  # its port is known, but nobody listens yet
    with Exam.open(exam_dir, ORDER, load_card(CARD), mpps=later.peer) as exam:
        exam.run_next(ScanSession(port))
        assert exam.doc["mpps"]["state"] is None
        back = MppsScp.__new__(MppsScp)
        from pynetdicom import AE, evt

        back.created, back.set = [], []
        back.ae = AE(ae_title="MPPSSCP")
        back.ae.add_supported_context(MPPS_SOP_CLASS)
        back.server = back.ae.start_server(("127.0.0.1", later.port), block=False, evt_handlers=[
            (evt.EVT_N_CREATE, back._create), (evt.EVT_N_SET, back._set)])
        try:
            assert exam.close()["state"] == "COMPLETED"
        finally:
            back.close()
    assert len(back.created) == 1 and len(back.set) == 1 and back.created[0][0] == back.set[0][0]


def test_the_cli_says_when_mpps_was_not_sent(tmp_path, capsys):
    order = tmp_path / "order.toml"
    order.write_text('[order]\npatient_id = "P3"\npatient_name = "Cli^Test"\nweight_kg = 60\n'
                     'requested_procedure = "MR head"\n')
    exam_dir = str(tmp_path / "e")
    assert main(["exam", "open", exam_dir, "--order", str(order), "--card", str(CARD),
                 "--mpps", f"NOBODY@127.0.0.1:{free_port()}"]) == 0
    assert main(["exam", "next", exam_dir, "--system", "default"]) == 0
    assert main(["exam", "close", exam_dir]) == 1
    err = capsys.readouterr().err
    assert "MPPS: MPPS not sent (COMPLETED)" in err and "cannot be reached" in err
    assert record.read(Path(exam_dir))["state"] == "closed"


# -- resume after SIGKILL --------------------------------------------------------------------------------------
def test_an_exam_killed_mid_run_resumes_with_the_step_interrupted_and_nothing_acquired_lost(tmp_path):
    exam_dir = tmp_path / "e"
    card = tmp_path / "card.toml"
    card.write_text(f'[card]\nname = "k"\ncodes = ["MRHEAD"]\nprotocols = ["{GRE32}", "{DATA / "slow32.toml"}", '
                    f'"{GRE32}"]\n')
    with Exam.open(exam_dir, ORDER, load_card(card)):
        pass
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scanctl", "exam", "run", str(exam_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the slow step is playing, data on disk: kill it
            doc = json.loads((exam_dir / "exam.json").read_text())
            raw = exam_dir / "runs" / "02-slow32" / "raw.h5"
            if doc["steps"][1]["status"] == "running" and raw.is_file() and raw.stat().st_size > 100_000:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        else:
            raise AssertionError("the slow step never ran")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert record.read(exam_dir)["steps"][1]["status"] == "running"  # as the killed process left it
    before = {p: p.read_bytes() for p in (exam_dir / "runs" / "01-gre32").iterdir()}
    with Exam.resume(exam_dir) as exam:
        first, killed, third = exam.steps
        assert first["status"] == "done" and first["dicom"]["files"] == 1
        assert killed["status"] == "interrupted" and "raw.h5" in killed["message"]
        assert third["status"] == "pending"
        assert journal_events(exam_dir)[-1] == "interrupted"
        assert {p: p.read_bytes() for p in (exam_dir / "runs" / "01-gre32").iterdir()} == before
        kept = read_acquisitions(exam_dir / "runs" / "02-slow32" / "raw.h5")  # what was acquired is kept, readable
        assert len(kept.acquisitions) > 0
        assert (exam_dir / "dicom" / "01-gre32" / "IMG0001.dcm").is_file()
    assert main(["exam", "run", str(exam_dir)]) == 0  # it continues: the third step
    assert main(["exam", "close", str(exam_dir)]) == 0
    doc = record.read(exam_dir)
    assert [s["status"] for s in doc["steps"]] == ["done", "interrupted", "done"]
    assert [s["run_dir"] for s in doc["steps"]] == ["runs/01-gre32", "runs/02-slow32", "runs/03-gre32"]
    assert doc["state"] == "closed"


def test_a_folder_that_is_not_an_exam_is_one_error(tmp_path, capsys):
    assert main(["exam", "status", str(tmp_path)]) == 2
    assert "not an exam directory (no exam.json)" in capsys.readouterr().err
    (tmp_path / "exam.json").write_text('{"format": 1, "exam_id": "x"}')
    assert main(["exam", "next", str(tmp_path)]) == 2
    assert "key 'state' is missing" in capsys.readouterr().err


def test_the_exam_json_is_rewritten_atomically(tmp_path, monkeypatch):
    """A rename is what makes a step visible: a failure while writing leaves the previous version whole."""
    with Exam.open(tmp_path / "e", ORDER, load_card(CARD)) as exam:
        before = (tmp_path / "e" / "exam.json").read_text()

        def full_disk(*args: Any) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", full_disk)
        with pytest.raises(OSError):
            exam.skip(1)
        monkeypatch.undo()
    assert (tmp_path / "e" / "exam.json").read_text() == before


def test_threads_do_not_share_an_exam_directory(tmp_path):
    """(the lock is per open file description: a second open in the same process is refused too)"""
    with Exam.open(tmp_path / "e", ORDER, load_card(CARD)):
        errors: list[BaseException] = []

        def other() -> None:
            try:
                Exam.resume(tmp_path / "e")
            except ExamError as exc:
                errors.append(exc)
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1


def test_two_runs_through_one_session_are_two_series(tmp_path):
    """An exam runs every step through one scan session: each run's report journals its own scan (not the
    session's from its connect on), so each run is its own DICOM series, even when the data are the same."""
    from scanctl.data.dicom import export_run

    with LocalPort(profiles.load(), FAST) as own:
        session = ScanSession(own)
        reports = [session.scan(GRE32, tmp_path / f"run{i}") for i in (1, 2)]
    first, second = (r.journal for r in reports)
    assert first[0]["trigger"] == "connect"  # the first run connected the scanner: that is its journal too
    assert second[0]["trigger"] != "connect" and second[0]["wall_time_s"] > first[-1]["wall_time_s"]
    uids = {export_run(tmp_path / f"run{i}", tmp_path / f"dicom{i}", ORDER).series_uid for i in (1, 2)}
    assert len(uids) == 2


def test_a_pacs_that_is_down_keeps_every_file_and_says_so(tmp_path, port, capsys):
    exam_dir = tmp_path / "e"
    with Exam.open(exam_dir, ORDER, load_card(CARD)) as exam:
        exam.run_next(ScanSession(port))
    down = f"PACS@127.0.0.1:{free_port()}"
    assert main(["exam", "close", str(exam_dir), "--store", down, "--retries", "1", "--retry-wait", "0.1"]) == 1
    err = capsys.readouterr().err
    assert f"PACS {down} cannot be reached after 2 tries" in err and "the files are kept" in err
    doc = record.read(exam_dir)
    assert doc["state"] == "closed"  # closed, and it says the series is not stored
    series = doc["steps"][0]["dicom"]
    assert series["stored"] is False and "cannot be reached" in series["store_message"]
    assert journal_events(exam_dir)[-2:] == ["store_failed", "closed"]
    assert (exam_dir / "dicom" / "01-localizer" / "IMG0001.dcm").is_file()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["patient_id", "patient_name", "birth_date", "sex", "weight_kg", "study_uid",
                            "accession_number", "requested_procedure", "colour"]), value=JSON)
def test_an_order_as_json_gives_an_order_or_one_error_naming_the_field(key, value):
    """What exam.open receives over the wire (and exam.json holds): any JSON in any field."""
    from scanctl.errors import DicomError
    from scanctl.exam.exam import order_from_json, order_json

    fields = {**order_json(ORDER), key: value}
    try:
        order = order_from_json(fields)
    except DicomError as exc:
        assert f"order: {key}" in str(exc)
    else:
        assert order_json(order) == {k: (float(v) if k == "weight_kg" and isinstance(v, int) else v)
                                     for k, v in fields.items()}


def test_a_run_whose_dicom_was_not_written_gets_it_on_resume(tmp_path, port):
    """Killed between a run and its DICOM (or the export failed): the series is written when the exam resumes."""
    exam_dir = tmp_path / "e"
    with Exam.open(exam_dir, ORDER, load_card(CARD)) as exam:
        assert exam.run_next(ScanSession(port), dicom=False)["dicom"] is None
    with Exam.resume(exam_dir) as exam:
        assert exam.steps[0]["dicom"]["files"] == 1
    assert (exam_dir / "dicom" / "01-localizer" / "IMG0001.dcm").is_file()
    assert journal_events(exam_dir)[-1] == "dicom_written"


def test_an_exam_opens_only_in_a_new_or_empty_directory(tmp_path, capsys):
    order = tmp_path / "order.toml"
    order.write_text('[order]\npatient_id = "P4"\npatient_name = "Twice^Tom"\nweight_kg = 70\n'
                     'requested_procedure = "MR head"\n')
    exam_dir = str(tmp_path / "e")
    assert main(["exam", "open", exam_dir, "--order", str(order)]) == 0  # the shipped head card, by procedure
    assert main(["exam", "open", exam_dir, "--order", str(order)]) == 2
    assert "holds an exam already" in capsys.readouterr().err
    assert main(["exam", "open", str(tmp_path / "f"), "--order", str(order), "--card", "knee"]) == 2
    assert "no exam card named 'knee'" in capsys.readouterr().err
    assert main(["exam", "open", str(tmp_path / "g")]) == 2
    assert "an exam needs an order" in capsys.readouterr().err
