"""The runtime half of safety: the supervisor watching a scan, the interlocks, fault injection in the
simulators, and a property-based run of the whole scanner that checks the safety invariants *during* every
scan (after every sync of the simulators' virtual clock), whatever the commands, faults and patients."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scanctl.config import profile as profiles
from scanctl.engine.executor import Scanner
from scanctl.engine.machine import LATCHED, RESTING
from scanctl.engine.machine import ScannerState as S
from scanctl.engine.run import load_source
from scanctl.engine.segments import compile_segments
from scanctl.errors import DriverError, InterlockError, InvalidTransitionError, SafetyLimitError, ScanctlError
from scanctl.hw.interfaces import Status, SubsystemState
from scanctl.safety.interlocks import read_inputs
from scanctl.safety.supervisor import ASSUMED_WEIGHT_KG, EnergyLog, Supervisor, SupervisorTrip

PROFILE = profiles.load()
LIMITS = PROFILE.safety
TSE, _ = load_source("protocols/tse_2d.toml", PROFILE)  # 9 s, ~140 W mean forward power, 21 kW peaks
GRE, _ = load_source("protocols/gre_2d.toml", PROFILE)  # 1.5 s, light RF
ON = (SubsystemState.ON, SubsystemState.RUNNING)
G, RF, T = "gradient", "rf", "table"


def make_scanner(profile: profiles.SystemProfile = PROFILE, **urls: str) -> Scanner:
    scanner = Scanner.from_profile(profile, {"rf": "sim://?physics=0", **urls}, segment_s=0.5)
    scanner.connect()
    return scanner


def amplifiers_off(scanner: Scanner) -> bool:
    """The simulators' own truth (not their possibly stale status): nothing plays, no output."""
    grad, rf = scanner.gradient, scanner.rf
    return (grad._state not in ON and rf._state not in ON and grad.power_w == 0.0 and rf.forward_power_w == 0.0
            and scanner.table.status().state is not SubsystemState.MOVING)


def fault_entry(scanner: Scanner) -> str:
    entry = scanner.journal[-1]
    assert entry.dest == "FAULT", entry
    return entry.reason


def start_reason(scanner: Scanner) -> str:
    return [e for e in scanner.journal if e.trigger == "start"][-1].reason


# -- the supervisor on its own --------------------------------------------------------------------------------
def status(t_s: float, **telemetry: float) -> Status:
    return Status(SubsystemState.RUNNING, t_s, "", dict(telemetry))


def statuses(t_s: float, energy_j: float = 0.0, temp_c: float = 20.0, position: float = 0.0) -> dict[str, Status]:
    return {G: status(t_s, coil_temperature_c=temp_c), RF: status(t_s, forward_energy_j=energy_j),
            T: Status(SubsystemState.STANDBY, 0.0, "", {"position_mm": position})}


def test_energy_log_sums_windows_pro_rata():
    log = EnergyLog(keep_s=10.0)
    log.add(0.0, 1.0, 100.0)
    log.add(1.0, 3.0, 200.0)
    assert log.energy_in(0.0, 3.0) == pytest.approx(300.0)
    assert log.energy_in(0.5, 2.0) == pytest.approx(50.0 + 100.0)
    log.add(3.0, 20.0, 0.0)  # old intervals beyond keep_s are dropped
    assert log.energy_in(0.0, 3.0) == 0.0



def _naive_energy_in(intervals: list[tuple[float, float, float]], start: float, end: float) -> float:
    total = 0.0
    for t0, t1, energy in intervals:
        if t1 <= t0:
            total += energy if start <= t0 <= end else 0.0
        else:
            total += energy * max(0.0, min(t1, end) - max(t0, start)) / (t1 - t0)
    return total


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.just(0.0) | st.floats(1e-6, 2.0), st.floats(0.0, 50.0)), min_size=1, max_size=60),
       queries=st.lists(st.tuples(st.floats(-5.0, 80.0), st.floats(0.0, 40.0)), min_size=1, max_size=10))
