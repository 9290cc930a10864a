"""``scanctl run``'s output directory and the command line's manners: a scan's data is never written over
(every run gets a new or empty directory, every file is created exclusively), errors are one line,
``--version``, ``-v``, Ctrl-C, a closed stdout, a full disk and a server lost during a run."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import h5py
import pytest
import zmq

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.data.outputs import OutputError, OutputExistsError, new_series_dir, write_new
from scanctl.data.rawdata import RawDataError, RawDataWriter, header_for, read_acquisitions
from scanctl.engine.run import load_source
from scanctl.engine.session import run_scan
from scanctl.services.client import Client
from scanctl.services.server import ControlServer

ROOT = Path(__file__).parents[1]
GRE = ROOT / "protocols" / "gre_2d.toml"
SEQ = ROOT / "tests" / "data" / "pulseq-matlab" / "tests_legacy_approved_gre.seq"  # within the default profile
PROFILE = profiles.load()
FAST = ["--rf", "sim://?physics=0"]
# Paced to wall-clock time (1.48 s for gre_2d), small buffers: a scan that is still playing when signalled.
PACED = ["--gradient", "sim://?realtime=1&buffer_s=0.2", "--rf", "sim://?physics=0&realtime=1&buffer_s=0.2"]
LOOPBACK = "tcp://127.0.0.1:0"


def scanctl(*argv: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scanctl", *map(str, argv)], capture_output=True, text=True,
                          timeout=120, **kwargs)  # type: ignore[call-overload]


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("scanctl: error: "), err
    assert "Traceback" not in err
    return err


# -- never over earlier data ---------------------------------------------------------------------------------


def test_a_second_run_into_the_same_out_is_refused_and_the_first_is_untouched(tmp_path, capsys):
    out = tmp_path / "scan"
    assert main(["run", str(GRE), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert {"raw.h5", "report.json", "image.png", "sequence.seq"} <= set(before)
    assert main(["run", str(GRE), "--out", str(out), *FAST]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"{out}: already holds" in err and "raw.h5" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_a_refused_run_never_sits_beside_older_raw_data(tmp_path, capsys):
    """The SAR/limits refusal used to replace report.json and leave the earlier run's raw.h5 beside it."""
    out = tmp_path / "scan"
    assert main(["run", str(SEQ), "--out", str(out), *FAST]) == 0
    weak = tmp_path / "weak.toml"
    weak.write_text((Path(profiles.__file__).parents[1] / "profiles" / "default.toml").read_text()
                    .replace("x = 40.0, y = 40.0, z = 40.0", "x = 5.0, y = 5.0, z = 5.0"))
    capsys.readouterr()
    assert main(["run", str(SEQ), "--system", str(weak), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err)
    assert json.loads((out / "report.json").read_text())["outcome"] == "completed"  # still the first run's
    assert main(["run", str(SEQ), "--system", str(weak), "--out", str(tmp_path / "refused")]) == 1
    assert sorted(p.name for p in (tmp_path / "refused").iterdir()) == ["report.json", "sequence.seq"]


def test_without_out_every_run_gets_the_next_numbered_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for number in ("001", "002"):
        assert main(["run", str(GRE), *FAST, "--no-recon"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[-1] == f"wrote into {Path('out', 'gre_2d', number)}: sequence.seq, raw.h5, report.json"
        assert json.loads((tmp_path / "out" / "gre_2d" / number / "report.json").read_text())["outcome"] == "completed"
    # bad input leaves no empty numbered directory behind; the next good run still takes the next number
    bad = tmp_path / "gre_2d.toml"
    bad.write_text(GRE.read_text().replace("te_s = 0.0045", "te_s = 0.001"))
    assert main(["run", str(bad)]) == 2
    one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "out" / "gre_2d").iterdir()) == ["001", "002"]
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gre_2d"]


def test_numbers_are_never_reused_and_a_taken_name_is_skipped(tmp_path):
    parent = tmp_path / "series"
    (parent / "007").mkdir(parents=True)
    (parent / "notes").mkdir()
    assert new_series_dir(parent).name == "008"
    (parent / "009").write_text("a file, not a run")
    assert new_series_dir(parent).name == "010"
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(new_series_dir(parent))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in paths}) == 8  # every run its own, even started at once


