"""The control server and its client over real ZeroMQ sockets on loopback (random ports): a remote run
writes what an in-process run writes; one controller at a time; refusals name the state; abort keeps
the data; events have gap-free sequence numbers; malformed traffic gets error replies and the server
keeps serving."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanctl.cli import main
from scanctl.cli_remote import event_line
from scanctl.config import profile as profiles
from scanctl.data.rawdata import read_acquisitions
from scanctl.engine.session import run_scan
from scanctl.errors import ConfigError, ScanctlError
from scanctl.services.client import Client, CommandError
from scanctl.services.remote_run import run_remote
from scanctl.services.server import ControlServer
from scanctl.transport.wire import MAX_ENVELOPE_BYTES, Message, decode, encode

PROTOCOLS = Path(__file__).parents[1] / "protocols"
GRE = PROTOCOLS / "gre_2d.toml"
PROFILE = profiles.load()
FAST = {"rf": "sim://?physics=0"}
# Small buffers and segments: the run loop reaches safe points (and streams data) while the scan plays.
SEGMENTED = {"gradient": "sim://?buffer_s=0.2", "rf": "sim://?physics=0&buffer_s=0.2"}
LOOPBACK = "tcp://127.0.0.1:0"


class Served:
    """A ControlServer serving on a thread."""

    def __init__(self, overrides: dict[str, str], **kwargs: Any) -> None:
        self.server = ControlServer(PROFILE, LOOPBACK, LOOPBACK, LOOPBACK, overrides, **kwargs)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = self.server.endpoints["control"]
        self.clients: list[Client] = []

    def client(self, name: str | None = None) -> Client:
        client = Client(self.endpoint, name=name)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served(FAST)
    yield s
    s.close()


@pytest.fixture
def segmented() -> Iterator[Served]:
    s = Served(SEGMENTED, segment_s=0.1)
    yield s
    s.close()


def wait_state(client: Client, state: str, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = client.status()
        if snap["state"] == state and snap["busy"] is None:
            return snap
        time.sleep(0.01)
    raise AssertionError(f"server not {state} within {timeout_s} s: {client.status()['state']}")


# -- a whole run -----------------------------------------------------------------------------------------------
def test_remote_run_writes_what_an_in_process_run_writes(tmp_path, served):
    local = run_scan(GRE, PROFILE, tmp_path / "local", overrides=FAST)
    remote = run_remote(served.client("console"), GRE, tmp_path / "remote")
    assert local.outcome == remote.outcome == "completed", remote.message
    assert remote.acquisitions == local.acquisitions == 128
    a, b = read_acquisitions(tmp_path / "remote" / "raw.h5"), read_acquisitions(tmp_path / "local" / "raw.h5")
    assert a.header.measurement_id != b.header.measurement_id  # two measurements, each its own id
    assert replace(a.header, measurement_id="") == replace(b.header, measurement_id="")
    assert len(a.acquisitions) == len(b.acquisitions) == 128
    for x, y in zip(a.acquisitions, b.acquisitions, strict=True):
        assert x.index == y.index and x.labels == y.labels
        np.testing.assert_array_equal(x.data, y.data)
    np.testing.assert_array_equal(np.load(tmp_path / "remote" / "image.npy"), np.load(tmp_path / "local" / "image.npy"))
    assert (tmp_path / "remote" / "sequence.seq").read_bytes() == (tmp_path / "local" / "sequence.seq").read_bytes()
    report = json.loads((tmp_path / "remote" / "report.json").read_text())
    assert set(report) == set(asdict(local))
    assert report["sequence"] == asdict(local)["sequence"]
    assert report["outputs"] == {k: v for k, v in local.outputs.items() if k != "report"}
    assert [e["dest"] for e in report["journal"]][-3:] == ["POSITIONING", "RUNNING", "IDLE"]
    snap = served.client().status()
    assert snap["last_report"]["outcome"] == "completed" and snap["controller"] is None


def test_a_command_sent_as_soon_as_a_run_ends_is_taken(tmp_path, served):
    """The run's end event is the console's signal that the scanner is free: a load sent the moment it
    arrives is queued behind the worker's last steps, not refused as 'start in progress'."""
    refresh = served.server.telemetry.publish

    def slow_refresh(force: bool = False) -> None:  # the worker's last steps take a while (remote drivers)
        if force:
            time.sleep(0.1)
        refresh(force)

    served.server.telemetry.publish = slow_refresh  # type: ignore[method-assign]
    client = served.client("console")
    for i in range(3):
        assert run_remote(client, GRE, tmp_path / str(i), reconstruct=False).outcome == "completed"
        client.take_control()
        assert client.load(GRE)["state"] == "READY"
        client.release_control()


def test_a_protocol_uploaded_as_text_runs_too(tmp_path, served):
    report = run_remote(served.client(), GRE, tmp_path, upload=True)
    assert report.outcome == "completed" and report.acquisitions == 128