def test_energy_log_matches_the_direct_sum_over_its_intervals(steps, queries):
    """The bisected running total gives what summing every kept interval pro rata gives (instants and
    gaps included), for windows anywhere."""
    log = EnergyLog(keep_s=1e9)
    intervals, t = [], 0.0
    for dt, energy in steps:
        log.add(t, t + dt, energy)
        if energy > 0.0:
            intervals.append((t, t + dt, energy))
        t += dt
    for start, length in queries:
        assert log.energy_in(start, start + length) == pytest.approx(
            _naive_energy_in(intervals, start, start + length), rel=1e-9, abs=1e-9)

def test_sar_limits_follow_weight_mode_and_profile():
    sup = Supervisor(LIMITS, gamma_hz_per_t=PROFILE.gamma_hz_per_t, patient_weight_kg=80.0, mode="first_level")
    by_name = {lim.name: lim for lim in sup.sar_limits}
    body = by_name["sar.whole_body.360s"]
    assert body.limit_w_per_kg == LIMITS.sar.whole_body_w_per_kg["first_level"]
    assert by_name["sar.whole_body.10s"].limit_w_per_kg == pytest.approx(
        LIMITS.sar.short_window_factor * LIMITS.sar.whole_body_w_per_kg["first_level"])
    # Whole body: body_absorbed_fraction * P / weight; a constant 100 W for the whole window:
    assert body.sar(100.0 * 360.0) == pytest.approx(LIMITS.rf.body_absorbed_fraction * 100.0 / 80.0)
    head = by_name["sar.head.360s"]
    assert head.sar(100.0 * 360.0) == pytest.approx(
        LIMITS.rf.head_absorbed_fraction * 100.0 / (LIMITS.rf.head_mass_fraction * 80.0))
    with pytest.raises(SafetyLimitError, match="unknown operating mode 'second_level'"):
        Supervisor(LIMITS, gamma_hz_per_t=1.0, mode="second_level")
    with pytest.raises(SafetyLimitError, match="not a positive number"):
        Supervisor(LIMITS, gamma_hz_per_t=1.0, patient_weight_kg=-3.0)
    assumed = Supervisor(LIMITS, gamma_hz_per_t=1.0)
    assert assumed.weight_kg == ASSUMED_WEIGHT_KG and "assumed" in assumed.note()


def test_supervisor_trips_before_the_short_window_is_reached():
    sup = Supervisor(LIMITS, gamma_hz_per_t=PROFILE.gamma_hz_per_t, patient_weight_kg=70.0, horizon_s=0.25)
    short = next(lim for lim in sup.sar_limits if lim.name == "sar.whole_body.10s")
    power_w = 0.9 * short.budget_j() / short.window_s  # 90 % of the limit, if kept up for 10 s
    energy, t = 0.0, 0.0
    with pytest.raises(SupervisorTrip) as info:
        while t < 20.0:
            t += 0.25
            energy += power_w * 0.25
            sup.observe(t, statuses(t, energy))
    trip = info.value
    assert trip.limit == "sar.whole_body.10s" and "before the next check" in str(trip)
    assert sup.sar_now()["sar.whole_body.10s"] < short.limit_w_per_kg  # stopped before, not after
    assert trip.value > short.limit_w_per_kg and trip.threshold == short.limit_w_per_kg


@pytest.mark.parametrize(("change", "limit"), [
    ({"temp_c": 69.9}, "coil_temperature"),
    ({"position": 3.0}, "table.moved"),
    ({"position": 5000.0}, "table.travel"),
])
def test_supervisor_trips_on_temperature_and_table(change, limit):
    sup = Supervisor(LIMITS, gamma_hz_per_t=PROFILE.gamma_hz_per_t, patient_weight_kg=70.0)
    sup.observe(0.5, statuses(0.5))
    with pytest.raises(SupervisorTrip) as info:
        sup.observe(1.0, statuses(1.0, **change))
    assert info.value.limit == limit


