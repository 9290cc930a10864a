"""Helpers for tests of the serial table: the controller simulator as a process (``scanctl sim table``) or
in a thread of the test (to look at the simulated axis itself, the ground truth)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from scanctl.simulators.table_controller import PtyTransport, TableController, build_controller, serve

SPEEDUP = 20.0  # the simulated axis runs this much faster than the wall clock in tests


def start_sim(options: str = "", *, tcp: bool = False, port: int = 0, faults: str = "", seed: int = 1,
              speedup: float = SPEEDUP) -> tuple[subprocess.Popen[str], str]:
    """``scanctl sim table`` in its own process (on a pty, or with ``tcp`` on ``port``, 0: a free one);
    returns it and the table URL to reach it."""
    where = ["--tcp", f"127.0.0.1:{port}"] if tcp else ["--pty"]
    cmd = [sys.executable, "-m", "scanctl", "sim", "table", *where,
           "--url", f"sim://?{options}" if options else "sim://", "--speedup", str(speedup), "--seed", str(seed)]
    if faults:
        cmd += ["--fault", faults]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("table simulator on "), line
    where = line.split()[-1]
    return proc, where if where.startswith("socket://") else f"serial://{where}"


def stop_sim(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


class ThreadSim:
    """The controller simulator on a real pty, served from a thread of the test process."""

    def __init__(self, options: str = "", faults: str = "", *, seed: int = 1, speedup: float = SPEEDUP) -> None:
        self.controller: TableController = build_controller(f"sim://?{options}" if options else "sim://", faults,
                                                            seed=seed, speedup=speedup)
        self._transport = PtyTransport()
        self.url = f"serial://{self._transport.path}"
        self._stop = False
        self._reboot = False
        self._thread = threading.Thread(target=serve, args=(self.controller, self._transport, lambda: self._stop,
                                                            self._take_reboot), daemon=True)

    def __enter__(self) -> ThreadSim:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self._transport.close()

    def reboot(self) -> None:
        """Reboot the controller (from its own thread) and wait until it has."""
        boot = self.controller.boot
        self._reboot = True
        deadline = time.monotonic() + 2
        while self.controller.boot == boot and time.monotonic() < deadline:
            time.sleep(0.005)

    def _take_reboot(self) -> bool:
        wanted, self._reboot = self._reboot, False
        return wanted

    def true_position_mm(self) -> float:
        """Where the simulated axis really is."""
        return self.controller.table.position_mm()
