"""scanctl up / down: the control server and every simulated subsystem as separate processes, recorded in
RUN_DIR/endpoints.json; a remote run through them completes; down leaves no process."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scanctl.cli import main
from scanctl.launcher import _alive

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
        assert set(record) == {"control", "events", "data", "drivers", "server_pid"}
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