def test_supervisor_heartbeats_and_inputs():
    sup = Supervisor(LIMITS, gamma_hz_per_t=PROFILE.gamma_hz_per_t, patient_weight_kg=70.0, horizon_s=0.25)
    stale = statuses(2.0)
    stale[RF] = status(1.0, forward_energy_j=0.0)  # last heard of at 1.0 s: 1 s old, + 0.25 s to the next check
    with pytest.raises(SupervisorTrip, match="rf heartbeat is 1.000 s old") as info:
        sup.observe(2.0, stale)
    assert info.value.limit == "heartbeat.rf"
    lost = statuses(2.0)
    lost[G] = Status(SubsystemState.UNKNOWN, 0.0, "gradient driver silent")
    with pytest.raises(SupervisorTrip, match="gradient heartbeat lost"):
        sup.observe(2.0, lost)
    door = statuses(2.0)
    door[RF] = status(2.0, forward_energy_j=0.0, door_closed=0.0, coil_present=1.0)
    assert read_inputs(door) == {"door_open": True, "coil_absent": False}
    with pytest.raises(SupervisorTrip, match="interlock door open"):
        sup.observe(2.0, door)


# -- fail closed: a reading that is not a finite number is a trip ----------------------------------------------
READINGS = {
    G: {"coil_temperature_c": 35.0, "power_w": 1000.0, "buffered_s": 0.5},
    RF: {"forward_energy_j": 10.0, "forward_power_w": 100.0, "reflected_power_w": 1.0, "peak_forward_power_w": 2e4,
         "door_closed": 1.0, "coil_present": 1.0, "buffered_s": 0.5},
    T: {"position_mm": 0.0, "homed": 1.0},
}
NON_FINITE = (math.nan, math.inf, -math.inf)


def full_statuses(t_s: float) -> dict[str, Status]:
    return {kind: Status(SubsystemState.STANDBY if kind == T else SubsystemState.RUNNING, t_s, "", dict(readings))
            for kind, readings in READINGS.items()}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_non_finite_reading_trips_the_supervisor(data):
    """Whatever reading it is — coil temperature, RF energy or power, table position, an interlock input, a
    sequencer's clock, or a reading the supervisor has no limit for — NaN or infinity trips, naming it."""
    kind = data.draw(st.sampled_from([G, RF, T]))
    key = data.draw(st.sampled_from([*READINGS[kind], "time_s", "some_new_reading_v"] if kind != T
                                    else [*READINGS[kind], "some_new_reading_v"]))
    value = data.draw(st.sampled_from(NON_FINITE))
    sup = Supervisor(LIMITS, gamma_hz_per_t=PROFILE.gamma_hz_per_t, patient_weight_kg=70.0, horizon_s=0.25)
    sup.observe(0.5, full_statuses(0.5))  # all well
    now = full_statuses(1.0)
    if key == "time_s":
        now[kind] = Status(SubsystemState.RUNNING, value, "", now[kind].telemetry)
    else:
        now[kind].telemetry[key] = value
    with pytest.raises(SupervisorTrip) as info:
        sup.observe(1.0, now)
    assert info.value.limit == f"telemetry.{kind}.{key}"
    assert f"{kind} reports {key} = {value!r}" in str(info.value)


@pytest.mark.parametrize("t_s", NON_FINITE)
def test_a_non_finite_check_time_trips(t_s):
    sup = Supervisor(LIMITS, gamma_hz_per_t=PROFILE.gamma_hz_per_t, patient_weight_kg=70.0)
    with pytest.raises(SupervisorTrip, match="check time .* is not finite"):
        sup.observe(t_s, full_statuses(1.0))


def test_a_nan_interlock_input_counts_as_tripped():
    for value in (math.nan, 0.0):
        door = full_statuses(1.0)
        door[RF].telemetry["door_closed"] = value
        assert read_inputs(door)["door_open"] is True
    assert read_inputs(full_statuses(1.0)) == {"door_open": False, "coil_absent": False}


def test_a_nan_rf_program_trips_before_it_is_loaded():
    """The supervisor's own comparisons fail closed too (``not energy <= budget``), whatever reached them."""
    sup = Supervisor(LIMITS, gamma_hz_per_t=PROFILE.gamma_hz_per_t, patient_weight_kg=70.0)
    segment = next(s for s in compile_segments(GRE, larmor_hz=PROFILE.gamma_hz_per_t * PROFILE.b0_t) if s.rf.n_pulses)
    spoiled = copy.deepcopy(segment.rf)  # past the check a program gets when it is made
    spoiled.b1_hz[0] = complex(math.nan, 0.0)
    with pytest.raises(SupervisorTrip) as info:
        sup.before_load(spoiled)
    assert info.value.limit.startswith("sar.")
    sup.before_load(segment.rf)  # the same segment unspoiled is fine


