"""The executor: prepares a sequence, positions the table, and plays the sequence across the
subsystems in buffered segments on one timebase, driven by the scanner state machine.

Nothing moves or transmits before :meth:`Scanner.prepare` has checked the sequence against the
system profile. Every fault path makes every subsystem safe (``abort()``), records why in the journal
and keeps the acquisitions received so far (they went to ``on_acquisitions`` as they arrived).

Threading: one thread (the caller of :meth:`Scanner.run`) owns the state machine and the subsystems'
programs. Other threads (a console, the ZeroMQ server, a signal handler) ask for pause, resume, stop
and abort through thread-safe requests that the run loop honours at the next segment boundary (a safe
point); :meth:`Scanner.emergency_stop` also makes every subsystem safe at once from the calling thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scanctl.config.profile import SystemProfile
from scanctl.engine.machine import LATCHED, JournalEntry, ScannerMachine, ScannerState
from scanctl.engine.playback import Playback
from scanctl.engine.segments import compile_segments
from scanctl.errors import (
    DriverError,
    InterlockError,
    InvalidTransitionError,
    SafetyLimitError,
    ScanctlError,
)
from scanctl.hw.interfaces import Acquisitions, GradientSystem, RFSystem, Status, SubsystemState, TableSystem
from scanctl.hw.registry import KINDS, open_subsystem
from scanctl.safety.interlocks import check_table_move, make_safe, read_inputs, require_amplifiers_off
from scanctl.safety.supervisor import Supervisor
from scanctl.sequence.checks import CheckReport, check
from scanctl.sequence.model import Sequence

log = logging.getLogger(__name__)

S = ScannerState
#: Triggers by which the run loop ends a transitional state in a resting one.
_TO_RESTING = frozenset({"connected", "prepared", "rejected", "paused", "finished", "safe", "table_stopped"})


@dataclass
class RunResult:
    """How a run ended. ``outcome``: completed, stopped, aborted, fault or emergency_stop."""

    outcome: str
    acquisitions: int
    scan_time_s: float
    duration_s: float
    wall_time_s: float
    message: str = ""
    segments: int = 0
    telemetry: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The highest SAR the supervisor measured on each window (W/kg), e.g. ``sar.whole_body.10s``.
    sar_w_per_kg: dict[str, float] = field(default_factory=dict)


class Scanner:
    """The scanner: subsystems, state machine, checks and the run loop."""

    def __init__(self, profile: SystemProfile, gradient: GradientSystem, rf: RFSystem, table: TableSystem, *,
                 segment_s: float = 0.5) -> None:
        self.profile = profile
        self.gradient = gradient
        self.rf = rf
        self.table = table
        self.segment_s = segment_s
        self.interlocks: dict[str, bool] = {"emergency_stop_button": False}
        self.machine = ScannerMachine(guard=self._guard)
        self._sequence: Sequence | None = None
        self._report: CheckReport | None = None
        self._requests: list[str] = []
        self._request_lock = threading.Lock()
        self._resume = threading.Condition(self._request_lock)
        self._machine_lock = threading.RLock()
        #: An emergency stop pressed while the run loop owned a transitional state: the loop's next change to
        #: a resting state becomes EMERGENCY_STOP instead (so a press at the very end of a run is never lost).
        self._estop_pending: str | None = None
        #: The safety supervisor of the current (or last) run: see scanctl.safety.supervisor.
        self.supervisor: Supervisor | None = None
        self._coil_rate_k_per_s = 0.0  # the gradient coil's fastest rise seen since the last reset (K/s)

    @classmethod
    def from_profile(cls, profile: SystemProfile, overrides: dict[str, str] | None = None,
                     **kwargs: Any) -> Scanner:
        """Build the subsystems the profile names (``overrides`` replaces URLs per kind)."""
        urls = {**profile.subsystems, **(overrides or {})}
        return cls(profile, open_subsystem("gradient", urls["gradient"], profile),
                   open_subsystem("rf", urls["rf"], profile), open_subsystem("table", urls["table"], profile),
                   **kwargs)

    @property
    def state(self) -> ScannerState:
        return self.machine.state

    @property
    def journal(self) -> list[JournalEntry]:
        return self.machine.journal

    def _fire(self, trigger: str, reason: str = "") -> None:
        with self._machine_lock:
            if self._estop_pending is not None and trigger in _TO_RESTING:
                trigger, reason = "emergency_stop", self._estop_pending
            if trigger == "emergency_stop":
                self._estop_pending = None
            self.machine.fire(trigger, reason)

    def _guard(self, trigger: str, source: ScannerState, dest: ScannerState) -> str | None:
        if trigger in ("reset", "start", "move_table", "prepare"):
            self._read_interlocks()
        if trigger == "reset":
            tripped = [name for name, on in self.interlocks.items() if on]
            if tripped:
                return f"interlocks not clear: {', '.join(tripped)}"
            states = {s.kind: s.status().state for s in self._subsystems()}
            faulted = [kind for kind, state in states.items() if state is SubsystemState.FAULT]
            if faulted:
                return f"subsystems still in FAULT: {', '.join(faulted)}"
            unsafe = [f"{kind} {state.name}" for kind, state in states.items() if state is not SubsystemState.STANDBY]
            if unsafe:  # still playing, moving, armed or not heard from: not safe to call IDLE
                return f"subsystems not confirmed safe: {', '.join(unsafe)}"
        if trigger in ("start", "move_table", "prepare") and any(self.interlocks.values()):
            return f"interlocks active: {', '.join(name for name, on in self.interlocks.items() if on)}"
        if trigger == "start" and self._report is None:
            return "the sequence has not passed its checks"
        return None

    def _subsystems(self) -> list[Any]:
        return [self.gradient, self.rf, self.table]

    def _read_interlocks(self) -> None:
        """Update the input interlocks (door, coil) from the subsystems' telemetry."""
        self.interlocks.update(read_inputs(self.status()))

    # -- lifecycle ---------------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect every subsystem and home the table: DISCONNECTED -> IDLE."""
        self._fire("connect")
        try:
            for sub in self._subsystems():
                sub.connect(timeout_s)
            self.table.home()
        except ScanctlError as exc:
            self._make_safe()
            self._fire("fault", f"connect failed: {exc}")
            raise
        self._fire("connected")

    def close(self) -> None:
        """Make everything safe and disconnect (safe to call twice, from any resting state)."""
        self._make_safe()
        for sub in self._subsystems():
            sub.close()
        if self.state in (S.IDLE, S.READY, S.FAULT, S.EMERGENCY_STOP):
            self._fire("disconnect")

    def status(self) -> dict[str, Status]:
        return {sub.kind: sub.status() for sub in self._subsystems()}

    # -- preparation ---------------------------------------------------------------------------------------
    def prepare(self, seq: Sequence) -> CheckReport:
        """Check ``seq`` against the profile: READY if it passes; otherwise back to IDLE and
        SafetyLimitError with the first violations (nothing has moved)."""
        self._fire("prepare")
        report = check(seq, self.profile)
        if not report.ok:
            self._report = None
            first = "; ".join(v.message for v in report.violations[:3])
            counts = ", ".join(f"{k}: {n}" for k, n in report.violation_counts.items())
            self._fire("rejected", f"checks failed ({counts})")
            raise SafetyLimitError(f"sequence refused before anything moved ({counts}): {first}")
        self._sequence, self._report = seq, report
        self._fire("prepared", f"{report.blocks} blocks, {report.duration_s:.3f} s")
        return report

    # -- table outside a scan ------------------------------------------------------------------------------
    def move_table(self, position_mm: float, speed_mm_s: float | None = None) -> float:
        """Move the table while nothing plays (IDLE or READY only). Raises SafetyLimitError outside the
        profile's travel or speed limits and InterlockError while gradients or RF are on (nothing moves)."""
        self.require_known(("table",))
        if self.state in (S.IDLE, S.READY):  # elsewhere the state machine refuses, naming the state
            check_table_move(self.profile.safety.table, position_mm, speed_mm_s)
            require_amplifiers_off(self.status())
        self._fire("move_table", f"to {position_mm} mm")
        try:
            self.table.move_to(position_mm, speed_mm_s)
            self.table.wait_idle()
        except ScanctlError as exc:
            self._on_failure(exc)
            raise
        self._fire("table_stopped")
        return self.table.position_mm()

    def require_known(self, subsystems: tuple[str, ...] = KINDS) -> None:
        """Refuse motion and scans while a subsystem's state is UNKNOWN or OFF (its driver silent or restarted,
        its controller lost or reset: what it is doing cannot be trusted): latch FAULT, so that ``reset``
        reconnects it,
        and raise DriverError naming it. Only from IDLE or READY (elsewhere the run's own checks act)."""
        if self.state not in (S.IDLE, S.READY):
            return
        for sub in self._subsystems():
            if sub.kind not in subsystems:
                continue
            status = sub.status()
            if status.state in (SubsystemState.UNKNOWN, SubsystemState.OFF):  # OFF: lost since connect (restarted)
                exc = DriverError(f"the {sub.kind}'s state is {status.state.name}: {status.message}")
                self._on_failure(exc)
                raise exc

    # -- requests from other threads ---------------------------------------------------------------------
    def request(self, what: str) -> None:
        """Ask the run loop to ``pause``, ``resume``, ``stop`` or ``abort`` at the next safe point."""
        if what not in ("pause", "resume", "stop", "abort"):
            raise InvalidTransitionError(f"unknown request {what!r}")
        with self._request_lock:
            self._requests.append(what)
            self._resume.notify_all()

    def emergency_stop(self, reason: str = "emergency stop") -> None:
        """Make every subsystem safe now, from any thread; the scanner latches EMERGENCY_STOP."""
        self.interlocks["emergency_stop_button"] = True
        self._make_safe()
        with self._request_lock:
            self._requests.append("emergency_stop")
            self._resume.notify_all()
        with self._machine_lock:
            if self.state in (S.IDLE, S.READY, S.FAULT, S.CONNECTING, S.PAUSED):
                self._fire("emergency_stop", reason)
            elif self.state is not S.EMERGENCY_STOP:
                self._estop_pending = reason

    def release_emergency_stop(self) -> None:
        self.interlocks["emergency_stop_button"] = False

    def reset(self) -> None:
        """Leave FAULT or EMERGENCY_STOP (interlocks clear, subsystem faults cleared) -> IDLE.

        A subsystem that was lost (OFF or UNKNOWN, e.g. its driver process restarted) is connected again.
        Every subsystem is made safe first, and the scanner stays latched (InvalidTransitionError naming
        them) unless every one then confirms it is safe (STANDBY): a driver that froze through the fault's
        abort and woke up still playing is never called IDLE.
        """
        if self.state not in LATCHED:  # nothing is touched for a reset that is not allowed here
            raise InvalidTransitionError(f"cannot reset while {self.state.name} (allowed: "
                                         f"{', '.join(self.machine.allowed())})")
        self._make_safe()
        for sub in self._subsystems():
            if sub.status().state in (SubsystemState.OFF, SubsystemState.UNKNOWN):
                sub.connect()  # reached anew: then reset like the others (a fault it latched while lost, a
            sub.reset()        # table's host-link stop, is cleared in the same reset; a coolant fault too)
        self._fire("reset")
        self._report = None
        self._coil_rate_k_per_s = 0.0
        if self.table.status().telemetry.get("homed", 1.0) == 0.0:
            self.table.home()

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, *, table_position_mm: float = 0.0,
            on_acquisitions: Callable[[Acquisitions], None] | None = None,
            on_progress: Callable[[float, float], None] | None = None,
            patient_weight_kg: float | None = None, mode: str = "normal") -> RunResult:
        """Play the prepared sequence. Returns how it ended; raises only for commands refused up front
        (InvalidTransitionError, SafetyLimitError for a table position outside the profile's limits or an
        unknown ``mode``).

        ``on_acquisitions`` gets every batch of completed acquisitions (in index order) as it arrives.
        The safety supervisor watches the run for the patient's weight (kg; None: a conservative assumed
        weight, noted in the journal) and the operating ``mode`` (``normal`` or ``first_level``).
        """
        seq = self._sequence
        if seq is None or self._report is None:
            raise InvalidTransitionError(f"cannot start while {self.state.name}: no sequence prepared")
        sink = on_acquisitions or (lambda batch: None)
        self.require_known()
        limits = self.profile.safety
        check_table_move(limits.table, table_position_mm, None)
        supervisor = Supervisor(limits, gamma_hz_per_t=self.profile.gamma_hz_per_t,
                                patient_weight_kg=patient_weight_kg, mode=mode, scan_position_mm=table_position_mm,
                                coil_rate_k_per_s=self._coil_rate_k_per_s)
        supervisor.horizon_s = min(self.segment_s, self.gradient.buffer_s, self.rf.buffer_s,
                                   supervisor.max_interval_s())
        t_wall = time.perf_counter()
        play = Playback(self.gradient, self.rf, self.table, supervisor, sink)
        with self._request_lock:  # before the state changes: a request made once it has is this run's
            self._requests.clear()
        self.supervisor = supervisor
        self._fire("start", f"table to {table_position_mm} mm; {supervisor.note()}")
        try:
            self.table.move_to(table_position_mm)
            table = self.table.wait_idle()
            # Before anything is armed: an emergency stop or abort that came while the table moved ends the
            # run here, and the supervisor looks once (a coil already too hot for the first segment, a
            # subsystem already silent, the table not where it should be).
            pending = self._pending_before_arming()
            if pending is not None:
                self._fire("abort", f"{pending} requested while positioning: nothing armed")
                self._make_safe()
                self._fire("safe", "every subsystem safe")
                return self._result("aborted", seq, play, t_wall, f"{pending} while positioning: nothing armed")
            supervisor.before_start({**self.status(), "table": table})
            for sub in (self.gradient, self.rf):
                sub.arm()
            self._fire("positioned", table_report(table))
            for sub in (self.gradient, self.rf):
                sub.start()
            outcome = self._play(seq, play, on_progress)
            if self.state is S.EMERGENCY_STOP:  # pressed as the run ended: latched instead of the end
                outcome = "emergency_stop"
        except ScanctlError as exc:
            self._on_failure(exc)
            message = str(exc)
            try:  # what the receiver completed before the fault (one whose state is UNKNOWN has none to give)
                rf = self.rf.status()
                if rf.state is SubsystemState.UNKNOWN:
                    raise DriverError(f"rf: {rf.message}")
                play.collect()
            except ScanctlError as lost:
                log.error("rf: acquisitions after the last collected cannot be taken: %s", lost)
                message += f"; acquisitions after the last collected are lost ({lost})"
            return self._result("fault" if self.state is S.FAULT else "emergency_stop", seq, play, t_wall, message)
        finally:  # the coil's fastest rise is remembered for the next run, until a reset
            self._coil_rate_k_per_s = supervisor.coil_rate_k_per_s
        return self._result(outcome, seq, play, t_wall, "")

    def _pending_before_arming(self) -> str | None:
        """What came while the table moved to the scan position and must keep anything from being armed: the
        emergency stop (raises InterlockError: latched), or a stop or abort requested (returned)."""
        if self._estop_pending is not None or self.interlocks.get("emergency_stop_button"):
            raise InterlockError("emergency stop while positioning: nothing armed")
        with self._request_lock:
            pending = [what for what in self._requests if what in ("abort", "stop")]
            if pending:
                self._requests.clear()
        return pending[0] if pending else None

    def _play(self, seq: Sequence, play: Playback, on_progress: Callable[[float, float], None] | None) -> str:
        buffer_s = min(self.gradient.buffer_s, self.rf.buffer_s)
        playhead = 0.0
        duration = seq.duration_s
        larmor = self.profile.gamma_hz_per_t * self.profile.b0_t
        # Segments as long as the buffers allow; the supervisor checks more often, every horizon, inside
        # each sync (a check is cheap, a segment load and a raw data write are not).
        for segment in compile_segments(seq, larmor_hz=larmor, max_duration_s=min(self.segment_s, buffer_s)):
            outcome = self._safe_point(play)
            if outcome is not None:
                return outcome
            playhead = max(playhead, play.synced_s)  # a pause played the buffer out: the clock is there now
            # Play ahead only as far as the buffer must drain for this segment, and never past what is
            # loaded (its start): a subsystem asked to play beyond its program would fall silent.
            target = min(segment.t1_s - buffer_s, segment.t0_s)
            if target > playhead:
                playhead = play.sync(target)
                play.collect()
            play.supervisor.before_load(segment.rf)
            self.gradient.load(segment.gradient)
            self.rf.load(segment.rf, segment.adc)
            play.segments += 1
            self.machine.scan_time_s = playhead
            if on_progress is not None:
                on_progress(playhead, duration)
        play.sync(duration)
        play.collect()
        play.finish()
        self.machine.scan_time_s = duration
        if on_progress is not None:
            on_progress(duration, duration)
        stopping = self.state is S.STOPPING
        self._fire("finished", "stopped" if stopping else "sequence complete")
        return "stopped" if stopping else "completed"

    def _safe_point(self, play: Playback) -> str | None:
        """Honour requests between segments. Returns an outcome when the run must end here."""
        while True:
            with self._request_lock:
                requests, self._requests = self._requests, []
            if not requests:
                if self.state is not S.PAUSED:
                    return None
                self._wait_while_paused()  # then honour what woke it, before anything more is loaded
                continue
            for what in requests:
                if what == "emergency_stop":
                    raise InterlockError("emergency stop")
                if what == "abort":
                    self._fire("abort", "abort requested")
                    self._make_safe()
                    play.collect()
                    self._fire("safe", "every subsystem safe")
                    return "aborted"
                if what == "stop" and self.state in (S.RUNNING, S.PAUSED):
                    # Finish cleanly: nothing more is loaded; what is loaded plays out.
                    self._fire("stop", "stop requested")
                    self._drain(play)
                    play.finish()
                    self._fire("finished", "stopped")
                    return "stopped"
                if what == "pause" and self.state is S.RUNNING:
                    self._fire("pause", "pause requested")
                    self._drain(play)
                    self._fire("paused", f"at {self.machine.scan_time_s or 0.0:.3f} s")
                if what == "resume" and self.state is S.PAUSED:
                    self._fire("resume")
            if self.state is not S.PAUSED:
                return None

    def _wait_while_paused(self) -> None:
        with self._request_lock:
            while not self._requests:
                self._resume.wait()

    def _drain(self, play: Playback) -> None:
        """Play out everything loaded (the buffer) and collect its data."""
        self.machine.scan_time_s = play.drain()

    def _on_failure(self, exc: ScanctlError) -> None:
        """Every fault path: make safe, then latch FAULT (or EMERGENCY_STOP)."""
        self._make_safe()
        with self._machine_lock:
            if self.state in (S.FAULT, S.EMERGENCY_STOP, S.DISCONNECTED):
                return
            if isinstance(exc, InterlockError) or self.interlocks.get("emergency_stop_button") or self._estop_pending:
                self._fire("emergency_stop", self._estop_pending or str(exc))
            else:
                self.machine.fire("fault", f"{type(exc).__name__}: {exc}")

    def _make_safe(self) -> None:
        make_safe(self._subsystems())  # reaches every subsystem even if one complains

    def _result(self, outcome: str, seq: Sequence, play: Playback, t_wall: float, message: str) -> RunResult:
        status = self.status()
        return RunResult(
            outcome=outcome,
            acquisitions=play.acquisitions,
            scan_time_s=play.played_s(status),
            duration_s=seq.duration_s,
            wall_time_s=time.perf_counter() - t_wall,
            message=message,
            segments=play.segments,
            telemetry={k: dict(v.telemetry) for k, v in status.items()},
            sar_w_per_kg=dict(self.supervisor.max_sar_w_per_kg) if self.supervisor is not None else {},
        )


def table_report(status: Status) -> str:
    """The table's telemetry when it stopped, for the journal (``table at 0 mm; homed=1, boot=3``)."""
    telemetry = dict(status.telemetry)
    where = telemetry.pop("position_mm", None)
    head = "table position unknown" if where is None else f"table at {where:g} mm"
    return head + ("; " + ", ".join(f"{k}={v:g}" for k, v in telemetry.items()) if telemetry else "")


__all__ = ["DriverError", "RunResult", "Scanner"]