def test_cli_run_status_and_watch_over_the_wire(tmp_path, served, capsys):
    assert main(["run", "--connect", served.endpoint, str(GRE), "--out", str(tmp_path)]) == 0
    assert "completed: 128 acquisitions" in capsys.readouterr().out
    assert len(read_acquisitions(tmp_path / "raw.h5").acquisitions) == 128
    assert main(["status", "--connect", served.endpoint]) == 0
    out = capsys.readouterr().out
    assert "IDLE" in out and "completed, 128 acquisitions" in out
    assert main(["status", "--connect", served.endpoint, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "IDLE"
    watcher = threading.Thread(target=main, args=(["watch", "--connect", served.endpoint, "--timeout", "2"],))
    watcher.start()
    time.sleep(0.5)
    assert main(["move-table", "--connect", served.endpoint, "25"]) == 0
    watcher.join(timeout=10)
    out = capsys.readouterr().out
    assert "move-table: done (at 25.0 mm; state IDLE)" in out
    assert "IDLE -> MOVING_TABLE (move_table)" in out and "MOVING_TABLE -> IDLE (table_stopped)" in out
    assert main(["pause", "--connect", served.endpoint]) == 1
    assert "cannot pause while IDLE" in capsys.readouterr().err


def test_every_command_is_a_cli_verb_and_a_named_console_keeps_control(tmp_path, served, capsys):
    """take-control, load, start, release-control as verbs: a console script holds control under its
    --name across invocations; a verb without it takes control only for itself and gives it back."""
    e = ["--connect", served.endpoint]
    assert main(["take-control", *e, "--name", "script"]) == 0
    assert "take-control: done (controller script)" in capsys.readouterr().out
    assert main(["load", *e, str(GRE)]) == 1  # another client holds control
    assert "load refused: 'script' has control" in capsys.readouterr().err
    assert main(["load", *e, "--name", "script", str(GRE)]) == 0
    out = capsys.readouterr().out
    assert "load: done (" in out and "blocks" in out and "state READY" in out
    with served.client().subscribe(data=True) as sub:
        assert main(["start", *e, "--name", "script"]) == 0
        assert "start: accepted (run " in capsys.readouterr().out
        received = []
        while not (received and received[-1].stream == "run" and received[-1].body["event"] == "end"):
            msg = sub.recv(10)
            assert msg is not None
            received.append(msg)
        while (msg := sub.recv(0.2)) is not None:  # the data stream's end travels apart from the events
            received.append(msg)
    assert served.client().status()["controller"] == "script"  # still held: the verbs did not give it back
    # scanctl watch --data [--json]: a data message summarised (its arrays travel as binary frames)
    data = [m for m in received if m.stream == "data" and "end" not in m.body]
    lines = [json.loads(event_line(m, as_json=True)) for m in data]
    assert sum(line["body"]["acquisitions"]["index"]["shape"][0] for line in lines) == 128
    assert lines[0]["body"]["acquisitions"]["data"]["dtype"] == "<c8" and lines[0]["run"] == data[0].run
    assert [event_line(m, as_json=False).split(" ", 3)[3] for m in data] == \
        [f"{len(m.body['acquisitions']['index'])} acquisitions, {m.body['acquisitions']['data'].size} samples"
         for m in data]
    end = next(m for m in received if m.stream == "data" and "end" in m.body)
    assert event_line(end, as_json=False).endswith("end of data: 128 acquisitions in the run")
    odd = Message(type="event", body={"x": np.arange(3)}, stream="state", seq=1)  # not a state body: as JSON
    assert event_line(odd, as_json=False).endswith('{"x": {"dtype": "<i8", "shape": [3]}}')
    assert main(["release-control", *e, "--name", "script"]) == 0
    assert main(["load", *e, "--upload", str(GRE)]) == 0  # a verb on its own takes control and gives it back
    assert "state READY" in capsys.readouterr().out
    assert served.client().status()["controller"] is None
    assert main(["load", *e, "--upload", str(PROTOCOLS / "missing.toml")]) == 2  # not read here
    assert "missing.toml: cannot read" in capsys.readouterr().err
    assert main(["load", *e, str(PROTOCOLS / "missing.toml")]) == 2  # not read by the server
    err = capsys.readouterr().err
    assert "load refused: " in err and "missing.toml: cannot read protocol" in err and "Error:" not in err
    broken = tmp_path / "broken.seq"
    broken.write_text("[VERSION]\nmajor 1\nminor 4\nrevision 1\n\n[BLOCKS]\n1 1 0 0 0 0 0\n\n[DEFINITIONS]\n"
                      "AdcRasterTime 1e-07\nBlockDurationRaster 1e-05\nGradientRasterTime 1e-05\n"
                      "RadiofrequencyRasterTime 1e-06\n")  # (1.4 requires the rasters: the error is the block's)
    assert main(["load", *e, "--upload", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.seq (uploaded):7: " in err and "scanctl-load" not in err  # not the server's temporary copy
    assert served.client().status()["state"] == "READY"  # the protocol loaded before is still there


def test_ctrl_c_during_a_remote_run_aborts_the_scan_and_keeps_its_data(tmp_path):
    """KeyboardInterrupt while run_remote waits (raised here from the progress callback): the scan is
    aborted on the server (made safe, not left playing without a console) and the run's files are
    written with what was acquired."""
    paced = {"gradient": "sim://?realtime=1&buffer_s=0.2", "rf": "sim://?physics=0&realtime=1&buffer_s=0.2"}
    served = Served(paced, segment_s=0.1)
    interrupted: list[float] = []

    def progress(t_s: float, total_s: float, acquisitions: int) -> None:
        if t_s > 0.3 and not interrupted:
            interrupted.append(t_s)
            raise KeyboardInterrupt

    try:
        report = run_remote(served.client("console"), GRE, tmp_path, progress=progress, reconstruct=False)
        assert interrupted and report.outcome == "aborted"
        assert 0 < report.acquisitions < 128
        assert len(read_acquisitions(tmp_path / "raw.h5").acquisitions) == report.acquisitions
        assert json.loads((tmp_path / "report.json").read_text())["outcome"] == "aborted"
        snap = served.client().status()
        assert snap["state"] == "IDLE" and snap["controller"] is None
    finally:
        served.close()


@pytest.mark.parametrize("argv", [["watch", "--timeout", "nan"], ["watch", "--timeout", "-1"],
                                  ["watch", "--count", "-1"], ["status", "--timeout", "inf"],
                                  ["down", "--timeout", "nan"], ["serve", "--control-timeout", "0"]])
def test_bad_seconds_and_counts_are_refused_on_the_command_line(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "is not a" in capsys.readouterr().err


def test_a_client_with_a_bad_endpoint_or_timeout_says_so(tmp_path):
    with pytest.raises(ConfigError, match="cannot connect to 'garbage'"):
        Client("garbage")
    with pytest.raises(ConfigError, match="timeout nan s"):
        Client("tcp://127.0.0.1:1", timeout_s=float("nan"))
    assert main(["status", "--connect", "garbage"]) == 2


# -- control ----------------------------------------------------------------------------------------------------
def test_only_one_client_has_control_and_refusals_name_it(served):
    a, b = served.client("console-a"), served.client("console-b")
    wait_state(a, "IDLE")
    assert a.take_control()["controller"] == "console-a"
    with pytest.raises(CommandError, match="'console-a' has control") as refused:
        b.take_control()
    assert refused.value.code == "not_controller" and refused.value.body["controller"] == "console-a"
    for command in ("load", "start", "abort", "reset", "release_emergency_stop", "release_control"):
        with pytest.raises(CommandError, match=f"{command} refused: 'console-a' has control") as refused:
            b.command(command, {"path": str(GRE)} if command == "load" else None)
        assert refused.value.code == "not_controller"
    assert b.status()["controller"] == "console-a"  # observers may still look
    assert a.load(GRE)["state"] == "READY"
    assert b.take_control(force=True)["controller"] == "console-b"  # a console that died can be taken over
    with pytest.raises(CommandError, match="'console-b' has control"):
        a.start()
    b.release_control()
    assert a.status()["controller"] is None
    a.emergency_stop()  # anyone may press the emergency stop, with or without control
    wait_state(b, "EMERGENCY_STOP")



def test_a_silent_controller_lapses_one_that_talks_keeps_control():
    """A controller that sends nothing for control_timeout_s may be taken over without force (published
    as lapsed); one that keeps sending (status will do) keeps control."""
    served = Served(FAST, control_timeout_s=0.5)
    try:
        a, b, watcher = served.client("console-a"), served.client("console-b"), served.client("watcher")
        wait_state(a, "IDLE")
        a.take_control()
        with watcher.subscribe() as sub:
            for _ in range(8):  # 0.8 s in all, never 0.5 s silent
                time.sleep(0.1)
                a.status()
            with pytest.raises(CommandError, match=r"'console-a' has control .*last heard 0\.[0-4] s ago"):
                b.take_control()
            assert b.status()["controller_silent_s"] < 0.5
            time.sleep(0.7)  # a falls silent
            assert b.take_control()["controller"] == "console-b"
            with pytest.raises(CommandError, match="'console-b' has control"):
                a.command("load", {"path": str(GRE)})
            deadline, control = time.monotonic() + 5.0, None
            while control is None and time.monotonic() < deadline:
                msg = sub.recv(1.0)
                if msg is not None and msg.stream == "control" and msg.body["controller"] == "console-b":
                    control = msg.body
            assert control == {"controller": "console-b", "previous": "console-a", "lapsed": True}
    finally:
        served.close()



def test_a_remote_run_keeps_its_control_alive(tmp_path, monkeypatch):
    """run_remote sends a command every KEEPALIVE_S while the scan plays (here paced to wall-clock time,
    1.5 s, four times the control timeout): nobody can take control from it without force."""
    import scanctl.services.remote_run as client_module

    monkeypatch.setattr(client_module, "KEEPALIVE_S", 0.1)
    served = Served({"gradient": "sim://?realtime=1", "rf": "sim://?physics=0&realtime=1"}, control_timeout_s=0.4)
    try:
        console, other = served.client("console"), served.client("other")
        wait_state(console, "IDLE")
        refusals: list[str] = []

        def try_to_take_over() -> None:
            while not refusals or other.status()["state"] == "RUNNING":
                try:
                    other.take_control()
                except CommandError as exc:
                    refusals.append(str(exc))
                else:
                    refusals.append("TAKEN")
                    return
                time.sleep(0.2)

        thread = threading.Thread(target=try_to_take_over)
        report = None

        def run() -> None:
            nonlocal report
            # (no prescan: its calibrations reach RUNNING too, and the scan itself must be the one watched)
            report = run_remote(console, GRE, tmp_path / "out", reconstruct=False, prescan=False)

        runner = threading.Thread(target=run)
        runner.start()
        deadline = time.monotonic() + 10
        while other.status()["state"] != "RUNNING":
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.01)
        thread.start()
        runner.join(timeout=60)
        thread.join(timeout=10)
        assert report is not None and report.ok, report
        assert len(refusals) >= 3 and "TAKEN" not in refusals, refusals
    finally:
        served.close()

def test_a_control_timeout_that_is_not_positive_is_refused():
    with pytest.raises(ConfigError, match="control timeout 0.0 s"):
        ControlServer(PROFILE, LOOPBACK, LOOPBACK, LOOPBACK, FAST, control_timeout_s=0.0)

def test_refused_commands_name_the_state(served):
    c = served.client()
    wait_state(c, "IDLE")
    c.take_control()
    cases = {"start": "cannot start while IDLE", "pause": "cannot pause while IDLE",
             "resume": "cannot resume while IDLE", "abort": "cannot abort while IDLE",
             "reset": "cannot reset while IDLE"}
    for command, text in cases.items():
        with pytest.raises(CommandError, match=text) as refused:
            c.command(command)
        assert refused.value.code == "rejected" and refused.value.state == "IDLE"
    c.emergency_stop()
    with pytest.raises(CommandError, match="cannot reset while EMERGENCY_STOP: interlocks not clear") as refused:
        c.reset()
    assert refused.value.state == "EMERGENCY_STOP"
    with pytest.raises(CommandError, match="cannot load while EMERGENCY_STOP"):
        c.load(GRE)
    c.release_emergency_stop()
    assert c.reset()["state"] == "IDLE"
    with pytest.raises(CommandError, match="unknown command 'launch'") as refused:
        c.command("launch")
    assert refused.value.code == "unknown_command"
    with pytest.raises(CommandError, match="position_mm") as refused:
        c.command("move_table", {"position_mm": "far"})
    assert refused.value.code == "bad_argument"
    with pytest.raises(CommandError, match="table") as refused:
        c.move_table(5000.0)
    assert refused.value.code == "rejected"


def test_a_retry_with_the_same_request_id_is_answered_not_repeated(served):
    c = served.client("retrier")
    wait_state(c, "IDLE")
    c.take_control()
    c.load(GRE, prescan=False)  # (the prescan's calibrations start runs of their own)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(served.endpoint)
    try:
        frames = encode(Message(type="command", id="start-1", src="retrier", body={"command": "start"}))
        replies = []
        for _ in range(2):
            sock.send_multipart(frames)
            assert sock.poll(5000)
            replies.append(decode(sock.recv_multipart()))
        assert replies[0].type == replies[1].type == "reply"
        assert replies[0].body == replies[1].body and replies[0].body["status"] == "accepted"
    finally:
        sock.close()
    snap = wait_state(c, "IDLE")
    assert snap["last_report"]["run"] == replies[0].body["run"]
    assert [e.trigger for e in served.server.scanner.journal].count("start") == 1


# -- runs controlled from outside ------------------------------------------------------------------------------
def test_abort_mid_run_keeps_the_data_so_far(tmp_path, segmented):
    gate, reached = threading.Event(), threading.Event()
    rf = segmented.server.scanner.rf  # the server's scanner, kept for every load (the scene is placed, not built)
    take = rf.acquisitions

    def acquisitions() -> Any:
        batch = take()
        if batch and not reached.is_set():
            reached.set()
            assert gate.wait(10)  # hold the run loop here until the abort is in
        return batch

    rf.acquisitions = acquisitions
    console = segmented.client("console")
    result: dict[str, Any] = {}
    # (no prescan: the first acquisitions held must be the scan's, not a calibration's)
    runner = threading.Thread(target=lambda: result.update(report=run_remote(console, GRE, tmp_path, prescan=False)))
    runner.start()
    assert reached.wait(20)
    other = segmented.client("operator")
    other.take_control(force=True)
    assert other.abort()["status"] == "accepted"
    gate.set()
    runner.join(timeout=30)
    report = result["report"]
    assert report.outcome == "aborted"
    raw = read_acquisitions(tmp_path / "raw.h5")
    assert 0 < len(raw.acquisitions) == report.acquisitions < 128
    assert [a.index for a in raw.acquisitions] == list(range(len(raw.acquisitions)))
    assert [e["dest"] for e in report.journal][-2:] == ["ABORTING", "IDLE"]
    assert other.status()["state"] == "IDLE"


def test_pause_and_resume_sent_right_after_start_are_honoured(segmented):
    c = segmented.client()
    wait_state(c, "IDLE")
    c.take_control()
    with c.subscribe() as sub:
        c.load(GRE)
        run = c.start()["run"]
        assert c.pause()["status"] == "accepted"  # before the run loop has begun: handed over when it does
        states = []
        while "PAUSED" not in states:
            msg = sub.recv(10)
            assert msg is not None
            if msg.stream == "state":
                states.append(msg.body["dest"])
        assert c.status()["state"] == "PAUSED"
        with pytest.raises(CommandError, match="cannot pause while PAUSED"):
            c.pause()
        c.resume()
        while True:
            msg = sub.recv(10)
            assert msg is not None
            if msg.stream == "run" and msg.body["event"] == "end":
                break
        assert msg.run == run and msg.body["outcome"] == "completed" and msg.body["acquisitions"] == 128
        assert sub.gaps == []


# -- events -----------------------------------------------------------------------------------------------------
def test_events_carry_src_run_and_gap_free_sequence_numbers(served):
    c = served.client()
    wait_state(c, "IDLE")
    c.take_control()
    subs = [c.subscribe(data=True) for _ in range(3)]
    try:
        c.load(GRE)
        run = c.start()["run"]
        seen: list[list[Message]] = []
        for sub in subs:
            got: list[Message] = []
            ends = 0
            while ends < 2:  # the run's end event and the end of its data stream
                msg = sub.recv(10)
                assert msg is not None
                got.append(msg)
                ends += (msg.stream == "run" and msg.body["event"] == "end") or (msg.type == "data" and
                                                                                  "end" in msg.body)
            seen.append(got)
            assert sub.gaps == []
        for got in seen:
            by_stream: dict[str, list[int]] = {}
            for msg in got:
                assert msg.src == "scanctl-server" and msg.seq is not None and msg.run is not None
                by_stream.setdefault(msg.stream or "", []).append(msg.seq)
            for stream, seqs in by_stream.items():
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream
            in_run = [m for m in got if m.stream in ("progress", "data", "run")]
            assert in_run and all(m.run == run for m in in_run)
            data = [m.body["acquisitions"] for m in got if m.stream == "data" and "end" not in m.body]
            assert all(m.type == ("data" if m.stream in ("data", "data_sync") else "event") for m in got)
            assert sum(len(batch["index"]) for batch in data) == 128
            assert {"state", "progress", "run", "data"} <= set(by_stream)
        snap = c.status()
        assert snap["seq"]["run"] == by_stream["run"][-1]  # a late joiner learns where each stream is
    finally:
        for sub in subs:
            sub.close()


# -- malformed traffic ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared() -> Iterator[Served]:
    s = Served(FAST)
    yield s
    s.close()


class Raw:
    """A bare DEALER socket: sends any frames, returns the decoded answer (or None)."""

    def __init__(self, endpoint: str) -> None:
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def ask(self, frames: list[bytes], timeout_s: float = 5.0) -> Message | None:
        self.socket.send_multipart(frames)
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        reply = self.socket.recv_multipart()
        if reply and reply[0] == b"":  # we sent a leading empty frame: the server treated it as REQ's
            reply = reply[1:]
        return decode(reply)

    def close(self) -> None:
        self.socket.close()


def assert_serving(served: Served) -> None:
    assert served.client().status()["server"] == "scanctl-server"


def envelope(**fields: Any) -> bytes:
    return json.dumps({"v": "2.0", "type": "command", "id": "x", "src": f"raw-{uuid.uuid4().hex}", "ts": time.time(),
                       "body": {"command": "status"}, **fields}).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_random_frames_get_an_error_reply_and_the_server_keeps_serving(shared, frames):
    raw = Raw(shared.endpoint)
    try:
        reply = raw.ask(frames)
        assert reply is not None and reply.type == "error"
        assert reply.body["code"] == "malformed" and reply.body["message"]
    finally:
        raw.close()
    assert_serving(shared)


RESERVED = ("__nd__", "__float__")  # keys the wire keeps for itself: the encoder refuses them


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.text(max_size=10).filter(lambda key: key not in RESERVED),
                            st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                      st.lists(st.integers(), max_size=3)), max_size=4))
def test_random_command_bodies_get_a_reply_and_the_server_keeps_serving(shared, body):
    raw = Raw(shared.endpoint)
    try:
        reply = raw.ask(encode(Message(type="command", id=uuid.uuid4().hex, src="fuzzer", body=body)))
        assert reply is not None and reply.type in ("reply", "error")
        if body.get("command") != "status" and body.get("command") not in ("take_control", "sync"):
            assert reply.type == "error" and reply.body["code"] in ("unknown_command", "not_controller",
                                                                    "bad_argument", "malformed")
    finally:
        raw.close()
    assert_serving(shared)


@pytest.mark.parametrize(("frames", "code", "text"), [
    ([b"[1, 2]"], "malformed", "not a JSON object"),
    ([envelope(extra=1)], "malformed", "unknown keys: extra"),
    ([envelope(type="launch")], "malformed", "unknown message type 'launch'"),
    ([envelope(v="3.0")], "malformed", "unsupported protocol version '3.0'"),
    ([envelope(body=[])], "malformed", "'body' must be an object"),
    ([envelope(id=7)], "malformed", "'id' has the wrong type"),
    ([b"x" * (MAX_ENVELOPE_BYTES + 1)], "malformed", "more than the"),
    ([envelope(body={"command": "load", "path": {"__nd__": 0, "dtype": "<f8", "shape": [2]}})], "malformed",
     "missing or already used"),
    ([envelope(body={"command": 42})], "unknown_command", "unknown command 42"),
    ([envelope(body={})], "unknown_command", "unknown command None"),
])
def test_malformed_messages_get_a_clear_error(shared, frames, code, text):
    raw = Raw(shared.endpoint)
    try:
        reply = raw.ask(frames)
        assert reply is not None and reply.type == "error" and reply.body["code"] == code
        assert text in reply.body["message"]
        if frames[0].startswith(b"{") and b'"id": "x"' in frames[0]:  # its id could be read: it is answered
            assert reply.re == "x"
    finally:
        raw.close()
    assert_serving(shared)


def test_a_message_over_the_size_limit_is_dropped_and_the_server_keeps_serving(shared):
    raw = Raw(shared.endpoint)
    try:
        assert raw.ask([envelope(), b"\0" * (65 << 20)], timeout_s=1.0) is None  # ZeroMQ drops it and the peer
    finally:
        raw.close()
    assert_serving(shared)


def test_a_network_bind_without_authentication_is_refused():
    with pytest.raises(ConfigError, match="not a loopback address"):
        ControlServer(PROFILE, "tcp://0.0.0.0:0", LOOPBACK)


def test_a_request_id_reused_for_another_command_is_refused_not_answered_with_the_first_reply(shared):
    raw = Raw(shared.endpoint)
    try:
        def ask(command: str, **body: Any) -> Message:
            reply = raw.ask([encode(Message(type="command", id="same-id", src="reuser",
                                            body={"command": command, **body}))[0]])
            assert reply is not None
            return reply

        first = ask("take_control")
        assert first.type == "reply" and first.body["controller"] == "reuser"
        assert ask("take_control").body == first.body  # a retry: the same reply
        reused = ask("move_table", position_mm=10.0)
        assert reused.type == "error" and reused.body["code"] == "bad_argument"
        assert "same-id" in reused.body["message"] and "different command" in reused.body["message"]
        assert shared.server.scanner.table.position_mm() == 0.0  # nothing moved
    finally:
        raw.socket.send_multipart(encode(Message(type="command", id="rel", src="reuser",
                                                 body={"command": "release_control"})))
        raw.socket.poll(5000)
        raw.close()


def test_the_reply_cache_is_bounded_however_many_clients_a_peer_makes_up(shared):
    """65,536 requests under 1,024 made-up names grew the server by 553 MB: status replies are not kept at
    all, and the replies that are kept are bounded in number and bytes over all clients together."""
    from scanctl.services import reply_cache

    raw = Raw(shared.endpoint)
    cache = shared.server._cache
    try:
        requests = [Message(type="command", id=f"s{i}", src=f"made-up-{i % 1024}", body={"command": "status"})
                    for i in range(4096)]  # status: never kept
        # refused commands are kept (a retry must get the same refusal): bounded
        requests += [Message(type="command", id=f"r{i}", src=f"made-up-{i % 1024}",
                             body={"command": "reset", "pad": "x" * 2000}) for i in range(6000)]
        for start in range(0, len(requests), 200):  # in windows: within the sockets' high-water marks
            window = requests[start:start + 200]
            for request in window:
                raw.socket.send_multipart(encode(request))
            for _ in window:
                assert raw.socket.poll(10_000)
                raw.socket.recv_multipart()
        assert len(cache) <= reply_cache.MAX_ENTRIES and cache.bytes <= reply_cache.MAX_BYTES
        assert len(cache) >= 1000  # it does keep replies
    finally:
        raw.close()
    assert_serving(shared)


def test_loading_a_fifo_is_refused_and_the_worker_stays_free(tmp_path, served):
    import os

    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    c = served.client("fifo")
    wait_state(c, "IDLE")
    c.take_control()
    with pytest.raises(CommandError) as refused:
        c.load(fifo)
    assert refused.value.code == "bad_argument" and "FIFO" in str(refused.value)
    assert c.load(GRE)["state"] == "READY"  # the worker is not wedged


def test_a_console_killed_mid_scan_loses_nothing_the_server_keeps_and_serves_the_run(tmp_path):
    """SIGKILL of ``scanctl run --connect`` mid-scan: the scan plays on, and the server's own copy of the
    run holds every acquisition, fetched later by another console (issue 13, defect 6)."""
    import os
    import signal
    import subprocess
    import sys


    store = tmp_path / "server-runs"
    s = Served({"gradient": "sim://?realtime=1&buffer_s=0.2", "rf": "sim://?physics=0&realtime=1&buffer_s=0.2"},
               segment_s=0.1, data_dir=store)
    try:
        console = subprocess.Popen([sys.executable, "-m", "scanctl", "run", "--connect", s.endpoint, str(GRE),
                                    "--out", str(tmp_path / "console")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        watcher = s.client("watcher")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            progress = watcher.status().get("progress") or {}
            if progress.get("acquisitions", 0) >= 16:
                break
            time.sleep(0.02)
        os.kill(console.pid, signal.SIGKILL)
        console.wait(timeout=10)
        killed_at = watcher.status()["progress"]["acquisitions"]
        assert 16 <= killed_at < 128  # killed mid-scan
        snap = wait_state(watcher, "IDLE", timeout_s=30)
        report = snap["last_report"]
        assert report["outcome"] == "completed" and report["acquisitions"] == 128
        assert report["outputs"] == {"sequence": "sequence.seq", "raw": "raw.h5", "report": "report.json"}
        run_id = report["run"]
        assert len(read_acquisitions(store / run_id / "raw.h5").acquisitions) == 128
        assert [r["run"] for r in watcher.runs()] == [run_id]
        fetched = watcher.fetch(run_id, tmp_path / "fetched")
        assert sorted(p.name for p in fetched) == ["raw.h5", "report.json", "sequence.seq"]
        raw = read_acquisitions(tmp_path / "fetched" / "raw.h5")
        assert len(raw.acquisitions) == 128
        assert [a.index for a in raw.acquisitions] == list(range(128))
        assert (tmp_path / "fetched" / "raw.h5").read_bytes() == (store / run_id / "raw.h5").read_bytes()
        assert json.loads((tmp_path / "fetched" / "report.json").read_text())["run"] == run_id
        with pytest.raises(CommandError, match="not a run id"):
            watcher.command("fetch", {"run": "../../etc", "file": "raw.h5"})
        with pytest.raises(CommandError, match="not a file of a run"):
            watcher.command("fetch", {"run": run_id, "file": "../x"})
        with pytest.raises(ScanctlError, match="exists"):
            watcher.fetch(run_id, tmp_path / "fetched")  # never overwritten
        assert main(["runs", "--connect", s.endpoint]) == 0
        assert main(["fetch", run_id, "--connect", s.endpoint, "--out", str(tmp_path / "by-cli")]) == 0
        assert (tmp_path / "by-cli" / "raw.h5").read_bytes() == (store / run_id / "raw.h5").read_bytes()
    finally:
        s.close()


def test_watch_notices_a_server_that_went_away(tmp_path):
    """``scanctl watch`` on a server killed under it: one line saying so and exit 1, within seconds (it
    waited for events for ever)."""
    import os
    import signal
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-m", "scanctl", "serve", "--bind", "tcp://127.0.0.1:0", "--events",
                               "tcp://127.0.0.1:0", "--data", "tcp://127.0.0.1:0", "--rf", "sim://?physics=0",
                               "--data-dir", str(tmp_path / "runs")], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        endpoint = line.split("commands on ")[1].split(",")[0]
        watch = subprocess.Popen([sys.executable, "-m", "scanctl", "watch", "--connect", endpoint],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert watch.stdout is not None and watch.stdout.readline().startswith("#")
        os.kill(server.pid, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = watch.communicate(timeout=30)
        assert watch.returncode == 1 and time.monotonic() - t0 < 15, err
        assert err.strip().splitlines() == [f"scanctl: error: the control server at {endpoint} stopped answering"]
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.mark.parametrize("command", [[], {}, {"a": 1}, 3, None, True])
def test_a_command_that_is_no_name_is_refused_and_the_server_keeps_serving(shared, command):
    raw = Raw(shared.endpoint)
    try:
        text = json.dumps({"v": "2.0", "type": "command", "id": "odd", "src": f"raw-{uuid.uuid4().hex}", "ts": 1.0,
                           "body": {"command": command}})
        reply = raw.ask([text.encode()])
        assert reply is not None and reply.type == "error" and reply.body["code"] == "unknown_command"
        assert reply.re == "odd"
    finally:
        raw.close()
    assert_serving(shared)


def test_loading_another_scene_places_it_and_never_reconnects_or_rehomes(tmp_path, served):
    """The scene (phantom, field of view, noise) is a runtime call on the RF simulator: a load with another
    field of view re-homed the table before (the whole scanner was rebuilt and reconnected), which on a rig
    with a real serial table moves the physical table."""
    c = served.client("scene")
    wait_state(c, "IDLE")
    c.take_control()
    scanner = served.server.scanner
    calls: list[str] = []
    for sub in (scanner.gradient, scanner.rf, scanner.table):
        for name in ("connect", "close", "home") if sub is scanner.table else ("connect", "close"):
            method = getattr(sub, name)

            def counted(*args: Any, _method: Any = method, _name: str = f"{sub.kind}.{name}", **kwargs: Any) -> Any:
                calls.append(_name)
                return _method(*args, **kwargs)

            setattr(sub, name, counted)
    c.load(GRE)
    assert scanner.rf.fov_m == 0.256
    other = tmp_path / "gre_other_fov.toml"
    other.write_text(GRE.read_text().replace("fov_m = 0.256", "fov_m = 0.3")
                     .replace('name = "shepp_logan"', 'name = "shepp_logan"\nmatrix = 64'))
    c.load(other)
    assert served.server.scanner is scanner and calls == []
    assert (scanner.rf.fov_m, scanner.rf.matrix) == (0.3, 64)


def test_a_console_that_cannot_write_its_raw_data_aborts_the_scan(tmp_path, segmented, monkeypatch):
    """A full disk on the console: the scan is aborted on the server (as a local run stops), not left playing
    with nobody to keep its data; the console's report names the file."""
    from scanctl.data.rawdata import RawDataError, RawDataWriter
    from scanctl.engine.run import RunOutputError

    extend = RawDataWriter.extend

    console = tmp_path / "out"

    def full_after_some(self, batch):  # the console's disk only (the server, in this process, writes elsewhere)
        if Path(self.path).parent == console and getattr(self, "_taken", 0) >= 8:
            raise RawDataError(self.path, "cannot write acquisition: No space left on device")
        self._taken = getattr(self, "_taken", 0) + len(batch)
        return extend(self, batch)

    monkeypatch.setattr(RawDataWriter, "extend", full_after_some)
    with pytest.raises(RunOutputError) as failed:
        run_remote(segmented.client("console"), GRE, console)
    report = failed.value.report
    assert report.outcome == "aborted" and "No space left on device" in report.message
    assert wait_state(segmented.client(), "IDLE")["last_report"]["outcome"] == "aborted"


def test_a_reply_that_cannot_be_encoded_is_an_internal_error_at_once(served, monkeypatch):
    """A bug of the server's (here: a complex scalar in the load reply, as a coil's noise covariance once
    was) must not leave the console waiting out its timeout (120 s for a load): it gets ``internal``."""
    from scanctl.services import commands

    monkeypatch.setattr(commands, "header_to_plain", lambda header: {"noise": 1j})
    client = served.client("console")
    client.take_control()
    t0 = time.monotonic()
    with pytest.raises(CommandError) as caught:
        client.load(str(GRE))
    assert caught.value.code == "internal" and "cannot be encoded" in str(caught.value)
    assert time.monotonic() - t0 < 10.0


def test_a_coil_arrays_noise_covariance_reaches_the_consoles_raw_data(tmp_path):
    s = Served({"rf": "sim://?physics=0&coils=4&noise=1"})
    try:
        report = run_remote(s.client("console"), GRE, tmp_path / "remote")
    finally:
        s.close()
    assert report.outcome == "completed", report.message
    from scanctl.data.rawdata import read_noise_covariance

    assert read_acquisitions(tmp_path / "remote" / "raw.h5").header.channels == 4
    cov = np.asarray(read_noise_covariance(tmp_path / "remote" / "raw.h5"))
    assert cov.shape == (4, 4) and np.allclose(cov, cov.conj().T) and (np.diag(cov).real > 0).all()