def _reports_nan_from(sub, key: str, t_s: float) -> None:
    """From scan time ``t_s`` on, ``sub`` reports ``key`` (a telemetry reading, or its clock ``time_s``) as NaN."""
    real_status = sub.status

    def status() -> Status:
        st_ = real_status()
        if st_.time_s < t_s:
            return st_
        if key == "time_s":
            return Status(st_.state, math.nan, st_.message, st_.telemetry)
        return Status(st_.state, st_.time_s, st_.message, {**st_.telemetry, key: math.nan})

    sub.status = status


@pytest.mark.parametrize(("kind", "key"), [
    (G, "coil_temperature_c"), (RF, "forward_energy_j"), (RF, "peak_forward_power_w"), (G, "time_s"),
    (RF, "time_s"),
])
def test_a_nan_reading_mid_scan_stops_the_scan_safe(kind, key):
    scanner = make_scanner()
    _reports_nan_from(getattr(scanner, "gradient" if kind == G else "rf"), key, 1.0)
    scanner.prepare(TSE)
    result = scanner.run(patient_weight_kg=70.0)
    assert result.outcome == "fault" and scanner.state is S.FAULT and amplifiers_off(scanner)
    assert f"{kind} reports {key} = nan" in result.message and "(supervisor)" in result.message
    assert f"{kind} reports {key}" in fault_entry(scanner)
    assert 1.0 <= result.scan_time_s < 2.0


# -- the supervisor in the scanner, driven by injected faults --------------------------------------------------
@pytest.mark.parametrize(("urls", "limit", "before_s"), [
    ({"rf": "sim://?physics=0&fault=spike@2"}, "whole-body SAR (10 s window)", 3.0),
    ({"rf": "sim://?physics=0&fault=silent@2"}, "rf heartbeat", 3.0),
    ({"gradient": "sim://?fault=silent@3"}, "gradient heartbeat", 4.0),
    ({"gradient": "sim://?fault=cooling@1&overheat_k_per_s=20"}, "gradient coil temperature", 4.0),
    ({"rf": "sim://?physics=0&door=open@2.5"}, "interlock door open", 3.0),
])
def test_injected_faults_are_caught_by_the_supervisor(urls, limit, before_s):
    scanner = make_scanner(**urls)
    scanner.prepare(TSE)
    acquisitions = []
    result = scanner.run(on_acquisitions=acquisitions.extend, patient_weight_kg=70.0)
    assert result.outcome == "fault" and scanner.state is S.FAULT and amplifiers_off(scanner)
    assert limit in result.message and "(supervisor)" in result.message
    assert limit in fault_entry(scanner)  # the journal says why
    assert result.scan_time_s < before_s and acquisitions  # stopped at once, the data so far kept
    assert scanner.gradient.status().state is not SubsystemState.FAULT  # the supervisor was first
    assert scanner.gradient.temperature_c < LIMITS.gradient_thermal.max_temp_c


def test_amplifier_trip_and_overtemperature_still_latch_fault():
    for urls in ({"rf": "sim://?physics=0&fault=trip@1"}, {"gradient": "sim://?fault=overtemp@1"}):
        scanner = make_scanner(**urls)
        scanner.prepare(TSE)
        result = scanner.run(patient_weight_kg=70.0)
        assert result.outcome == "fault" and "at 1.000000 s (injected)" in result.message and amplifiers_off(scanner)


