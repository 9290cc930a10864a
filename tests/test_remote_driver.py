"""Drivers in their own processes over ZeroMQ: a driver killed mid-scan is detected within the liveness
bound, the scanner ends in FAULT with the data so far in a valid raw file, and after restarting the
driver and a reset the next scan succeeds."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from scanctl.config import profile as profiles
from scanctl.data.rawdata import RawDataWriter, header_for, read_acquisitions
from scanctl.engine.executor import Scanner
from scanctl.engine.machine import ScannerState
from scanctl.errors import DriverError, InvalidTransitionError, ScanctlError
from scanctl.hw.interfaces import SubsystemState
from scanctl.sequence import pulseq_read
from tests.test_cli import GRE

PROFILE = profiles.load()
LIVENESS_S = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_driver(kind: str, port: int, url: str = "sim://") -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "scanctl", "driver", "serve", kind, "--url", url,
                             "--bind", f"tcp://127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    assert f"127.0.0.1:{port}" in line, line
    return proc


@pytest.fixture
def gradient_driver():
    port = free_port()
    procs = [start_driver("gradient", port)]
    yield port, procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def prepared_over_the_wire(port: int) -> tuple[Scanner, object]:
    """A scanner whose gradient is the driver service on ``port``, with the GRE prepared."""
    url = f"tcp://127.0.0.1:{port}?liveness_s={LIVENESS_S}"
    scanner = Scanner.from_profile(PROFILE, {"gradient": url, "rf": "sim://?physics=0"}, segment_s=0.25)
    scanner.connect()
    seq = pulseq_read.read(GRE)
    scanner.prepare(seq)
    return scanner, seq


def test_killed_driver_faults_the_scan_within_the_liveness_bound(tmp_path, gradient_driver):
    port, procs = gradient_driver
    scanner, seq = prepared_over_the_wire(port)
    killed_at: list[float] = []

    def progress(t_s: float, total_s: float) -> None:
        if t_s > 2.0 and not killed_at:
            os.kill(procs[0].pid, signal.SIGKILL)
            killed_at.append(time.time())

    raw_path = tmp_path / "raw.h5"
    with RawDataWriter.open(raw_path, header_for(seq, PROFILE), seq=seq) as writer:
        result = scanner.run(on_acquisitions=writer.extend, on_progress=progress)
    assert killed_at
    assert result.outcome == "fault" and scanner.state is ScannerState.FAULT
    faulted_at = scanner.journal[-1].wall_time_s
    assert faulted_at - killed_at[0] < LIVENESS_S + 0.35  # the bound, plus one heartbeat interval of slack
    assert "gradient driver" in result.message and "silent" in result.message
    assert scanner.journal[-1].dest == "FAULT" and "gradient driver" in scanner.journal[-1].reason
    raw = read_acquisitions(raw_path)
    assert len(raw.acquisitions) == result.acquisitions > 0
    assert [a.index for a in raw.acquisitions] == list(range(result.acquisitions))

    # Restart the driver on the same endpoint; a reset reconnects it and the next scan succeeds.
    procs.append(start_driver("gradient", port))
    scanner.reset()
    assert scanner.state is ScannerState.IDLE
    scanner.prepare(seq)
    again = scanner.run()
    assert again.outcome == "completed" and again.acquisitions == 64
    scanner.close()


@contextlib.contextmanager
def server_with_rf_driver(rf_url: str, overrides: dict[str, str] | None = None, **options):
    """A control server on a thread whose RF subsystem is a driver service process serving ``rf_url``;
    yields the server, the driver's port and the list of driver processes (a restarted one appended)."""
    from scanctl.services.server import ControlServer

    port = free_port()
    procs = [start_driver("rf", port, rf_url)]
    server = ControlServer(PROFILE, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0",
                           {"rf": f"tcp://127.0.0.1:{port}", **(overrides or {})}, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, port, procs
    finally:
        server.stop()
        thread.join(timeout=10)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)


