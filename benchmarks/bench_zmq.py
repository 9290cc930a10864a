"""ZeroMQ figures on loopback TCP, every receiver in its own process (as a console would be):

- command round trip (p50/p99) from a client process to the control server;
- event throughput: the server publishes N events while 10 subscriber processes receive them, each
  checking every sequence number (messages/s = N / time until the last subscriber has the last one);
- ADC data throughput: a segment's acquisitions, a columnar batch as the RF subsystems deliver them,
  published by the server as in a scan and taken by a subscriber process (as checked columns, or as one
  Acquisition object per window), beside raw pyzmq sending the same frames (pre-encoded) to a raw SUB
  process;
- the whole ``protocols/gre_2d.toml`` scan across processes (``scanctl up``: server and each simulated
  subsystem in its own process, the console in this one) against the same scan in-process.

    .venv/bin/python benchmarks/bench_zmq.py [--commands 2000] [--events 100000] [--event-runs 3]
                                             [--data-mb 1024] [--data-runs 3] [--scans 3] [--skip-scan]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from scanctl.config import profile as profiles
from scanctl.hw.interfaces import Acquisition, AcquisitionBatch
from scanctl.services.client import Client, Subscription, acquisitions_of
from scanctl.services.remote_run import run_remote
from scanctl.services.server import ControlServer
from scanctl.transport.acquisitions import check_acquisitions, pack_acquisitions
from scanctl.transport.wire import Message, encode

LOOPBACK = "tcp://127.0.0.1:0"
GRE = str(Path(__file__).parents[1] / "protocols" / "gre_2d.toml")
SUBSCRIBERS = 10


# -- worker processes ------------------------------------------------------------------------------------------
def round_trip_worker(control: str, n: int, out: Any) -> None:
    with Client(control) as client:
        client.status()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.command("status")
            times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    out.put((float(np.percentile(ms, 50)), float(np.percentile(ms, 99))))


def event_worker(control: str, events: str, n: int, ready: Any, out: Any) -> None:
    with Client(control) as client, Subscription([events]) as sub:
        sub.sync(client)
        ready.release()
        count, cpu = 0, time.process_time()
        for msg in sub.messages(10.0):
            if msg.stream == "bench":
                count += 1
                if count == n:
                    break
        last = time.monotonic()
        out.put((count, len([g for g in sub.gaps if g.stream == "bench"]), last, time.process_time() - cpu))


def data_worker(control: str, data: str, messages: int, objects: bool, ready: Any, out: Any) -> None:
    with Client(control) as client, Subscription([data]) as sub:
        sub.sync(client, sockets=1)
        ready.release()
        got, acquisitions, nbytes, last, cpu = 0, 0, 0, time.monotonic(), time.process_time()
        while got < messages:
            msg = sub.recv(10.0)
            if msg is None:
                break
            if msg.stream == "data":
                if objects:  # one Acquisition per ADC window, as scanctl.services.remote_run.run_remote uses them
                    batch = acquisitions_of(msg)
                    acquisitions += len(batch)
                    nbytes += sum(a.data.nbytes for a in batch)
                else:  # the batch's columns, checked: all samples as one complex64 array
                    acquisitions += check_acquisitions(msg.body["acquisitions"])
                    nbytes += msg.body["acquisitions"]["data"].nbytes
                got += 1
                last = time.monotonic()
        out.put((got, nbytes, last, time.process_time() - cpu))


def raw_worker(port: int, messages: int, ready: Any, out: Any) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.recv()  # the first probe: the subscription is in place
    ready.release()
    got, nbytes, last = 0, 0, time.monotonic()
    while got < messages and sub.poll(10_000):
        frames = sub.recv_multipart(copy=False)
        if len(frames) > 1:  # not a probe
            got += 1
            nbytes += sum(len(f.buffer) for f in frames[1:])
            last = time.monotonic()
    out.put((got, nbytes, last))
    sub.close()
    ctx.term()


# -- measurements -------------------------------------------------------------------------------------------------
def spawn(ctx: Any, target: Any, *args: Any) -> Any:
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def round_trip(ctx: Any, server: ControlServer, n: int) -> tuple[float, float]:
    out = ctx.Queue()
    proc = spawn(ctx, round_trip_worker, server.endpoints["control"], n, out)
    result = out.get(timeout=300)
    proc.join()
    return result  # type: ignore[no-any-return]


def events(ctx: Any, server: ControlServer, n: int) -> tuple[float, int, int, float, float]:
    """Events/s, gaps, fewest received, and CPU µs an event: the server's process, a subscriber's (mean)."""
    out, ready = ctx.Queue(), ctx.Semaphore(0)
    procs = [spawn(ctx, event_worker, server.endpoints["control"], server.endpoints["events"], n, ready, out)
             for _ in range(SUBSCRIBERS)]
    for _ in procs:
        ready.acquire(timeout=60)
    t0, cpu = time.monotonic(), time.process_time()
    for i in range(n):
        server.publish("bench", {"i": i})
    results = [out.get(timeout=600) for _ in procs]
    server_cpu = time.process_time() - cpu  # the publishing loop and the server's threads
    for proc in procs:
        proc.join()
    elapsed = max(r[2] for r in results) - t0
    return (n / elapsed, sum(r[1] for r in results), min(r[0] for r in results), server_cpu / n * 1e6,
            statistics.mean(r[3] for r in results) / n * 1e6)


def acquisitions(count: int, samples: int, channels: int = 1) -> AcquisitionBatch:
    """A segment's acquisitions as the RF subsystems deliver them: a columnar batch."""
    rng = np.random.default_rng(0)
    shape = (count, channels, samples)
    data = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return AcquisitionBatch(pack_acquisitions([Acquisition(i, i, i * 1e-3, 1e-5, data[i].astype(np.complex64),
                                                           {"LIN": i}) for i in range(count)]))


