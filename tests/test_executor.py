"""scanctl.engine.executor: running a sequence on the simulators, and every way a run can end."""

from __future__ import annotations

import threading

import numpy as np
import pypulseq as pp
import pytest

from scanctl.config import profile as profiles
from scanctl.engine.executor import Scanner
from scanctl.engine.machine import ScannerState as S
from scanctl.engine.segments import compile_segments
from scanctl.errors import InvalidTransitionError, SafetyLimitError
from scanctl.hw.interfaces import SubsystemState
from scanctl.safety.supervisor import Supervisor
from scanctl.sequence import pulseq_read
from tests import pulseq_factory
from tests.test_cli import GRE, SEQ1

PROFILE = profiles.load()
GRE_SEQ = pulseq_read.read(GRE)  # 6.4 s, 64 ADC windows
N_ADC = 64


def make_scanner(**urls: str) -> Scanner:
    overrides = {"rf": "sim://?physics=0", **urls}
    scanner = Scanner.from_profile(PROFILE, overrides, segment_s=0.25)
    scanner.connect()
    return scanner


def all_safe(scanner: Scanner) -> bool:
    states = {k: s.state for k, s in scanner.status().items()}
    return states["gradient"] not in (SubsystemState.RUNNING, SubsystemState.ON) and \
        states["rf"] not in (SubsystemState.RUNNING, SubsystemState.ON) and states["table"] is not SubsystemState.MOVING


def test_complete_run_collects_every_acquisition_in_order():
    scanner = make_scanner()
    scanner.prepare(GRE_SEQ)
    acqs, progress = [], []
    result = scanner.run(table_position_mm=250, on_acquisitions=acqs.extend,
                         on_progress=lambda t, total: progress.append((t, scanner.status())))
    assert result.outcome == "completed" and result.acquisitions == N_ADC
    assert [a.index for a in acqs] == list(range(N_ADC))
    assert result.scan_time_s == pytest.approx(GRE_SEQ.duration_s)
    assert scanner.table.position_mm() == 250
    assert scanner.state is S.IDLE and all_safe(scanner)
    # Streaming: the subsystems never hold more than their buffer, and the program is cut in segments.
    assert result.segments >= GRE_SEQ.duration_s / 0.25
    assert max(s["rf"].telemetry["buffered_s"] for _, s in progress) <= scanner.rf.buffer_s + 1e-9
    assert [e.dest for e in scanner.journal] == ["CONNECTING", "IDLE", "PREPARING", "READY", "POSITIONING",
                                                 "RUNNING", "IDLE"]


def test_sequence_breaking_limits_is_refused_before_anything_moves():
    scanner = make_scanner()
    position = scanner.table.position_mm()
    with pytest.raises(SafetyLimitError, match="refused before anything moved .*rf_dead_time"):
        scanner.prepare(pulseq_read.read(SEQ1))
    assert scanner.state is S.IDLE
    with pytest.raises(InvalidTransitionError, match="cannot start while IDLE"):
        scanner.run()
    assert scanner.table.position_mm() == position and all_safe(scanner)
    assert scanner.journal[-1].trigger == "rejected"


def test_abort_mid_run_keeps_the_data_so_far():
    scanner = make_scanner()
    scanner.prepare(GRE_SEQ)
    acqs = []

    def progress(t, total):
        if t > 2.0:
            scanner.request("abort")

    result = scanner.run(on_acquisitions=acqs.extend, on_progress=progress)
    assert result.outcome == "aborted" and scanner.state is S.IDLE and all_safe(scanner)
    assert 0 < len(acqs) < N_ADC and [a.index for a in acqs] == list(range(len(acqs)))
    assert 2.0 <= result.scan_time_s < GRE_SEQ.duration_s


def test_subsystem_fault_latches_fault_keeps_data_and_makes_everything_safe():
    scanner = make_scanner(gradient="sim://?fault=trip@3s")
    scanner.prepare(GRE_SEQ)
    acqs = []
    result = scanner.run(on_acquisitions=acqs.extend)
    assert result.outcome == "fault" and "trip at 3.000000 s" in result.message
    assert scanner.state is S.FAULT and all_safe(scanner)
    assert 0 < len(acqs) < N_ADC and max(a.start_s for a in acqs) < 3.0
    with pytest.raises(InvalidTransitionError, match="cannot prepare while FAULT"):
        scanner.prepare(GRE_SEQ)
    scanner.reset()  # clears the simulator's fault, then the scanner's
    assert scanner.state is S.IDLE
    scanner.prepare(GRE_SEQ)
    assert scanner.run().outcome == "completed"


def test_pause_and_resume_from_another_thread_gets_all_data():
    scanner = make_scanner()
    scanner.prepare(GRE_SEQ)
    acqs = []
    paused = threading.Event()

    def progress(t, total):
        if t > 1.0 and not paused.is_set():
            paused.set()
            scanner.request("pause")
            threading.Timer(0.05, scanner.request, args=("resume",)).start()

    result = scanner.run(on_acquisitions=acqs.extend, on_progress=progress)
    assert result.outcome == "completed" and len(acqs) == N_ADC
    dests = [e.dest for e in scanner.journal]
    assert dests[-4:] == ["PAUSING", "PAUSED", "RUNNING", "IDLE"]


