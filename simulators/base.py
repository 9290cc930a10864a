"""What every simulated sequencer shares: the lifecycle, a virtual clock, a finite program buffer and
fault injection. Subclasses play their queued programs in :meth:`_play_until`.

The virtual clock only moves when the executor calls ``sync(t)``: simulation is as fast as the
computer allows and fully repeatable, and a fault scheduled at ``t`` fires exactly there. With
``realtime`` (URL option ``realtime=1``, as beside real hardware on a rig) ``sync(t)`` also waits until
``t`` seconds of wall-clock time have passed since ``start()``, as a real sequencer would; ``abort()``
cuts the wait short.

Injected faults (``fault=KIND@T``) trip the subsystem at scan time ``T`` (latched FAULT, output safe),
except the soft ones, which leave it running so that the safety supervisor must notice: ``silent`` (a
lost heartbeat: from ``T`` on ``status()`` keeps answering the snapshot taken at ``T``, while the
hardware plays on; ``abort()`` and ``reset()`` end the silence, as a hard-wired abort line would) and
those a subclass handles in :meth:`_soft_fault`.
"""

from __future__ import annotations

import logging
import threading
import time

from scanctl.errors import BufferFullError, DriverError, SubsystemFault
from scanctl.hw.interfaces import Status, SubsystemState

log = logging.getLogger(__name__)


class SimulatedSequencer:
    """Base of the gradient and RF simulators. ``fault`` is ``(kind, time_s)`` or ``None``."""

    kind = "subsystem"

    def __init__(self, url: str, *, buffer_s: float = 2.0, fault: tuple[str, float] | None = None,
                 realtime: bool = False) -> None:
        self.url = url
        self.buffer_s = buffer_s
        self.realtime = realtime
        self._started_wall_s = 0.0
        self._interrupt = threading.Event()  # set by abort(): ends a real-time wait at once
        self._fault_plan = fault
        self._state = SubsystemState.OFF
        self._message = ""
        self._playhead_s: float = 0.0
        self._loaded_until_s: float = 0.0
        self._lock = threading.RLock()  # abort() may come from another thread than the executor's
        self._frozen: Status | None = None  # fault=silent: the last status this subsystem sent

    # -- lifecycle ----------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._state is SubsystemState.OFF:
                self._state = SubsystemState.STANDBY
                self._message = "connected"

    def close(self) -> None:
        with self._lock:
            if self._state is not SubsystemState.OFF:
                self._make_safe()
            self._state = SubsystemState.OFF

    def status(self) -> Status:
        with self._lock:
            if self._frozen is not None:
                return self._frozen
            return Status(self._state, self._playhead_s, self._message, self._telemetry())

    def abort(self) -> None:
        self._interrupt.set()
        with self._lock:
            self._frozen = None
            self._make_safe()
            if self._state not in (SubsystemState.FAULT, SubsystemState.OFF):
                self._state = SubsystemState.STANDBY
                self._message = "aborted: safe"

    def reset(self) -> None:
        with self._lock:
            self._frozen = None
            if self._state is SubsystemState.FAULT:
                self._state = SubsystemState.STANDBY
                self._message = "fault cleared"
                self._fault_plan = None

    def arm(self) -> None:
        with self._lock:
            self._require(SubsystemState.STANDBY, "arm")
            self._playhead_s = self._loaded_until_s = 0.0
            self._state = SubsystemState.ON

    def start(self) -> None:
        with self._lock:
            self._require(SubsystemState.ON, "start")
            self._state = SubsystemState.RUNNING
            self._interrupt.clear()
            self._started_wall_s = time.monotonic()

    def finish(self) -> None:
        with self._lock:
            if self._state is SubsystemState.RUNNING:
                self._make_safe()  # everything has played: the output is off (no stale power readings)
                self._state = SubsystemState.STANDBY
                self._message = f"finished at {self._playhead_s:.6f} s"

    def sync(self, t_s: float, timeout_s: float = 10.0) -> Status:
        """Play everything queued before ``t_s`` (or up to a scheduled fault, which then raises)."""
        if self.realtime:
            with self._lock:
                self._require_running("sync")
                target = min(t_s, self._loaded_until_s)
            self._interrupt.wait(max(0.0, self._started_wall_s + target - time.monotonic()))
        with self._lock:
            self._require_running("sync")
            target = min(t_s, self._loaded_until_s)
            if self._fault_plan is not None and self._fault_plan[1] <= target:
                kind, when = self._fault_plan
                if when > self._playhead_s:
                    self._play_until(when)
                    self._playhead_s = when
                if not self._soft_fault(kind, when):
                    self._trip(f"{kind} at {when:.6f} s (injected)")
                self._fault_plan = None
            if target > self._playhead_s:
                self._play_until(target)
                self._playhead_s = target
            return self.status()

    # -- helpers for subclasses -----------------------------------------------------------------------
    def _accept_program(self, t0_s: float, t1_s: float) -> None:
        """Check a program fits: in order, and within the buffer ahead of the playhead."""
        self._require_running_or_armed("load")
        if t0_s < self._loaded_until_s - 1e-9:
            raise DriverError(f"{self.kind}: program starts at {t0_s:.6f} s, before the end of the last one "
                              f"({self._loaded_until_s:.6f} s)")
        if t1_s - self._playhead_s > self.buffer_s + 1e-9:
            raise BufferFullError(f"{self.kind}: program up to {t1_s:.6f} s is more than the {self.buffer_s:g} s "
                                  f"buffer ahead of the playhead ({self._playhead_s:.6f} s)")

    def _trip(self, why: str) -> None:
        self._make_safe()
        self._state = SubsystemState.FAULT
        self._message = why
        log.warning("%s fault: %s", self.kind, why)
        raise SubsystemFault(f"{self.kind}: {why}")

    def _require(self, state: SubsystemState, action: str) -> None:
        if self._state is not state:
            raise DriverError(f"{self.kind}: cannot {action} in state {self._state.name} ({self._message})")

    def _require_running(self, action: str) -> None:
        if self._state is SubsystemState.FAULT:
            raise SubsystemFault(f"{self.kind}: {self._message}")
        self._require(SubsystemState.RUNNING, action)

    def _require_running_or_armed(self, action: str) -> None:
        if self._state not in (SubsystemState.ON, SubsystemState.RUNNING):
            raise DriverError(f"{self.kind}: cannot {action} in state {self._state.name} ({self._message})")

    def _soft_fault(self, kind: str, when_s: float) -> bool:
        """Begin an injected fault that does not trip; False for the kinds that trip."""
        if kind == "silent":
            self._frozen = Status(self._state, self._playhead_s, self._message, self._telemetry())
            log.warning("%s: silent from %.6f s (injected lost heartbeat)", self.kind, when_s)
            return True
        return False

    # -- for subclasses to implement ------------------------------------------------------------------
    def _play_until(self, t_s: float) -> None:
        raise NotImplementedError

    def _make_safe(self) -> None:
        """Drop queued programs and output nothing (gradients zero, RF blanked)."""
        raise NotImplementedError

    def _telemetry(self) -> dict[str, float]:
        return {}