def data_server(ctx: Any, server: ControlServer, batch: AcquisitionBatch, messages: int,
                objects: bool) -> tuple[float, float, float]:
    """MB/s from the server to one subscriber, and CPU µs a message: the server's process, the subscriber's."""
    out, ready = ctx.Queue(), ctx.Semaphore(0)
    proc = spawn(ctx, data_worker, server.endpoints["control"], server.endpoints["data"], messages, objects, ready,
                 out)
    ready.acquire(timeout=60)
    t0, cpu = time.monotonic(), time.process_time()
    for _ in range(messages):  # what the server does with each chunk of a segment's batch in a scan
        server.publish("data", {"acquisitions": pack_acquisitions(batch[0:len(batch)])}, data=True)
    got, nbytes, last, sub_cpu = out.get(timeout=600)
    server_cpu = time.process_time() - cpu
    proc.join()
    assert got == messages, f"data subscriber received {got} of {messages} messages"
    return nbytes / (last - t0) / 1e6, server_cpu / messages * 1e6, sub_cpu / messages * 1e6


def data_raw(ctx: Any, batch: AcquisitionBatch, messages: int) -> float:
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1_000_000)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    frames = encode(Message(type="data", body={"acquisitions": pack_acquisitions(batch)}, stream="data", seq=0))
    out, ready = ctx.Queue(), ctx.Semaphore(0)
    proc = spawn(ctx, raw_worker, port, messages, ready, out)
    while not ready.acquire(timeout=0.01):
        pub.send(b"probe")
    t0 = time.monotonic()
    for _ in range(messages):
        pub.send_multipart(frames, copy=False)
    got, nbytes, last = out.get(timeout=600)
    proc.join()
    pub.close()
    zctx.term()
    assert got == messages, f"raw subscriber received {got} of {messages} messages"
    return nbytes / (last - t0) / 1e6  # type: ignore[no-any-return]