def test_stop_finishes_what_is_loaded():
    scanner = make_scanner()
    scanner.prepare(GRE_SEQ)
    acqs = []
    result = scanner.run(on_acquisitions=acqs.extend,
                         on_progress=lambda t, total: t > 1.0 and scanner.request("stop"))
    assert result.outcome == "stopped" and scanner.state is S.IDLE and all_safe(scanner)
    assert 0 < len(acqs) < N_ADC
    assert result.scan_time_s > 1.0


def test_emergency_stop_is_latched_until_released():
    scanner = make_scanner()
    scanner.prepare(GRE_SEQ)
    acqs = []
    result = scanner.run(on_acquisitions=acqs.extend,
                         on_progress=lambda t, total: t > 1.0 and scanner.emergency_stop("button pressed"))
    assert result.outcome == "emergency_stop" and scanner.state is S.EMERGENCY_STOP and all_safe(scanner)
    assert acqs
    with pytest.raises(InvalidTransitionError, match="interlocks not clear: emergency_stop_button"):
        scanner.reset()
    scanner.release_emergency_stop()
    scanner.reset()
    assert scanner.state is S.IDLE


def test_table_cannot_move_while_scanning():
    scanner = make_scanner()
    scanner.prepare(GRE_SEQ)
    refused = []

    def progress(t, total):
        if t > 0.5 and not refused:
            with pytest.raises(InvalidTransitionError, match="cannot move table while RUNNING") as info:
                scanner.move_table(10.0)
            refused.append(str(info.value))

    assert scanner.run(table_position_mm=50, on_progress=progress).outcome == "completed"
    assert refused and scanner.table.position_mm() == 50
    assert scanner.move_table(120.0) == 120.0  # idle again: allowed


# -- long delays (the HASTE case: a 1.5 s TR fill and a 5 s delay at the end) ------------------------------------
@pytest.fixture(scope="module")
def long_delays(tmp_path_factory):
    """A Pulseq file (pypulseq) with delay blocks longer than a segment and than the subsystems' 2 s buffer:
    three FIDs, each followed by a 1.5 s TR fill; a 1.2 s block whose only event is a short gradient at its
    start; a 5 s delay at the end."""
    system = pulseq_factory.default_system()
    seq = pp.Sequence(system)
    rf = pp.make_block_pulse(flip_angle=np.deg2rad(10), duration=0.5e-3, delay=system.rf_dead_time, system=system)
    adc = pp.make_adc(num_samples=64, duration=3.2e-3, delay=system.adc_dead_time, system=system)
    gx = pp.make_trapezoid(channel="x", area=500.0, duration=1e-3, system=system)
    for _ in range(3):
        seq.add_block(rf)
        seq.add_block(adc)
        seq.add_block(pp.make_delay(1.5))
    seq.add_block(gx, pp.make_delay(1.2))
    seq.add_block(pp.make_delay(5.0))
    path = tmp_path_factory.mktemp("long_delays") / "long_delays.seq"
    seq.write(str(path))
    return pulseq_read.read(path)


def test_long_delays_are_cut_into_segments_the_buffer_holds(long_delays):
    segments = list(compile_segments(long_delays, larmor_hz=1.0, max_duration_s=0.5))
    assert max(s.duration_s for s in segments) <= 0.5 + 1e-9
    assert all(a.t1_s == b.t0_s for a, b in zip(segments, segments[1:], strict=False))
    assert segments[-1].t1_s == long_delays.duration_s
    # Every event is played once: the gradient in the first piece of its 1.2 s block, none in the idle pieces.
    assert sum(s.adc.n_windows for s in segments) == 3 and sum(s.rf.n_pulses for s in segments) == 3
    with_gradient = [s for s in segments if s.gradient.t_s[0].size]
    assert len(with_gradient) == 1 and with_gradient[0].block_stop - with_gradient[0].block_start == 1
    assert all(s.gradient.t_s[0].size == 0 for s in segments if s.block_start == s.block_stop)


def _record_checks(monkeypatch):
    """Every supervisor check: (scan time, each sequencer's clock as it reported it)."""
    checks = []
    observe = Supervisor.observe

    def recording(self, t_s, statuses):
        checks.append((t_s, {k: statuses[k].time_s for k in ("gradient", "rf")}))
        return observe(self, t_s, statuses)

    monkeypatch.setattr(Supervisor, "observe", recording)
    return checks


