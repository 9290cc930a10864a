"""scanctl.transport.publisher: per-stream sequence numbers, order kept, bursts coalesced into batches, data
sent at once in its own messages, nothing lost on close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from scanctl.errors import WireProtocolError
from scanctl.transport.batch import unbatch
from scanctl.transport.publisher import BATCH_MAX, Publisher
from scanctl.transport.wire import decode


@pytest.fixture
def sockets():
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.connect(f"tcp://127.0.0.1:{port}")
    while True:  # ZeroMQ's slow joiner: wait until the subscription is in place
        pub.send(b"probe")
        if sub.poll(20):
            break
    while sub.poll(50):
        sub.recv()
    yield pub, sub
    pub.close()
    sub.close()
    ctx.term()


def hold_back(publisher):
    """Keep the (idle) sender waiting while messages are queued: it is woken only by ``_wake.set()``."""
    deadline = time.monotonic() + 5
    while not publisher._idle:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    publisher._idle = False


def receive(sub, count):
    raw, messages = 0, []
    while len(messages) < count and sub.poll(5000):
        frames = sub.recv_multipart()
        raw += 1
        messages.extend(m for group in unbatch(decode(frames)) for m in group)
    return raw, messages


def test_a_burst_arrives_complete_in_order_in_fewer_messages(sockets):
    pub, sub = sockets
    publisher = Publisher(pub, pub, "srv")
    n = 5000
    for i in range(n):
        publisher.publish("bench" if i % 2 else "state", {"i": i}, run="r1")
    raw, messages = receive(sub, n)
    publisher.close()
    assert [m.body["i"] for m in messages] == list(range(n))
    assert [m.seq for m in messages if m.stream == "bench"] == list(range(1, n // 2 + 1))
    assert all(m.src == "srv" and m.run == "r1" and m.type == "event" for m in messages)
    assert n / BATCH_MAX <= raw < n
    assert publisher.seqs() == {"state": n // 2, "bench": n // 2}


def test_a_lone_event_travels_as_itself_and_data_is_sent_at_once(sockets):
    pub, sub = sockets
    publisher = Publisher(pub, pub, "srv")
    publisher.publish("state", {"state": "IDLE"})
    assert sub.poll(5000)
    assert decode(sub.recv_multipart()).type == "event"
    hold_back(publisher)  # events now wait in the queue; data does not
    publisher.publish("progress", {"t_s": 1.0})
    samples = np.arange(40_000.0)  # 320 kB: sent from numpy's memory
    publisher.publish("data", {"samples": samples}, data=True)
    publisher.publish("data", {"samples": samples[:4]}, data=True)
    raw, messages = receive(sub, 2)
    assert raw == 2 and [(m.type, m.stream, m.seq) for m in messages] == [("data", "data", 1), ("data", "data", 2)]
    assert np.array_equal(messages[0].body["samples"], samples)
    assert np.array_equal(messages[1].body["samples"], samples[:4])
    assert not sub.poll(100)  # the event is still queued
    publisher.publish("progress", {"t_s": 2.0})
    publisher._wake.set()
    publisher.close()
    raw, messages = receive(sub, 2)
    assert [(m.stream, m.seq, m.body["t_s"]) for m in messages] == [("progress", 1, 1.0), ("progress", 2, 2.0)]
    assert publisher.seqs() == {"state": 1, "progress": 2, "data": 2}


def test_data_published_from_several_threads_arrives_numbered_in_order(sockets):
    pub, sub = sockets
    publisher = Publisher(pub, pub, "srv")

    def publish_data(k):
        for i in range(200):
            publisher.publish("data", {"k": k, "i": i, "x": np.full(8, i)}, data=True)

    threads = [threading.Thread(target=publish_data, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for i in range(800):
        publisher.publish("progress", {"i": i})
    for thread in threads:
        thread.join()
    publisher.close()
    raw, messages = receive(sub, 1600)
    data = [m for m in messages if m.stream == "data"]
    assert [m.seq for m in data] == list(range(1, 801))
    for k in range(4):
        assert [m.body["i"] for m in data if m.body["k"] == k] == list(range(200))
    assert [m.body["i"] for m in messages if m.stream == "progress"] == list(range(800))


def test_a_body_that_cannot_travel_fails_in_the_caller(sockets):
    publisher = Publisher(sockets[0], sockets[0], "srv")
    with pytest.raises(WireProtocolError, match="cannot send a object"):
        publisher.publish("state", {"x": object()})
    assert publisher.seqs() == {}
    publisher.close()


def test_a_batch_too_big_for_one_envelope_is_split(sockets):
    pub, sub = sockets
    publisher = Publisher(pub, pub, "srv")
    big = "x" * 200_000
    hold_back(publisher)  # so that all six queue up as one run
    for i in range(6):
        publisher.publish("log", {"i": i, "text": big})
    publisher._wake.set()
    publisher.close()
    raw, messages = receive(sub, 6)
    assert [m.body["i"] for m in messages] == list(range(6)) and raw >= 2


def test_a_subscription_hands_out_a_burst_in_order_and_its_iteration_ends_when_quiet():
    """Subscription.messages: every message of a burst, in order, gap-free; the iteration ends once the
    idle timeout passes with nothing new."""
    from scanctl.services.client import Subscription

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    publisher = Publisher(pub, pub, "srv")
    with Subscription([f"tcp://127.0.0.1:{port}"], context=ctx) as sub:
        deadline = time.monotonic() + 5
        while sub.recv(0.02) is None:  # ZeroMQ's slow joiner: until the subscription is in place
            assert time.monotonic() < deadline
            publisher.publish("probe", {})
        while sub.recv(0.1) is not None:
            pass
        for i in range(3000):
            publisher.publish("bench", {"i": i})
        t0 = time.monotonic()
        got = [m.body["i"] for m in sub.messages(0.3) if m.stream == "bench"]
        assert got == list(range(3000)) and sub.gaps == []
        assert 0.3 <= time.monotonic() - t0 < 5
    publisher.close()
    pub.close()
    ctx.term()