def test_a_light_patient_is_stopped_before_the_segment_that_would_break_the_limit():
    scanner = make_scanner()
    scanner.prepare(TSE)
    result = scanner.run(patient_weight_kg=12.0)
    assert result.outcome == "fault" and "SAR" in result.message
    assert "with the next segment" in result.message or "before the next check" in result.message
    assert all(result.sar_w_per_kg[name] <= lim for name, lim in
               ((lim.name, lim.limit_w_per_kg) for lim in scanner.supervisor.sar_limits))
    # The same scan for an adult passes, and reports the SAR it measured.
    scanner.reset()
    scanner.prepare(TSE)
    result = scanner.run(patient_weight_kg=80.0)
    assert result.outcome == "completed", result.message
    assert 0 < result.sar_w_per_kg["sar.whole_body.10s"] < 2 * LIMITS.sar.whole_body_w_per_kg["normal"]
    assert "supervised for a 80 kg patient, normal mode" in start_reason(scanner)


def test_without_a_weight_the_conservative_assumption_is_journalled():
    scanner = make_scanner()
    scanner.prepare(GRE)
    assert scanner.run().outcome == "completed"
    assert f"an assumed {ASSUMED_WEIGHT_KG:g} kg patient" in start_reason(scanner)
    scanner.prepare(GRE)
    with pytest.raises(SafetyLimitError, match="unknown operating mode"):
        scanner.run(mode="turbo")
    assert scanner.state is S.READY  # refused before anything moved


def test_table_moved_under_a_running_scan_is_caught():
    scanner = make_scanner()
    scanner.prepare(TSE)

    def nudge(t, total):
        if t > 1.0 and scanner.table.status().state is SubsystemState.STANDBY:
            scanner.table._start_move(scanner.table.position_mm() + 50.0, 10.0)  # behind the scanner's back

    result = scanner.run(on_progress=nudge, patient_weight_kg=70.0)
    assert result.outcome == "fault" and "the table is MOVING while scanning" in result.message


def test_interlock_inputs_refuse_a_scan_and_latch_until_cleared():
    scanner = make_scanner(rf="sim://?physics=0&coil=absent")
    with pytest.raises(InvalidTransitionError, match="interlocks active: coil_absent"):
        scanner.prepare(GRE)
    scanner.rf.set_input("coil_present", True)
    scanner.prepare(GRE)
    scanner.rf.set_input("door_closed", False)
    with pytest.raises(InvalidTransitionError, match="cannot start while READY: interlocks active: door_open"):
        scanner.run()
    assert scanner.table.status().state is SubsystemState.STANDBY and amplifiers_off(scanner)
    scanner.rf.set_input("door_closed", True)
    scanner.prepare(TSE)

    def open_door(t, total):
        if t > 0.5:
            scanner.rf.set_input("door_closed", False)

    assert scanner.run(on_progress=open_door).outcome == "fault"
    with pytest.raises(InvalidTransitionError, match="interlocks not clear: door_open"):
        scanner.reset()
    scanner.rf.set_input("door_closed", True)
    scanner.reset()
    assert scanner.state is S.IDLE


def test_table_limits_from_the_profile_and_no_motion_while_amplifiers_are_on():
    scanner = make_scanner(table="sim://?min_mm=-5000&max_mm=5000&speed_mm_s=500")  # a table looser than the profile
    with pytest.raises(SafetyLimitError, match="outside the profile's travel limits"):
        scanner.move_table(LIMITS.table.max_mm + 1)
    with pytest.raises(SafetyLimitError, match="speed 400 mm/s is outside the profile's limit"):
        scanner.move_table(10.0, 400.0)
    scanner.prepare(GRE)
    with pytest.raises(SafetyLimitError, match="travel limits"):
        scanner.run(table_position_mm=LIMITS.table.min_mm - 1)
    assert scanner.state is S.READY and scanner.table.position_mm() == 0.0  # nothing moved
    scanner.gradient.arm()  # something left an amplifier on: the table must not move
    with pytest.raises(InterlockError, match="cannot move while gradient is on"):
        scanner.move_table(10.0)
    scanner.gradient.abort()
    assert scanner.move_table(10.0) == 10.0