def test_long_delays_play_through_and_the_subsystems_are_heard_all_along(long_delays, monkeypatch):
    """The HASTE regression: a delay block longer than the buffer made the executor play past what was
    loaded, the subsystems' clocks stopped at the end of their program, and the supervisor faulted a sound
    run ("gradient heartbeat is 1.000 s old") at 2.0 of 7.0 s."""
    checks = _record_checks(monkeypatch)
    scanner = make_scanner()
    scanner.prepare(long_delays)
    result = scanner.run()
    assert result.outcome == "completed", result.message
    assert result.acquisitions == 3 and result.scan_time_s == pytest.approx(long_delays.duration_s)
    # Heard all along: a check at least every horizon, each sequencer's clock where the scan is.
    times = [t for t, _ in checks]
    assert times[-1] == pytest.approx(long_delays.duration_s)
    assert max(b - a for a, b in zip([0.0, *times], times, strict=False)) <= scanner.supervisor.horizon_s + 1e-9
    assert all(clock == pytest.approx(t) for t, clocks in checks for clock in clocks.values())


@pytest.mark.parametrize("when_s", [2.5, 6.0])  # inside the 1.5 s TR fill, inside the 5 s delay
def test_a_subsystem_silent_during_a_long_delay_is_caught(long_delays, when_s):
    scanner = make_scanner(gradient=f"sim://?fault=silent@{when_s}")
    scanner.prepare(long_delays)
    result = scanner.run()
    assert result.outcome == "fault" and "gradient heartbeat" in result.message and all_safe(scanner)
    assert when_s < result.scan_time_s <= when_s + PROFILE.safety.heartbeat_max_age_s


# -- found by review: positioning, pause -----------------------------------------------------------------------
def test_an_emergency_stop_while_the_table_moves_arms_nothing():
    scanner = make_scanner()
    scanner.prepare(GRE_SEQ)
    armed: list[str] = []
    for sub in (scanner.gradient, scanner.rf):
        for name in ("arm", "start", "load"):
            method = getattr(sub, name)
            setattr(sub, name, lambda *a, _m=method, _n=f"{sub.kind}.{name}", **k: (armed.append(_n), _m(*a, **k))[1])
    wait_idle = scanner.table.wait_idle

    def pressed_on_the_way(*args, **kwargs):
        scanner.emergency_stop("pressed while positioning")  # as from the control server's loop thread
        return wait_idle(*args, **kwargs)

    scanner.table.wait_idle = pressed_on_the_way
    result = scanner.run(table_position_mm=100)
    assert result.outcome == "emergency_stop" and scanner.state is S.EMERGENCY_STOP
    assert armed == []  # it armed and started both sequencers, and went through RUNNING
    assert "RUNNING" not in [e.dest for e in scanner.journal]


def test_an_abort_while_paused_loads_nothing_more_and_the_supervisor_clock_never_runs_back(monkeypatch):
    checks: list[float] = []
    scanner = make_scanner()
    observe = Supervisor.observe

    def watched(self, t_s, statuses):
        checks.append(t_s)
        return observe(self, t_s, statuses)

    scanner.prepare(GRE_SEQ)
    states: list[tuple[float, str]] = []
    paused = threading.Event()

    def progress(t_s, total_s):
        states.append((t_s, scanner.state.name))
        if t_s > 1.0 and not paused.is_set():
            paused.set()
            scanner.request("pause")
            threading.Timer(0.2, scanner.request, args=("abort",)).start()

    monkeypatch.setattr(Supervisor, "observe", watched)
    result = scanner.run(on_progress=progress)
    assert result.outcome == "aborted"
    assert all(state == "RUNNING" for _, state in states)  # no segment loaded and reported while PAUSED
    assert checks == sorted(checks)  # a pause played the buffer out: the next checks go on from there

    scanner.prepare(GRE_SEQ)
    checks.clear()
    resumed = threading.Event()

    def pause_and_resume(t_s, total_s):
        if t_s > 1.0 and not resumed.is_set():
            resumed.set()
            scanner.request("pause")
            threading.Timer(0.05, scanner.request, args=("resume",)).start()

    assert scanner.run(on_progress=pause_and_resume).outcome == "completed"
    assert checks == sorted(checks)  # it went from 3.0 s back to 1.2 s, breaking the SAR window sums


def test_an_abort_requested_while_the_table_moves_ends_the_run_before_anything_is_armed():
    scanner = make_scanner()
    scanner.prepare(GRE_SEQ)
    armed: list[str] = []
    for sub in (scanner.gradient, scanner.rf):
        arm = sub.arm
        sub.arm = lambda _arm=arm, _kind=sub.kind: (armed.append(_kind), _arm())[1]
    wait_idle = scanner.table.wait_idle

    def requested_on_the_way(*args, **kwargs):
        scanner.request("abort")  # as the control server does for an abort sent while POSITIONING
        return wait_idle(*args, **kwargs)

    scanner.table.wait_idle = requested_on_the_way
    result = scanner.run(table_position_mm=100)
    assert result.outcome == "aborted" and scanner.state is S.IDLE and armed == []
    assert [e.dest for e in scanner.journal][-3:] == ["POSITIONING", "ABORTING", "IDLE"]
