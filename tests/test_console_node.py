"""The reference console in a second language (examples/console-node, Node.js with the zeromq package),
written from docs/wire-protocol.md alone: against ``scanctl up`` it takes control, loads, runs, follows the
events with gap detection, decodes the ADC data and releases control; its acquisitions are bit for bit
those the Python client writes to ``raw.h5`` in the same session. Both consoles' command round trip and data
throughput are printed side by side."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanctl.cli import main
from scanctl.data.rawdata import read_acquisitions
from scanctl.services.client import Client
from scanctl.services.remote_run import run_remote
from tests.test_up import PROFILE

ROOT = Path(__file__).parents[1]
CONSOLE = ROOT / "examples" / "console-node"
GRE = ROOT / "protocols" / "gre_2d.toml"
ROUND_TRIPS = 200


def node_acquisitions(path: Path) -> list[tuple[int, np.ndarray]]:
    """The console's output file: per acquisition index (int64), channels, samples (int32), complex64 data."""
    raw, out, at = path.read_bytes(), [], 0
    while at < len(raw):
        index, = np.frombuffer(raw, np.int64, 1, at)
        channels, samples = np.frombuffer(raw, np.int32, 2, at + 8)
        size = int(channels) * int(samples)
        out.append((int(index), np.frombuffer(raw, np.complex64, size, at + 16).reshape(channels, samples)))
        at += 16 + 8 * size
    return out


def python_figures(endpoint: str) -> dict[str, Any]:
    """The Python client measured as the Node console measures itself: ``status`` round trips, then a run's
    sample bytes over the time from ``start`` to its last data message."""
    with Client(endpoint, name="python-figures") as client:
        rtt = []
        for _ in range(ROUND_TRIPS):
            t0 = time.perf_counter()
            client.status()
            rtt.append((time.perf_counter() - t0) * 1e3)
        rtt.sort()
        client.take_control()
        client.load(GRE)
        with client.subscribe(data=True) as sub:
            t0 = time.perf_counter()
            run = client.start()["run"]
            nbytes, last, ended, data_done = 0, t0, False, False
            while not (ended and data_done):
                msg = sub.recv(30)
                assert msg is not None, "run did not end"
                if msg.run != run:
                    continue
                if msg.stream == "data" and msg.body.get("end"):
                    data_done = True
                elif msg.stream == "data":
                    nbytes += msg.body["acquisitions"]["data"].nbytes
                    last = time.perf_counter()
                ended = ended or (msg.stream == "run" and msg.body["event"] == "end")
            assert sub.gaps == []
        client.release_control()
    return {"round_trip_ms": {"p50": rtt[len(rtt) // 2], "p99": rtt[int(0.99 * len(rtt))]},
            "throughput_mb_s": nbytes / 1e6 / (last - t0)}


@pytest.mark.slow
def test_the_node_console_gets_what_the_python_client_gets(tmp_path):
    node = shutil.which("node")
    assert node is not None, "Node.js is needed (./setup-env test installs the console's packages)"
    assert (CONSOLE / "node_modules" / "zeromq").is_dir(), "run ./setup-env test (npm ci in examples/console-node)"
    profile = tmp_path / "profile.toml"
    profile.write_text(PROFILE)
    run_dir, free = tmp_path / "run", "tcp://127.0.0.1:0"
    assert main(["up", "--system", str(profile), "--run-dir", str(run_dir), "--bind", free, "--events", free,
                 "--data", free]) == 0
    try:
        endpoint = json.loads((run_dir / "endpoints.json").read_text())["control"]
        with Client(endpoint, name="python-console") as client:
            report = run_remote(client, GRE, tmp_path / "python", reconstruct=False)
        assert report.outcome == "completed"
        done = subprocess.run([node, str(CONSOLE / "console.mjs"), "--connect", endpoint, "--protocol", str(GRE),
                               "--out", str(tmp_path / "node.bin"), "--roundtrips", str(ROUND_TRIPS)],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        figures = json.loads(done.stdout.splitlines()[-1])
        python = python_figures(endpoint)
    finally:
        assert main(["down", "--run-dir", str(run_dir)]) == 0
    assert figures["outcome"] == "completed" and figures["gaps"] == []
    reference = read_acquisitions(tmp_path / "python" / "raw.h5").acquisitions
    got = node_acquisitions(tmp_path / "node.bin")
    assert figures["acquisitions"] == figures["announced"] == len(got) == len(reference) == 128
    for (index, data), acq in zip(got, reference, strict=True):
        assert index == acq.index and data.shape == acq.data.shape
        assert data.tobytes() == np.ascontiguousarray(acq.data, np.complex64).tobytes(), f"acquisition {index}"
    print(f"\nconsole round trip (status, {ROUND_TRIPS}): node p50 {figures['round_trip_ms']['p50']:.3f} ms, "
          f"p99 {figures['round_trip_ms']['p99']:.3f} ms; python p50 {python['round_trip_ms']['p50']:.3f} ms, "
          f"p99 {python['round_trip_ms']['p99']:.3f} ms")
    print(f"ADC data, start to last data message ({figures['sample_bytes']} sample bytes): node "
          f"{figures['throughput_mb_s']:.2f} MB/s, python {python['throughput_mb_s']:.2f} MB/s; "
          f"{len(got)} acquisitions bit-identical to the Python client's raw.h5")
