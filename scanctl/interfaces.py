"""Driver interfaces: the contracts every gradient, RF and table implementation meets.

Real drivers (``scanctl.drivers``), simulators (``scanctl.simulators``) and the ZeroMQ proxies all
implement these Protocols; the core only ever talks to them through these methods. Construction does
no I/O: :meth:`Subsystem.connect` does. Every method raises only :class:`~scanctl.errors.ScanctlError`
subclasses (a foreign error is raised ``from`` at the boundary).

Timing: programs are on the scan's single timebase, seconds from the start of the sequence. The
executor loads :mod:`scanctl.program` segments ahead of time, within each subsystem's buffer, and calls
``sync(t_s)`` to wait until the subsystem has played everything before ``t_s``: a simulator computes it
on its virtual clock, a real system waits for its hardware to get there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from scanctl.program import ADCProgram, GradientProgram, RFProgram


class SubsystemState(enum.Enum):
    """The small state each subsystem reports; the scanner state machine reads it."""

    OFF = "off"  # not connected
    STANDBY = "standby"  # connected, idle, safe
    ON = "on"  # armed: programs loaded, ready to start
    RUNNING = "running"  # playing a program
    MOVING = "moving"  # table only
    FAULT = "fault"  # latched until reset
    UNKNOWN = "unknown"  # not heard from


@dataclass(frozen=True)
class Status:
    """A snapshot of one subsystem. ``telemetry`` values carry their unit in the key
    (``coil_temperature_c``, ``forward_power_w``, ``position_mm``)."""

    state: SubsystemState
    time_s: float  # the subsystem's clock: seconds of the scan played so far
    message: str = ""
    telemetry: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)  # not frozen: a scan makes thousands a second, and frozen construction costs 3x
class Acquisition:
    """The samples of one ADC window: ``data`` is complex64 ``(channels, samples)``, in arbitrary
    receiver units; ``index`` numbers the windows over the scan (0-based); ``labels`` are the
    Pulseq label values in force at this window."""

    index: int
    block: int
    start_s: float
    dwell_s: float
    data: npt.NDArray[np.complex64]
    labels: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Subsystem(Protocol):
    """What every subsystem offers."""

    kind: str  # "gradient", "rf" or "table"
    url: str

    def connect(self, timeout_s: float = 5.0) -> None:
        """Open the connection and bring the subsystem to STANDBY. Raises DriverError/TimeoutError."""

    def close(self) -> None:
        """Make safe and release the connection; safe to call twice."""

    def status(self) -> Status:
        """The current state and telemetry."""

    def abort(self) -> None:
        """Make safe at once (gradients to zero, RF blanked, table stopped), drop queued programs, and
        return to STANDBY (or stay in FAULT if faulted). Never raises for a connected subsystem."""

    def reset(self) -> None:
        """Clear a latched FAULT once its cause is gone (back to STANDBY). Raises DriverError if it
        cannot be cleared."""


@runtime_checkable
class Sequencer(Subsystem, Protocol):
    """A subsystem that plays programs on the scan timebase, from a finite buffer."""

    buffer_s: float  # how much program (seconds ahead of the playhead) the buffer holds

    def arm(self) -> None:
        """STANDBY -> ON: ready to start. Raises DriverError if not possible (e.g. FAULT)."""

    def start(self) -> None:
        """ON -> RUNNING: start playing at scan time 0 (the executor triggers all subsystems together)."""

    def sync(self, t_s: float, timeout_s: float = 10.0) -> Status:
        """Return when everything before scan time ``t_s`` has been played. Raises a DriverError
        subclass if the subsystem faulted (its status says why) or TimeoutError."""

    def finish(self) -> None:
        """RUNNING -> STANDBY after the last program has played."""


@runtime_checkable
class GradientSystem(Sequencer, Protocol):
    """Gradient amplifiers and coils (three axes)."""

    def load(self, program: GradientProgram) -> None:
        """Queue a segment. Raises SafetyLimitError if it breaks the amplifier's limits and
        BufferFullError if it would run more than ``buffer_s`` ahead of the playhead."""


@runtime_checkable
class RFSystem(Sequencer, Protocol):
    """RF transmit (pulses) and receive (ADC windows)."""

    channels: int  # receive channels

    def load(self, rf: RFProgram, adc: ADCProgram) -> None:
        """Queue a segment's pulses and receive windows (same errors as GradientSystem.load)."""

    def acquisitions(self) -> list[Acquisition]:
        """Take every acquisition completed so far (each is returned once, in index order)."""


@runtime_checkable
class TableSystem(Subsystem, Protocol):
    """The patient table: one axis, positions in mm from the home position, along the bore."""

    min_position_mm: float
    max_position_mm: float
    max_speed_mm_s: float

    def home(self, timeout_s: float = 60.0) -> None:
        """Find the home position (0 mm). Moves are refused until homed."""

    def move_to(self, position_mm: float, speed_mm_s: float | None = None) -> None:
        """Start a move (returns at once; status says MOVING). Raises SafetyLimitError outside the
        travel limits or above the speed limit, DriverError if not homed or faulted."""

    def wait_idle(self, timeout_s: float = 60.0) -> Status:
        """Return when the table has stopped. Raises TimeoutError."""

    def position_mm(self) -> float:
        """The current position."""

    def stop(self) -> None:
        """Stop moving (controlled deceleration)."""
