"""Emergency-stop latency: the time from pressing the emergency stop to every subsystem reporting safe
(gradient and RF not ON/RUNNING with zero output power, the table not MOVING), while a scan plays in
real time (``realtime=1`` simulators: the run loop waits on the hardware clock, as beside a real rig).

Three paths, each repeated ``--repeats`` times at a random moment 20-200 ms into a scan:

- in-process: ``Scanner.emergency_stop()`` from another thread than the run loop's (a console button);
- control server: ``Client.emergency_stop()`` from this process to ``scanctl serve`` in another process
  (the reply comes when the server has made every subsystem safe; the figure is the round trip);
- driver services: the scanner here, each simulated subsystem behind its own ``DriverService`` (its own
  process) reached through the ZeroMQ proxy drivers (``tcp://`` URLs).

    .venv/bin/python benchmarks/bench_estop.py [--repeats 200] [--physics] [--skip-zmq]

Prints p50/p99/max in ms per path; the target is p99 < 10 ms in-process.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from scanctl.config import profile as profiles
from scanctl.engine.executor import Scanner
from scanctl.engine.run import load_source
from scanctl.hw.interfaces import Status, SubsystemState

PROTOCOL = str(Path(__file__).parents[1] / "protocols" / "gre_2d.toml")
LOOPBACK = "tcp://127.0.0.1:0"


def is_safe(statuses: dict[str, Status]) -> bool:
    """Every amplifier off and the table still."""
    for kind in ("gradient", "rf"):
        s = statuses[kind]
        if s.state in (SubsystemState.ON, SubsystemState.RUNNING, SubsystemState.UNKNOWN):
            return False
        if s.telemetry.get("forward_power_w", 0.0) or s.telemetry.get("power_w", 0.0):
            return False
    return statuses["table"].state is not SubsystemState.MOVING


def sim_urls(physics: bool) -> dict[str, str]:
    return {"gradient": "sim://?realtime=1", "rf": f"sim://?realtime=1&physics={int(physics)}"}


def figures(name: str, seconds: list[float]) -> None:
    ms = np.array(seconds) * 1e3
    print(f"{name:<46} n={ms.size:4d}  p50 {np.percentile(ms, 50):7.3f} ms  p99 {np.percentile(ms, 99):7.3f} ms"
          f"  max {ms.max():7.3f} ms")


def scanner_latencies(scanner: Scanner, repeats: int, seed: int = 1) -> list[float]:
    """Start a real-time scan, press the emergency stop from this thread, time until all is safe."""
    seq, _ = load_source(PROTOCOL, scanner.profile)
    rng = random.Random(seed)
    out = []
    for _ in range(repeats):
        scanner.prepare(seq)
        started = threading.Event()
        runner = threading.Thread(target=scanner.run, kwargs={"on_progress": lambda t, total, ev=started: ev.set()})
        runner.start()
        started.wait(10)
        time.sleep(rng.uniform(0.02, 0.2))
        t0 = time.perf_counter()
        scanner.emergency_stop("bench")
        while not is_safe(scanner.status()):
            pass
        out.append(time.perf_counter() - t0)
        runner.join(10)
        scanner.release_emergency_stop()
        scanner.reset()
    return out


def in_process(repeats: int, physics: bool) -> list[float]:
    profile = profiles.load()
    scanner = Scanner.from_profile(profile, sim_urls(physics), segment_s=0.25)
    scanner.connect()
    try:
        return scanner_latencies(scanner, repeats)
    finally:
        scanner.close()


# -- the control server in its own process -------------------------------------------------------------------
def serve(physics: bool, endpoints: Any, stop: Any) -> None:
    from scanctl.services.server import ControlServer

    server = ControlServer(profiles.load(), LOOPBACK, LOOPBACK, overrides=sim_urls(physics), segment_s=0.25)
    endpoints.put(server.endpoints["control"])
    threading.Thread(target=lambda: (stop.wait(), server.stop()), daemon=True).start()
    server.serve_forever()


def reset(client: Any) -> None:
    """Reset once the server's worker has wound the stopped run up ("start in progress" until then)."""
    from scanctl.services.client import CommandError

    deadline = time.monotonic() + 10
    while True:
        try:
            client.reset()
            return
        except CommandError as exc:
            if "in progress" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def control_server(repeats: int, physics: bool) -> list[float]:
    from scanctl.services.client import Client

    ctx = mp.get_context("spawn")
    endpoints, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=serve, args=(physics, endpoints, stop), daemon=True)
    proc.start()
    rng = random.Random(2)
    out = []
    try:
        with Client(endpoints.get(timeout=60), timeout_s=30) as client:
            client.take_control()
            for _ in range(repeats):
                client.load(PROTOCOL)
                client.start()
                while client.status().get("state") != "RUNNING":
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.02, 0.2))
                t0 = time.perf_counter()
                reply = client.emergency_stop("bench")
                out.append(time.perf_counter() - t0)
                assert reply.get("state") in ("EMERGENCY_STOP", "RUNNING", "STOPPING"), reply
                while client.status().get("state") != "EMERGENCY_STOP":
                    time.sleep(0.002)
                client.release_emergency_stop()
                reset(client)
    finally:
        stop.set()
        proc.join(10)
    return out


# -- each subsystem behind a driver service in its own process --------------------------------------------------
def driver(kind: str, url: str, endpoints: Any, stop: Any) -> None:
    from scanctl.hw.registry import open_subsystem
    from scanctl.services.driver_service import DriverService

    service = DriverService(kind, open_subsystem(kind, url, profiles.load()), LOOPBACK)
    endpoints.put((kind, service.endpoint))
    threading.Thread(target=lambda: (stop.wait(), service.stop()), daemon=True).start()
    service.serve_forever()


def driver_services(repeats: int, physics: bool) -> list[float]:
    ctx = mp.get_context("spawn")
    endpoints, stop = ctx.Queue(), ctx.Event()
    urls = {**sim_urls(physics), "table": "sim://"}
    procs = [ctx.Process(target=driver, args=(kind, url, endpoints, stop), daemon=True) for kind, url in urls.items()]
    for proc in procs:
        proc.start()
    try:
        remote = dict(endpoints.get(timeout=60) for _ in procs)
        scanner = Scanner.from_profile(profiles.load(), remote, segment_s=0.25)
        scanner.connect()
        try:
            return scanner_latencies(scanner, repeats, seed=3)
        finally:
            scanner.close()
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--physics", action="store_true", help="Bloch simulation in the RF simulator (slower "
                        "segments: the e-stop waits for the one being computed)")
    parser.add_argument("--skip-zmq", action="store_true")
    args = parser.parse_args()
    what = "physics on" if args.physics else "physics off"
    print(f"emergency stop -> every subsystem safe, {PROTOCOL.rsplit('/', 1)[-1]} playing in real time ({what})")
    figures("in-process (Scanner.emergency_stop)", in_process(args.repeats, args.physics))
    if not args.skip_zmq:
        figures("control server (Client.emergency_stop, reply)", control_server(args.repeats, args.physics))
        figures("driver services (scanner -> 3 ZeroMQ proxies)", driver_services(args.repeats, args.physics))
    print(f"target: in-process p99 < 10 ms ({args.repeats} presses per path)")


if __name__ == "__main__":
    main()
