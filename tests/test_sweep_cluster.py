"""scanctl sweep on a Dask cluster started as a user would (``dask scheduler`` and ``dask worker`` as separate
processes on loopback): a worker killed mid-point (its point is run again elsewhere), Ctrl-C (every finished
point kept, a rerun goes on), a scheduler that cannot be reached (one line, exit 2, within seconds)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRE = ROOT / "protocols" / "gre_2d.toml"
DASK = Path(sys.executable).parent / "dask"
#: Points that take a few seconds each: the simulators play in real time (32 lines + 8 dummies of 40 ms).
SLOW = ('"sequence.matrix" = [[32, 32]]\n"sequence.dummy_scans" = [8]\n"sequence.tr_s" = [0.04]\n'
        '"rf.realtime" = [1]\n')


def spec(tmp_path: Path, axes: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(f'[sweep]\nbase = "{GRE}"\n[axes]\n{axes}\n')
    return path


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def start_sweep(*args: str | Path) -> subprocess.Popen[str]:
    """``scanctl sweep`` in a process group of its own (as a shell runs a command: Ctrl-C goes to the group)."""
    return subprocess.Popen([sys.executable, "-m", "scanctl", "sweep", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A scheduler and two single-threaded workers (no nanny: killing one kills the worker), each its own
    process, on loopback ports chosen by the OS."""
    info = tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "wb")  # noqa: SIM115 - open for the processes' lifetime
    common = ["--scheduler-file", str(info)]
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", *common],
                              stdout=log, stderr=log)]
    try:
        wait_for(info.exists, 60, "the scheduler file")
        address = json.loads(info.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([DASK, "worker", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                           "--host", "127.0.0.1", *common], stdout=log, stderr=log))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, procs
    finally:
        for p in procs:  # (a graceful close takes Dask some 20 s; these processes hold nothing to keep)
            if p.poll() is None:
                p.kill()
            p.wait(timeout=20)
        log.close()


def test_worker_killed_mid_point_is_retried(tmp_path: Path, cluster: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    address, procs = cluster
    out = tmp_path / "out"
    sweep = start_sweep(spec(tmp_path, SLOW + '"rf.seed" = [1, 2, 3]'), "--out", out, "--scheduler", address)
    from distributed import Client

    with Client(address, timeout="30s") as client:
        def busy() -> list[str]:
            return [w for w, keys in client.processing().items() if any("scanctl-point-" in str(k) for k in keys)]

        wait_for(lambda: len(busy()) == 2, 120, "both workers running a point")
        time.sleep(0.5)  # well inside the point (it plays for about 1.6 s)
        pids = client.run(os.getpid)
        victim = busy()[0]
        os.kill(pids[victim], signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=240)
    assert sweep.returncode == 0, stdout + stderr
    done = rows(out)
    assert [r["outcome"] for r in done] == ["completed"] * 3
    assert all(int(r["acquisitions"]) == 32 for r in done)
    assert sum(p.poll() is not None for p in procs[1:]) == 1  # one worker is gone: the other ran its point again


def test_ctrl_c_keeps_finished_points_and_a_rerun_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec_path = spec(tmp_path, SLOW + '"rf.seed" = [1, 2, 3, 4, 5, 6]')
    sweep = start_sweep(spec_path, "--out", out, "--workers", "1")
    points = out / "points"
    wait_for(lambda: points.is_dir() and any((p / "result.json").exists() for p in points.iterdir()), 180,
             "a finished point")
    os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C at a terminal: the sweep and its local workers
    stdout, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stdout + stderr
    assert "interrupted: the finished points are kept" in stderr
    assert "Traceback" not in stderr  # the workers leave the interrupt to the sweep, which closes them
    table = rows(out)
    finished = [r for r in table if r["outcome"] == "completed"]
    assert 1 <= len(finished) < 6 and len(table) == 6
    assert {r["outcome"] for r in table} <= {"completed", "pending"}
    assert sorted(p.name for p in points.iterdir()) == sorted(r["key"] for r in finished)  # whole points only
    stamps = {p.name: p.stat().st_mtime_ns for p in points.iterdir()}

    again = start_sweep(spec_path, "--out", out, "--workers", "2")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stdout + stderr
    assert f"{len(finished)} already done, {6 - len(finished)} run" in stdout
    assert [r["outcome"] for r in rows(out)] == ["completed"] * 6
    assert {k: (points / k).stat().st_mtime_ns for k in stamps} == stamps  # the finished ones were not rerun


def test_unreachable_scheduler_is_one_line_exit_2(tmp_path: Path) -> None:
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "scanctl", "sweep", str(spec(tmp_path, '"rf.seed" = [1]')), "--out",
                          str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert run.returncode == 2, run.stdout + run.stderr
    assert time.monotonic() - t0 < 20
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--scheduler tcp://127.0.0.1:9: cannot be reached" in lines[0], run.stderr
