"""A driver service (scanctl.services.driver_service) over real ZeroMQ sockets on loopback: every call is
answered — a call the driver chokes on (any exception), a malformed call, a message of another version —
and the worker that runs calls survives it, so the next call is answered at once (docs/driver-protocol.md)."""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import zmq
from hypothesis import HealthCheck, event, given, settings

from drivers.zmq_proxy import ProxyGradient, ProxyTable
from scanctl.config import profile as profiles
from scanctl.errors import DriverError, WireProtocolError
from scanctl.hw.interfaces import SubsystemState
from scanctl.hw.registry import open_subsystem
from scanctl.services.driver_service import METHODS, DriverService
from scanctl.transport.wire import Message, decode

PROFILE = profiles.load()
ANSWER_S = 1.0  # a call the simulator does at once is answered well within this


class Raw:
    """A DEALER that sends hand-made envelopes to a driver service and waits for the answer to each."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.ids = itertools.count(1)

    def send(self, envelope: dict[str, Any], *frames: bytes) -> None:
        self.socket.send_multipart([json.dumps(envelope).encode(), *frames])

    def answer(self, request_id: str | None, timeout_s: float = 3.0) -> Message:
        """The first message answering ``request_id`` (``re``); fails after ``timeout_s`` without one."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(int(left * 1000) + 1):
                break
            try:
                msg = decode(self.socket.recv_multipart())
            except WireProtocolError:  # the answer to junk sent with an empty first frame (taken for REQ's)
                continue
            if msg.re == request_id:
                return msg
        pytest.fail(f"no answer to {request_id} within {timeout_s} s")

    def call(self, body: dict[str, Any], timeout_s: float = 3.0, **envelope: Any) -> Message:
        request_id = f"raw-{next(self.ids)}"
        self.send({"v": "2.0", "type": "call", "id": request_id, "body": body, **envelope})
        return self.answer(request_id, timeout_s)

    def close(self) -> None:
        self.socket.close()


class Served:
    """A DriverService serving ``subsystem`` on a thread, on a random loopback port."""

    def __init__(self, kind: str, subsystem: Any, **options: Any) -> None:
        self.subsystem = subsystem
        self.service = DriverService(kind, subsystem, "tcp://127.0.0.1:0", **options)
        self.thread = threading.Thread(target=self.service.serve_forever, daemon=True)
        self.thread.start()
        self.raw = Raw(self.service.endpoint)

    def alive(self) -> None:
        """The service still answers calls (its worker lives) and heartbeats."""
        reply = self.raw.call({"method": "status"}, timeout_s=ANSWER_S)
        assert reply.type == "reply" and reply.body["result"]["__type__"] == "Status", reply
        self.raw.send({"v": "2.0", "type": "heartbeat", "id": "hb-alive"})
        assert self.raw.answer("hb-alive", ANSWER_S).type == "heartbeat"

    def close(self) -> None:
        self.raw.close()
        self.service.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture
