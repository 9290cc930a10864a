"""Driver interfaces: the contracts every gradient, RF and table implementation meets.

Real drivers (``scanctl.drivers``), simulators (``scanctl.simulators``) and the ZeroMQ proxies all
implement these Protocols; the core only ever talks to them through these methods. Construction does
no I/O: :meth:`Subsystem.connect` does. Every method raises only :class:`~scanctl.errors.ScanctlError`
subclasses (a foreign error is raised ``from`` at the boundary).

Timing: programs are on the scan's single timebase, seconds from the start of the sequence. The
executor loads segments (:mod:`scanctl.engine.segments`) ahead of time, within each subsystem's buffer, and calls
``sync(t_s)`` to wait until the subsystem has played everything before ``t_s``: a simulator computes it
on its virtual clock, a real system waits for its hardware to get there.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np
import numpy.typing as npt

from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram


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


class AcquisitionBatch(Sequence[Acquisition]):
    """Acquisitions held in columns, as an RF receiver delivers them and as they travel
    (docs/wire-protocol.md#acquisition-batches): ``index``, ``block`` (int64), ``start_s``, ``dwell_s``
    (float64), ``shape`` (int64 ``(n, 2)``: channels, samples), ``data`` (complex64, every acquisition's
    samples one after the other), ``labels`` (name → int64 column) and ``unlabelled`` (name → bool column,
    only for a label some acquisitions lack). The columns are taken as they are (the sender of a wire batch
    is checked by :func:`scanctl.transport.acquisitions.check_acquisitions` first).

    It is a sequence of :class:`Acquisition`: the objects (their ``data`` views of the column) are made
    when first asked for, so a batch that is only forwarded — published, sent on by a driver service —
    never costs one object per window; a slice is a batch again."""

    __slots__ = ("columns", "_objects")

    def __init__(self, columns: dict[str, Any]) -> None:
        self.columns = columns
        self._objects: list[Acquisition] | None = None

    @classmethod
    def empty(cls) -> AcquisitionBatch:
        """A batch of no acquisitions."""
        ints, floats = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return cls({"index": ints, "block": ints, "start_s": floats, "dwell_s": floats,
                    "shape": np.zeros((0, 2), np.int64), "data": np.zeros(0, np.complex64), "labels": {},
                    "unlabelled": {}})

    @classmethod
    def concatenate(cls, batches: Sequence[AcquisitionBatch]) -> AcquisitionBatch:
        """One batch of ``batches`` in order (every one with the same labels, all given)."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0].columns
        columns: dict[str, Any] = {key: np.concatenate([b.columns[key] for b in batches])
                                   for key in ("index", "block", "start_s", "dwell_s", "shape", "data")}
        columns["labels"] = {name: np.concatenate([b.columns["labels"][name] for b in batches])
                             for name in first.get("labels", {})}
        columns["unlabelled"] = {}
        return cls(columns)

    def __len__(self) -> int:
        return len(self.columns["index"])

    @overload
    def __getitem__(self, i: int) -> Acquisition: ...

    @overload
    def __getitem__(self, i: slice) -> AcquisitionBatch: ...

    def __getitem__(self, i: int | slice) -> Acquisition | AcquisitionBatch:
        if isinstance(i, slice):
            return self._slice(i)
        return self.objects()[i]

    def __iter__(self) -> Iterator[Acquisition]:
        return iter(self.objects())

    def objects(self) -> list[Acquisition]:
        """One :class:`Acquisition` per window (made once)."""
        if self._objects is None:
            self._objects = self._make_objects()
        return self._objects

    def _make_objects(self) -> list[Acquisition]:
        c = self.columns
        n = len(self)
        if n == 0:
            return []
        shape, data = c["shape"], c["data"].astype(np.complex64, copy=False)
        if (shape == shape[0]).all():  # the usual case: one view per acquisition of an (n, channels, samples) array
            samples = list(data.reshape(n, int(shape[0, 0]), int(shape[0, 1])))
        else:
            sizes = shape[:, 0] * shape[:, 1]
            ends = np.cumsum(sizes).tolist()
            samples = [data[end - size:end].reshape(channels, count) for end, size, (channels, count)
                       in zip(ends, sizes.tolist(), shape.tolist(), strict=True)]
        labels, unlabelled = c.get("labels", {}), c.get("unlabelled", {})
        names = list(labels)
        if len(names) == 1:  # the usual case (a line counter): the cheapest way to n dicts
            name = names[0]
            label_dicts = [{name: value} for value in labels[name].tolist()]
        else:
            rows = zip(*(labels[name].tolist() for name in names), strict=True) if names else iter([()] * n)
            label_dicts = [dict(zip(names, row, strict=True)) for row in rows]
        for name, column in unlabelled.items():
            for i in np.flatnonzero(column).tolist():
                del label_dicts[i][name]
        return [Acquisition(*row) for row in zip(c["index"].tolist(), c["block"].tolist(), c["start_s"].tolist(),
                                                   c["dwell_s"].tolist(), samples, label_dicts, strict=True)]

    def _slice(self, s: slice) -> AcquisitionBatch:
        start, stop, step = s.indices(len(self))
        if step != 1:
            raise IndexError("an acquisition batch is sliced with step 1 only")
        stop = max(start, stop)
        if start == 0 and stop == len(self):  # the whole batch (a segment's acquisitions in one message)
            return self
        c = self.columns
        offsets = np.concatenate(([0], np.cumsum(c["shape"][:, 0] * c["shape"][:, 1])))
        columns = {key: c[key][start:stop] for key in ("index", "block", "start_s", "dwell_s", "shape")}
        columns["data"] = c["data"][int(offsets[start]):int(offsets[stop])]
        columns["labels"] = {name: column[start:stop] for name, column in c.get("labels", {}).items()}
        columns["unlabelled"] = {name: column[start:stop] for name, column in c.get("unlabelled", {}).items()}
        batch = AcquisitionBatch(columns)
        if self._objects is not None:
            batch._objects = self._objects[start:stop]
        return batch


#: Acquisitions handed on together: a list of objects or an :class:`AcquisitionBatch`.
Acquisitions = Sequence[Acquisition]


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

    def acquisitions(self) -> Acquisitions:
        """Take every acquisition completed so far (each is returned once, in index order); a simulator or
        a driver service's proxy returns an :class:`AcquisitionBatch`. The arrays returned are the caller's: a
        driver never writes to them again (the control server sends them from their memory, zero-copy)."""


@runtime_checkable
class RFAdjustments(Protocol):
    """What a console sets on an RF system between scans (prescan finds the values, docs/prescan.md): the
    synthesiser's centre-frequency offset, the transmit scale (the transmitter reference: every pulse's B1 is
    multiplied by it) and the receiver gain before the ADC. Each setter refuses a value outside the hardware's
    range (the profile's ``[rf]`` table) with SafetyLimitError, a non-finite one included, and refuses to
    change anything while a scan is under way (armed or running) with DriverError; a refused value leaves the
    previous one in force. The simulators and the driver-service proxies implement it."""

    def set_frequency_offset(self, hz: float) -> None:
        """Offset of the centre frequency from the Larmor frequency of the profile's B0 (Hz)."""

    def set_tx_scale(self, scale: float) -> None:
        """Transmit scale (dimensionless, > 0): the B1 played is the program's times this."""

    def set_receiver_gain(self, db: float) -> None:
        """Receiver gain before the ADC (dB). The data are reported in the receiver's input units whatever the
        gain (divided by it again): the gain only decides what clips and how many bits the signal uses."""

    def adjustments(self) -> dict[str, float]:
        """Read-back: ``{"frequency_offset_hz", "tx_scale", "receiver_gain_db"}``."""


@runtime_checkable
class ShimSystem(Protocol):
    """The shim a console sets on a gradient system between scans: static currents in the gradient coils
    (linear terms ``x``, ``y``, ``z`` in Hz/m) and, where the hardware has them, second-order shim coils
    (``z2``, ``zx``, ``zy``, ``x2y2``, ``xy`` in Hz/m²: :data:`scanctl.config.profile.SECOND_ORDER`). Same
    refusals as :class:`RFAdjustments` (the profile's ``[gradient]`` shim limits; an unknown channel too)."""

    def set_shim(self, values: Mapping[str, float]) -> None:
        """Set the channels given (the others keep their value)."""

    def adjustments(self) -> dict[str, float]:
        """Read-back: every shim channel the hardware has → its value."""


@dataclass(frozen=True)
class Scene:
    """The object in the bore, for a simulated RF system: what a scan images. ``phantom`` a shipped phantom's
    name or a phantom file's path, ``matrix`` its grid (voxels per side), ``fov_m`` the field of view it
    fills (m), ``noise_std`` the receiver noise; None leaves the simulator's own setting (its URL's, or its
    default)."""

    phantom: str | None = None
    matrix: int | None = None
    fov_m: float | None = None
    noise_std: float | None = None


@runtime_checkable
class SceneSystem(Protocol):
    """An optional capability of an RF system: a simulator's world is placed by a runtime call, never through
    its URL, and placing it never reconnects or re-homes anything. A real RF system has no ``place`` (its
    driver service answers ``malformed``): it images what is there."""

    def place(self, scene: Scene) -> None:
        """Make ``scene`` the object imaged from the next scan on. Raises ConfigError for a scene that cannot
        be made (the old one stays), DriverError while a scan is under way."""


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