def test_killed_rf_driver_ends_a_remote_run_in_fault_with_its_data_within_the_default_bound(tmp_path):
    """Through the control server, as a console sees it: the RF driver (its own process, paced to wall-clock
    time) is killed mid-scan; the run ends in FAULT within the default 1 s liveness bound, the console gets
    the run's end and a valid raw data file holding every acquisition received; restart, reset, and the
    next scan completes."""
    from scanctl.services.client import Client
    from scanctl.services.remote_run import run_remote

    rf_url = "sim://?physics=0&realtime=1&buffer_s=0.2"
    killed_at: list[float] = []
    with server_with_rf_driver(rf_url, {"gradient": "sim://?buffer_s=0.2"}, segment_s=0.1) as (server, port, procs):

        def progress(t_s: float, total_s: float, acquisitions: int) -> None:
            if t_s > 0.5 and not killed_at:
                os.kill(procs[0].pid, signal.SIGKILL)
                killed_at.append(time.time())

        with Client(server.endpoints["control"]) as client:
            report = run_remote(client, GRE, tmp_path / "faulted", progress=progress, reconstruct=False,
                                run_timeout_s=30)
            assert killed_at and report.outcome == "fault", report.message
            fault = report.journal[-1]
            assert fault["dest"] == "FAULT" and "rf driver" in fault["reason"] and "silent" in fault["reason"]
            assert fault["wall_time_s"] - killed_at[0] < 1.0 + 0.35  # the default bound, plus a heartbeat's slack
            raw = read_acquisitions(tmp_path / "faulted" / "raw.h5")
            assert 0 < len(raw.acquisitions) == report.acquisitions < 64
            assert [a.index for a in raw.acquisitions] == list(range(report.acquisitions))
            assert client.status()["subsystems"]["rf"]["state"] == "unknown"

            procs.append(start_driver("rf", port, rf_url))
            client.take_control()
            assert client.reset()["state"] == "IDLE"
            client.release_control()
            again = run_remote(client, GRE, tmp_path / "again", reconstruct=False, run_timeout_s=30)
            assert again.outcome == "completed" and again.acquisitions == 64