def gradient() -> Iterator[Served]:
    served = Served("gradient", open_subsystem("gradient", "sim://", PROFILE))
    yield served
    served.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_call_the_driver_chokes_on_is_answered_and_the_next_call_succeeds():
    """The regression: ``load`` with ``[{"x": 1}]`` raises AttributeError inside the simulator. It used to kill
    the worker thread (heartbeats still answered, every later call silent until the proxy's 120 s timeout);
    now the proxy raises a DriverError naming the method and the exception at once, and the next call works.
    Against the real ``scanctl driver serve`` process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scanctl", "driver", "serve", "gradient", "--bind",
                             f"tcp://127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
    proxy = ProxyGradient(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}", liveness_s=0.5)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert f"127.0.0.1:{port}" in line, line
        proxy.connect()
        for _ in range(2):  # and again: the worker that answered the first one is still there
            t0 = time.monotonic()
            with pytest.raises(DriverError) as caught:
                proxy.call("load", {"x": 1})
            assert time.monotonic() - t0 < ANSWER_S
            assert type(caught.value) is DriverError  # not a DriverTimeoutError: an answer, not silence
            assert "load" in str(caught.value) and "AttributeError" in str(caught.value)
        t0 = time.monotonic()
        assert proxy.status().state is SubsystemState.STANDBY
        proxy.arm()
        proxy.start()
        assert proxy.sync(0.0).state is SubsystemState.RUNNING
        proxy.finish()
        assert time.monotonic() - t0 < ANSWER_S
    finally:
        proxy.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_the_error_names_the_method_and_the_exception(gradient):
    error = gradient.raw.call({"method": "load", "args": [{"x": 1}]}, timeout_s=ANSWER_S)
    assert error.type == "error" and error.re is not None
    assert error.body["code"] == "internal" and error.body["error"] == "DriverError"
    assert error.body["method"] == "load"
    assert error.body["message"] == "gradient driver: load: AttributeError: 'dict' object has no attribute 'validate'"
    gradient.alive()


@pytest.mark.parametrize(("body", "reason"), [
    ({"method": "teleport"}, "no method 'teleport' on a gradient driver"),
    ({"method": "_lock"}, "no method '_lock'"),
    ({"method": "__init__", "args": ["sim://"]}, "no method '__init__'"),
    ({}, "no method None"),
    ({"method": ["status"]}, "no method \\['status'\\]"),
    ({"method": "move_to", "args": [10.0]}, "no method 'move_to' on a gradient driver"),  # a table's method
    ({"method": "load"}, "load: wrong arguments \\(missing a required argument: 'program'\\)"),
    ({"method": "status", "args": [1, 2, 3]}, "status: wrong arguments \\(too many positional arguments\\)"),
    ({"method": "sync", "kwargs": {"when": 1.0}}, "sync: wrong arguments"),
    ({"method": "sync", "args": {"t_s": 1.0}}, "sync: 'args' must be a list and 'kwargs' an object, got dict"),
    ({"method": "sync", "args": "2.0"}, "'args' must be a list"),
    ({"method": "sync", "args": None}, "'args' must be a list"),
    ({"method": "sync", "args": [1.0], "kwargs": [10.0]}, "'kwargs' an object, got list"),
    ({"method": "sync", "kwargs": {"__type__": "Status", "state": "on", "time_s": 0, "message": "",
                                   "telemetry": {}}}, "sync: 'kwargs' must be an object of arguments"),
    ({"method": "load", "args": [{"__type__": "Teleporter"}]}, "load: unknown type 'Teleporter'"),
    ({"method": "load", "args": [{"__type__": "GradientProgram", "t0_s": 0}]}, "load: malformed GradientProgram"),
])
def test_every_malformed_call_gets_an_error_naming_what_is_wrong(gradient, body, reason):
    t0 = time.monotonic()
    error = gradient.raw.call(body, timeout_s=ANSWER_S)
    assert time.monotonic() - t0 < ANSWER_S
    assert error.type == "error" and error.body["code"] == "malformed", error
    assert error.body["error"] == "WireProtocolError"
    assert re.search(reason, error.body["message"]), error.body["message"]
    gradient.alive()


def test_a_proxy_raises_a_malformed_call_as_a_wire_protocol_error(gradient):
    proxy = ProxyGradient(gradient.service.endpoint, gradient.service.endpoint, liveness_s=0.5)
    try:
        proxy.connect()
        with pytest.raises(WireProtocolError, match="status: wrong arguments"):
            proxy.call("status", 1, 2)
        with pytest.raises(WireProtocolError, match="no method 'teleport'"):
            proxy.call("teleport")
        assert proxy.status().state is SubsystemState.STANDBY
    finally:
        proxy.close()


def test_a_table_service_answers_bad_calls_too():
    served = Served("table", open_subsystem("table", "sim://", PROFILE))
    proxy = ProxyTable(served.service.endpoint, served.service.endpoint, liveness_s=0.5)
    try:
        proxy.connect()
        with pytest.raises(WireProtocolError, match="move_to: wrong arguments"):
            proxy.call("move_to")
        with pytest.raises(WireProtocolError, match="no method 'load' on a table driver"):
            proxy.call("load", {"x": 1})
        proxy.home()
        proxy.move_to(12.5)
        assert proxy.wait_idle(5.0).state is SubsystemState.STANDBY and proxy.position_mm() == 12.5
        served.alive()
    finally:
        proxy.close()
        served.close()


class Broken:
    """A gradient driver with bugs: every method raises something no scanctl error, or returns what cannot travel."""

    kind = "gradient"
    url = "broken://"

    @property
    def buffer_s(self) -> float:
        raise OSError("the buffer size register does not answer")

    def connect(self, timeout_s: float = 5.0) -> None:
        raise ZeroDivisionError("division by zero")

    def status(self) -> Any:
        return object()  # a result that cannot travel

    def abort(self) -> None:
        raise RuntimeError("abort is broken")  # answered on the service's loop thread, beside calls

    def reset(self) -> None:
        raise KeyError("reset")

    def close(self) -> None:
        pass

    def arm(self) -> Any:
        return {"nested": [object()]}  # cannot travel either, deeper down

    start = sync = finish = load = close


def test_a_driver_that_raises_anything_is_answered_and_the_service_keeps_serving():
    served = Served("gradient", Broken())
    raw = served.raw
    try:
        for method, message in [("connect", "gradient driver: connect: ZeroDivisionError: division by zero"),
                                ("abort", "gradient driver: abort: RuntimeError: abort is broken"),
                                ("reset", "gradient driver: reset: KeyError: 'reset'"),
                                ("attributes", "gradient driver: attributes: OSError: the buffer size register")]:
            for _ in range(2):
                error = raw.call({"method": method}, timeout_s=ANSWER_S)
                assert error.type == "error" and error.body["code"] == "internal", error
                assert error.body["error"] == "DriverError" and error.body["message"].startswith(message)
        for method in ("status", "arm"):  # results that cannot travel: an error instead of silence
            error = raw.call({"method": method}, timeout_s=ANSWER_S)
            assert error.type == "error" and error.body["code"] == "internal", error
            assert error.body["error"] == "DriverError" and "cannot send" in error.body["message"]
        reply = raw.call({"method": "finish"}, timeout_s=ANSWER_S)
        assert reply.type == "reply" and reply.body == {"result": None}
        proxy = ProxyGradient(served.service.endpoint, served.service.endpoint, liveness_s=0.5)
        try:
            with pytest.raises(DriverError, match="connect: ZeroDivisionError") as caught:
                proxy.connect()
            assert type(caught.value) is DriverError
        finally:
            proxy.close()
    finally:
        served.close()


def test_a_request_of_another_version_or_malformed_is_answered_with_its_id(gradient):
    raw = gradient.raw
    for envelope, reason in [({"v": "3.0"}, "unsupported protocol version '3.0'"),
                             ({"v": "0.9"}, "unsupported protocol version"),
                             ({"v": "2.0", "colour": "red"}, "unknown keys: colour"),
                             ({"v": "2.0", "body": {"a": {"__nd__": 0, "dtype": "<f8", "shape": [1]}}},
                              "binary frame 0, which is missing"),
                             ({"v": "2.0", "ts": "noon"}, "'ts' has the wrong type")]:
        raw.send({"type": "call", "id": "odd-1", "body": {"method": "status"}, **envelope})
        error = raw.answer("odd-1", ANSWER_S)
        assert error.type == "error" and error.body["code"] == "malformed" and reason in error.body["message"]
    # A newer minor may add envelope keys: this side ignores them and answers.
    reply = raw.call({"method": "status"}, v="2.7", trace="abc", priority=3)
    assert reply.type == "reply" and reply.body["result"]["state"] == "off"
    raw.send({"v": "2.0", "type": "gossip", "id": "odd-3"})
    error = raw.answer("odd-3", ANSWER_S)
    assert error.body == {"code": "malformed", "message": "unknown message type 'gossip'"}
    gradient.alive()


# -- random call bodies over the wire -----------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=10))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
numbers = st.lists(st.floats(-1.0, 1.0), max_size=3)
typed = st.fixed_dictionaries(  # objects as they travel, whole or broken
    {"__type__": st.sampled_from(["GradientProgram", "RFProgram", "ADCProgram", "Status", "Nope"]) | scalars},
    optional={"t0_s": st.floats(0, 1) | json_values, "t1_s": st.floats(0, 1) | json_values,
              "t_s": st.lists(numbers, min_size=3, max_size=3) | json_values,
              "g_hz_per_m": st.lists(numbers, min_size=3, max_size=3) | json_values,
              "state": st.sampled_from(["on", "off", "weird"]) | json_values, "time_s": json_values,
              "message": json_values, "telemetry": json_values})
whole = (st.builds(lambda t0, t, g: {"__type__": "GradientProgram", "t0_s": t0, "t1_s": t0 + 0.01, "t_s": t,
                                     "g_hz_per_m": g}, st.floats(0, 1), st.lists(numbers, min_size=3, max_size=3),
                   st.lists(numbers, min_size=3, max_size=3))
         | st.just({"__type__": "Status", "state": "on", "time_s": 0.0, "message": "", "telemetry": {}}))
typed = whole | typed
arguments = scalars | typed | json_values
methods = (st.sampled_from(["attributes", *METHODS["gradient"]])
           | st.sampled_from(["acquisitions", "move_to", "__init__", "_lock", "kind", ""]) | json_values)
ARITY = {"connect": 1, "sync": 2, "load": 1}  # the gradient's methods' parameters (others have none)
fitting_calls = st.sampled_from(["attributes", *METHODS["gradient"]]).flatmap(  # the right number of arguments
    lambda method: st.fixed_dictionaries({"method": st.just(method),
                                          "args": st.lists(typed if method == "load" else arguments,
                                                           max_size=ARITY.get(method, 0))}))
call_bodies = fitting_calls | st.fixed_dictionaries({"method": methods}, optional={
    "args": st.lists(arguments, max_size=3) | json_values,
    "kwargs": st.dictionaries(st.sampled_from(["t_s", "timeout_s", "program", "x"]) | st.text(max_size=6),
                              arguments, max_size=2) | json_values,
})


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=call_bodies)
def test_random_call_bodies_are_always_answered_and_the_worker_survives(gradient, body):
    """Whatever the body of a call, its answer comes at once — a reply or an error with a code — and the
    next call is answered too."""
    answer = gradient.raw.call(body, timeout_s=ANSWER_S)
    event(f"{answer.type} {answer.body.get('code', '')}")
    if answer.type == "error":
        assert answer.body["code"] in ("driver", "malformed", "internal"), answer.body
        assert isinstance(answer.body["message"], str) and answer.body["message"]
    else:
        assert answer.type == "reply" and "result" in answer.body
    gradient.alive()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=3), request_id=st.text(min_size=1, max_size=8))
def test_random_frames_are_answered_or_ignored_and_the_service_keeps_serving(gradient, frames, request_id):
    gradient.raw.socket.send_multipart(frames)
    broken = dict(v="2.0", type="call", id=request_id, body={"method": "status"}, extra=frames[0].hex())
    gradient.raw.send(broken)  # malformed (an unknown key), but its id is readable: the error says which
    assert gradient.raw.answer(request_id, ANSWER_S).body["code"] == "malformed"
    gradient.alive()


def test_replies_have_the_documented_shape(gradient):
    """As docs/driver-protocol.md gives them: attributes, a null result, a Status, a driver error."""
    raw = gradient.raw
    reply = raw.call({"method": "attributes"})
    assert reply.type == "reply" and reply.body == {"result": {"buffer_s": gradient.subsystem.buffer_s}}
    reply = raw.call({"method": "connect", "args": [5.0]})
    assert reply.body == {"result": None} and reply.src == "gradient-driver"
    error = raw.call({"method": "start"})
    assert error.type == "error" and error.body == {
        "code": "driver", "error": "DriverError", "method": "start",
        "message": "gradient: cannot start in state STANDBY (connected)"}
    for method in ("arm", "start"):
        assert raw.call({"method": method}).body == {"result": None}
    status = raw.call({"method": "sync", "args": [0.0], "kwargs": {"timeout_s": 2.0}}).body["result"]
    assert status["__type__"] == "Status" and status["state"] == "running" and status["time_s"] == 0.0
    assert set(status) == {"__type__", "state", "time_s", "message", "telemetry"}
    # The right number of arguments, of a type the driver cannot take (TypeError inside it): malformed.
    error = raw.call({"method": "sync", "args": ["soon"]})
    assert error.body["code"] == "malformed" and error.body["message"].startswith("sync: TypeError: ")
    assert raw.call({"method": "finish"}).body == {"result": None}
    gradient.alive()
