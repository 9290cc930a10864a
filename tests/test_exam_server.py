"""The exam on the control server, over real ZeroMQ sockets on loopback: the exam commands and the exam
event stream, MPPS from the server, refusals; the CLI verbs with --connect; a server killed (SIGKILL) in the
middle of an exam's run and started again finds the exam, shows the step interrupted with its data kept,
and the exam continues and closes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanctl.cli import main
from scanctl.data.rawdata import read_acquisitions
from scanctl.exam import record
from scanctl.services.client import Client, CommandError
from scanctl.services.orthanc import free_port
from tests.test_exam import CARD, DATA, GRE32, MppsScp
from tests.test_server import FAST, Served, wait_state

ORDER = {"patient_id": "P7", "patient_name": "Server^Sam", "weight_kg": 82.5, "accession_number": "ACC7",
         "requested_procedure": "MR head", "requested_procedure_code": "MRHEAD", "study_uid": "1.2.3.4.5"}


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    s = Served(FAST, data_dir=tmp_path / "runs")
    yield s
    s.close()


def refused(code: str, client: Client, name: str, body: dict | None = None) -> str:
    with pytest.raises(CommandError) as info:
        client.command(name, body)
    assert info.value.code == code, info.value
    return str(info.value)


def test_an_exam_over_zeromq_with_its_events_and_mpps(served, tmp_path):
    scp = MppsScp()
    client = served.client("console")
    try:
        wait_state(client, "IDLE")
        sub = client.subscribe()
        assert client.command("exam.status") == {"command": "exam.status", "status": "done", "exam": None,
                                                 "dir": None}
        assert "send take_control first" in refused("not_controller", client, "exam.open", {"order": ORDER})
        client.take_control()
        assert "no exam is open" in refused("rejected", client, "exam.next")
        assert "no exam card for requested procedure 'MR knee'" in refused(
            "bad_argument", client, "exam.open", {"order": {**ORDER, "requested_procedure": "MR knee",
                                                            "requested_procedure_code": "MRKNEE"}})
        assert "sex" in refused("bad_argument", client, "exam.open", {"order": {**ORDER, "sex": "X"}})
        assert "order: patient_id: expected a string, got 3" in refused(
            "bad_argument", client, "exam.open", {"order": {**ORDER, "patient_id": 3}})
        assert "order: colour: unknown field" in refused(
            "bad_argument", client, "exam.open", {"order": {**ORDER, "colour": "red"}})
        opened = client.command("exam.open", {"order": ORDER, "card": str(CARD), "mpps": str(scp.peer)})
        exam_dir = Path(opened["dir"])
        assert exam_dir.parent == tmp_path / "runs" / "exams" and exam_dir.name == opened["exam"]["exam_id"]
        assert "is open on this server" in refused("rejected", client, "exam.open", {"order": ORDER})
        assert "integer 'step'" in refused("bad_argument", client, "exam.skip", {"step": "2"})
        assert "no step 99" in refused("rejected", client, "exam.skip", {"step": 99})
        assert "is not a path" in refused("bad_argument", client, "exam.append", {"path": "a\x00b"})
        assert "none.toml: cannot read protocol" in refused("bad_argument", client, "exam.append",
                                                             {"path": str(tmp_path / "none.toml")})
        client.command("exam.append", {"path": str(GRE32), "name": "extra"})
        client.command("exam.skip", {"step": 2})
        step = client.command("exam.next")["steps"][0]
        assert (step["status"], step["run_dir"]) == ("done", "runs/01-localizer")
        assert len(scp.created) == 1  # MPPS IN PROGRESS from the server at the first run
        ran = client.command("exam.run")
        assert [s["status"] for s in ran["steps"]] == ["done"] and ran["state"] == "IDLE"
        closed = client.command("exam.close")
        assert closed["mpps"]["state"] == "COMPLETED" and closed["exam"]["state"] == "closed"
        assert scp.set[0][1].PerformedProcedureStepStatus == "COMPLETED"
        assert client.command("exam.status")["exam"] is None
        events = []
        while (msg := sub.recv(1.0)) is not None:
            if msg.stream == "exam":
                events.append(msg.body["event"])
        assert events == ["opened", "appended", "skipped", "mpps", "step_started", "step_ended", "dicom_written",
                          "step_started", "step_ended", "dicom_written", "mpps", "closed"]
        doc = record.read(exam_dir)
        assert [s["status"] for s in doc["steps"]] == ["done", "skipped", "done"]
        report = json.loads((exam_dir / "runs" / "01-localizer" / "report.json").read_text())
        assert report["safety"]["sar"]["patient_weight_kg"] == 82.5
        assert not [r for r in client.runs() if "exams" in r["run"]]  # the exam's runs are not fetchable runs
    finally:
        scp.close()


def test_the_cli_verbs_with_connect(served, tmp_path, capsys):
    order = tmp_path / "order.toml"
    order.write_text('[order]\npatient_id = "P8"\npatient_name = "Cli^Connect"\nweight_kg = 75\n'
                     'requested_procedure = "MR head"\n')
    ep = ["--connect", served.endpoint]
    wait_state(served.client(), "IDLE")
    assert main(["exam", "open", *ep, "--order", str(order), "--card", str(CARD)]) == 0
    assert "Cli^Connect (P8, 75 kg)" in capsys.readouterr().out
    assert main(["exam", "repeat", *ep, "1"]) == 0
    assert main(["exam", "next", *ep]) == 0
    assert main(["exam", "run", *ep]) == 0
    capsys.readouterr()
    assert main(["exam", "status", *ep, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["run_dir"] for s in doc["steps"]] == ["runs/01-localizer", "runs/02-localizer", "runs/03-t1_gre"]
    assert main(["exam", "close", *ep, "--store", "PACS@127.0.0.1:1"]) == 2
    assert "not available with --connect" in capsys.readouterr().err
    assert main(["exam", "close", *ep]) == 0
    assert main(["exam", "skip", *ep, "1"]) == 2
    assert "no exam is open on this server" in capsys.readouterr().err
    assert main(["exam", "status", str(tmp_path), *ep]) == 2
    assert "not both" in capsys.readouterr().err


# -- a server killed mid-exam ---------------------------------------------------------------------------------
def serve(tmp_path: Path, control: str, events: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "scanctl", "serve", "--bind", control, "--events", events,
                             "--data", "events", "--data-dir", str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with Client(control, timeout_s=1.0, retries=20) as client:
        wait_state(client, "IDLE", timeout_s=30)
    return proc


def test_a_server_killed_mid_exam_loses_nothing_and_the_exam_goes_on(tmp_path, capsys):
    control, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    card = tmp_path / "card.toml"
    card.write_text(f'[card]\nname = "k"\ncodes = ["MRHEAD"]\nprotocols = ["{GRE32}", "{DATA / "slow32.toml"}", '
                    f'"{GRE32}"]\n')
    server = serve(tmp_path, control, events)
    runner = None
    try:
        with Client(control) as client:
            client.take_control()
            exam_dir = Path(client.command("exam.open", {"order": ORDER, "card": str(card)})["dir"])
            client.release_control()
        runner = subprocess.Popen([sys.executable, "-m", "scanctl", "exam", "run", "--connect", control],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        raw = exam_dir / "runs" / "02-slow32" / "raw.h5"
        deadline = time.monotonic() + 60
        while not (raw.is_file() and raw.stat().st_size > 100_000):
            assert time.monotonic() < deadline and server.poll() is None, "the slow step never ran"
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        runner.kill()
        runner.wait(timeout=30)
        assert record.read(exam_dir)["steps"][1]["status"] == "running"  # as the killed server left it
        server = serve(tmp_path, control, events)
        capsys.readouterr()
        assert main(["exam", "status", "--connect", control, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [s["status"] for s in doc["steps"]] == ["done", "interrupted", "pending"]
        assert "kept: raw.h5" in doc["steps"][1]["message"] and doc["journal"][-1]["event"] == "interrupted"
        assert len(read_acquisitions(raw).acquisitions) > 0  # what it acquired before the kill
        assert (exam_dir / "dicom" / "01-gre32" / "IMG0001.dcm").is_file()
        assert main(["exam", "run", "--connect", control]) == 0
        assert main(["exam", "close", "--connect", control]) == 0
        doc = record.read(exam_dir)
        assert [s["status"] for s in doc["steps"]] == ["done", "interrupted", "done"] and doc["state"] == "closed"
    finally:
        for proc in (server, runner):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


def test_a_step_the_scanner_cannot_start_stays_pending(served):
    """The scanner latched in EMERGENCY_STOP: exam.next is refused, nothing moved, the step is not used up."""
    client = served.client("console")
    wait_state(client, "IDLE")
    client.take_control()
    client.command("exam.open", {"order": ORDER, "card": str(CARD)})
    client.emergency_stop("test")
    message = refused("rejected", client, "exam.next")
    assert "step 1 (localizer) not started" in message and "EMERGENCY_STOP" in message
    doc = client.command("exam.status")["exam"]
    assert doc["steps"][0]["status"] == "pending" and doc["steps"][0]["run_dir"] is None
    assert doc["journal"][-1]["event"] == "not_started"
    assert not (Path(client.command("exam.status")["dir"]) / "runs" / "01-localizer").exists()
    client.release_emergency_stop()
    client.reset()
    wait_state(client, "IDLE")
    assert client.command("exam.next")["steps"][0]["run_dir"] == "runs/01-localizer"
