"""scanctl up / down: the control server and every simulated subsystem as separate processes, recorded in
RUN_DIR/endpoints.json; a remote run through them completes, and gives the raw data and image the same scan
gives in one process; down leaves no process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.data.rawdata import read_acquisitions
from scanctl.engine.session import run_scan
from scanctl.services.launcher import _alive, down, simulator_urls, up

GRE = Path(__file__).parents[1] / "protocols" / "gre_2d.toml"
PROFILE = """
[scanner]
name = "up test"
b0_t = 3.0
gamma_hz_per_t = 42.576e6
[gradient]
max_amplitude_mt_per_m = { x = 40.0, y = 40.0, z = 40.0 }
max_slew_t_per_m_per_s = { x = 200.0, y = 200.0, z = 200.0 }
[timing]
gradient_raster_s = 10e-6
rf_raster_s = 1e-6
adc_raster_s = 100e-9
block_duration_raster_s = 10e-6
rf_dead_time_s = 100e-6
rf_ringdown_time_s = 20e-6
adc_dead_time_s = 10e-6
[subsystems]
gradient = "sim://"
rf = "sim://?physics=0"
table = "sim://"
"""


def test_up_run_down(tmp_path, capsys):
    profile = tmp_path / "profile.toml"
    profile.write_text(PROFILE)
    run_dir = tmp_path / "run"
    free = "tcp://127.0.0.1:0"
    assert main(["up", "--system", str(profile), "--run-dir", str(run_dir), "--bind", free, "--events", free,
                 "--data", free]) == 0
    record = json.loads((run_dir / "endpoints.json").read_text())
    pids = [record["server_pid"], *(d["pid"] for d in record["drivers"].values())]
    try:
        assert set(record) == {"control", "events", "data", "drivers", "server_pid", "system"}
        assert set(record["drivers"]) == {"gradient", "rf", "table"}
        assert len(set(pids)) == 4 and os.getpid() not in pids and all(_alive(pid) for pid in pids)
        for d in record["drivers"].values():
            assert d["endpoint"].startswith("tcp://127.0.0.1:")
        capsys.readouterr()
        assert main(["status", "--connect", record["control"], "--json"]) == 0
        snap = json.loads(capsys.readouterr().out)
        assert snap["state"] in ("IDLE", "CONNECTING")
        out = tmp_path / "out"
        assert main(["run", "--connect", record["control"], str(GRE), "--out", str(out), "--no-recon"]) == 0
        assert "completed" in capsys.readouterr().out
        assert (out / "raw.h5").exists()
    finally:
        assert main(["down", "--run-dir", str(run_dir)]) == 0
    assert not (run_dir / "endpoints.json").exists()
    assert not any(_alive(pid) for pid in pids)
    assert main(["down", "--run-dir", str(run_dir)]) == 2  # nothing to stop


def test_simulators_of_one_world_share_it_across_processes():
    urls = simulator_urls({"gradient": "sim://?tau_s=60", "rf": "sim://?fault=trip@2.5s&noise=0.1",
                           "table": "socket://127.0.0.1:5000"})
    assert set(urls) == {"gradient", "rf"}  # a real table is not served by up
    world = urls["rf"].split("world=")[1]
    assert world.startswith("tcp://127.0.0.1:") and urls["gradient"] == f"sim://?tau_s=60&world={world}"
    assert urls["rf"] == f"sim://?fault=trip@2.5s&noise=0.1&world={world}"
    # Another world for each, or a world the profile gives as an endpoint: as given.
    apart = {"gradient": "sim://?world=a", "rf": "sim://?world=b"}
    assert simulator_urls(apart) == apart
    given = {"gradient": "sim://?world=tcp://127.0.0.1:6000", "rf": "sim://?world=tcp://127.0.0.1:6000"}
    assert simulator_urls(given) == given
    assert simulator_urls({"rf": "sim://", "gradient": "tcp://127.0.0.1:7000"}) == {"rf": "sim://"}


def raw_data(path: Path) -> tuple[np.ndarray, list[dict[str, int]]]:
    acquisitions = read_acquisitions(path).acquisitions
    return np.concatenate([a.data.ravel() for a in acquisitions]), [dict(a.labels) for a in acquisitions]


def test_a_scan_across_processes_equals_the_scan_in_one(tmp_path):
    """gre_2d, a variant whose scene (field of view, phantom matrix, noise) differs from the RF simulator's
    defaults, and gre_2d again: through up (each simulator its own process) the raw data are those of the
    in-process run, bit for bit (the same Bloch simulation of the same programs, the same noise), and so is
    the image."""
    profile = tmp_path / "profile.toml"
    profile.write_text(PROFILE.replace('rf = "sim://?physics=0"', 'rf = "sim://"'))
    small = tmp_path / "gre_small.toml"
    small.write_text(GRE.read_text().replace("fov_m = 0.256", "fov_m = 0.22").replace("matrix = [128, 128]",
                     "matrix = [64, 64]") + "matrix = 64\n\n[acquisition]\nnoise_std = 0.5\n")
    run_dir = tmp_path / "run"
    free = "tcp://127.0.0.1:0"
    record = up(run_dir, system=str(profile), control=free, events=free, data=free)
    try:
        urls = {kind: d["url"] for kind, d in record["drivers"].items()}
        assert "world=tcp://127.0.0.1:" in urls["rf"] and urls["gradient"] == urls["rf"]
        for i, protocol in enumerate((GRE, small, small, GRE)):  # the noisy scan twice; back to gre_2d
            one, apart = tmp_path / "one" / protocol.stem, tmp_path / "apart" / str(i)
            if not one.exists():
                assert run_scan(protocol, profiles.load(str(profile)), one).outcome == "completed"
            # The nominal pipeline both ways: run_scan does not prescan, so neither does the server here.
            assert main(["run", "--connect", record["control"], str(protocol), "--out", str(apart),
                         "--no-prescan"]) == 0
            (data_one, labels_one), (data_apart, labels_apart) = raw_data(one / "raw.h5"), raw_data(apart / "raw.h5")
            assert labels_apart == labels_one and data_apart.shape == data_one.shape
            assert np.array_equal(data_apart, data_one), f"{protocol.stem}: raw data differ"
            image_one, image_apart = np.load(one / "image.npy"), np.load(apart / "image.npy")
            assert np.corrcoef(image_one.ravel(), image_apart.ravel())[0, 1] > 0.99
            assert np.array_equal(image_apart, image_one)
    finally:
        down(run_dir)
    assert "no simulated gradients" not in (run_dir / "logs" / "rf.log").read_text()


def test_an_endpoints_file_that_is_not_a_record_is_named(tmp_path):
    """up and down on a run directory whose endpoints.json is broken: one clear error naming the file."""
    import pytest

    from scanctl.errors import ConfigError

    record = tmp_path / "endpoints.json"
    for text in ("{bad", "[]", '{"drivers": []}', '{"drivers": {"rf": 3}}'):
        record.write_text(text)
        for call in (lambda: up(tmp_path), lambda: down(tmp_path)):
            with pytest.raises(ConfigError, match="endpoints.json: (unreadable|not an endpoints record)"):
                call()
    record.write_text('{"server_pid": true, "drivers": {"rf": {"pid": -4}}}')  # no pid to signal: nothing runs
    assert down(tmp_path) == [] and not record.exists()


def _killed(pid: int) -> None:
    import signal
    import time

    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def reset_after_the_fault(endpoint: str) -> None:
    """Wait for the server to latch FAULT for a driver it lost (OFF: restarted), then reset it."""
    import time

    from scanctl.services.client import Client

    with Client(endpoint, name="t") as c:
        c.take_control()
        deadline = time.monotonic() + 10
        while c.status()["state"] != "FAULT" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.reset()["state"] == "IDLE"
        c.release_control()


def test_a_lost_gradient_driver_restarted_with_its_world_or_without_it(tmp_path):
    """restart() brings one driver back as up() recorded it (its world included): after a reset the next
    scan gives the image it gave before. A gradient driver started by hand without its world= option makes
    the RF simulator fail at once with a message saying so, not wait 120 s for programs that never come."""
    import subprocess
    import sys
    import time

    from scanctl.services.client import Client
    from scanctl.services.remote_run import run_remote

    def scan(out: str):
        with Client(record["control"], name="console") as console:
            # (no prescan: its calibrations, exact only to their uncertainty, would differ from scan to scan)
            return run_remote(console, GRE, tmp_path / out, reconstruct=False, prescan=False)

    profile = tmp_path / "profile.toml"
    profile.write_text(PROFILE.replace('rf = "sim://?physics=0"', 'rf = "sim://?matrix=32"'))
    run_dir = tmp_path / "run"
    record = up(run_dir, system=str(profile), control="tcp://127.0.0.1:0", events="tcp://127.0.0.1:0",
                data="tcp://127.0.0.1:0")
    try:
        assert scan("first").outcome == "completed"
        gradient = record["drivers"]["gradient"]
        _killed(gradient["pid"])
        assert main(["up", "--run-dir", str(run_dir), "--restart", "gradient"]) == 0
        again = json.loads((run_dir / "endpoints.json").read_text())
        assert again["drivers"]["gradient"]["pid"] != gradient["pid"]
        assert again["drivers"]["gradient"]["endpoint"] == gradient["endpoint"]
        reset_after_the_fault(record["control"])
        assert scan("second").outcome == "completed"
        a = read_acquisitions(tmp_path / "first" / "raw.h5")
        b = read_acquisitions(tmp_path / "second" / "raw.h5")
        assert np.array_equal(np.stack([x.data for x in a.acquisitions]), np.stack([x.data for x in b.acquisitions]))

        # By hand, without the world: the first segment's RF faults at once, naming the cause.
        _killed(again["drivers"]["gradient"]["pid"])
        by_hand = subprocess.Popen([sys.executable, "-m", "scanctl", "driver", "serve", "gradient", "--url", "sim://",
                                    "--bind", gradient["endpoint"]], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            reset_after_the_fault(record["control"])
            t0 = time.monotonic()
            third = scan("third")
            assert time.monotonic() - t0 < 20
            assert third.outcome == "fault" and "stopped sending" in third.message, third
        finally:
            by_hand.terminate()
            by_hand.wait(timeout=10)
    finally:
        down(run_dir)
