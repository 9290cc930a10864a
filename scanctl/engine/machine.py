"""The scanner state machine: one table of allowed changes, guards on each, every change logged.

Built with ``transitions`` (``auto_transitions=False``: no ``to_<state>`` back doors). Resting states
are where the scanner waits for a command; transitional states last while an action runs. FAULT and
EMERGENCY_STOP are latched: only ``reset`` leaves them, and only with the interlocks clear.

Commands (triggers) that the current state does not allow raise :class:`InvalidTransitionError`
naming the state. The machine is driven from one owner (the executor's thread); commands from other
threads go through the executor's request queue, never straight to the machine.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from transitions import EventData, Machine, MachineError

from scanctl.errors import InvalidTransitionError

log = logging.getLogger(__name__)


class ScannerState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"  # transitional
    IDLE = "idle"
    PREPARING = "preparing"  # transitional: checks, compilation
    READY = "ready"
    POSITIONING = "positioning"  # transitional: table moving to the scan position
    RUNNING = "running"  # transitional: the sequence plays
    PAUSING = "pausing"  # transitional: finishing the buffered program
    PAUSED = "paused"
    STOPPING = "stopping"  # transitional: finishing cleanly after the current segment
    ABORTING = "aborting"  # transitional: making every subsystem safe
    FAULT = "fault"  # latched
    EMERGENCY_STOP = "emergency_stop"  # latched
    MOVING_TABLE = "moving_table"  # transitional: a table move outside a scan


S = ScannerState
RESTING = frozenset({S.DISCONNECTED, S.IDLE, S.READY, S.PAUSED, S.FAULT, S.EMERGENCY_STOP})
LATCHED = frozenset({S.FAULT, S.EMERGENCY_STOP})
_ACTIVE = [S.CONNECTING, S.IDLE, S.PREPARING, S.READY, S.POSITIONING, S.RUNNING, S.PAUSING, S.PAUSED,
           S.STOPPING, S.ABORTING, S.MOVING_TABLE]

#: The one table of allowed state changes: (trigger, sources, destination).
TRANSITIONS: list[tuple[str, list[ScannerState] | ScannerState, ScannerState]] = [
    ("connect", S.DISCONNECTED, S.CONNECTING),
    ("connected", S.CONNECTING, S.IDLE),
    ("prepare", [S.IDLE, S.READY], S.PREPARING),
    ("prepared", S.PREPARING, S.READY),
    ("rejected", S.PREPARING, S.IDLE),
    ("start", S.READY, S.POSITIONING),
    ("positioned", S.POSITIONING, S.RUNNING),
    ("pause", S.RUNNING, S.PAUSING),
    ("paused", S.PAUSING, S.PAUSED),
    ("resume", S.PAUSED, S.RUNNING),
    ("stop", [S.RUNNING, S.PAUSING, S.PAUSED], S.STOPPING),
    ("finished", [S.RUNNING, S.STOPPING], S.IDLE),
    ("abort", [S.CONNECTING, S.PREPARING, S.POSITIONING, S.RUNNING, S.PAUSING, S.PAUSED, S.STOPPING,
               S.MOVING_TABLE, S.READY], S.ABORTING),
    ("safe", S.ABORTING, S.IDLE),
    ("move_table", [S.IDLE, S.READY], S.MOVING_TABLE),
    ("table_stopped", S.MOVING_TABLE, S.IDLE),
    ("fault", _ACTIVE, S.FAULT),
    ("emergency_stop", [*_ACTIVE, S.FAULT], S.EMERGENCY_STOP),
    ("reset", [S.FAULT, S.EMERGENCY_STOP], S.IDLE),
    ("disconnect", [S.IDLE, S.READY, S.FAULT, S.EMERGENCY_STOP], S.DISCONNECTED),
]


@dataclass(frozen=True)
class JournalEntry:
    """One state change: wall-clock time (Unix s), scan time (s) if a scan runs, and why."""

    wall_time_s: float
    scan_time_s: float | None
    trigger: str
    source: str
    dest: str
    reason: str = ""


@dataclass
class _Model:
    """The object ``transitions`` drives; holds the current state."""

    state: ScannerState = S.DISCONNECTED
    extra: dict[str, Any] = field(default_factory=dict)


class ScannerMachine:
    """The scanner's state, its allowed changes and their journal.

    ``guard`` is asked before every change: ``guard(trigger, source, dest) -> str | None`` returns a
    reason to refuse (e.g. "interlocks not clear"), or None. ``listeners`` are called after every change
    with the journal entry (the ZeroMQ layer publishes them).
    """

    def __init__(self, guard: Callable[[str, ScannerState, ScannerState], str | None] | None = None) -> None:
        self.journal: list[JournalEntry] = []
        self.listeners: list[Callable[[JournalEntry], None]] = []
        self.scan_time_s: float | None = None
        self._guard = guard
        self._model = _Model()
        self._reason = ""
        self._machine = Machine(
            model=self._model,
            states=list(ScannerState),
            initial=S.DISCONNECTED,
            auto_transitions=False,
            send_event=True,
            after_state_change=self._record,
            model_attribute="state",
        )
        for trigger, sources, dest in TRANSITIONS:
            self._machine.add_transition(trigger, cast(Any, sources), dest, conditions=self._allowed)
        self._pending_refusal: str | None = None

    @property
    def state(self) -> ScannerState:
        return self._model.state

    def allowed(self) -> list[str]:
        """Triggers the current state allows (guards not evaluated)."""
        return sorted({t for t, sources, _ in TRANSITIONS
                       if self.state in (sources if isinstance(sources, list) else [sources])})

    def fire(self, trigger: str, reason: str = "") -> ScannerState:
        """Make the change ``trigger`` names. Raises InvalidTransitionError naming the state when the
        current state does not allow it or a guard refuses."""
        source = self.state
        self._reason = reason
        self._pending_refusal = None
        try:
            changed = getattr(self._model, trigger)()
        except MachineError:
            raise InvalidTransitionError(
                f"cannot {trigger.replace('_', ' ')} while {source.name} (allowed: {', '.join(self.allowed())})"
            ) from None
        except AttributeError:
            raise InvalidTransitionError(f"unknown command {trigger!r}") from None
        if not changed:
            raise InvalidTransitionError(f"cannot {trigger.replace('_', ' ')} while {source.name}: "
                                         f"{self._pending_refusal or 'refused'}")
        return self.state

    def _allowed(self, event: EventData) -> bool:
        if self._guard is None:
            return True
        assert event.transition is not None
        refusal = self._guard(event.event.name, ScannerState[str(event.transition.source)],
                              ScannerState[str(event.transition.dest)])
        self._pending_refusal = refusal
        return refusal is None

    def _record(self, event: EventData) -> None:
        assert event.transition is not None
        entry = JournalEntry(time.time(), self.scan_time_s, event.event.name, _name(event.transition.source),
                             _name(event.transition.dest), self._reason)
        self.journal.append(entry)
        log.info("scanner %s -> %s (%s)%s", entry.source, entry.dest, entry.trigger,
                 f": {entry.reason}" if entry.reason else "")
        for listener in self.listeners:
            listener(entry)


def _name(state: Any) -> str:
    return state.name if isinstance(state, enum.Enum) else str(state)
