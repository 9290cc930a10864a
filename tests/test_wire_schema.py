"""The wire as a contract (issue 20): every message the control server, its driver services and the
publisher send in a scan, a pause/resume, a stop, an abort, a fault, an emergency stop and a control
takeover is recorded on the socket and validated against ``scanctl/transport/schema/wire.json``; every
command, argument, stream and error code the schema lists is exercised (the coverage is printed)."""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import zmq

from scanctl.config import profile as profiles
from scanctl.hw.registry import open_subsystem
from scanctl.services import commands
from scanctl.services.client import Client, CommandError
from scanctl.services.driver_service import DriverService
from scanctl.services.server import ControlServer
from scanctl.transport import schema
from scanctl.transport.schema.validate import Validator
from scanctl.transport.wire import Message, encode

GRE = Path(__file__).parents[1] / "protocols" / "gre_2d.toml"
EXAM_CARD = Path(__file__).parent / "data" / "exam" / "head32.toml"
PROFILE = profiles.load()
#: Small buffers: the run loop reaches safe points (pause, stop, abort) while the scan plays.
URLS = {"gradient": "sim://?buffer_s=0.2", "rf": "sim://?physics=0&buffer_s=0.2", "table": "sim://"}


@dataclass
class Recorder:
    """Every multipart message sent by any socket of this process, with the channel it travels on."""

    validator: Validator
    routers: dict[int, str] = field(default_factory=dict)  # id(socket) -> channel, for ROUTER and PUB sockets
    ignored: set[int] = field(default_factory=set)  # the test's own sockets sending malformed traffic on purpose
    sent: list[tuple[str, list[bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, socket: zmq.Socket[Any], frames: list[Any]) -> None:
        kind = socket.getsockopt(zmq.TYPE)
        raw = [bytes(f.buffer if isinstance(f, zmq.Frame) else f) for f in frames]
        if kind == zmq.PAIR or id(socket) in self.ignored:
            return  # the server's own wake-up signals; the test's deliberately malformed messages
        if kind == zmq.ROUTER:
            raw = raw[1:]  # the peer's routing id
        if len(raw) > 1 and raw[0] == b"":
            raw = raw[1:]  # the empty delimiter a REQ peer (or a DEALER that chose to) puts first
        channel = self.routers.get(id(socket))
        if channel is None:  # a DEALER: a console's commands, or a driver proxy's calls and heartbeats
            channel = "commands" if b'"type":"command"' in raw[0][:40] else "driver"
        with self.lock:
            self.sent.append((channel, raw))

    def mark(self) -> int:
        with self.lock:
            return len(self.sent)


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    rec = Recorder(Validator())
    send = zmq.Socket.send_multipart

    def recorded(socket: zmq.Socket[Any], frames: Any, *args: Any, **kwargs: Any) -> Any:
        rec.record(socket, list(frames))
        return send(socket, frames, *args, **kwargs)

    monkeypatch.setattr(zmq.Socket, "send_multipart", recorded)
    return rec


class Rig:
    """Three driver services and a control server in this process (threads), every socket recorded."""

    def __init__(self, recorder: Recorder, data_dir: Path) -> None:
        self.recorder = recorder
        self.services: dict[str, DriverService] = {}
        self.threads: list[threading.Thread] = []
        for kind, url in URLS.items():
            self.serve_driver(kind, url, "tcp://127.0.0.1:0")
        overrides = {kind: f"{service.endpoint}?liveness_s=0.5" for kind, service in self.services.items()}
        self.server = ControlServer(PROFILE, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", overrides,
                                    segment_s=0.1, data_dir=data_dir, control_timeout_s=2.0)
        recorder.routers.update({id(self.server._commands): "commands", id(self.server._events): "events",
                                 id(self.server._data): "data"})
        self.start(self.server.serve_forever)
        self.endpoint = self.server.endpoints["control"]

    def serve_driver(self, kind: str, url: str, endpoint: str) -> DriverService:
        service = DriverService(kind, open_subsystem(kind, url, PROFILE), endpoint)
        self.recorder.routers[id(service._socket)] = "driver"
        self.services[kind] = service
        self.start(service.serve_forever)
        return service

    def start(self, target: Any) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.server.stop()
        for service in self.services.values():
            service.stop()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture
def rig(recorder, tmp_path) -> Iterator[Rig]:
    r = Rig(recorder, tmp_path / "runs")
    yield r
    r.close()


def wait_state(client: Client, state: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = client.status()
        if snap["state"] == state and snap["busy"] is None:
            return
        time.sleep(0.02)
    raise AssertionError(f"not {state} within {timeout_s} s: {client.status()['state']}")


def run_to_end(client: Client, sub: Any, *requests: str) -> dict[str, Any]:
    """Start the loaded run, send ``requests`` (pause, resume, stop, abort) once it plays (its first progress
    event; a resume once PAUSED), return its end."""
    pending = list(requests)
    run = client.start()["run"]
    deadline = time.monotonic() + 60
    end, data_done = None, False
    while (end is None or not data_done) and time.monotonic() < deadline:
        msg = sub.recv(1.0)
        if msg is None or msg.run != run:
            continue
        paused = msg.stream == "state" and msg.body["dest"] == "PAUSED"
        if pending and (paused if pending[0] == "resume" else msg.stream == "progress"):
            client.command(pending.pop(0))
        if msg.stream == "data" and msg.body.get("end"):
            data_done = True
        if msg.stream == "run" and msg.body["event"] == "end":
            end = msg.body
    assert end is not None and data_done and not pending, f"run {run} did not end, or {pending} not sent"
    return end


def refused(code: str, call: Any, *args: Any, **kwargs: Any) -> CommandError:
    with pytest.raises(CommandError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def raw_command(rig: Rig, frames: list[bytes]) -> Message:
    """Send ``frames`` as they are (not recorded: they may be malformed on purpose); the server's answer."""
    from scanctl.transport.wire import decode
    socket = zmq.Context.instance().socket(zmq.DEALER)
    rig.recorder.ignored.add(id(socket))
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(rig.endpoint)
    try:
        socket.send_multipart(frames)
        assert socket.poll(5000), "no answer"
        reply = socket.recv_multipart()
        if frames[0] == b"":  # sent with an empty delimiter first (as REQ does): answered with one first
            assert reply[0] == b""
            reply = reply[1:]
        return decode(reply)
    finally:
        socket.close()


def scenarios(rig: Rig, monkeypatch: Any, tmp_path: Path) -> dict[str, tuple[int, int]]:
    """Drive the server through every scenario; returns each one's stretch of the recording."""
    rec, marks = rig.recorder, {}
    a, b = Client(rig.endpoint, name="console-a"), Client(rig.endpoint, name="console-b")
    try:
        wait_state(a, "IDLE")
        sub = a.subscribe(data=True)  # (the sync command: streams sync and data_sync)

        begin = rec.mark()
        a.take_control(force=False)
        a.command("load", {"path": str(GRE), "patient_weight_kg": 75.0, "mode": "normal"})
        assert run_to_end(a, sub)["outcome"] == "completed"
        marks["scan"] = (begin, rec.mark())

        begin = rec.mark()
        a.command("load", {"text": GRE.read_text(), "format": "toml", "name": "gre.toml", "mode": "first-level",
                           "prescan": False})  # (the scan before it prescanned, as a load does by default)
        assert run_to_end(a, sub, "pause", "resume")["outcome"] == "completed"
        marks["pause/resume"] = (begin, rec.mark())

        begin = rec.mark()
        a.load(GRE)
        assert run_to_end(a, sub, "stop")["outcome"] == "stopped"
        a.load(GRE)
        assert run_to_end(a, sub, "abort")["outcome"] == "aborted"
        marks["stop, abort"] = (begin, rec.mark())

        begin = rec.mark()  # a fault: the table's driver goes silent, FAULT latches; back, reset
        table = rig.services["table"]
        endpoint = table.endpoint
        table.stop()
        wait_state(a, "FAULT")
        refused("rejected", a.start)
        rig.serve_driver("table", URLS["table"], endpoint)
        for _ in range(50):
            try:
                a.reset()
                break
            except CommandError:
                time.sleep(0.1)
        wait_state(a, "IDLE")
        a.command("move_table", {"position_mm": 10.0, "speed_mm_s": 50.0})
        a.move_table(0.0)
        marks["fault"] = (begin, rec.mark())

        begin = rec.mark()  # an emergency stop pressed by a console without control
        b.emergency_stop("test: the button")
        refused("rejected", a.load, GRE)
        a.release_emergency_stop()
        a.reset()
        marks["emergency stop"] = (begin, rec.mark())

        begin = rec.mark()  # a control takeover: refused, then forced; the old controller is refused
        refused("not_controller", b.take_control)
        b.take_control(force=True)
        refused("not_controller", a.start)
        b.release_control()
        a.take_control()
        marks["control takeover"] = (begin, rec.mark())

        begin = rec.mark()  # an exam: every exam command and argument, the exam stream
        order = {"patient_id": "P1", "patient_name": "Doe^Jane", "weight_kg": 70.0, "requested_procedure": "MR head"}
        assert a.command("exam.status")["exam"] is None
        a.command("exam.open", {"order": order, "card": str(EXAM_CARD), "mpps": None, "order_source": "wire test"})
        a.command("exam.append", {"path": str(EXAM_CARD.parent / "gre32.toml"), "name": "extra"})
        a.command("exam.skip", {"step": 2})
        a.command("exam.repeat", {"step": 1})
        assert a.command("exam.next")["steps"][0]["status"] == "done"
        assert [s["status"] for s in a.command("exam.run")["steps"]] == ["done", "done"]
        a.command("exam.status")
        assert a.command("exam.close", {"discontinue": True, "reason": "wire test"})["exam"]["state"] == "discontinued"
        marks["exam"] = (begin, rec.mark())

        begin = rec.mark()  # stored runs, and every other refusal a console can meet
        run = a.runs()[0]["run"]
        a.command("fetch", {"run": run, "file": "report.json", "offset": 0, "length": 100})
        for body, code in (({"command": "load", "path": str(GRE), "weight": 70}, "bad_argument"),
                           ({"command": "launch"}, "unknown_command")):  # (not in the schema: sent unrecorded)
            reply = raw_command(rig, encode(Message("command", body, id=uuid.uuid4().hex, src="console-a")))
            assert (reply.type, reply.body["code"]) == ("error", code), reply.body
        refused("bad_argument", a.command, "load", {"path": str(tmp_path / "missing.toml")})
        refused("rejected", a.start)
        broken = rig.server.store.root / "run-20260101-000000-abcdef" / "raw.h5"
        broken.mkdir(parents=True)  # a stored file the server cannot read: failed
        refused("failed", a.command, "fetch", {"run": broken.parent.name})

        def boom(*args: Any) -> dict[str, Any]:
            raise RuntimeError("a server bug")

        monkeypatch.setitem(commands.COMMANDS, "runs", replace(commands.COMMANDS["runs"], handler=boom))
        refused("internal", a.runs)
        for frames in ([b"not json"], [json.dumps({"v": "2.0", "type": "command", "id": "no-src", "ts": 1.0,
                                                    "body": {"command": "status"}}).encode()]):
            reply = raw_command(rig, frames)
            assert reply.type == "error" and reply.body["code"] == "malformed"
        reply = raw_command(rig, [b"", *encode(Message("command", {"command": "status"}, id="req-1",
                                                                        src="a-req-peer"))])
        assert reply.type == "reply"
        a.release_control()
        marks["refusals"] = (begin, rec.mark())
        sub.close()
        time.sleep(0.3)  # the last events out of the publisher
    finally:
        a.close()
        b.close()
    return marks


def coverage(sent: list[tuple[str, list[bytes]]]) -> dict[str, tuple[set[str], set[str]]]:
    """What the schema lists against what the traffic exercised: commands, arguments, streams, error codes."""
    doc = schema.load()
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for channel, frames in sent:
        envelope = json.loads(frames[0])
        body = envelope.get("body", {})
        if channel == "commands" and envelope["type"] == "command":
            seen["commands"].add(body.get("command"))
            seen["arguments"] |= {f"{body.get('command')}.{key}" for key in body if key != "command"}
        if channel == "commands" and envelope["type"] == "error":
            seen["error codes"].add(body.get("code"))
        if "stream" in envelope:
            seen["streams"].add(envelope["stream"])
        for group in body.get("groups", []) if envelope["type"] == "batch" else []:
            seen["streams"].add(group["stream"])
    listed = {"commands": set(doc["x-commands"]),
              "arguments": {f"{name}.{arg}" for name, args in schema.command_arguments().items() for arg in args},
              "streams": set(doc["x-streams"]), "error codes": set(doc["x-error-codes"])}
    return {what: (listed[what], seen[what] & listed[what]) for what in listed}


@pytest.mark.slow
def test_every_message_sent_in_every_scenario_fits_the_schema(rig, recorder, monkeypatch, tmp_path):
    marks = scenarios(rig, monkeypatch, tmp_path)
    failures, counts = [], collections.Counter()
    for i, (channel, frames) in enumerate(recorder.sent):
        counts[channel] += recorder.validator.batched_messages(frames)
        failures += [f"#{i} {channel} {frames[0][:120]!r}: {p}" for p in recorder.validator.check(frames, channel)]
    per_scenario = {name: sum(recorder.validator.batched_messages(f) for _, f in recorder.sent[lo:hi])
                    for name, (lo, hi) in marks.items()}
    print(f"\nwire schema: {sum(counts.values())} messages validated ({len(recorder.sent)} ZeroMQ messages; "
          f"{dict(counts)}), {len(failures)} failures")
    print("  per scenario: " + ", ".join(f"{name} {n}" for name, n in per_scenario.items()))
    cover = coverage(recorder.sent)
    for what, (listed, seen) in cover.items():
        print(f"  {what}: {len(seen)}/{len(listed)} exercised ({100 * len(seen) / len(listed):.0f} %)"
              + (f", missing {sorted(listed - seen)}" if listed - seen else ""))
    assert failures == [], "\n".join(failures[:20])
    assert all(listed == seen for listed, seen in cover.values())


# -- the page and the schema cannot disagree ----------------------------------------------------------------------
def test_the_wire_protocol_page_is_generated_from_the_schema():
    from scanctl.transport.schema import docs

    page = docs.PAGE.read_text(encoding="utf-8")
    assert docs.render(page) == page, "docs/wire-protocol.md is out of date: python -m scanctl.transport.schema.docs"
    for table in docs.TABLES:  # every generated table is on the page
        assert f"<!-- schema:{table} -->" in page


def test_the_server_serves_exactly_the_commands_the_schema_lists():
    assert set(commands.COMMANDS) == set(schema.load()["x-commands"])
    assert {name for name, c in commands.COMMANDS.items() if not c.open} == \
        {name for name, entry in schema.load()["x-commands"].items() if entry["control"]}


# -- versioning: the same version is the same schema; a minor only adds; a major is refused ------------------------
RELEASED = Path(schema.__file__).parent / "released"
IGNORED = {"description", "summary", "title"}


def additive(old: Any, new: Any, where: str = "") -> list[str]:
    """What in ``new`` is not an addition to ``old`` (empty: every message valid under ``old`` is still
    described the same way, and nothing ``old`` promised is gone): keys, properties, commands, streams, codes
    and enum values may be added; nothing may be removed or retyped, and no key may become required."""
    if isinstance(old, dict) and isinstance(new, dict):
        problems = []
        for key, value in old.items():
            here = f"{where}/{key}"
            if key in IGNORED:
                continue
            if key not in new:
                problems.append(f"{here} removed")
            elif key == "required":
                problems += [f"{here}: {k!r} became required" for k in set(new[key]) - set(value)]
            elif key == "enum":
                problems += [f"{here}: {v!r} removed" for v in value if v not in new[key]]
            elif key == "type":
                olds, news = ({value} if isinstance(value, str) else set(value)), new[key]
                news = {news} if isinstance(news, str) else set(news)
                problems += [f"{here}: type {t!r} removed" for t in olds - news]
            elif key == "additionalProperties" and value is False:
                continue  # (opening an object up only adds)
            else:
                problems += additive(value, new[key], here)
        return problems
    if isinstance(old, list) and isinstance(new, list):  # (lists may grow: a new command's if/then, an option)
        if len(new) < len(old):
            return [f"{where}: {len(old) - len(new)} entries removed"]
        return [p for i, (a, b) in enumerate(zip(old, new, strict=False)) for p in additive(a, b, f"{where}/{i}")]
    return [] if old == new else [f"{where}: {old!r} became {new!r}"]


def version_rule(released: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What breaks the version rule between the released schemas (version text -> document) and ``current``."""
    version = current["info"]["version"]
    if version in released:
        return [] if released[version] == current else [f"schema {version} changed without a new version"]
    major, minor = map(int, version.split("."))
    same_major = [v for v in released if int(v.split(".")[0]) == major]
    if not same_major:
        return []  # a new major: anything goes (receivers of another major refuse it)
    latest = max(same_major, key=lambda v: int(v.split(".")[1]))
    if minor <= int(latest.split(".")[1]):
        return [f"version {version} is not newer than the released {latest}"]
    old, new = ({key: value for key, value in doc.items() if key != "info"} for doc in (released[latest], current))
    return [f"minor {version} is not additive to {latest}: {p}" for p in additive(old, new)]


def test_a_batch_may_carry_every_stream_of_the_events_socket():
    """The server batches whatever it publishes on the events socket (an exam step's events too, when they
    come close together): a batch group's stream is any of them, and only they."""
    doc = schema.load()
    events = {name for name, stream in doc["x-streams"].items() if stream["socket"] == "events"}
    batched = set(doc["components"]["schemas"]["BatchGroup"]["properties"]["stream"]["enum"])
    assert batched == events


def released_schemas() -> dict[str, Any]:
    return {path.stem: json.loads(path.read_text()) for path in RELEASED.glob("*.json")}


def test_the_schema_follows_the_version_rule_and_carries_the_wire_version():
    from scanctl.transport.wire import VERSION_TEXT

    assert schema.version() == VERSION_TEXT
    assert version_rule(released_schemas(), schema.load()) == []


def changed(edit: Any, version: str) -> dict[str, Any]:
    doc = json.loads(json.dumps(schema.load()))
    edit(doc["components"]["schemas"])
    doc["info"]["version"] = version
    return doc


# The current version, and the next minor and major: the rule holds whatever the current version is.
CURRENT = schema.version()
NEXT_MINOR = f"{CURRENT.split('.')[0]}.{int(CURRENT.split('.')[1]) + 1}"
NEXT_MAJOR = f"{int(CURRENT.split('.')[0]) + 1}.0"


@pytest.mark.parametrize(("edit", "version", "broken"), [
    (lambda s: None, CURRENT, None),
    (lambda s: s["Reply.status"]["properties"].update(uptime_s={"type": "number"}), NEXT_MINOR, None),  # minor: adds
    (lambda s: s["Reply.status"]["properties"].update(uptime_s={"type": "number"}), CURRENT, "without a new version"),
    (lambda s: s["Reply.status"]["properties"].pop("snapshot"), NEXT_MINOR, "snapshot removed"),
    (lambda s: s["Command.move_table"]["required"].append("speed_mm_s"), NEXT_MINOR, "became required"),
    (lambda s: s["ErrorBody"]["properties"]["code"]["enum"].remove("internal"), NEXT_MINOR, "'internal' removed"),
    (lambda s: s["Event.progress"]["properties"].update(t_s={"type": "string"}), NEXT_MINOR, "t_s"),
    (lambda s: s["Reply.status"]["properties"].pop("snapshot"), NEXT_MAJOR, None),  # major: anything, refused by 1.x
])
def test_a_message_change_must_follow_the_version_rule(edit, version, broken):
    problems = version_rule({CURRENT: schema.load()}, changed(edit, version))
    if broken is None:
        assert problems == []
    else:
        assert problems and broken in " ".join(problems), problems


# -- the eleven places of issue 20 -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain() -> Iterator[ControlServer]:
    server = ControlServer(PROFILE, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0",
                           {"rf": "sim://?physics=0"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(30)


class Dealer:
    def __init__(self, endpoint: str, kind: int = zmq.DEALER) -> None:
        self.socket = zmq.Context.instance().socket(kind)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def ask(self, frames: list[bytes]) -> list[bytes]:
        self.socket.send_multipart(frames)
        assert self.socket.poll(5000), "no answer"
        return self.socket.recv_multipart()

    def close(self) -> None:
        self.socket.close()


def command_frames(body: dict[str, Any], **envelope: Any) -> list[bytes]:
    fields = {"v": "2.0", "type": "command", "id": uuid.uuid4().hex, "src": f"t-{uuid.uuid4().hex[:6]}",
              "ts": time.time(), "body": body, **envelope}
    return [json.dumps({k: v for k, v in fields.items() if v is not None}).encode()]


@pytest.mark.parametrize("missing", ["id", "src", "ts"])
def test_a_command_without_a_required_envelope_key_is_malformed(plain, missing):
    dealer = Dealer(plain.endpoints["control"])
    try:
        frames = command_frames({"command": "status"}, **{"id": "r-1", missing: None})
        reply = json.loads(dealer.ask(frames)[0])
        assert reply["type"] == "error" and reply["body"]["code"] == "malformed"
        assert repr(missing) in reply["body"]["message"]
        assert reply["body"]["command"] == "status"  # the command error's shape, malformed included
        assert reply.get("re") == (None if missing == "id" else "r-1")
    finally:
        dealer.close()


def test_an_argument_a_command_does_not_take_is_refused_and_null_is_absent(plain):
    with Client(plain.endpoints["control"], name="args") as client:
        error = refused("bad_argument", client.command, "take_control", {"forse": True})
        assert "'forse'" in str(error) and "force" in str(error) and error.body["command"] == "take_control"
        refused("bad_argument", client.command, "status", {"verbose": True})
        assert client.command("take_control", {"force": None})["controller"] == "args"
        for nan in (float("nan"), float("inf")):  # a non-finite position is refused, never acted on
            refused("bad_argument", client.command, "move_table", {"position_mm": nan})
        client.release_control()


def test_a_malformed_message_error_has_the_command_error_shape(plain):
    dealer = Dealer(plain.endpoints["control"])
    try:
        for frames, command in (([b"not json"], None), (command_frames({"command": "load"}, v="3.0"), "load")):
            reply = json.loads(dealer.ask(frames)[0])
            assert reply["body"]["code"] == "malformed" and reply["body"]["command"] == command
            assert set(reply["body"]) == {"command", "code", "message"}
    finally:
        dealer.close()


def test_a_subscriber_filtering_on_the_data_prefix_finishes_the_sync_handshake(plain):
    """Issue 20, 1: data_sync travels on the data socket with type data, as every message there."""
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, f'{{"v":"{schema.version()}","type":"data"'.encode())
    socket.connect(plain.endpoints["data"])
    try:
        with Client(plain.endpoints["control"]) as client:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                client.command("sync", {"token": "t"})
                if socket.poll(100):
                    envelope = json.loads(socket.recv_multipart()[0])
                    assert (envelope["type"], envelope["stream"], envelope["body"]) == ("data", "data_sync",
                                                                                        {"token": "t"})
                    return
        raise AssertionError("data_sync never reached a subscriber filtering on the data prefix")
    finally:
        socket.close()


@pytest.mark.parametrize("kind", [zmq.REQ, zmq.DEALER])
def test_a_req_peer_and_a_dealer_with_a_delimiter_are_answered_in_their_framing(plain, kind):
    """Issue 20, 9: a DEALER sends the envelope first; an empty delimiter first (REQ's) is echoed."""
    peer = Dealer(plain.endpoints["control"], kind)
    try:
        frames = command_frames({"command": "status"})
        reply = peer.ask(frames if kind == zmq.REQ else [b"", *frames])
        if kind == zmq.DEALER:
            assert reply[0] == b""
            reply = reply[1:]
        assert json.loads(reply[0])["type"] == "reply"
    finally:
        peer.close()


def test_a_retry_is_answered_with_the_same_frames(plain):
    """Issue 20, 10: a retried id gets the remembered answer byte for byte (ts included), not run again."""
    dealer = Dealer(plain.endpoints["control"])
    try:
        frames = command_frames({"command": "take_control"}, id="same")
        first = dealer.ask(frames)
        time.sleep(0.01)
        assert dealer.ask(frames) == first
        dealer.ask(command_frames({"command": "release_control"}, src=json.loads(frames[0])["src"]))
    finally:
        dealer.close()
