"""Control server figures on loopback TCP: command round trip (p50/p99), event throughput with 10
subscribers (and whether any sequence number was lost), ADC data throughput beside raw pyzmq sending
the same frames.

    .venv/bin/python benchmarks/bench_zmq.py [--commands 2000] [--events 100000] [--data-mb 512]
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import numpy as np
import zmq

from scanctl import profile as profiles
from scanctl.client import Client, Subscription
from scanctl.server import ControlServer
from scanctl.wire import Message, encode

LOOPBACK = "tcp://127.0.0.1:0"


def round_trip(client: Client, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.command("status")
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def events(server: ControlServer, client: Client, n: int, subscribers: int) -> tuple[float, int, int]:
    subs = [Subscription([server.endpoints["events"]]) for _ in range(subscribers)]
    for sub in subs:
        sub.sync(client)
    counts = [0] * subscribers

    def drain(i: int) -> None:
        while counts[i] < n:
            msg = subs[i].recv(5.0)
            if msg is None:
                return
            if msg.stream == "bench":
                counts[i] += 1

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(subscribers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    for i in range(n):
        server.publish("bench", {"i": i})
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    gaps = sum(len([g for g in s.gaps if g.stream == "bench"]) for s in subs)
    for s in subs:
        s.close()
    return n / elapsed, gaps, min(counts)


def acquisitions_body(samples: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((64, 1, samples)) + 1j * rng.standard_normal((64, 1, samples))).astype(np.complex64)
    return {"acquisitions": [{"index": i, "block": i, "start_s": 0.0, "dwell_s": 1e-5, "labels": {"LIN": i},
                              "data": data[i]} for i in range(64)]}


def data_server(server: ControlServer, body: dict[str, Any], messages: int) -> float:
    sub = Subscription([server.endpoints["data"]])
    client = Client(server.endpoints["control"])
    sub.sync(client, sockets=1)
    client.close()
    payload = sum(a["data"].nbytes for a in body["acquisitions"])
    got = 0
    t0 = time.perf_counter()
    sender = threading.Thread(target=lambda: [server.publish("data", body, data=True) for _ in range(messages)])
    sender.start()
    while got < messages:
        msg = sub.recv(5.0)
        if msg is None:
            break
        if msg.type == "data":
            got += 1
    sender.join()
    elapsed = time.perf_counter() - t0
    sub.close()
    return got * payload / elapsed / 1e6


def data_raw(body: dict[str, Any], messages: int) -> float:
    """Raw pyzmq: the same frames (pre-encoded once), PUB to SUB, no envelope decoding on receipt."""
    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.setsockopt(zmq.SNDHWM, 1_000_000)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(f"tcp://127.0.0.1:{port}")
    frames = encode(Message(type="data", body=body, stream="data", seq=0))
    while True:  # slow joiner
        pub.send_multipart(frames, copy=False)
        if sub.poll(50):
            sub.recv_multipart(copy=False)
            break
    while sub.poll(50):
        sub.recv_multipart(copy=False)
    payload = sum(a["data"].nbytes for a in body["acquisitions"])
    t0 = time.perf_counter()
    sender = threading.Thread(target=lambda: [pub.send_multipart(frames, copy=False) for _ in range(messages)])
    sender.start()
    got = 0
    while got < messages and sub.poll(5000):
        sub.recv_multipart(copy=False)
        got += 1
    sender.join()
    elapsed = time.perf_counter() - t0
    pub.close()
    sub.close()
    return got * payload / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--data-mb", type=float, default=512.0, help="ADC payload to stream per measurement, MB")
    parser.add_argument("--samples", type=int, default=512, help="samples per acquisition (complex64)")
    args = parser.parse_args()
    server = ControlServer(profiles.load(), LOOPBACK, LOOPBACK, LOOPBACK, {"rf": "sim://?physics=0"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = Client(server.endpoints["control"])
        client.status()
        p50, p99 = round_trip(client, args.commands)
        print(f"command round trip (status, {args.commands}x): p50 {p50:.3f} ms, p99 {p99:.3f} ms  (target p99 < 2 ms)")
        rate, gaps, least = events(server, client, args.events, 10)
        print(f"events, 10 subscribers: {rate:,.0f} messages/s published and received by all; "
              f"gaps: {gaps}; fewest received: {least}/{args.events}  (target >= 50,000/s, no gap)")
        body = acquisitions_body(args.samples)
        payload = sum(a["data"].nbytes for a in body["acquisitions"])
        messages = max(1, int(args.data_mb * 1e6 / payload))
        ours = data_server(server, body, messages)
        raw = data_raw(body, messages)
        print(f"ADC data ({messages} messages of 64 x {args.samples} complex64): server {ours:,.0f} MB/s, "
              f"raw pyzmq {raw:,.0f} MB/s: {ours / raw:.0%}  (target >= 70%)")
        client.close()
    finally:
        server.stop()
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