def scans(repeat: int) -> tuple[float, float]:
    """Median wall time of gre_2d in-process and across processes (scanctl up), outputs written alike."""
    from scanctl.engine.session import run_scan
    from scanctl.services.launcher import down, up

    profile = profiles.load(None)
    with tempfile.TemporaryDirectory() as tmp:
        local, remote = [], []
        for i in range(repeat):
            t0 = time.perf_counter()
            report = run_scan(GRE, profile, Path(tmp) / f"local{i}")
            local.append(time.perf_counter() - t0)
            assert report.ok, report.message
        record = up(Path(tmp) / "run", control=LOOPBACK, events=LOOPBACK, data=LOOPBACK)
        try:
            with Client(record["control"]) as client:
                for i in range(repeat):
                    t0 = time.perf_counter()
                    # like for like: run_scan above does not prescan, the server would by default
                    report = run_remote(client, GRE, Path(tmp) / f"remote{i}", prescan=False)
                    remote.append(time.perf_counter() - t0)
                    assert report.ok, report.message
        finally:
            down(Path(tmp) / "run")
    return statistics.median(local), statistics.median(remote)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--event-runs", type=int, default=3, help="event measurements (median reported)")
    parser.add_argument("--data-mb", type=float, default=1024.0, help="ADC payload to stream per measurement, MB")
    parser.add_argument("--data-runs", type=int, default=3,
                        help="ADC measurements, each beside raw pyzmq (median ratio reported)")
    parser.add_argument("--samples", type=int, default=512, help="samples per acquisition (complex64)")
    parser.add_argument("--per-message", type=int, default=64, help="acquisitions per data message")
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 32],
                        help="receive channels per acquisition, one ADC measurement each (default 1 and 32)")
    parser.add_argument("--scans", type=int, default=3, help="gre_2d runs each way (median)")
    parser.add_argument("--skip-scan", action="store_true", help="skip the whole-scan comparison")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    server = ControlServer(profiles.load(), LOOPBACK, LOOPBACK, LOOPBACK, {"rf": "sim://?physics=0"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        p50, p99 = round_trip(ctx, server, args.commands)
        print(f"command round trip (status, {args.commands}x, client process): p50 {p50:.3f} ms, p99 {p99:.3f} ms"
              f"  (target p99 < 2 ms)", flush=True)
        runs = [events(ctx, server, args.events) for _ in range(args.event_runs)]
        rates = sorted(r[0] for r in runs)
        gaps, least = sum(r[1] for r in runs), min(r[2] for r in runs)
        print(f"events, {SUBSCRIBERS} subscriber processes: {statistics.median(rates):,.0f} events/s published and "
              f"received by all (median of {len(runs)} runs; {', '.join(f'{r:,.0f}' for r in rates)}); gaps: {gaps}; "
              f"fewest received: {least}/{args.events}  (target >= 50,000/s, no gap); CPU an event (median): "
              f"server {statistics.median(r[3] for r in runs):.1f} us, each subscriber "
              f"{statistics.median(r[4] for r in runs):.1f} us", flush=True)
        for channels in args.channels:
            batch = acquisitions(args.per_message, args.samples, channels)
            payload = batch.columns["data"].nbytes
            messages = max(1, int(args.data_mb * 1e6 / payload))
            pairs = []  # (ours, raw, server CPU, subscriber CPU), measured back to back: the ratio of one pair
            for _ in range(args.data_runs):
                columns, server_us, sub_us = data_server(ctx, server, batch, messages, objects=False)
                pairs.append((columns, data_raw(ctx, batch, messages), server_us, sub_us))
            ratios = sorted(ours / raw for ours, raw, _, _ in pairs)
            objects, _, _ = data_server(ctx, server, batch, messages, objects=True)
            print(f"ADC data ({messages} messages of {args.per_message} acquisitions x {channels} channels x "
                  f"{args.samples} complex64, {payload / 1e3:,.0f} kB), median of {len(pairs)} pairs: raw pyzmq "
                  f"{statistics.median(p[1] for p in pairs):,.0f} MB/s; server to a subscriber taking the checked "
                  f"columns {statistics.median(p[0] for p in pairs):,.0f} MB/s: {statistics.median(ratios):.0%} "
                  f"({', '.join(f'{r:.0%}' for r in ratios)}; target >= 70%); one Acquisition object per window "
                  f"{objects:,.0f} MB/s: {objects / statistics.median(p[1] for p in pairs):.0%}; CPU a message "
                  f"(columns): server {statistics.median(p[2] for p in pairs):,.0f} us, subscriber "
                  f"{statistics.median(p[3] for p in pairs):,.0f} us", flush=True)
    finally:
        server.stop()
        thread.join(timeout=10)
    if not args.skip_scan:
        local, remote = scans(args.scans)
        print(f"protocols/gre_2d.toml (median of {args.scans}): in-process {local:.2f} s, across processes "
              f"{remote:.2f} s: {remote / local:.2f}x  (target <= 1.5x)", flush=True)


if __name__ == "__main__":
    main()
