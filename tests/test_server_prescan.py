"""Prescan on the control server (issue 18): a ``scanctl serve`` process whose RF simulator's B0 is 300 Hz off
runs the calibrations a protocol needs before the run a console asks for (``scanctl run --connect``), unless
the request says not to (``--no-prescan``); what it finds is in the report the console writes and in the
server's own copy of the run, and stays on the drivers for the scans that follow. The exam queue on the
server prescans through the same scan session."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scanctl.cli import main
from scanctl.services.client import CommandError

GRE32 = Path(__file__).parent / "data" / "exam" / "gre32.toml"
LOOPBACK = "tcp://127.0.0.1:0"
B0_HZ = 300.0
ERROR_RF = f"sim://?b0={B0_HZ:g}&matrix=32"


def image_error(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(np.abs(image) - np.abs(reference)) / np.linalg.norm(np.abs(reference)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> np.ndarray:
    """The error-free image, in process, on nominal hardware."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["run", str(GRE32), "--rf", "sim://?matrix=32", "--no-prescan", "--out", str(out)]) == 0
    return np.load(out / "image.npy")


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path]]:
    """A ``scanctl serve`` process with the injected B0 error: (its command endpoint, its data directory)."""
    data_dir = tmp_path / "server-runs"
    proc = subprocess.Popen([sys.executable, "-m", "scanctl", "serve", "--bind", LOOPBACK, "--events", LOOPBACK,
                             "--data", LOOPBACK, "--rf", ERROR_RF, "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        found = re.search(r"commands on (\S+),", proc.stdout.readline())
        assert found, "the server did not say where it serves"
        yield found.group(1), data_dir
    finally:
        proc.stdout.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_connect(endpoint: str, out: Path, *options: str) -> dict:
    assert main(["run", "--connect", endpoint, str(GRE32), "--out", str(out), *options]) == 0
    return json.loads((out / "report.json").read_text())


def test_run_connect_prescans_on_the_server_unless_told_not_to(server, reference, tmp_path):
    endpoint, data_dir = server
    # Told not to: nothing calibrated, the image shifted by the 300 Hz (more than a pixel at 260 Hz/pixel).
    skipped = run_connect(endpoint, tmp_path / "skipped", "--no-prescan")
    assert skipped["prescan"] == {}
    assert image_error(np.load(tmp_path / "skipped" / "image.npy"), reference) > 0.3

    # By default the server prescans first: the frequency found within 1 Hz, the image unshifted.
    report = run_connect(endpoint, tmp_path / "prescanned")
    prescan = report["prescan"]
    assert prescan["steps_run"] == ["gain", "frequency", "shim", "transmit"]
    assert abs(prescan["frequency_offset_hz"] - B0_HZ) < 1.0, prescan
    assert [s["outcome"] for s in prescan["steps"] if s["step"] == "frequency"][-1] == "converged"
    assert image_error(np.load(tmp_path / "prescanned" / "image.npy"), reference) < 0.02
    # The server journals it as an in-process run does: in its own copy of the run.
    kept = json.loads((data_dir / report["run"] / "report.json").read_text())
    assert kept["prescan"] == prescan

    # The results are driver state: the next scan, told not to prescan, runs with them still in force.
    after = run_connect(endpoint, tmp_path / "after", "--no-prescan")
    assert after["prescan"] == {}
    assert image_error(np.load(tmp_path / "after" / "image.npy"), reference) < 0.02


def test_the_exam_queue_on_the_server_prescans_through_the_same_session(tmp_path):
    """exam.next runs its step through the server's scan session, so it prescans as a run does."""
    from tests.test_exam import CARD
    from tests.test_exam_server import ORDER
    from tests.test_server import Served, wait_state

    served = Served({"rf": ERROR_RF}, data_dir=tmp_path / "runs")
    try:
        client = served.client("console")
        wait_state(client, "IDLE")
        client.take_control()
        exam_dir = Path(client.command("exam.open", {"order": ORDER, "card": str(CARD)})["dir"])
        step = client.command("exam.next")["steps"][0]
        assert step["status"] == "done", step
        prescan = json.loads((exam_dir / step["run_dir"] / "report.json").read_text())["prescan"]
        assert abs(prescan["frequency_offset_hz"] - B0_HZ) < 1.0, prescan
        client.command("exam.close")
    finally:
        served.close()


def test_a_load_whose_prescan_is_not_a_boolean_is_refused_naming_it(tmp_path):
    from tests.test_server import FAST, Served, wait_state

    served = Served(FAST, data_dir=tmp_path / "runs")
    try:
        client = served.client("console")
        wait_state(client, "IDLE")
        client.take_control()
        with pytest.raises(CommandError, match="load: 'prescan' must be true or false, got 'no'") as refused:
            client.command("load", {"path": str(GRE32), "prescan": "no"})
        assert refused.value.code == "bad_argument"
        assert client.status()["state"] == "IDLE" and client.status()["loaded"] is None  # nothing moved
    finally:
        served.close()
