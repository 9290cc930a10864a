"""Hostile traffic against the running services (issue 13, defect 1: "one message kills the control server or
any driver service"): a control server and its driver services (``scanctl up``, each in its own process),
a subscriber and ``scanctl watch`` take thousands of fuzzed messages — the messages that killed them, random
bytes, hostile JSON, valid messages mutated, array references of every shape, made-up ``src`` names —
and every process is still alive and answering afterwards, with the server's memory bounded.

The receive loops catch every exception of decoding, not only WireProtocolError: the tests that break the
decoder on purpose (``broken_decode``) show each loop survives a decoder bug too.

The fuzzer is seeded (the same messages every run); ``benchmarks/bench_fuzz.py`` runs a bigger campaign.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from scanctl.cli import main
from scanctl.cli_remote import event_line
from scanctl.config import profile as profiles
from scanctl.errors import WireProtocolError
from scanctl.hw.interfaces import Acquisition
from scanctl.services.client import Client, Subscription
from scanctl.services.launcher import _alive, down, up
from scanctl.transport.acquisitions import pack_acquisitions
from scanctl.transport.wire import Message, decode, encode

LOOPBACK = "tcp://127.0.0.1:0"


# -- the fuzzer ----------------------------------------------------------------------------------------------
class Raw(str):
    """JSON text put into an envelope as it is (numbers no JSON writer makes, broken structures)."""


def render(value: Any) -> str:
    """``value`` as JSON text, :class:`Raw` parts as they are."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


def nd(shape: Any, dtype: Any = "<f8", index: Any = 0) -> dict[str, Any]:
    return {"__nd__": index, "dtype": dtype, "shape": shape}


def killers() -> list[list[bytes]]:
    """The messages of issue 13 that ended a receiver (before the fix)."""
    now = time.time()
    return [
        [render({"v": "2.0", "type": "command", "id": "killer-ts", "ts": Raw("9" * 401),
                 "body": {"command": "status"}}).encode()],
        [render({"v": "2.0", "type": "command", "id": "killer-shape-true", "body": {"a": nd([True])}}).encode(),
         b"x" * 8],
        [render({"v": "2.0", "type": "command", "id": "killer-shape-huge",
                 "body": {"a": nd([18446744073709551616, 0])}}).encode(), b""],
        [render({"v": "2.0", "type": "batch", "src": "fuzz", "ts": now,
                 "body": {"groups": [{"type": "event", "stream": "state", "seq": 1, "ts": Raw("9" * 401),
                                      "dt_us": [0], "bodies": [{}]}]}}).encode()],
    ]


#: Values no well-behaved sender writes, as JSON text.
HOSTILE = [
    "9" * 401, "-" + "9" * 401, "9" * 4300, "9" * 5000, "1e999", "-1e999", "1e-999", "-0", "-1", "0", "1.5",
    str(2 ** 63), str(2 ** 64), str(-2 ** 63 - 1), "true", "false", "null", '""', json.dumps("x" * 10_000),
    '"\\ud800"', '"2.0"', '"3.0"', '"2.99999999999"', "[]", "{}", "[true]", "[[[[]]]]", "[" * 40 + "]" * 40,
    '{"__nd__":0}', '{"__float__":"nan"}', '{"__float__":"x"}', '{"__float__":[1]}', '{"__type__":"Status"}',
    '{"__type__":"GradientProgram","t0_s":1e999}', "[" + ",".join(["1"] * 2000) + "]",
]
KEYS = ["v", "type", "id", "re", "src", "ts", "stream", "seq", "run", "body", "groups", "command", "method", "args",
        "kwargs", "dt_us", "bodies", "__nd__", "__float__", "dtype", "shape", "token", "force", "position_mm"]
DTYPES = ["<f8", "|u1", "|b1", "<c16", ">i4", "<f16", "f3", "(2)f8", "f8,i4", "O", "<U4", "S0", "M8", "V8", "", 3]
#: Server commands a fuzzed client may send: none that takes long or moves anything unless its arguments hold.
COMMANDS = ["status", "sync", "take_control", "release_control", "move_table", "pause", "stop", "abort", "nope"]
#: Driver methods a fuzzed call may name: answered at once whatever the arguments.
METHODS = ["status", "attributes", "position_mm", "abort", "nope", "__init__", "_lock"]


