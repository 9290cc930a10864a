"""Helpers for tests of the serial table: the controller simulator as a process (``scanctl sim table``) or
in a thread of the test (to look at the simulated axis itself, the ground truth)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from scanctl.simulators.table_controller import TableController, build_controller
from scanctl.simulators.table_serve import PtyTransport, serve

from scanctl.transport.table_protocol import Line, LineSplitter, decode, frame

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


class ManualClock:
    """A wall clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class ClockedController:
    """The controller's firmware on a hand-moved clock, spoken to line by line (no transport, no thread):
    for exact timing of its watchdog."""

    def __init__(self, options: str = "speed_mm_s=100&accel_mm_s2=1000") -> None:
        from scanctl.config import profile as profiles
        from scanctl.hw.registry import open_subsystem

        self.clock = ManualClock()
        table = open_subsystem("table", f"sim://?{options}", profiles.load())
        table.follow_clock(self.clock)
        self.controller = TableController(table, wall_clock=self.clock)
        self._seq = 0
        self.output()  # the power-up !RESET

    def command(self, text: str) -> Line:
        """Send ``>SEQ text`` and return the controller's reply (anything else it sent is dropped)."""
        self._seq += 1
        self.controller.receive(frame(f">{self._seq} {text}"))
        replies = [line for line in self.output() if line.seq == self._seq]
        assert len(replies) == 1, replies
        return replies[0]

    def advance(self, seconds: float, step_s: float = 0.01) -> None:
        """Let ``seconds`` pass with the controller's loop turning every ``step_s`` (it looks at its axis)."""
        end = self.clock.now_s + seconds
        while self.clock.now_s < end:
            self.clock.advance(min(step_s, end - self.clock.now_s))
            self.controller.poll()

    def stall(self, seconds: float) -> None:
        """Let ``seconds`` pass with the controller's loop not turning (a frozen controller)."""
        self.clock.advance(seconds)

    def output(self) -> list[Line]:
        """Every line the controller has sent since the last look, decoded."""
        return [decode(raw) for raw in LineSplitter().feed(self.controller.due_output())]
