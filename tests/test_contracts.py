"""Contract suites: written once per interface, run against every implementation of it.

``IMPLEMENTATIONS`` names how a subsystem is reached: ``sim`` is the simulator in-process, ``zmq`` the
same simulator behind a driver service, reached through the proxy driver over a real TCP socket. A real
driver (or a driver over its wire simulator) joins by adding a factory to ``_open``: the table's serial
driver runs the table suite over a real pty (``serial-pty``) and over TCP (``serial-socket``) to the
controller simulator process (``scanctl sim table``), and behind a driver service (``serial-zmq``: the
proxy driver, over ZeroMQ, to the serial driver, over a pty, to the controller simulator).
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest

from scanctl.config import profile as profiles
from scanctl.engine.segments import compile_segments
from scanctl.errors import BufferFullError, DriverError, SafetyLimitError, SubsystemFault
from scanctl.hw.interfaces import GradientSystem, RFSystem, SubsystemState, TableSystem
from scanctl.hw.program import GradientProgram
from scanctl.hw.registry import open_subsystem
from scanctl.sequence import pulseq_read
from scanctl.services.driver_service import DriverService
from tests.table_sim import start_sim, stop_sim
from tests.test_cli import GRE

PROFILE = profiles.load()
IMPLEMENTATIONS = ["sim", "zmq"]
WIRE = ["serial-pty", "serial-socket", "serial-zmq"]  # the serial table driver to the controller simulator
TABLES = IMPLEMENTATIONS + WIRE
SIM_URLS = {"gradient": "sim://", "rf": "sim://?physics=0", "table": "sim://"}
_services: list[DriverService] = []
_sims: list = []


@pytest.fixture(autouse=True)
def _stop_services():
    yield
    while _services:
        _services.pop().stop()
    while _sims:
        stop_sim(_sims.pop())


@pytest.fixture(scope="module")
def segments():
    seq = pulseq_read.read(GRE)
    return list(compile_segments(seq, larmor_hz=PROFILE.gamma_hz_per_t * PROFILE.b0_t, max_duration_s=0.5))


def _open(kind, impl, **extra):
    url = SIM_URLS[kind]
    options = "&".join(f"{k}={v}" for k, v in extra.items())
    if impl in WIRE:
        proc, wire_url = start_sim(options, tcp=impl == "serial-socket")
        _sims.append(proc)
        local = open_subsystem(kind, wire_url, PROFILE)
        if impl != "serial-zmq":
            return local
    else:
        local = open_subsystem(kind, url + ("&" if "?" in url else "?") + options if options else url, PROFILE)
    if impl == "sim":
        return local
    service = DriverService(kind, local, "tcp://127.0.0.1:*")
    threading.Thread(target=service.serve_forever, daemon=True).start()
    _services.append(service)
    return open_subsystem(kind, service.endpoint, PROFILE)


# -- every subsystem ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "url"), [(k, i) for k in ("gradient", "rf", "table") for i in IMPLEMENTATIONS]
                         + [("table", i) for i in WIRE])
def test_lifecycle(kind, url):
    sub = _open(kind, url)
    assert isinstance(sub, {"gradient": GradientSystem, "rf": RFSystem, "table": TableSystem}[kind])
    assert sub.status().state is SubsystemState.OFF
    sub.connect(timeout_s=1.0)
    assert sub.status().state is SubsystemState.STANDBY
    sub.abort()  # abort when idle is harmless
    assert sub.status().state is SubsystemState.STANDBY
    sub.close()
    sub.close()  # safe twice
    assert sub.status().state is SubsystemState.OFF


# -- sequencers (gradient, RF) ------------------------------------------------------------------------------
def _load(sub, segment):
    if sub.kind == "gradient":
        sub.load(segment.gradient)
    else:
        sub.load(segment.rf, segment.adc)


SEQUENCERS = [(k, i) for k in ("gradient", "rf") for i in IMPLEMENTATIONS]


@pytest.mark.parametrize(("kind", "url"), SEQUENCERS)
def test_sequencer_plays_in_order_within_its_buffer(kind, url, segments):
    sub = _open(kind, url, buffer_s=1.0)
    sub.connect()
    with pytest.raises(DriverError, match="cannot load in state STANDBY"):
        _load(sub, segments[0])
    sub.arm()
    assert sub.status().state is SubsystemState.ON
    _load(sub, segments[0])
    _load(sub, segments[1])
    with pytest.raises(BufferFullError, match="buffer"):
        _load(sub, segments[2])  # would end 1.5 s ahead of a playhead at 0
    with pytest.raises(DriverError, match="before the end of the last one"):
        _load(sub, segments[0])
    sub.start()
    status = sub.sync(segments[0].t1_s)
    assert status.state is SubsystemState.RUNNING and status.time_s == pytest.approx(segments[0].t1_s)
    _load(sub, segments[2])
    assert sub.sync(100.0).time_s == pytest.approx(segments[2].t1_s)  # never beyond what was loaded
    sub.finish()
    assert sub.status().state is SubsystemState.STANDBY


@pytest.mark.parametrize(("kind", "url"), SEQUENCERS)
def test_sequencer_abort_drops_the_program(kind, url, segments):
    sub = _open(kind, url)
    sub.connect()
    sub.arm()
    _load(sub, segments[0])
    sub.start()
    sub.abort()
    status = sub.status()
    assert status.state is SubsystemState.STANDBY and status.telemetry["buffered_s"] == 0.0
    with pytest.raises(DriverError, match="cannot sync in state STANDBY"):
        sub.sync(segments[0].t1_s)


@pytest.mark.parametrize(("kind", "url"), SEQUENCERS)
def test_injected_fault_latches_until_reset(kind, url, segments):
    fault = "trip@0.3s"
    sub = _open(kind, url, fault=fault)
    sub.connect()
    sub.arm()
    _load(sub, segments[0])
    sub.start()
    with pytest.raises(SubsystemFault, match=r"trip at 0\.300000 s"):
        sub.sync(segments[0].t1_s)
    status = sub.status()
    assert status.state is SubsystemState.FAULT and status.time_s == pytest.approx(0.3)
    with pytest.raises(SubsystemFault):
        sub.sync(segments[0].t1_s)
    with pytest.raises(DriverError, match="cannot arm in state FAULT"):
        sub.arm()
    sub.abort()
    assert sub.status().state is SubsystemState.FAULT  # abort does not clear a fault
    sub.reset()
    assert sub.status().state is SubsystemState.STANDBY
    sub.arm()


# -- gradient ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_gradient_refuses_programs_beyond_its_limits(url):
    sub = _open("gradient", url)
    sub.connect()
    sub.arm()
    limit = PROFILE.max_gradient_hz_per_m()[1]
    t = np.array([0.0, 1e-3, 2e-3, 3e-3])
    too_high = GradientProgram(0.0, 3e-3, (np.zeros(0), t, np.zeros(0)),
                               (np.zeros(0), np.array([0, 1.1, 1.1, 0]) * limit, np.zeros(0)))
    with pytest.raises(SafetyLimitError, match=r"y amplitude .* exceeds the amplifier limit"):
        sub.load(too_high)
    t = np.array([0.0, 1e-6, 2e-6])
    too_fast = GradientProgram(0.0, 3e-3, (t, np.zeros(0), np.zeros(0)),
                               (np.array([0.0, 0.5, 0.0]) * limit, np.zeros(0), np.zeros(0)))
    with pytest.raises(SafetyLimitError, match=r"x slew .* exceeds"):
        sub.load(too_fast)
    assert sub.status().telemetry["buffered_s"] == 0.0  # nothing refused was queued


def _spoiled(program, field, index, value):
    """A copy of ``program`` with ``value`` written in place at ``field[index]`` (``index``: an array index,
    or ``(axis, i)`` for the per-axis tuples): past the check a program gets when it is made, as a program
    whose arrays were changed after it was made, or one sent by another client, arrives."""
    bad = copy.deepcopy(program)
    target = getattr(bad, field)
    if isinstance(index, tuple):
        target, index = target[index[0]], index[1]
    target[index] = value
    return bad


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_gradient_refuses_non_finite_values_and_steps(url):
    """Fail closed: a NaN sample and a step in no time (infinite slew) are refused, naming what is wrong."""
    sub = _open("gradient", url)
    sub.connect()
    sub.arm()
    limit = PROFILE.max_gradient_hz_per_m()[0]
    t = np.array([0.0, 1e-3, 2e-3, 3e-3])
    good = GradientProgram(0.0, 3e-3, (t, np.zeros(0), np.zeros(0)),
                           (np.array([0.0, 0.1, 0.1, 0.0]) * limit, np.zeros(0), np.zeros(0)))
    with pytest.raises(SafetyLimitError, match=r"g_hz_per_m\[x\]\[2\] is nan"):
        sub.load(_spoiled(good, "g_hz_per_m", (0, 2), np.nan))
    with pytest.raises(SafetyLimitError, match=r"t_s\[x\]\[1\] is inf"):
        sub.load(_spoiled(good, "t_s", (0, 1), np.inf))
    # A step to 95 % of the amplitude limit in 1e-13 s: an infinite slew, not an interval too short to count.
    t = np.array([0.0, 1e-3, 1e-3 + 1e-13, 3e-3, 5e-3])
    step = GradientProgram(0.0, 5e-3, (t, np.zeros(0), np.zeros(0)),
                           (np.array([0.0, 0.0, 0.95, 0.95, 0.0]) * limit, np.zeros(0), np.zeros(0)))
    with pytest.raises(SafetyLimitError, match=r"x slew inf Hz/m/s at 0\.001000 s exceeds"):
        sub.load(step)
    assert sub.status().telemetry["buffered_s"] == 0.0  # nothing refused was queued
    # Where two blocks meet at one time the values agree to rounding: that is no step.
    seam = GradientProgram(0.0, 5e-3, (t, np.zeros(0), np.zeros(0)),
                           (np.array([0.0, 0.0, 1e-9, 1e-9, 0.0]) * limit, np.zeros(0), np.zeros(0)))
    sub.load(seam)
    assert sub.status().telemetry["buffered_s"] == pytest.approx(5e-3)


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_rf_refuses_non_finite_values(url, segments):
    sub = _open("rf", url)
    sub.connect()
    sub.arm()
    seg = next(s for s in segments if s.rf.n_pulses and s.adc.n_windows)
    with pytest.raises(SafetyLimitError, match=r"RFProgram: b1_hz\[3\] is \(nan"):
        sub.load(_spoiled(seg.rf, "b1_hz", 3, complex(np.nan, 0.0)), seg.adc)
    with pytest.raises(SafetyLimitError, match=r"RFProgram: freq_hz\[0\] is -inf"):
        sub.load(_spoiled(seg.rf, "freq_hz", 0, -np.inf), seg.adc)
    with pytest.raises(SafetyLimitError, match=r"ADCProgram: dwell_s\[1\] is nan"):
        sub.load(seg.rf, _spoiled(seg.adc, "dwell_s", 1, np.nan))
    assert sub.status().telemetry["buffered_s"] == 0.0
    sub.load(seg.rf, seg.adc)  # the same segment, unspoiled, is taken


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_gradient_heats_up_and_trips_on_over_temperature(url):
    sub = _open("gradient", url, tau_s=1, kelvin_per_watt=0.01, max_temp_c=100, buffer_s=10)
    sub.connect()
    sub.arm()
    limit = np.array(PROFILE.max_gradient_hz_per_m())
    t = np.array([0.0, 1e-3, 4.999, 5.0])
    shape = np.array([0.0, 0.9, 0.9, 0.0])
    program = GradientProgram(0.0, 5.0, (t, t, t), tuple(shape * limit[a] for a in range(3)))
    sub.load(program)
    sub.start()
    status = sub.sync(0.5)
    # 0.81 of full power (20 kW) * 0.01 K/W = 162 K steady rise; after 0.5 s with tau 1 s: 162 (1 - e^-0.5)
    assert status.telemetry["coil_temperature_c"] == pytest.approx(20 + 162 * (1 - np.exp(-0.5)), rel=0.02)
    with pytest.raises(SubsystemFault, match="over-temperature"):
        sub.sync(5.0)
    status = sub.status()
    assert status.state is SubsystemState.FAULT
    assert status.time_s == pytest.approx(-np.log(1 - 80 / 162), abs=0.02)  # when 100 °C is crossed


# -- RF --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_rf_delivers_each_acquisition_once_in_order(url, segments):
    sub = _open("rf", url, buffer_s=10, noise=0.5, seed=3)
    sub.connect()
    sub.arm()
    for seg in segments:
        sub.load(seg.rf, seg.adc)
    sub.start()
    sub.sync(segments[3].t1_s)
    first = sub.acquisitions()
    assert [a.index for a in first] == list(range(len(first))) and first
    assert len(sub.acquisitions()) == 0
    sub.sync(segments[-1].t1_s)
    rest = sub.acquisitions()
    everything = [*first, *rest]
    assert [a.index for a in everything] == list(range(64))
    assert all(a.data.shape == (1, 64) and a.data.dtype == np.complex64 for a in everything)
    noise = np.concatenate([a.data.ravel() for a in everything])
    assert np.std(noise) == pytest.approx(0.5, rel=0.05)  # physics off: noise only, at the asked level
    assert sub.status().telemetry["peak_forward_power_w"] > 0


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_rf_abort_keeps_completed_acquisitions(url, segments):
    sub = _open("rf", url, buffer_s=10)
    sub.connect()
    sub.arm()
    for seg in segments:
        sub.load(seg.rf, seg.adc)
    sub.start()
    sub.sync(segments[2].t1_s)
    sub.abort()
    kept = sub.acquisitions()
    assert len(kept) == sum(s.adc.n_windows for s in segments[:3]) and kept


# -- table ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", TABLES)
def test_table_homes_moves_and_respects_limits(url):
    table = _open("table", url, min_mm=-100, max_mm=800, speed_mm_s=50, accel_mm_s2=100)
    table.connect()
    with pytest.raises(DriverError, match="not homed"):
        table.move_to(10.0)
    table.home()
    assert table.position_mm() == 0.0
    table.move_to(500.0)
    assert table.status().state is SubsystemState.MOVING
    with pytest.raises(DriverError, match="cannot move in state MOVING"):
        table.move_to(10.0)
    status = table.wait_idle()
    assert status.state is SubsystemState.STANDBY and table.position_mm() == 500.0
    assert status.time_s == pytest.approx(500 / 50 + 50 / 100)  # trapezoidal profile
    with pytest.raises(SafetyLimitError, match="outside the travel limits"):
        table.move_to(900.0)
    with pytest.raises(SafetyLimitError, match="speed 80 mm/s"):
        table.move_to(100.0, speed_mm_s=80)
    assert table.position_mm() == 500.0


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_a_table_move_too_short_for_its_clock_still_ends_at_the_target(url):
    """1e-296 mm takes 1e-148 s, which the clock cannot add: the table must still be at the target after it
    (Hypothesis found it in the safety state machine: 'table at the scan position' failed)."""
    table = _open("table", url)
    table.connect()
    table.home()
    for target in (1.0, 1.0718464944043452e-296):
        table.move_to(target)
        table.wait_idle()
    assert table.position_mm() == 1.0718464944043452e-296
    table.move_to(0.0)
    assert table.wait_idle().state is SubsystemState.STANDBY and table.position_mm() == 0.0


@pytest.mark.parametrize("url", TABLES)
def test_table_stall_latches_fault(url):
    table = _open("table", url, fault="stall@1s", speed_mm_s=100, accel_mm_s2=1000)
    table.connect()
    table.home()
    table.move_to(300.0)
    with pytest.raises(SubsystemFault, match="motor stall"):
        table.wait_idle()
    assert table.status().state is SubsystemState.FAULT
    assert 0 < table.position_mm() < 300
    table.reset()
    with pytest.raises(DriverError, match="not homed"):
        table.move_to(0.0)