class Fuzzer:
    """Fuzzed multipart messages from a seeded generator; ``srcs`` made-up client names (the server keeps
    per-client state: a fuzzer with many names measures that)."""

    def __init__(self, seed: int, srcs: int = 1024) -> None:
        self.rng = random.Random(seed)
        self.srcs = srcs
        self.count = 0
        data = {"acquisitions": pack_acquisitions([Acquisition(i, i, i * 1e-3, 1e-5, np.ones((2, 4), np.complex64),
                                                               {"LIN": i}) for i in range(3)])}
        frames = encode(Message(type="data", stream="data", seq=1, run="r", src="fuzz", body=data))
        self.data_envelope = json.loads(bytes(frames[0]))
        self.data_frames = [bytes(f) for f in frames[1:]]

    # one message -------------------------------------------------------------------------------------------
    def request(self, kind: str = "command") -> list[bytes]:
        """A fuzzed message for a ROUTER: of the server (``command``) or of a driver service (``call``)."""
        self.count += 1
        if self.count % 500 == 1:
            return self.rng.choice(killers())
        choice = self.rng.random()
        if choice < 0.25:
            return self._valid_request(kind)  # answered normally: under a made-up src
        if choice < 0.55:
            return self._mutated_structure(self._template(kind))
        if choice < 0.70:
            return self._mutated_bytes(self._template(kind))
        if choice < 0.85:
            return self._arrays(kind)
        if choice < 0.95:
            return [self._hostile_object().encode("utf-8", "surrogatepass")]
        return [self._random_bytes() for _ in range(self.rng.randint(1, 3))]

    def event(self) -> list[bytes]:
        """A fuzzed message for a subscriber."""
        self.count += 1
        if self.count % 200 == 1:
            return killers()[-1]  # the batch that killed scanctl watch
        choice = self.rng.random()
        if choice < 0.4:
            return self._mutated_structure(self._template("event"))
        if choice < 0.55:
            return self._mutated_bytes(self._template("event"))
        if choice < 0.7:
            return self._mutated_structure(self._template("batch"))
        if choice < 0.85:
            return self._arrays("event")
        if choice < 0.95:
            return [self._hostile_object().encode("utf-8", "surrogatepass")]
        return [self._random_bytes()]

    # templates ---------------------------------------------------------------------------------------------
    def _src(self) -> str:
        return f"fuzz-client-{self.rng.randrange(self.srcs)}"

    def _id(self) -> str:
        return f"fuzz-{self.count}-{self.rng.randrange(1 << 30)}"

    def _valid_request(self, kind: str) -> list[bytes]:
        if kind == "call":
            body = {"method": self.rng.choice(["status", "attributes"]), "args": [], "kwargs": {}}
            msg = Message(type=self.rng.choice(["call", "heartbeat"]), id=self._id(), body=body)
        else:
            msg = Message(type="command", id=self._id(), src=self._src(), body={"command": "status"})
        return [bytes(f) for f in encode(msg)]

    def _template(self, kind: str) -> list[Any]:
        """A valid message as [envelope object, binary frames...], ready to be spoiled."""
        rng, now = self.rng, time.time()
        if kind == "call":
            envelope: dict[str, Any] = {"v": "2.0", "type": "call", "id": self._id(), "ts": now,
                                        "body": {"method": rng.choice(METHODS), "args": [], "kwargs": {}}}
        elif kind == "command":
            envelope = {"v": "2.0", "type": "command", "id": self._id(), "src": self._src(), "ts": now,
                        "body": {"command": rng.choice(COMMANDS)}}
        elif kind == "batch":
            n = rng.randint(1, 4)
            envelope = {"v": "2.0", "type": "batch", "src": "fuzz", "ts": now,
                        "body": {"groups": [{"type": "event", "stream": "progress", "seq": rng.randint(1, 99),
                                             "run": "r", "ts": now, "dt_us": list(range(n)),
                                             "bodies": [{"t_s": 1.0, "total_s": 2.0, "acquisitions": 3}] * n}]}}
        elif rng.random() < 0.3:
            return [json.loads(json.dumps(self.data_envelope)), *self.data_frames]
        else:
            stream = rng.choice(["progress", "state", "telemetry", "run", "safety", "data"])
            body = {"progress": {"t_s": 1.0, "total_s": 2.0, "acquisitions": 3},
                    "state": {"source": "IDLE", "dest": "READY", "trigger": "load", "reason": ""},
                    "telemetry": {"subsystems": {"rf": {"state": "on"}}},
                    "run": {"event": "end", "outcome": "completed", "acquisitions": 3},
                    "safety": {"kind": "fault", "message": "x"}, "data": {"end": True, "acquisitions": 3}}[stream]
            envelope = {"v": "2.0", "type": "event", "src": "fuzz", "stream": stream, "seq": rng.randint(1, 99),
                        "run": "r", "ts": now, "body": body}
        return [envelope]

    # spoilers ----------------------------------------------------------------------------------------------
    def _hostile(self) -> Raw:
        rng = self.rng
        if rng.random() < 0.7:
            return Raw(rng.choice(HOSTILE))
        return Raw(render(self._hostile_structure(depth=2)))

    def _hostile_structure(self, depth: int) -> Any:
        rng = self.rng
        if depth == 0 or rng.random() < 0.3:
            return Raw(rng.choice(HOSTILE))
        if rng.random() < 0.5:
            return [self._hostile_structure(depth - 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(KEYS): self._hostile_structure(depth - 1) for _ in range(rng.randint(0, 3))}

    def _hostile_object(self) -> str:
        rng = self.rng
        envelope: dict[str, Any] = {"v": rng.choice(["2.0", "2.1", Raw(rng.choice(HOSTILE))])}
        for key in rng.sample(KEYS, rng.randint(0, 6)):
            envelope[key] = self._hostile()
        return render(envelope)

    def _mutated_structure(self, message: list[Any]) -> list[bytes]:
        """One to three values of the message (envelope keys, body values, group fields, array references)
        replaced by hostile ones, or keys added."""
        rng = self.rng
        envelope = message[0]
        for _ in range(rng.randint(1, 3)):
            holders = list(_objects(envelope))
            holder = rng.choice(holders)
            key = rng.choice([*holder, rng.choice(KEYS)]) if holder else rng.choice(KEYS)
            holder[key] = self._hostile()
        return [render(envelope).encode("utf-8", "surrogatepass"), *message[1:]]

    def _mutated_bytes(self, message: list[Any]) -> list[bytes]:
        rng = self.rng
        frames = [bytearray(render(message[0]).encode()), *(bytearray(f) for f in message[1:])]
        for _ in range(rng.randint(1, 4)):
            frame = rng.choice(frames)
            at = rng.randint(0, len(frame))
            action = rng.random()
            if action < 0.4 and frame:
                frame[min(at, len(frame) - 1)] = rng.randrange(256)
            elif action < 0.7:
                frame[at:at] = rng.choice([b"9" * 400, b"[", b"}", b'"', b"\\", b"\xff", b"true", b"1e999"])
            else:
                del frame[at:at + rng.randint(1, 20)]
        if len(frames) > 1 and rng.random() < 0.2:
            frames.pop(rng.randrange(1, len(frames)))
        return [bytes(f) for f in frames]

    def _arrays(self, kind: str) -> list[bytes]:
        """A body of array references of random shapes, dtypes and indices, over random frames (sometimes
        of exactly the right length)."""
        rng = self.rng
        envelope = self._template(kind)[0]
        frames: list[bytes] = []
        for i in range(rng.randint(1, 4)):
            shape: Any = [rng.choice([0, 1, 2, 3, 2 ** 31, 2 ** 64, -1, True, 1.5, "2", None])
                          for _ in range(rng.randint(0, 10))]
            if rng.random() < 0.1:
                shape = self._hostile()
            dtype = rng.choice(DTYPES)
            index: Any = rng.choice([i, i, i, 0, -1, 99, True, "0", None])
            itemsize = re.search(r"[0-9]+$", dtype) if isinstance(dtype, str) else None
            size = 8
            if itemsize is not None and isinstance(shape, list) and all(type(n) is int and 0 <= n < 99
                                                                        for n in shape):
                size = int(np.prod(shape, dtype=np.int64)) * int(itemsize[0])  # the right length, if it is valid
            if size > 1 << 16 or rng.random() < 0.4:
                size = rng.randint(0, 64)
            frames.append(os.urandom(size))
            envelope.setdefault("body", {})[f"a{i}"] = nd(shape, dtype, index)
        return [render(envelope).encode(), *frames]

    def _random_bytes(self) -> bytes:
        return os.urandom(self.rng.choice([0, 1, 7, 64, 300, 5000]))


def _objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``value`` (itself included)."""
    if isinstance(value, dict) and not isinstance(value, Raw):
        yield value
        for v in value.values():
            yield from _objects(v)
    elif isinstance(value, list):
        for v in value:
            yield from _objects(v)


# -- talking to a ROUTER -----------------------------------------------------------------------------------------
class Dealer:
    """A DEALER that fires fuzzed messages at a ROUTER and drains what comes back."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)  # no answer dropped here, however many wait to be drained
        self.socket.connect(endpoint)
        self.answers = 0
        self.malformed = 0

    def fire(self, messages: Iterator[list[bytes]], count: int) -> int:
        """Send ``count`` messages, draining answers as it goes; returns how many were sent."""
        for i in range(count):
            self.socket.send_multipart(next(messages))
            if i % 50 == 49:
                self.drain(0)
        return count

    def drain(self, wait_s: float) -> None:
        """Take every answer that arrives within ``wait_s`` of the last one."""
        while self.socket.poll(int(wait_s * 1000)):
            msg = self.recv()
            self.answers += 1
            self.malformed += msg.type == "error" and msg.body.get("code") == "malformed"

    def ask(self, msg: Message, timeout_s: float = 5.0) -> Message:
        """``msg``'s answer (``re`` = its id)."""
        self.socket.send_multipart(encode(msg))
        return self.answer(msg.id, timeout_s)

    def answer(self, request_id: str | None, timeout_s: float = 5.0) -> Message:
        """The answer to ``request_id`` (``re``); fails after ``timeout_s`` without one."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(int(left * 1000) + 1):
                break
            answer = self.recv()
            if answer.re == request_id:
                return answer
        raise TimeoutError(f"no answer to {request_id} within {timeout_s} s")

    def recv(self) -> Message:
        """The next answer (a message sent with an empty first frame is taken for a REQ peer's, and its
        answer comes with one)."""
        frames = self.socket.recv_multipart()
        return decode(frames[1:] if len(frames) > 1 and not frames[0] else frames)

    def close(self) -> None:
        self.socket.close()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (MB), from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def stream(make: Callable[[], list[bytes]]) -> Iterator[list[bytes]]:
    while True:
        yield make()


# -- the campaign --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, Any]]:
    """``scanctl up`` on random loopback ports: the control server and the three simulated subsystems."""
    with tempfile.TemporaryDirectory() as run_dir:
        record = up(run_dir, control=LOOPBACK, events=LOOPBACK, data=LOOPBACK)
        try:
            yield record
        finally:
            down(run_dir)


def campaign(record: dict[str, Any], *, requests: int, calls: int, events: int, seed: int = 13,
             srcs: int = 1024) -> dict[str, Any]:
    """Fuzz the server's ROUTER with ``requests`` messages, each driver service's of ``record`` (a ``scanctl
    up`` record) with ``calls`` and a subscriber with ``events``; returns the figures."""
    fuzzer = Fuzzer(seed, srcs)
    pids = {"server": record["server_pid"], **{kind: d["pid"] for kind, d in record["drivers"].items()}}
    with Client(record["control"], timeout_s=5.0) as client:
        client.status()
        rss_before = rss_mb(pids["server"])
        started = time.monotonic()
        server = Dealer(record["control"])
        sent = server.fire(stream(fuzzer.request), requests)
        drivers = {kind: Dealer(d["endpoint"]) for kind, d in record["drivers"].items()}
        for dealer in drivers.values():
            sent += dealer.fire(stream(lambda: fuzzer.request("call")), calls)
        published, malformed_seen = subscriber_campaign(client, fuzzer, events)
        sent += published
        for dealer in (server, *drivers.values()):
            dealer.drain(0.5)
        elapsed = time.monotonic() - started
        killed = [name for name, pid in pids.items() if not _alive(pid)]
        answering = {"server": answer_check(lambda: "state" in client.status())}
        for kind, dealer in drivers.items():
            answering[kind] = answer_check(lambda dealer=dealer: driver_answers(dealer))
        rss_after = rss_mb(pids["server"]) if "server" not in killed else float("nan")
        answers = server.answers + sum(d.answers for d in drivers.values())
        malformed = server.malformed + sum(d.malformed for d in drivers.values())
        for dealer in (server, *drivers.values()):
            dealer.close()
    return {"sent": sent, "killed": killed, "answering": answering, "answers": answers, "malformed_answers": malformed,
            "malformed_skipped": malformed_seen, "rss_before_mb": rss_before, "rss_after_mb": rss_after,
            "seconds": elapsed}


def answer_check(check: Callable[[], bool]) -> str:
    """``"ok"`` if ``check`` (a normal request to a service, its answer checked) holds, else what went wrong:
    alive is not enough, each service must still answer, and correctly."""
    try:
        return "ok" if check() else "wrong answer"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the campaign's figures come first
        return f"{type(exc).__name__}: {exc}"


def driver_answers(dealer: Dealer) -> bool:
    beat = dealer.ask(Message(type="heartbeat", id=f"after-{time.monotonic()}"))
    status = dealer.ask(Message(type="call", id=f"status-{time.monotonic()}",
                                body={"method": "status", "args": [], "kwargs": {}}))
    return beat.type == "heartbeat" and status.type == "reply" and status.body["result"]["__type__"] == "Status"


def subscriber_campaign(client: Client, fuzzer: Fuzzer, count: int) -> tuple[int, int]:
    """Publish ``count`` fuzzed events to a Subscription that also follows the server's events; it skips
    what it cannot decode, hands out the rest (each printed as ``scanctl watch`` prints it), and still
    follows the server afterwards. Returns (published, skipped as malformed)."""
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind("tcp://127.0.0.1:*")
    events = client.status()["endpoints"]["events"]
    try:
        with Subscription([events, pub.getsockopt_string(zmq.LAST_ENDPOINT)]) as sub:
            sub.sync(client, sockets=1)  # the server's events
            marker(pub, sub, "ready")  # the fuzzer's
            for _ in range(count):
                pub.send_multipart(fuzzer.event())
            marker(pub, sub, "end")
            assert sub.malformed > 0  # (the killers alone are malformed)
            sub.sync(client, sockets=1)  # and it still follows the server
            return count, sub.malformed
    finally:
        pub.close()


def marker(pub: zmq.Socket[Any], sub: Subscription, token: str, timeout_s: float = 10.0) -> None:
    """Publish a valid event carrying ``token`` until ``sub`` hands it out; every message before it is
    printed as ``scanctl watch`` prints it (plain and --json), which must not raise either."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.send_multipart(encode(Message(type="event", src="marker", stream="marker", body={"token": token})))
        while (msg := sub.recv(0.05)) is not None:
            event_line(msg, False)
            event_line(msg, True)
            if msg.stream == "marker" and msg.body.get("token") == token:
                return
    pytest.fail(f"marker {token!r} not received within {timeout_s} s")


@pytest.mark.slow
def test_no_message_kills_a_service_and_the_server_memory_stays_bounded(services, capsys):
    figures = campaign(services, requests=5000, calls=1500, events=3000)
    with capsys.disabled():
        print("\n" + summary(figures))
    assert figures["killed"] == []
    assert figures["answering"] == {"server": "ok", "gradient": "ok", "rf": "ok", "table": "ok"}
    assert figures["malformed_answers"] > 2000  # the server and the drivers answered the junk, as malformed
    assert figures["rss_after_mb"] - figures["rss_before_mb"] < 50


def summary(figures: dict[str, Any]) -> str:
    """The campaign's figures in a few lines (what the test log and benchmarks/bench_fuzz.py print)."""
    growth = figures["rss_after_mb"] - figures["rss_before_mb"]
    return (f"fuzz campaign: {figures['sent']} messages sent in {figures['seconds']:.1f} s\n"
            f"  processes killed by any message: {len(figures['killed'])} {figures['killed'] or ''}\n"
            f"  still answering: {figures['answering']}\n"
            f"  answers: {figures['answers']} ({figures['malformed_answers']} malformed); events the subscriber "
            f"skipped as malformed: {figures['malformed_skipped']}\n"
            f"  control server RSS: {figures['rss_before_mb']:.1f} MB before, {figures['rss_after_mb']:.1f} MB "
            f"after (growth {growth:+.1f} MB)")


@pytest.mark.parametrize("target", ["server", "gradient", "rf", "table"])
def test_the_messages_of_issue_13_are_answered_malformed_with_their_id(services, target):
    """Each message that killed a receiver, sent alone: answered ``malformed`` with ``re`` its id, and the
    next request is answered as ever."""
    server = target == "server"
    dealer = Dealer(services["control"] if server else services["drivers"][target]["endpoint"])
    try:
        for frames in killers()[:3]:
            request_id = json.loads(frames[0])["id"]
            dealer.socket.send_multipart(frames)
            answer = dealer.answer(request_id)
            assert (answer.type, answer.body["code"]) == ("error", "malformed"), answer
            after = (Message(type="command", id=f"after-{request_id}", src="c", body={"command": "status"}) if server
                     else Message(type="heartbeat", id=f"after-{request_id}"))
            assert dealer.ask(after).type == ("reply" if server else "heartbeat")
    finally:
        dealer.close()
    assert _alive(services["server_pid"] if server else services["drivers"][target]["pid"])


# -- scanctl watch -------------------------------------------------------------------------------------------
class FakeServer:
    """Just enough of a control server for ``scanctl watch`` (``status``, ``sync``), whose event socket then
    publishes what the test gives it."""

    def __init__(self, garbage: list[list[bytes]]) -> None:
        context = zmq.Context.instance()
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:*")
        self.pub = context.socket(zmq.XPUB)  # it hears watch subscribe: nothing it publishes is dropped
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.bind("tcp://127.0.0.1:*")
        self.control = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.events = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.garbage = garbage
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        while not self.stopping.is_set():
            ready = dict(poller.poll(50))
            if self.pub in ready and self.pub.recv()[:1] == b"\x01":  # watch subscribed: garbage, then a good event
                for garbage in self.garbage:
                    self.pub.send_multipart(garbage)
                self.pub.send_multipart(encode(Message(type="event", src="fake", stream="state", seq=7, run="r",
                                                       body={"source": "IDLE", "dest": "READY",
                                                             "trigger": "last", "reason": ""})))
            if self.router not in ready:
                continue
            identity, *frames = self.router.recv_multipart()
            msg = decode(frames)
            command = msg.body["command"]
            body: dict[str, Any] = {"command": command, "status": "done"}
            if command == "status":
                body["snapshot"] = {"server": "fake", "state": "IDLE", "run": "",
                                    "endpoints": {"control": self.control, "events": self.events,
                                                  "data": self.events}}
            elif command == "sync":
                self.pub.send_multipart(encode(Message(type="event", src="fake", stream="sync", seq=1,
                                                       body={"token": msg.body["token"]})))
            self.router.send_multipart([identity, *encode(Message(type="reply", re=msg.id, body=body))])

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.router.close()
        self.pub.close()


@pytest.mark.parametrize("as_json", [False, True])
def test_scanctl_watch_prints_on_through_hostile_events(capsys, as_json):
    """``scanctl watch`` takes the batch whose huge ``ts`` ended it, and events that decode but whose
    bodies are not what their stream has (a progress time of 400 digits ended the printer), and goes on
    to print the next good event."""
    fuzzer = Fuzzer(7)
    hostile_bodies = [[render({"v": "2.0", "type": "event", "src": "fake", "stream": stream, "seq": 1, "run": "r",
                               "body": {key: Raw(value) for key in ("t_s", "total_s", "acquisitions", "subsystems",
                                                                     "event", "source", "dest", "trigger", "end")}})
                       .encode()] for stream in ("progress", "telemetry", "run", "state", "data")
                      for value in ("9" * 400, "1e999", "[1]", '{"a":1}', "null", '"x"')]
    fake = FakeServer([*killers(), *hostile_bodies, *(fuzzer.event() for _ in range(300))])
    try:
        code = main(["watch", "--connect", fake.control, "--timeout", "1", *(["--json"] if as_json else [])])
    finally:
        fake.close()
    out = capsys.readouterr().out
    assert code == 0
    assert "last" in out.splitlines()[-1]


# -- every receive loop survives a decoder bug -------------------------------------------------------------------
def broken_decode(real: Callable[..., Message]) -> Callable[..., Message]:
    """``decode`` with a bug: a first frame holding ``BUG`` raises OverflowError (as a 401-digit ts did)."""

    def decode_with_a_bug(frames: Any) -> Message:
        if b"BUG" in bytes(frames[0] if isinstance(frames[0], bytes) else frames[0].bytes):
            raise OverflowError("int too large to convert to float")
        return real(frames)

    return decode_with_a_bug


BUG = [json.dumps({"v": "2.0", "type": "command", "id": "bug-1", "src": "BUG", "body": {"command": "status"}}).encode()]


def test_the_control_server_answers_a_decoder_bug_malformed_and_serves_on(monkeypatch):
    from scanctl.services import server as server_module
    from scanctl.services.server import ControlServer

    monkeypatch.setattr(server_module, "decode", broken_decode(server_module.decode))
    server = ControlServer(profiles.load(), LOOPBACK, LOOPBACK, LOOPBACK, {"rf": "sim://?physics=0"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    dealer = Dealer(server.endpoints["control"])
    try:
        dealer.socket.send_multipart(BUG)
        answer = dealer.answer("bug-1")
        assert (answer.type, answer.body["code"]) == ("error", "malformed")
        assert "OverflowError" in answer.body["message"]
        after = dealer.ask(Message(type="command", id="after", src="c", body={"command": "status"}))
        assert after.type == "reply" and after.body["status"] == "done" and thread.is_alive()
    finally:
        dealer.close()
        server.stop()
        thread.join(30)


def test_a_driver_service_answers_a_decoder_bug_malformed_and_serves_on(monkeypatch):
    from scanctl.hw.registry import open_subsystem
    from scanctl.services import driver_service as service_module
    from scanctl.services.driver_service import DriverService

    monkeypatch.setattr(service_module, "decode", broken_decode(service_module.decode))
    service = DriverService("table", open_subsystem("table", "sim://", profiles.load()), "tcp://127.0.0.1:0")
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    dealer = Dealer(service.endpoint)
    try:
        dealer.socket.send_multipart(BUG)
        assert dealer.answer("bug-1").body["code"] == "malformed"
        assert dealer.ask(Message(type="heartbeat", id="hb")).type == "heartbeat"
        assert thread.is_alive()
    finally:
        dealer.close()
        service.stop()
        thread.join(10)


def test_a_client_and_a_subscriber_skip_what_the_decoder_chokes_on(monkeypatch):
    """The client ignores an undecodable reply and takes the real one; a subscription skips and counts an
    undecodable event and hands out the next."""
    from scanctl.services import client as client_module

    monkeypatch.setattr(client_module, "decode", broken_decode(client_module.decode))
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")

    def answer_twice() -> None:
        if router.poll(5000):
            identity, *frames = router.recv_multipart()
            msg = decode(frames)
            router.send_multipart([identity, *BUG])  # undecodable (to the broken decode)
            router.send_multipart([identity, *encode(Message(type="reply", re=msg.id, body={"ok": True}))])

    thread = threading.Thread(target=answer_twice, daemon=True)
    thread.start()
    try:
        with Client(router.getsockopt_string(zmq.LAST_ENDPOINT), retries=0) as client:
            assert client.command("status") == {"ok": True}
        with Subscription([pub.getsockopt_string(zmq.LAST_ENDPOINT)]) as sub:
            deadline = time.monotonic() + 10
            got = None
            while got is None and time.monotonic() < deadline:
                pub.send_multipart(BUG)
                pub.send_multipart(encode(Message(type="event", stream="s", body={"after": True})))
                got = sub.recv(0.05)
            assert got is not None and got.body == {"after": True}
            assert sub.malformed >= 1
    finally:
        thread.join(5)
        router.close()
        pub.close()


def test_the_driver_proxy_turns_a_decoder_bug_into_wire_protocol_error(monkeypatch):
    """The proxy's only peer is its driver: an undecodable answer is the driver breaking the protocol, a
    WireProtocolError (a ScanctlError the scanner makes safe on), whatever the decoder raised."""
    from drivers import zmq_proxy
    from drivers.zmq_proxy import ProxyTable

    monkeypatch.setattr(zmq_proxy, "decode", broken_decode(zmq_proxy.decode))
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)

    def answer_with_the_bug() -> None:
        if router.poll(5000):
            identity, *_ = router.recv_multipart()
            router.send_multipart([identity, *BUG])

    thread = threading.Thread(target=answer_with_the_bug, daemon=True)
    thread.start()
    proxy = ProxyTable(endpoint, endpoint, liveness_s=0.5)
    try:
        with pytest.raises(WireProtocolError, match="undecodable message during position_mm: OverflowError"):
            proxy.call("position_mm")
    finally:
        thread.join(5)
        proxy.close()  # (its last call goes unanswered: a timeout it keeps to itself)
        router.close()