@pytest.mark.parametrize("when", ["connected", "ready", "positioning", "running", "paused", "last progress"])
def test_emergency_stop_from_any_state_makes_everything_safe_and_latches(when):
    scanner = make_scanner()
    if when == "connected":
        scanner.emergency_stop()
    else:
        scanner.prepare(TSE)
        if when == "ready":
            scanner.emergency_stop()
        else:
            def press(t, total):
                if when == "running" and t > 1.0 or when == "last progress" and t >= total:
                    scanner.emergency_stop("button")
                if when == "paused" and t > 1.0 and scanner.state is S.RUNNING:
                    scanner.request("pause")

            if when == "positioning":
                move = scanner.table.move_to
                scanner.table.move_to = lambda *a: (move(*a), scanner.emergency_stop("button"))[0]
            if when == "paused":
                import threading
                threading.Timer(0.2, scanner.emergency_stop, args=("button",)).start()
            result = scanner.run(on_progress=press, patient_weight_kg=70.0)
            assert result.outcome == "emergency_stop", result
    assert scanner.state is S.EMERGENCY_STOP and amplifiers_off(scanner)
    assert scanner.journal[-1].dest == "EMERGENCY_STOP"
    with pytest.raises(InvalidTransitionError, match="emergency_stop_button"):
        scanner.reset()
    scanner.release_emergency_stop()
    scanner.reset()
    assert scanner.state is S.IDLE


# -- the property-based proof -------------------------------------------------------------------------------------
FAULTS = [None, ("rf", "spike"), ("rf", "silent"), ("rf", "trip"), ("gradient", "silent"), ("gradient", "trip"),
          ("gradient", "overtemp"), ("gradient", "cooling"), ("rf", "door"), ("table", "stall")]


#: The coolant failure the state machine injects heats the coil this fast beyond the thermal model (K/s); its
#: profile says so (``max_rise_k_per_s``): a failure that begins between two checks is then still caught
#: before the limit, whatever the coil's temperature when it begins.
COOLANT_K_PER_S = 25.0
COOLANT_PROFILE = dataclasses.replace(PROFILE, safety=dataclasses.replace(
    LIMITS, gradient_thermal=dataclasses.replace(LIMITS.gradient_thermal, max_rise_k_per_s=COOLANT_K_PER_S)))