def test_run_scan_refuses_a_directory_that_holds_anything(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        run_scan(GRE, PROFILE, tmp_path, overrides={"rf": "sim://?physics=0"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        run_scan(GRE, PROFILE, tmp_path / "file", overrides={"rf": "sim://?physics=0"})


def test_files_are_created_exclusively_and_planted_symlinks_are_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    seq, protocol = load_source(GRE, PROFILE)
    for name in ("raw.h5", "report.json"):
        (tmp_path / name).symlink_to(victim)
    (tmp_path / "existing.h5").write_bytes(b"earlier data")
    for path in (tmp_path / "raw.h5", tmp_path / "existing.h5"):
        with pytest.raises(RawDataError, match=f"{path}: cannot create raw data file: File exists"):
            RawDataWriter.open(path, header_for(seq, PROFILE, protocol), seq=seq)
    with pytest.raises(OutputError, match="report.json: File exists"):
        write_new(tmp_path / "report.json", b"{}")
    assert victim.read_bytes() == b"precious" and (tmp_path / "existing.h5").read_bytes() == b"earlier data"
    assert (tmp_path / "raw.h5").is_symlink() and os.readlink(tmp_path / "raw.h5") == str(victim)


# -- the command line's manners -------------------------------------------------------------------------------


def test_version():
    done = scanctl("--version")
    assert done.returncode == 0 and done.stdout == f"scanctl {version('scanctl')}\n" and done.stderr == ""


@pytest.mark.parametrize("argv, words", [
    (["run"], "run: the following arguments are required: file"),
    (["run", "x.toml", "--mode", "bogus"], "run: argument --mode: invalid choice: 'bogus'"),
    (["bogus"], "argument command: invalid choice: 'bogus'"),
    (["status", "--timeout", "nan"], "status: argument --timeout: 'nan' is not a positive number of seconds"),
])
def test_usage_errors_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert words in one_error_line(err) and "usage:" not in err


def test_a_failed_up_is_one_line(tmp_path):
    """The child's log tail used to follow the error on lines of its own."""
    with zmq.Context() as context, context.socket(zmq.REP) as taken:
        port = taken.bind_to_random_port("tcp://127.0.0.1")
        done = scanctl("up", "--run-dir", tmp_path / "run", "--bind", f"tcp://127.0.0.1:{port}",
                       "--events", LOOPBACK, "--data", LOOPBACK, "--timeout", "60")
    assert done.returncode == 2 and "Address already in use" in one_error_line(done.stderr)
    assert "the control server exited with status 2 before serving" in done.stderr


def test_v_shows_scanctls_progress_and_vv_the_state_machine_librarys(tmp_path):
    once = scanctl("-v", "run", GRE, "--out", tmp_path / "v", *FAST, "--no-recon")
    assert once.returncode == 0 and "INFO scanctl.engine.machine: scanner POSITIONING -> RUNNING" in once.stderr
    assert "transitions" not in once.stderr
    twice = scanctl("-vv", "run", GRE, "--out", tmp_path / "vv", *FAST, "--no-recon")
    assert twice.returncode == 0 and "INFO transitions." in twice.stderr


def test_ctrl_c_aborts_an_in_process_scan_and_still_writes_its_report_and_image(tmp_path):
    out = tmp_path / "out"
    # Three averages: 4.3 s of wall-clock time, so a Ctrl-C 0.4 s in lands mid-scan even on a loaded machine.
    long_gre = tmp_path / "gre_2d.toml"
    long_gre.write_text(GRE.read_text().replace("averages = 1", "averages = 3"))
    proc = subprocess.Popen([sys.executable, "-m", "scanctl", "-v", "run", str(long_gre), "--out", str(out), *PACED,
                             "--no-prescan"],  # the scan itself is what Ctrl-C must interrupt here
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        seen = ""
        # Read the pipe's bytes as they come (os.read): readline() on the text wrapper pulls several lines into
        # its buffer, which select() cannot see, so under load "-> RUNNING" was read seconds late, after the
        # scan had ended, and the Ctrl-C found nothing to interrupt.
        fd = proc.stderr.fileno()
        while "-> RUNNING" not in seen:  # acquiring: the scan plays for 4.3 s of wall-clock time
            assert time.monotonic() < deadline and proc.poll() is None, seen
            if select.select([fd], [], [], 1.0)[0]:
                seen += os.read(fd, 65536).decode()
        time.sleep(0.4)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "aborting the scan" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "aborted" and "interrupted" in report["message"]
    assert 0 < report["acquisitions"] < 3 * 128
    assert len(read_acquisitions(out / "raw.h5").acquisitions) == report["acquisitions"]
    assert (out / "image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"aborted: {report['acquisitions']} acquisitions" in stdout
    assert report["journal"][-1]["dest"] == "IDLE"  # made safe (ABORTING -> IDLE), not left RUNNING


@pytest.fixture
def server() -> Iterator[ControlServer]:
    served = ControlServer(PROFILE, LOOPBACK, LOOPBACK, LOOPBACK, {"rf": "sim://?physics=0"})
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.stop()
    thread.join(timeout=30)


def closed_pipe_run(*argv: object) -> subprocess.CompletedProcess[str]:
    """``scanctl ARGV`` with stdout a pipe nobody reads any more (as ``| head -c 10`` once head is done)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "scanctl", *map(str, argv)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)


def test_a_closed_stdout_ends_quietly(server):
    for argv in (["status", "--json", "--connect", server.endpoints["control"]], ["check", GRE, "--json"]):
        done = closed_pipe_run(*argv)
        assert done.returncode == 141 and done.stderr == "", (argv, done.stderr)


def test_a_second_remote_run_into_the_same_out_is_refused(server, tmp_path, capsys):
    out = tmp_path / "remote"
    endpoint = server.endpoints["control"]
    assert main(["run", "--connect", endpoint, str(GRE), "--out", str(out), "--no-recon"]) == 0
    first = (out / "raw.h5").read_bytes()
    capsys.readouterr()
    assert main(["run", "--connect", endpoint, str(GRE), "--out", str(out), "--no-recon"]) == 2
    assert f"{out}: already holds" in one_error_line(capsys.readouterr().err)
    assert (out / "raw.h5").read_bytes() == first
    with Client(endpoint) as client:
        assert client.status()["controller"] is None  # refused before control was taken


def test_a_run_connect_whose_server_dies_exits_1_without_a_key_hint(tmp_path, monkeypatch, capsys):
    import scanctl.services.remote_run as client_module

    monkeypatch.setattr(client_module, "KEEPALIVE_S", 0.2)
    proc = subprocess.Popen([sys.executable, "-m", "scanctl", "serve", "--bind", LOOPBACK, "--events", LOOPBACK,
                             "--data", LOOPBACK, *PACED], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        found = re.search(r"commands on (\S+),", proc.stdout.readline())
        assert found, "the server did not say where it serves"
        endpoint = found.group(1)

        def kill_once_running() -> None:
            with Client(endpoint) as watcher:
                deadline = time.monotonic() + 60
                while watcher.status()["state"] != "RUNNING" and time.monotonic() < deadline:
                    time.sleep(0.02)
            proc.kill()

        killer = threading.Thread(target=kill_once_running)
        killer.start()
        t0 = time.monotonic()
        code = main(["run", "--connect", endpoint, str(GRE), "--out", str(tmp_path / "out"), "--no-recon",
                     "--no-prescan"])  # the scan itself is what the server must die during
        took = time.monotonic() - t0
        killer.join(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"the control server at {endpoint} stopped answering during run" in one_error_line(err)
    assert "CurveZMQ" not in err and "--keys" not in err
    assert took < 20  # no release_control waited out on a server that is gone
    # what arrived before the server died is a valid raw data file
    read_acquisitions(tmp_path / "out" / "raw.h5")


# -- a full disk ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path | None]:
    """A 150 kB tmpfs (too small for gre_2d's files) if this process may mount one, else None."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(mount)],
                              capture_output=True, timeout=30)
    except OSError:
        done = None
    if done is None or done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_full_disk_names_the_file_and_keeps_the_scan_safe(small_disk, tmp_path, monkeypatch, capsys):
    if small_disk is None:  # not allowed to mount: the disk fills at the raw data file's lowest write level,
        flushes: list[h5py.File] = []  # once its header is written

        def full(self: h5py.File) -> None:
            flushes.append(self)
            if len(flushes) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(h5py.File, "flush", full)
    out = (small_disk or tmp_path) / "x"
    code = main(["run", str(GRE), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 1, captured
    err = one_error_line(captured.err)
    assert f"{out / 'raw.h5'}: cannot write acquisition " in err and "No space left on device" in err
    assert (out / "sequence.seq").stat().st_size > 0  # written before the disk filled, left whole
    assert not (out / "image.npy").exists() or small_disk is None  # no truncated image passing for one
    if (out / "report.json").exists():
        report = json.loads((out / "report.json").read_text())
        assert report["outcome"] == "fault" and "No space left on device" in report["message"]
        assert report["journal"][-1]["dest"] == "FAULT"  # every subsystem made safe, latched
    read_acquisitions(out / "raw.h5")  # what was written before the disk filled stays readable