def test_a_driver_lost_while_idle_is_unknown_and_faults_the_scanner_within_the_default_bound():
    """No scan running: the control server still watches its drivers; one killed is UNKNOWN and the scanner
    in FAULT (nothing may start on it) within the default 1 s bound; restarted, a reset brings it back."""
    from scanctl.services.client import Client

    with server_with_rf_driver("sim://?physics=0") as (server, port, procs), \
            Client(server.endpoints["control"]) as client:
        deadline = time.monotonic() + 10
        while client.status()["state"] != "IDLE":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(procs[0].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while (snap := client.status())["state"] != "FAULT":
            assert time.monotonic() - killed_at < 5, snap["subsystems"]["rf"]
            time.sleep(0.02)
        assert time.monotonic() - killed_at < 1.0 + 0.35  # the default bound, plus a check interval
        assert snap["subsystems"]["rf"]["state"] == "unknown"
        procs.append(start_driver("rf", port, "sim://?physics=0"))
        client.take_control()
        assert client.reset()["state"] == "IDLE"
        assert client.status()["subsystems"]["rf"]["state"] != "unknown"


def serve_in_thread(subsystem, **options):
    from scanctl.services.driver_service import DriverService

    service = DriverService(subsystem.kind, subsystem, "tcp://127.0.0.1:0", **options)
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    return service, thread


def armed_gradient_over_the_wire(client_timeout_s: float):
    from drivers.zmq_proxy import ProxyGradient
    from scanctl.hw.registry import open_subsystem

    gradient = open_subsystem("gradient", "sim://", PROFILE)
    service, thread = serve_in_thread(gradient, client_timeout_s=client_timeout_s)
    proxy = ProxyGradient(f"{service.endpoint}", service.endpoint, liveness_s=0.2)
    proxy.connect()
    proxy.arm()
    proxy.start()
    assert gradient.status().state is SubsystemState.RUNNING
    return gradient, service, thread, proxy


def test_a_scanner_gone_silent_mid_scan_makes_the_driver_abort_by_itself():
    gradient, service, thread, proxy = armed_gradient_over_the_wire(client_timeout_s=0.5)
    try:
        proxy._beating.set()  # the scanner dies: no call, no heartbeat any more
        proxy._beat_thread.join()
        deadline = time.monotonic() + 3.0
        while gradient.status().state is SubsystemState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        status = gradient.status()
        assert status.state is SubsystemState.STANDBY and "aborted" in status.message
        assert time.monotonic() - service._last_heard < 2.0  # within the bound, not long after
    finally:
        service.stop()
        thread.join(timeout=5)


def test_an_idle_but_alive_scanner_keeps_the_scan_going():
    gradient, service, thread, proxy = armed_gradient_over_the_wire(client_timeout_s=0.5)
    try:
        time.sleep(1.5)  # the scanner busy elsewhere: only the proxy's heartbeats reach this driver
        assert gradient.status().state is SubsystemState.RUNNING
        proxy.finish()
        assert gradient.status().state is SubsystemState.STANDBY
    finally:
        proxy.close()
        service.stop()
        thread.join(timeout=5)


def test_a_driver_frozen_through_the_faults_abort_is_made_safe_when_it_wakes_and_reset_waits_for_it(gradient_driver):
    """A gradient driver frozen (SIGSTOP: a GC pause, a stalled VM) for 1.5 s mid-scan: the scan faults, the
    abort cannot reach it, and it wakes up still RUNNING. The proxy owes it the abort and delivers it the
    moment the driver answers again; reset is refused while it is not confirmed safe, then IDLE, and the
    next scan plays."""
    port, procs = gradient_driver
    scanner, seq = prepared_over_the_wire(port)
    frozen: list[threading.Timer] = []

    def progress(t_s: float, total_s: float) -> None:
        if t_s > 2.0 and not frozen:
            os.kill(procs[0].pid, signal.SIGSTOP)
            frozen.append(threading.Timer(1.5, os.kill, (procs[0].pid, signal.SIGCONT)))
            frozen[0].start()

    try:
        result = scanner.run(on_progress=progress)
        assert result.outcome == "fault" and scanner.state is ScannerState.FAULT
        with pytest.raises(ScanctlError):  # still frozen: not confirmed safe, the scanner stays latched
            scanner.reset()
        assert scanner.state is ScannerState.FAULT
        frozen[0].join()
        deadline = time.monotonic() + 3.0  # the owed abort goes out with the first heartbeat answered
        while scanner.gradient.status().state is not SubsystemState.STANDBY and time.monotonic() < deadline:
            time.sleep(0.05)
        status = scanner.gradient.status()
        assert status.state is SubsystemState.STANDBY and "aborted" in status.message
        scanner.reset()
        assert scanner.state is ScannerState.IDLE
        assert {kind: s.state for kind, s in scanner.status().items()} == dict.fromkeys(
            ("gradient", "rf", "table"), SubsystemState.STANDBY)
        scanner.prepare(seq)
        assert scanner.run().outcome == "completed"
    finally:
        if frozen:
            frozen[0].cancel()
            os.kill(procs[0].pid, signal.SIGCONT)
        scanner.close()


class _StuckGradient:
    """A gradient whose abort does not take (a broken amplifier interface): it keeps RUNNING."""

    def __init__(self, real):
        self._real = real
        self.kind = real.kind

    def __getattr__(self, name):
        return getattr(self._real, name)

    def abort(self) -> None:
        pass

    def status(self):
        status = self._real.status()
        return type(status)(SubsystemState.RUNNING, status.time_s, "playing", status.telemetry)


def test_reset_refuses_idle_while_a_subsystem_is_not_confirmed_safe():
    scanner = Scanner.from_profile(PROFILE, {"rf": "sim://?physics=0"})
    scanner.connect()
    scanner.gradient = _StuckGradient(scanner.gradient)
    scanner._on_failure(DriverError("injected"))
    assert scanner.state is ScannerState.FAULT
    with pytest.raises(InvalidTransitionError, match="not confirmed safe: gradient RUNNING"):
        scanner.reset()
    assert scanner.state is ScannerState.FAULT
    scanner.gradient = scanner.gradient._real
    scanner.reset()
    assert scanner.state is ScannerState.IDLE
    scanner.close()


def test_another_clients_heartbeats_do_not_keep_a_driver_whose_scanner_went_silent_playing():
    """A monitoring tool heartbeating the driver service must not stand in for the dead scanner."""
    import zmq

    from scanctl.transport.wire import Message, decode, encode

    gradient, service, thread, proxy = armed_gradient_over_the_wire(client_timeout_s=0.5)
    monitor = zmq.Context.instance().socket(zmq.DEALER)
    monitor.setsockopt(zmq.LINGER, 0)
    monitor.connect(service.endpoint)
    try:
        proxy._beating.set()  # the scanner dies: no call, no heartbeat any more
        proxy._beat_thread.join()
        silent_from = time.monotonic()
        answered = 0
        while gradient.status().state is SubsystemState.RUNNING and time.monotonic() - silent_from < 3.0:
            monitor.send_multipart(encode(Message(type="heartbeat", id=f"mon-{answered}")))
            if monitor.poll(200):
                answered += decode(monitor.recv_multipart()).type == "heartbeat"
            time.sleep(0.05)
        assert answered > 3  # the monitor was heard and answered all along
        status = gradient.status()
        assert status.state is SubsystemState.STANDBY and "aborted" in status.message
        assert time.monotonic() - silent_from < 1.5  # the 0.5 s bound and a poll or two, not the monitor's 3 s
    finally:
        monitor.close()
        service.stop()
        thread.join(timeout=5)