class SafetyModel(RuleBasedStateMachine):
    """Random commands, patients and injected faults against the scanner on simulators (virtual clock). The
    invariants are checked after every step *and* after every sync while a scan plays, on the simulators'
    own state and on SAR computed here, independently of the supervisor, from the RF energy counter."""

    def __init__(self) -> None:
        super().__init__()
        self.scanner = scanner = make_scanner(COOLANT_PROFILE, gradient=f"sim://?overheat_k_per_s={COOLANT_K_PER_S}")
        self.weight_kg = ASSUMED_WEIGHT_KG
        self.mode = "normal"
        self.position = 0.0
        self.energy: list[tuple[float, float]] = []  # (scan time, energy counter) while RF is on
        self.checks = 0
        for sub in (scanner.gradient, scanner.rf):
            sub.sync = self._watched(sub.sync)
        move = scanner.table.move_to

        def watched_move(position_mm, speed_mm_s=None):
            assert scanner.gradient._state not in ON and scanner.rf._state not in ON, "table moved while playing"
            return move(position_mm, speed_mm_s)

        scanner.table.move_to = watched_move

    def _watched(self, sync):
        def watched(t_s, timeout_s=10.0):
            result = sync(t_s, timeout_s)
            self.check_live()
            return result
        return watched

    def check_live(self) -> None:
        """While gradients or RF play: the scanner is scanning, the table still at the scan position, every
        heartbeat fresh, and the measured SAR within every limit."""
        scanner, grad, rf = self.scanner, self.scanner.gradient, self.scanner.rf
        if grad._state not in ON and rf._state not in ON:
            return
        self.checks += 1
        assert scanner.state in (S.RUNNING, S.PAUSING, S.STOPPING, S.POSITIONING), scanner.state
        table = scanner.table.status()
        assert table.state is SubsystemState.STANDBY and table.telemetry["position_mm"] == self.position
        for sub in (grad, rf):
            assert sub._playhead_s - sub.status().time_s <= LIMITS.heartbeat_max_age_s + 1e-9, sub.kind
        assert grad.temperature_c < LIMITS.gradient_thermal.max_temp_c
        if rf._state in ON:
            self.energy.append((rf._playhead_s, rf.forward_energy_j))
            for name, sar, limit in self.sar():
                assert sar <= limit * (1 + 1e-9), (name, sar, limit)

    def sar(self) -> list[tuple[str, float, float]]:
        t, e = np.array(self.energy).T
        rf, sar_limits, out = LIMITS.rf, LIMITS.sar, []
        for region, fraction, kg, table in (
                ("whole_body", rf.body_absorbed_fraction, self.weight_kg, sar_limits.whole_body_w_per_kg),
                ("head", rf.head_absorbed_fraction, rf.head_mass_fraction * self.weight_kg, sar_limits.head_w_per_kg)):
            for window, factor in ((sar_limits.short_window_s, sar_limits.short_window_factor),
                                   (sar_limits.window_s, 1.0)):
                before = np.interp(t[-1] - window, t, e, left=0.0)
                out.append((f"{region}.{window:g}s", fraction * (e[-1] - before) / (kg * window),
                            table[self.mode] * factor))
        return out

    @rule(tse=st.booleans())
    def prepare(self, tse):
        with contextlib.suppress(InvalidTransitionError):  # e.g. an interlock active, or not IDLE/READY
            self.scanner.prepare(TSE if tse else GRE)

    @rule(weight=st.one_of(st.none(), st.floats(8.0, 150.0)), mode=st.sampled_from(["normal", "first_level"]),
          position=st.sampled_from([0.0, 120.0, -300.0]), fault=st.sampled_from(FAULTS),
          fault_at=st.floats(0.0, 8.0), how=st.sampled_from(["none", "abort", "stop", "pause", "estop"]),
          at=st.floats(0.0, 9.0), tse=st.booleans())
    def run(self, weight, mode, position, fault, fault_at, how, at, tse):
        scanner = self.scanner
        self.prepare(tse)
        if fault is not None:
            kind, what = fault
            if what == "door":
                scanner.rf._door_opens_s = fault_at
            else:
                getattr(scanner, kind)._fault_plan = (what, fault_at if kind != "table" else fault_at / 10)

        def progress(t, total):
            if t >= at and how != "none":
                if how == "estop":
                    scanner.emergency_stop()
                elif how == "pause":
                    scanner.request("pause")
                    scanner.request("resume")
                else:
                    scanner.request(how)

        self.weight_kg = ASSUMED_WEIGHT_KG if weight is None else weight
        self.mode, self.position, self.energy = mode, position, []
        before = scanner.state
        try:
            result = scanner.run(table_position_mm=position, on_progress=progress, patient_weight_kg=weight, mode=mode)
        except InvalidTransitionError:
            assert scanner.state is before
        except ScanctlError:  # the table stalled on the way to the scan position
            assert scanner.state is S.FAULT
        else:
            event(f"outcome {result.outcome}" + (f" ({result.message.split(' at ')[0][:40]})"
                                                 if "supervisor" in result.message else ""))
            if result.outcome == "fault":
                assert scanner.state is S.FAULT and result.message in scanner.journal[-1].reason
        finally:
            for sub in (scanner.gradient, scanner.rf, scanner.table):
                sub._fault_plan = None
            scanner.rf._door_opens_s = None

    @rule(position=st.floats(-1200, 1200), speed=st.one_of(st.none(), st.floats(1.0, 200.0)))
    def move_table(self, position, speed):
        try:
            self.scanner.move_table(position, speed)
        except (InvalidTransitionError, SafetyLimitError, InterlockError):
            assert self.scanner.state in RESTING
        except DriverError:  # e.g. too slow to arrive within the wait: the move failed, FAULT latched
            assert self.scanner.state is S.FAULT

    @rule(press=st.booleans())
    def emergency_stop_button(self, press):
        if press:
            self.scanner.emergency_stop()
            assert self.scanner.state is S.EMERGENCY_STOP and amplifiers_off(self.scanner)
        else:
            self.scanner.release_emergency_stop()

    @rule(closed=st.booleans(), coil=st.booleans())
    def inputs(self, closed, coil):
        self.scanner.rf.set_input("door_closed", closed)
        self.scanner.rf.set_input("coil_present", coil)

    @precondition(lambda self: self.scanner.state in LATCHED)
    @rule()
    def reset(self):
        try:
            self.scanner.reset()
        except ScanctlError:
            assert self.scanner.state in LATCHED

    @invariant()
    def resting_and_safe(self):
        scanner = self.scanner
        assert scanner.state in RESTING, scanner.state
        assert amplifiers_off(scanner)  # FAULT, EMERGENCY_STOP and every other resting state
        if scanner.state in LATCHED:
            assert scanner.journal[-1].dest in ("FAULT", "EMERGENCY_STOP")
            assert not math.isnan(scanner.gradient.temperature_c)


