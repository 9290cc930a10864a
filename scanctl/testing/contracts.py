"""The driver contract suites: pytest base classes that test a subsystem against its interface's contract
(:mod:`scanctl.hw.interfaces`). Subclass one per implementation, give it a :meth:`~SubsystemContract.make`,
and pytest runs the whole suite against it (docs/testing-drivers.md).

The suites need only what the interfaces promise: states, errors, buffers, the table's own limits. What the
interfaces leave to the implementation — injecting a fault — is a separate mixin (:class:`SequencerFaults`,
:class:`TableFaults`) for implementations that can be told to fault (the simulators and whatever reaches
them: a driver service, a wire simulator).

Sequencers are fed the segments of a 64 x 64 gradient echo (TR 100 ms, 6.4 s) on the class's system
profile, compiled as the executor compiles them (segments of at most 0.5 s); the suites load them as far
ahead as the subsystem's ``buffer_s`` allows, as the executor does.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from scanctl.config import profile as profiles
from scanctl.config.profile import SECOND_ORDER, SystemProfile
from scanctl.engine.segments import Segment, compile_segments
from scanctl.errors import BufferFullError, DriverError, SafetyLimitError, ScanctlError, SubsystemFault
from scanctl.hw.interfaces import (
    GradientSystem,
    RFAdjustments,
    RFSystem,
    ShimSystem,
    Subsystem,
    SubsystemState,
    TableSystem,
)
from scanctl.hw.program import GradientProgram
from scanctl.sequence.builders import build

#: The interface each kind must implement (runtime-checkable Protocols).
INTERFACES: dict[str, type] = {"gradient": GradientSystem, "rf": RFSystem, "table": TableSystem}


@functools.cache
def _embedded_profile() -> SystemProfile:
    return profiles.load()


#: Segments made, per profile (by identity: a profile is not hashable), with the profile kept alive.
_SEGMENTS: dict[int, tuple[SystemProfile, tuple[Segment, ...]]] = {}


def contract_segments(profile: SystemProfile) -> tuple[Segment, ...]:
    """The segments the sequencer suites play: a 64 x 64 gradient echo, TR 100 ms (64 ADC windows of 64
    samples, 6.4 s), in segments of at most 0.5 s; made once per profile."""
    if id(profile) not in _SEGMENTS:
        seq = build("gre_2d", profile, matrix=(64, 64), tr_s=0.1)
        larmor = profile.gamma_hz_per_t * profile.b0_t
        _SEGMENTS[id(profile)] = (profile, tuple(compile_segments(seq, larmor_hz=larmor, max_duration_s=0.5)))
    return _SEGMENTS[id(profile)][1]


class SubsystemContract:
    """What every subsystem promises: construction does no I/O, ``connect`` brings it to STANDBY, ``abort``
    when idle is harmless, ``close`` is safe twice and leaves it OFF.

    Subclass (through :class:`GradientContract`, :class:`RFContract` or :class:`TableContract`) and give
    :meth:`make`. Every subsystem made in a test is closed after it.
    """

    kind: ClassVar[str]
    #: The system profile the implementation is configured for (its limits); the embedded one by default.
    profile: ClassVar[SystemProfile | None] = None

    def make(self, **options: Any) -> Subsystem:
        """A new, unconnected subsystem of :attr:`kind`. ``options`` come only from the fault mixins
        (``fault="trip@0.3s"``, ``fault="stall@1s"``: the simulators' fault option); without them, the
        implementation as it is configured."""
        raise NotImplementedError(f"{type(self).__name__}: give make(**options), returning a new {self.kind}")

    @classmethod
    def system_profile(cls) -> SystemProfile:
        return cls.profile if cls.profile is not None else _embedded_profile()

    @pytest.fixture
    def open_subsystem(self) -> Iterator[Callable[..., Any]]:
        """``open_subsystem(**options)``: :meth:`make`, closed again after the test."""
        made: list[Subsystem] = []

        def factory(**options: Any) -> Any:
            sub = self.make(**options)
            made.append(sub)
            return sub

        yield factory
        for sub in made:
            try:
                sub.close()
            except ScanctlError as exc:  # a close that fails is a contract failure of its own
                pytest.fail(f"{sub.kind}: close() raised {type(exc).__name__}: {exc}")

    def test_lifecycle(self, open_subsystem: Callable[..., Subsystem]) -> None:
        sub = open_subsystem()
        assert isinstance(sub, INTERFACES[self.kind]), f"not a {INTERFACES[self.kind].__name__}"
        assert sub.kind == self.kind
        assert sub.status().state is SubsystemState.OFF  # construction does no I/O
        sub.connect(timeout_s=5.0)
        assert sub.status().state is SubsystemState.STANDBY
        sub.abort()  # abort when idle is harmless
        assert sub.status().state is SubsystemState.STANDBY
        sub.close()
        sub.close()  # safe twice
        assert sub.status().state is SubsystemState.OFF


# -- sequencers (gradient, RF) --------------------------------------------------------------------------------

def load(sub: Any, segment: Segment) -> None:
    """Load ``segment``'s program of ``sub``'s kind."""
    if sub.kind == "gradient":
        sub.load(segment.gradient)
    else:
        sub.load(segment.rf, segment.adc)


def load_ahead(sub: Any, segments: tuple[Segment, ...], first: int, playhead_s: float) -> int:
    """Load ``segments[first:]`` while each ends within ``sub.buffer_s`` of ``playhead_s``; returns the index
    of the first segment not loaded."""
    i = first
    while i < len(segments) and segments[i].t1_s - playhead_s <= sub.buffer_s + 1e-9:
        load(sub, segments[i])
        i += 1
    return i


class SequencerContract(SubsystemContract):
    """What gradient and RF systems promise: programs only when armed, in order, within the buffer; played
    on ``sync``, never beyond what was loaded; ``abort`` drops what was queued."""

    @pytest.fixture
    def segments(self) -> tuple[Segment, ...]:
        return contract_segments(self.system_profile())

    def test_sequencer_plays_in_order_within_its_buffer(self, open_subsystem: Callable[..., Any],
                                                        segments: tuple[Segment, ...]) -> None:
        sub = open_subsystem()
        sub.connect()
        with pytest.raises(DriverError):
            load(sub, segments[0])  # STANDBY: not armed
        sub.arm()
        assert sub.status().state is SubsystemState.ON
        loaded = load_ahead(sub, segments, 0, 0.0)
        assert loaded >= 2, f"buffer_s {sub.buffer_s} s holds fewer than two segments of the contract sequence"
        assert loaded < len(segments), "the contract sequence must be longer than the buffer"
        with pytest.raises(BufferFullError):
            load(sub, segments[loaded])  # ends further ahead of a playhead at 0 than the buffer holds
        with pytest.raises(DriverError):
            load(sub, segments[0])  # before the end of the last one
        sub.start()
        status = sub.sync(segments[0].t1_s)
        assert status.state is SubsystemState.RUNNING and status.time_s == pytest.approx(segments[0].t1_s)
        load_ahead(sub, segments, loaded, segments[0].t1_s)
        last = max(s.t1_s for s in segments if s.t1_s - segments[0].t1_s <= sub.buffer_s + 1e-9)
        assert sub.sync(100.0).time_s == pytest.approx(last)  # never beyond what was loaded
        sub.finish()
        assert sub.status().state is SubsystemState.STANDBY

    def test_sequencer_abort_drops_the_program(self, open_subsystem: Callable[..., Any],
                                               segments: tuple[Segment, ...]) -> None:
        sub = open_subsystem()
        sub.connect()
        sub.arm()
        load(sub, segments[0])
        sub.start()
        sub.abort()
        status = sub.status()
        assert status.state is SubsystemState.STANDBY and status.telemetry["buffered_s"] == 0.0
        with pytest.raises(DriverError):
            sub.sync(segments[0].t1_s)  # STANDBY: nothing to play


class SequencerFaults:
    """For sequencers that can be told to fault (``make(fault="trip@0.3s")``): a fault latches, ``abort``
    keeps it, ``reset`` clears it. Mix into :class:`GradientContract` or :class:`RFContract`."""

    def test_injected_fault_latches_until_reset(self, open_subsystem: Callable[..., Any],
                                                segments: tuple[Segment, ...]) -> None:
        sub = open_subsystem(fault="trip@0.3s")
        sub.connect()
        sub.arm()
        load(sub, segments[0])
        sub.start()
        with pytest.raises(SubsystemFault, match=r"trip at 0\.300000 s"):
            sub.sync(segments[0].t1_s)
        status = sub.status()
        assert status.state is SubsystemState.FAULT and status.time_s == pytest.approx(0.3)
        with pytest.raises(SubsystemFault):
            sub.sync(segments[0].t1_s)
        with pytest.raises(DriverError):
            sub.arm()  # FAULT
        sub.abort()
        assert sub.status().state is SubsystemState.FAULT  # abort does not clear a fault
        sub.reset()
        assert sub.status().state is SubsystemState.STANDBY
        sub.arm()


def spoiled(program: Any, field: str, index: int | tuple[int, int], value: Any) -> Any:
    """A copy of ``program`` with ``value`` written in place at ``field[index]`` (``index``: an array index,
    or ``(axis, i)`` for the per-axis tuples): past the check a program gets when it is made, as a program
    whose arrays were changed after it was made, or one sent by another client, arrives."""
    bad = copy.deepcopy(program)
    target = getattr(bad, field)
    if isinstance(index, tuple):
        target, index = target[index[0]], index[1]
    target[index] = value
    return bad


class GradientContract(SequencerContract):
    """A gradient system: refuses programs beyond its amplifier's limits (the profile's), NaN and infinite
    values and steps in no time (fail closed), and queues nothing it refused."""

    kind = "gradient"

    def _x_program(self, t: Any, fraction: Any, t1_s: float) -> GradientProgram:
        limit = self.system_profile().max_gradient_hz_per_m()[0]
        return GradientProgram(0.0, t1_s, (np.asarray(t), np.zeros(0), np.zeros(0)),
                               (np.asarray(fraction) * limit, np.zeros(0), np.zeros(0)))

    def test_gradient_refuses_programs_beyond_its_limits(self, open_subsystem: Callable[..., Any]) -> None:
        sub = open_subsystem()
        sub.connect()
        sub.arm()
        limit = self.system_profile().max_gradient_hz_per_m()[1]
        t = np.array([0.0, 1e-3, 2e-3, 3e-3])
        too_high = GradientProgram(0.0, 3e-3, (np.zeros(0), t, np.zeros(0)),
                                   (np.zeros(0), np.array([0, 1.1, 1.1, 0]) * limit, np.zeros(0)))
        with pytest.raises(SafetyLimitError, match=r"y amplitude"):
            sub.load(too_high)
        too_fast = self._x_program([0.0, 1e-6, 2e-6], [0.0, 0.5, 0.0], 3e-3)
        with pytest.raises(SafetyLimitError, match=r"x slew"):
            sub.load(too_fast)
        assert sub.status().telemetry["buffered_s"] == 0.0  # nothing refused was queued

    def test_gradient_refuses_non_finite_values_and_steps(self, open_subsystem: Callable[..., Any]) -> None:
        """Fail closed: a NaN sample and a step in no time (infinite slew) are refused, naming what is wrong."""
        sub = open_subsystem()
        sub.connect()
        sub.arm()
        good = self._x_program([0.0, 1e-3, 2e-3, 3e-3], [0.0, 0.1, 0.1, 0.0], 3e-3)
        with pytest.raises(SafetyLimitError, match=r"g_hz_per_m\[x\]\[2\] is nan"):
            sub.load(spoiled(good, "g_hz_per_m", (0, 2), np.nan))
        with pytest.raises(SafetyLimitError, match=r"t_s\[x\]\[1\] is inf"):
            sub.load(spoiled(good, "t_s", (0, 1), np.inf))
        # A step to 95 % of the amplitude limit in 1e-13 s: an infinite slew, not an interval too short to count.
        t = [0.0, 1e-3, 1e-3 + 1e-13, 3e-3, 5e-3]
        with pytest.raises(SafetyLimitError, match=r"x slew inf Hz/m/s at 0\.001000 s exceeds"):
            sub.load(self._x_program(t, [0.0, 0.0, 0.95, 0.95, 0.0], 5e-3))
        assert sub.status().telemetry["buffered_s"] == 0.0  # nothing refused was queued
        # Where two blocks meet at one time the values agree to rounding: that is no step.
        sub.load(self._x_program(t, [0.0, 0.0, 1e-9, 1e-9, 0.0], 5e-3))
        assert sub.status().telemetry["buffered_s"] == pytest.approx(5e-3)


class RFContract(SequencerContract):
    """An RF system: refuses non-finite programs, delivers each acquisition once, in index order, as
    ``(channels, samples)`` complex64, and keeps what was completed when aborted."""

    kind = "rf"

    def test_rf_refuses_non_finite_values(self, open_subsystem: Callable[..., Any],
                                          segments: tuple[Segment, ...]) -> None:
        sub = open_subsystem()
        sub.connect()
        sub.arm()
        seg = next(s for s in segments if s.rf.n_pulses and s.adc.n_windows)
        with pytest.raises(SafetyLimitError, match=r"RFProgram: b1_hz\[3\] is \(nan"):
            sub.load(spoiled(seg.rf, "b1_hz", 3, complex(np.nan, 0.0)), seg.adc)
        with pytest.raises(SafetyLimitError, match=r"RFProgram: freq_hz\[0\] is -inf"):
            sub.load(spoiled(seg.rf, "freq_hz", 0, -np.inf), seg.adc)
        with pytest.raises(SafetyLimitError, match=r"ADCProgram: dwell_s\[1\] is nan"):
            sub.load(seg.rf, spoiled(seg.adc, "dwell_s", 1, np.nan))
        assert sub.status().telemetry["buffered_s"] == 0.0
        sub.load(seg.rf, seg.adc)  # the same segment, unspoiled, is taken

    def test_rf_delivers_each_acquisition_once_in_order(self, open_subsystem: Callable[..., Any],
                                                        segments: tuple[Segment, ...]) -> None:
        sub = open_subsystem()
        sub.connect()
        sub.arm()
        loaded = load_ahead(sub, segments, 0, 0.0)
        sub.start()
        playhead, batches = 0.0, []
        while playhead < segments[-1].t1_s:
            playhead = sub.sync(segments[loaded - 1].t1_s).time_s
            batches.append(list(sub.acquisitions()))
            assert len(sub.acquisitions()) == 0  # each is taken once
            loaded = load_ahead(sub, segments, loaded, playhead)
        everything = [a for batch in batches for a in batch]
        windows = sum(s.adc.n_windows for s in segments)
        assert [a.index for a in everything] == list(range(windows))
        assert all(a.data.shape == (sub.channels, 64) and a.data.dtype == np.complex64 for a in everything)
        assert sub.status().telemetry["peak_forward_power_w"] > 0
        sub.finish()

    def test_rf_abort_keeps_completed_acquisitions(self, open_subsystem: Callable[..., Any],
                                                   segments: tuple[Segment, ...]) -> None:
        sub = open_subsystem()
        sub.connect()
        sub.arm()
        loaded = load_ahead(sub, segments, 0, 0.0)
        sub.start()
        sub.sync(segments[loaded - 1].t1_s)
        sub.abort()
        kept = sub.acquisitions()
        assert len(kept) == sum(s.adc.n_windows for s in segments[:loaded]) and kept


# -- adjustments (what a console sets between scans) --------------------------------------------------------------

def _refused_keeps(sub: Any, setter: Callable[[], None], error: type[ScanctlError], match: str) -> None:
    """``setter()`` raises ``error`` (message matching ``match``) and the read-back does not change."""
    before = sub.adjustments()
    with pytest.raises(error, match=match):
        setter()
    assert sub.adjustments() == before, "a refused setting changed the read-back"


class RFAdjustmentsContract:
    """An RF system a console can adjust (:class:`scanctl.hw.interfaces.RFAdjustments`): each setting reads back
    as set; a value outside the profile's ``[rf]`` range, or not finite, is refused with SafetyLimitError and
    nothing changes; nothing changes while armed. Mix into an :class:`RFContract` subclass."""

    def test_rf_adjustments_read_back_and_refuse_out_of_range(self, open_subsystem: Callable[..., Any]) -> None:
        sub = open_subsystem()
        sub.connect()
        assert isinstance(sub, RFAdjustments)
        limits = self.system_profile().adjustments  # type: ignore[attr-defined]
        assert sub.adjustments() == {"frequency_offset_hz": 0.0, "tx_scale": 1.0, "receiver_gain_db": 0.0}
        sub.set_frequency_offset(-312.5)
        sub.set_tx_scale(1.25)
        sub.set_receiver_gain(limits.receiver_gain_db[1])
        want = {"frequency_offset_hz": -312.5, "tx_scale": 1.25, "receiver_gain_db": limits.receiver_gain_db[1]}
        assert sub.adjustments() == want
        beyond = limits.max_frequency_offset_hz * 1.01
        _refused_keeps(sub, lambda: sub.set_frequency_offset(beyond), SafetyLimitError, "synthesiser")
        _refused_keeps(sub, lambda: sub.set_tx_scale(limits.max_tx_scale * 1.01), SafetyLimitError, "amplifier")
        _refused_keeps(sub, lambda: sub.set_tx_scale(0.0), SafetyLimitError, "transmit scale")
        _refused_keeps(sub, lambda: sub.set_receiver_gain(limits.receiver_gain_db[1] + 1), SafetyLimitError,
                       "receiver gain")
        for bad in (np.nan, np.inf):
            for setter, words in ((sub.set_frequency_offset, "frequency"), (sub.set_tx_scale, "transmit scale"),
                                  (sub.set_receiver_gain, "receiver gain")):
                _refused_keeps(sub, functools.partial(setter, bad), SafetyLimitError, words)
        assert sub.adjustments() == want

    def test_rf_adjustments_refused_while_armed(self, open_subsystem: Callable[..., Any]) -> None:
        sub = open_subsystem()
        sub.connect()
        sub.arm()
        _refused_keeps(sub, lambda: sub.set_tx_scale(1.5), DriverError, "ON")
        _refused_keeps(sub, lambda: sub.set_frequency_offset(10.0), DriverError, "ON")
        sub.abort()
        sub.set_tx_scale(1.5)
        assert sub.adjustments()["tx_scale"] == 1.5


class ShimContract:
    """A gradient system with a shim (:class:`scanctl.hw.interfaces.ShimSystem`): every channel the profile
    gives reads back (0 at first), a channel set keeps the others, a value beyond the shim supplies, a
    non-finite one or an unknown channel is refused with SafetyLimitError and nothing changes; nothing changes
    while armed. Mix into a :class:`GradientContract` subclass."""

    def test_shim_reads_back_and_refuses_beyond_the_supplies(self, open_subsystem: Callable[..., Any]) -> None:
        sub = open_subsystem()
        sub.connect()
        assert isinstance(sub, ShimSystem)
        limits = self.system_profile().adjustments  # type: ignore[attr-defined]
        assert sub.adjustments() == dict.fromkeys(limits.shim_channels, 0.0)
        sub.set_shim({"x": 1000.0, "z": -2500.0})
        sub.set_shim({"y": 40.0})
        want = {**dict.fromkeys(limits.shim_channels, 0.0), "x": 1000.0, "y": 40.0, "z": -2500.0}
        assert sub.adjustments() == want
        _refused_keeps(sub, lambda: sub.set_shim({"x": 0.0, "y": limits.max_shim_hz_per_m[1] * 1.01}),
                       SafetyLimitError, "shim supply")
        _refused_keeps(sub, lambda: sub.set_shim({"z": np.nan}), SafetyLimitError, "shim z")
        _refused_keeps(sub, lambda: sub.set_shim({"q7": 1.0}), SafetyLimitError, "no shim channel")
        assert sub.adjustments() == want

    def test_second_order_shim_channels_as_the_profile_declares(self, open_subsystem: Callable[..., Any]) -> None:
        """Each second-order channel the profile declares (Hz/m²) reads back as set and is refused beyond its
        supply; one the hardware lacks is refused by name."""
        sub = open_subsystem()
        sub.connect()
        supplies = dict(self.system_profile().adjustments.max_shim_second_order_hz_per_m2)  # type: ignore[attr-defined]
        for channel in SECOND_ORDER:
            refused = {channel: 1.01 * supplies[channel] if channel in supplies else 1.0}
            if channel in supplies:
                sub.set_shim({channel: -0.5 * supplies[channel]})
                assert sub.adjustments()[channel] == -0.5 * supplies[channel]
            _refused_keeps(sub, functools.partial(sub.set_shim, refused), SafetyLimitError,
                           "shim supply" if channel in supplies else "no shim channel")

    def test_shim_refused_while_armed(self, open_subsystem: Callable[..., Any]) -> None:
        sub = open_subsystem()
        sub.connect()
        sub.arm()
        _refused_keeps(sub, lambda: sub.set_shim({"x": 10.0}), DriverError, "ON")


# -- table ------------------------------------------------------------------------------------------------------

class TableContract(SubsystemContract):
    """A patient table: refuses to move until homed, moves to where it is sent, refuses targets outside its
    travel limits and speeds above its limit (``min_position_mm``, ``max_position_mm``, ``max_speed_mm_s``),
    and refuses a move while moving."""

    kind = "table"
    #: Where the suite sends the table (mm), clipped to its travel limits: a move of a few seconds.
    target_mm: ClassVar[float] = 200.0

    def test_table_homes_moves_and_respects_limits(self, open_subsystem: Callable[..., Any]) -> None:
        table = open_subsystem()
        table.connect()
        with pytest.raises(DriverError, match="not homed"):
            table.move_to(min(10.0, table.max_position_mm))
        table.home()
        assert table.position_mm() == 0.0
        target = min(self.target_mm, table.max_position_mm)
        table.move_to(target)
        assert table.status().state is SubsystemState.MOVING
        with pytest.raises(DriverError, match="MOVING"):  # says why, whatever the driver
            table.move_to(0.0)  # MOVING
        status = table.wait_idle()
        assert status.state is SubsystemState.STANDBY and table.position_mm() == target
        with pytest.raises(SafetyLimitError, match="outside the travel limits"):
            table.move_to(table.max_position_mm + 100.0)
        with pytest.raises(SafetyLimitError, match="speed"):
            table.move_to(0.0, speed_mm_s=table.max_speed_mm_s * 1.6)
        assert table.position_mm() == target  # nothing refused moved it


class TableFaults:
    """For tables that can be told to stall (``make(fault="stall@1s")``): the stall latches FAULT where the
    table stopped, and after ``reset`` the table must be homed again. Mix into :class:`TableContract`."""

    def test_table_stall_latches_fault(self, open_subsystem: Callable[..., Any]) -> None:
        table = open_subsystem(fault="stall@1s")
        table.connect()
        table.home()
        target = table.max_position_mm
        table.move_to(target)
        with pytest.raises(SubsystemFault, match="motor stall"):
            table.wait_idle()
        assert table.status().state is SubsystemState.FAULT
        assert 0 < table.position_mm() < target
        table.reset()
        with pytest.raises(DriverError, match="not homed"):
            table.move_to(0.0)
