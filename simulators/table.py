"""Simulated patient table: one axis with homing, trapezoidal moves under acceleration and speed
limits, travel limits and position telemetry.

Time is virtual: a move's duration is computed from its motion profile and the table's clock jumps
to the move's end when the caller waits (so tests and simulations do not sleep). ``fault=stall@T``
makes the motor stall ``T`` seconds into the next move.

After :meth:`follow_clock` (a function returning seconds, e.g. ``time.monotonic``) the table moves in
real time instead: the position follows that clock, and :meth:`wait_idle` waits for it. The table controller
simulator (:mod:`scanctl.simulators.table_controller`) runs it this way behind its serial line. Either
way the table's clock (``Status.time_s``) counts the seconds spent moving.

URL: ``sim://?min_mm=-1000&max_mm=1000&speed_mm_s=100&accel_mm_s2=200`` — see ``OPTIONS``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from scanctl.config.profile import SystemProfile
from scanctl.errors import ConfigError, DriverError, DriverTimeoutError, SafetyLimitError, SubsystemFault
from scanctl.hw.interfaces import Status, SubsystemState
from scanctl.hw.registry import Converter, SubsystemURL, fault_spec, positive_float


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class SimulatedTable:
    """Table simulator; positions in mm from home, speeds in mm/s."""

    kind = "table"
    OPTIONS: ClassVar[dict[str, Converter]] = {
        "min_mm": _float,
        "max_mm": _float,
        "speed_mm_s": positive_float,
        "accel_mm_s2": positive_float,
        "fault": fault_spec(("stall",)),
    }

    def __init__(self, url: str, *, min_mm: float = -1000.0, max_mm: float = 1000.0, speed_mm_s: float = 100.0,
                 accel_mm_s2: float = 200.0, fault: tuple[str, float] | None = None) -> None:
        if not min_mm < max_mm:
            raise ValueError(f"table travel limits min_mm={min_mm} must be below max_mm={max_mm}")
        self.url = url
        self.min_position_mm = min_mm
        self.max_position_mm = max_mm
        self.max_speed_mm_s = speed_mm_s
        self.accel_mm_s2 = accel_mm_s2
        self._fault_plan = fault
        self._state = SubsystemState.OFF
        self._message = ""
        self._homed = False
        self._position = 0.0
        self._clock_s = 0.0  # time spent moving
        self._clock: Callable[[], float] | None = None  # real-time mode: the clock motion follows (s)
        self._last_tick_s = 0.0
        self._move: tuple[float, float, float, float] | None = None  # start_mm, target_mm, speed, start_clock
        self._lock = threading.RLock()

    @classmethod
    def from_url(cls, url: SubsystemURL, options: dict[str, Any], profile: SystemProfile) -> SimulatedTable:
        try:
            return cls(url.url, **options)
        except ValueError as exc:
            raise ConfigError(f"table URL {url.url!r}: {exc}") from exc

    # -- lifecycle --------------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._state is SubsystemState.OFF:
                self._state, self._message = SubsystemState.STANDBY, "connected (not homed)"

    def close(self) -> None:
        with self._lock:
            self._halt()
            self._state = SubsystemState.OFF

    def status(self) -> Status:
        with self._lock:
            self._settle()
            return Status(self._state, self._clock_s, self._message,
                          {"position_mm": self._position, "homed": float(self._homed)})

    def abort(self) -> None:
        with self._lock:
            self._halt()
            if self._state is SubsystemState.MOVING:
                self._state, self._message = SubsystemState.STANDBY, "aborted: stopped"

    def reset(self) -> None:
        with self._lock:
            if self._state is SubsystemState.FAULT:
                self._state, self._message, self._fault_plan = SubsystemState.STANDBY, "fault cleared", None
                self._homed = False  # a stalled axis has lost its position

    def follow_clock(self, clock: Callable[[], float]) -> None:
        """Move in real time from now on: positions follow ``clock`` (seconds, e.g. ``time.monotonic``)."""
        with self._lock:
            self._settle()
            self._clock, self._last_tick_s = clock, clock()

    def power_cycle(self) -> None:
        """The controller rebooted: the motor stops where it is; homing and a latched fault are forgotten."""
        with self._lock:
            self._halt()
            self._homed = False
            self._state, self._message = SubsystemState.STANDBY, "powered up (not homed)"

    # -- motion -----------------------------------------------------------------------------------------
    def home(self, timeout_s: float = 60.0) -> None:
        self.begin_home()
        self.wait_idle(timeout_s)
        with self._lock:
            self._message = "homed"

    def begin_home(self) -> None:
        """Start homing and return at once (status says MOVING until home is reached)."""
        with self._lock:
            self._require_idle("home")
            self._start_move(0.0, self.max_speed_mm_s)
            self._homed = True  # the home switch defines 0 mm

    def move_to(self, position_mm: float, speed_mm_s: float | None = None) -> None:
        with self._lock:
            self._require_idle("move")
            if not self._homed:
                raise DriverError("table: not homed; home() first")
            speed = self.max_speed_mm_s if speed_mm_s is None else speed_mm_s
            if not (math.isfinite(position_mm) and self.min_position_mm <= position_mm <= self.max_position_mm):
                raise SafetyLimitError(f"table: target {position_mm} mm is outside the travel limits "
                                       f"{self.min_position_mm:g} to {self.max_position_mm:g} mm")
            if not (math.isfinite(speed) and 0 < speed <= self.max_speed_mm_s):
                raise SafetyLimitError(f"table: speed {speed} mm/s is outside 0 to {self.max_speed_mm_s:g} mm/s")
            self._start_move(position_mm, speed)

    def wait_idle(self, timeout_s: float = 60.0) -> Status:
        if self._clock is not None:
            self._wait_real_time(timeout_s)
        with self._lock:
            if self._move is not None:
                end = self._move[3] + self._move_duration(*self._move[:3])
                remaining = end - self._clock_s
                if remaining > timeout_s:
                    raise DriverTimeoutError(f"table: move needs {remaining:.1f} s more, longer than {timeout_s} s")
                self._clock_s = max(self._clock_s, end)
                self._settle()
            if self._state is SubsystemState.FAULT:
                raise SubsystemFault(f"table: {self._message}")
            return self.status()

    def position_mm(self) -> float:
        with self._lock:
            self._settle()
            return self._position

    def stop(self) -> None:
        with self._lock:
            self._halt()
            if self._state is SubsystemState.MOVING:
                self._state, self._message = SubsystemState.STANDBY, "stopped"

    # -- internals ----------------------------------------------------------------------------------------
    def _wait_real_time(self, timeout_s: float) -> None:
        assert self._clock is not None
        deadline = self._clock() + timeout_s
        while True:
            with self._lock:
                self._settle()
                if self._move is None:
                    return
            if self._clock() > deadline:
                raise DriverTimeoutError(f"table: still moving after {timeout_s} s")
            time.sleep(0.005)

    def _tick(self) -> None:
        """Real-time mode: advance the table's clock by the time passed, while (and only while) it moves."""
        if self._clock is None:
            return
        now = self._clock()
        if self._move is not None:
            end = self._move[3] + self._move_duration(*self._move[:3])
            self._clock_s = min(self._clock_s + max(now - self._last_tick_s, 0.0), end)
        self._last_tick_s = now

    def _require_idle(self, action: str) -> None:
        self._settle()
        if self._state is not SubsystemState.STANDBY:
            raise DriverError(f"table: cannot {action} in state {self._state.name} ({self._message})")

    def _start_move(self, target: float, speed: float) -> None:
        self._move = (self._position, target, speed, self._clock_s)
        self._state, self._message = SubsystemState.MOVING, f"moving to {target:g} mm"

    def _move_duration(self, start: float, target: float, speed: float) -> float:
        d = abs(target - start)
        a = self.accel_mm_s2
        if d <= speed * speed / a:  # triangular profile: never reaches full speed
            return 2.0 * math.sqrt(d / a)
        return d / speed + speed / a

    def _position_at(self, start: float, target: float, speed: float, elapsed: float) -> float:
        d, a = abs(target - start), self.accel_mm_s2
        total = self._move_duration(start, target, speed)
        if elapsed >= total:
            return target
        v = min(speed, math.sqrt(d * a))
        t_acc = v / a
        if elapsed < t_acc:
            s = 0.5 * a * elapsed**2
        elif elapsed < total - t_acc:
            s = 0.5 * a * t_acc**2 + v * (elapsed - t_acc)
        else:
            s = d - 0.5 * a * (total - elapsed) ** 2
        return start + math.copysign(s, target - start)

    def _settle(self) -> None:
        """Bring the position up to the table's clock; finish or stall the current move."""
        self._tick()
        if self._move is None:
            return
        start, target, speed, t0 = self._move
        elapsed = self._clock_s - t0
        if self._fault_plan is not None and elapsed >= self._fault_plan[1]:
            self._position = self._position_at(start, target, speed, self._fault_plan[1])
            self._move = None
            self._state = SubsystemState.FAULT
            self._message = f"motor stall at {self._position:.1f} mm (injected)"
            return
        if self._clock_s >= t0 + self._move_duration(start, target, speed):  # the same sum as wait_idle's end
            # At the target, exactly: a move too short for the clock to see (1e-296 mm takes 1e-148 s) too.
            self._position, self._move = target, None
            self._state, self._message = SubsystemState.STANDBY, f"at {self._position:g} mm"
        else:
            self._position = self._position_at(start, target, speed, elapsed)

    def _halt(self) -> None:
        self._settle()
        self._move = None