TestSafety = SafetyModel.TestCase
TestSafety.settings = settings(max_examples=80, stateful_step_count=12, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])


def test_a_coolant_failure_carried_into_a_run_whose_gradient_is_silent_is_stopped_before_the_limit():
    """Found by the safety state machine: a coolant failure heated the coil through a whole run (finished
    below the limit), and the next run's gradient system went silent at once, so its temperature reading
    stayed that of the start while the coil heated at 25 K/s; the coil passed 70 °C before the heartbeat
    check stopped the scan. The supervisor now remembers the fastest rise it saw (until a reset), ages a
    stale reading from its own time, and checks before anything plays."""
    scanner = make_scanner(gradient="sim://?overheat_k_per_s=25")
    hottest: list[float] = []
    sync = scanner.gradient.sync

    def watched(t_s, timeout_s=10.0):
        try:
            return sync(t_s, timeout_s)
        finally:
            hottest.append(scanner.gradient.temperature_c)

    scanner.gradient.sync = watched
    scanner.prepare(GRE)
    scanner.gradient._fault_plan = ("cooling", 0.0)
    first = scanner.run()
    assert first.outcome == "completed" and 40.0 < scanner.gradient.temperature_c < 70.0, first.message
    scanner.prepare(GRE)
    scanner.gradient._fault_plan = ("silent", 0.0)
    second = scanner.run()
    assert second.outcome == "fault" and "coil temperature" in second.message, second.message
    assert max(hottest) < LIMITS.gradient_thermal.max_temp_c
    scanner.close()


def test_a_report_left_from_an_earlier_run_is_no_heartbeat_of_this_one(monkeypatch):
    """Found by the safety state machine: the RF system fell silent at 2.0 s of a run that then stopped
    cleanly, so its frozen report (scan time 2.0 s) carried into the next run, where it looked fresher than
    the scan itself; a runaway amplifier in that run then took the 10-s SAR to 5.0 W/kg (limit 4.0), its
    energy counter frozen too. A report ahead of the scan is now a lost heartbeat."""
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *args, **kwargs: None)
    model = SafetyModel()
    model.run(weight=None, mode="normal", position=0.0, fault=("rf", "silent"), fault_at=2.0, how="stop", at=0.5,
              tse=True)
    model.run(weight=None, mode="normal", position=0.0, fault=("rf", "spike"), fault_at=0.0, how="none", at=0.0,
              tse=False)  # the invariants (SAR from the simulator's own counter) are checked at every sync


def test_make_safe_reaches_every_subsystem_at_once_whatever_one_of_them_takes():
    """One after another, a gradient driver that had just died (its abort waiting out the liveness bound)
    held the RF's abort back by half a second."""
    import time

    from scanctl.safety.interlocks import make_safe

    class Sub:
        def __init__(self, kind, takes_s):
            self.kind, self.takes_s, self.done_s = kind, takes_s, None

        def abort(self):
            time.sleep(self.takes_s)
            self.done_s = time.monotonic()
            if self.takes_s:
                raise DriverError(f"{self.kind} silent")

    lost, rf, table = Sub("gradient", 0.5), Sub("rf", 0.0), Sub("table", 0.0)
    t0 = time.monotonic()
    assert make_safe([lost, rf, table]) == ["gradient: gradient silent"]
    assert rf.done_s - t0 < 0.2 and table.done_s - t0 < 0.2  # not behind the lost one
    assert lost.done_s - t0 >= 0.5  # and the lost one was waited for
