"""One run's playing: the gradient and RF sequencers kept in step on one timebase, every step checked by the
safety supervisor, and the receiver's acquisitions collected as they complete.

The executor (:mod:`scanctl.engine.executor`) decides what is loaded and when (segments, safe points,
requests); a :class:`Playback` plays up to a time, drains what is loaded, and knows how far the sequencers
played and how much came back. It raises the subsystems' :class:`~scanctl.errors.ScanctlError` (and the
supervisor's) to the executor, which makes everything safe.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from scanctl.errors import DriverTimeoutError, ScanctlError
from scanctl.hw.interfaces import Acquisitions, GradientSystem, RFSystem, Status, TableSystem
from scanctl.safety.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class Playback:
    """The sequencers of one run and what they have done: ``synced_s`` (s), the time up to which all are in
    step; ``acquisitions`` handed to ``sink``; ``segments`` loaded (counted by the executor)."""

    gradient: GradientSystem
    rf: RFSystem
    table: TableSystem
    supervisor: Supervisor
    sink: Callable[[Acquisitions], None]
    synced_s: float = 0.0
    acquisitions: int = 0
    segments: int = 0

    def sync(self, t_s: float) -> float:
        """Play up to ``t_s`` (s) in steps of at most the supervisor's horizon, each one checked; returns
        ``t_s``. Raises what a subsystem or the supervisor raises."""
        while True:
            step = min(t_s, self.synced_s + self.supervisor.horizon_s)
            statuses = self._sync_once(step)
            statuses["table"] = self.table.status()
            self.synced_s = max(self.synced_s, step)
            self.supervisor.observe(step, statuses)
            if step >= t_s:
                return t_s

    def _sync_once(self, t_s: float) -> dict[str, Status]:
        statuses: dict[str, Status] = {}
        sequencers = (self.gradient, self.rf)
        for sub in sequencers:
            try:
                statuses[sub.kind] = sub.sync(t_s)
            except ScanctlError as exc:
                # The others played on until the fault: take what they completed before it (a silent
                # subsystem is not asked where it stopped: the last time all were in step stands for it).
                t_fault = self.synced_s
                if not isinstance(exc, DriverTimeoutError):
                    with contextlib.suppress(ScanctlError):
                        t_fault = sub.status().time_s
                for other in sequencers:
                    if other is not sub:
                        try:
                            other.sync(t_fault)
                        except ScanctlError as exc:
                            log.error("%s: cannot play up to the fault: %s", other.kind, exc)
                raise
        return statuses

    def collect(self) -> None:
        """Hand the acquisitions the receiver completed to the sink."""
        batch = self.rf.acquisitions()
        if batch:
            self.sink(batch)
            self.acquisitions += len(batch)

    def drain(self) -> float:
        """Play out everything loaded (the buffers) and collect its data; returns the time played to (s)."""
        loaded = max(sub.status().time_s + sub.status().telemetry.get("buffered_s", 0.0)
                     for sub in (self.gradient, self.rf))
        self.sync(loaded)
        self.collect()
        return loaded

    def finish(self) -> None:
        """Tell the sequencers that nothing more will be loaded."""
        for sub in (self.gradient, self.rf):
            sub.finish()

    def played_s(self, status: dict[str, Status]) -> float:
        """How far the sequencers played (s): the later clock; a clock that is not finite (a faulty report,
        which the supervisor trips on) counts for nothing, and without any the last time all were in step
        stands."""
        clocks = [status[kind].time_s for kind in ("gradient", "rf") if math.isfinite(status[kind].time_s)]
        return max(clocks) if clocks else self.synced_s
