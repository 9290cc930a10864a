"""The scanner state machine: its table, and property-based runs of the whole scanner that check the
safety invariants after every step, whatever the order of commands and faults."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scanctl.config import profile as profiles
from scanctl.engine.executor import Scanner
from scanctl.engine.machine import LATCHED, RESTING, TRANSITIONS, ScannerMachine
from scanctl.engine.machine import ScannerState as S
from scanctl.errors import InvalidTransitionError, SafetyLimitError, ScanctlError
from scanctl.hw.interfaces import SubsystemState
from scanctl.sequence import pulseq_read
from tests.test_cli import GRE, SEQ1

PROFILE = profiles.load()
GOOD = pulseq_read.read(GRE)
BAD = pulseq_read.read(SEQ1)


def test_transition_table_is_consistent():
    triggers = [t for t, _, _ in TRANSITIONS]
    assert len(triggers) == len(set(triggers))
    for _, sources, dest in TRANSITIONS:
        for source in sources if isinstance(sources, list) else [sources]:
            assert source is not dest or source in RESTING
    # Latched states are left only by reset (or further up to emergency stop / disconnect).
    leaving = {t for t, sources, _ in TRANSITIONS for s in (sources if isinstance(sources, list) else [sources])
               if s in LATCHED}
    assert leaving == {"reset", "emergency_stop", "disconnect"}


def test_no_auto_transitions_and_refusals_name_the_state():
    m = ScannerMachine()
    assert not hasattr(m._model, "to_RUNNING")
    with pytest.raises(InvalidTransitionError, match=r"cannot start while DISCONNECTED \(allowed: connect\)"):
        m.fire("start")
    with pytest.raises(InvalidTransitionError, match="unknown command"):
        m.fire("launch")
    assert m.state is S.DISCONNECTED and m.journal == []


class ScannerModel(RuleBasedStateMachine):
    """Random sequences of commands, faults and interlocks against a scanner on simulators."""

    def __init__(self) -> None:
        super().__init__()
        self.scanner = Scanner.from_profile(PROFILE, {"rf": "sim://?physics=0"}, segment_s=0.5)
        self.moves_while_playing = 0
        table_move = self.scanner.table.move_to

        def watched_move(position_mm, speed_mm_s=None):
            playing = {self.scanner.gradient.status().state, self.scanner.rf.status().state}
            if playing & {SubsystemState.RUNNING, SubsystemState.ON}:
                self.moves_while_playing += 1
            return table_move(position_mm, speed_mm_s)

        self.scanner.table.move_to = watched_move
        self.scanner.connect()

    def attempt(self, action, *args, **kwargs):
        """Run a command; a refusal must leave the state unchanged."""
        before = self.scanner.state
        try:
            return action(*args, **kwargs)
        except InvalidTransitionError:
            assert self.scanner.state is before
        except SafetyLimitError:
            assert self.scanner.state in (S.IDLE, S.READY, S.FAULT)
        return None

    @rule(good=st.booleans())
    def prepare(self, good):
        self.attempt(self.scanner.prepare, GOOD if good else BAD)

    @rule(stop_at=st.floats(0.0, 8.0), how=st.sampled_from(["none", "abort", "stop", "pause", "estop"]),
          fault=st.sampled_from([None, "gradient", "rf"]), position=st.floats(-50, 300))
    def run(self, stop_at, how, fault, position):
        if fault is not None:
            sub = getattr(self.scanner, fault)
            sub._fault_plan = ("trip", stop_at / 2)
        received = []

        def progress(t, total):
            if t >= stop_at and how != "none":
                if how == "estop":
                    self.scanner.emergency_stop()
                elif how == "pause":
                    self.scanner.request("pause")
                    self.scanner.request("resume")
                else:
                    self.scanner.request(how)

        result = self.attempt(self.scanner.run, table_position_mm=position, on_acquisitions=received.extend,
                              on_progress=progress)
        if result is not None:
            assert result.acquisitions == len(received)
            assert [a.index for a in received] == list(range(len(received)))  # nothing lost, no gaps
            if result.outcome == "completed":
                assert len(received) == 64
        for name in ("gradient", "rf"):
            getattr(self.scanner, name)._fault_plan = None

    @rule(position=st.floats(-1200, 1200))
    def move_table(self, position):
        try:
            self.attempt(self.scanner.move_table, position)
        except SafetyLimitError:
            assert self.scanner.state is S.FAULT  # outside the travel limits: refused by the table

    @rule()
    def emergency_stop(self):
        self.scanner.emergency_stop()
        assert self.scanner.state is S.EMERGENCY_STOP

    @rule()
    def release(self):
        self.scanner.release_emergency_stop()

    @precondition(lambda self: self.scanner.state in LATCHED)
    @rule()
    def reset(self):
        try:
            self.scanner.reset()
        except InvalidTransitionError:
            assert self.scanner.state in LATCHED
        except ScanctlError:
            pass

    @invariant()
    def resting_and_safe(self):
        scanner = self.scanner
        assert scanner.state in RESTING, scanner.state  # every command returns to a resting state
        states = {k: s.state for k, s in scanner.status().items()}
        assert states["gradient"] not in (SubsystemState.RUNNING, SubsystemState.ON)
        assert states["rf"] not in (SubsystemState.RUNNING, SubsystemState.ON)
        assert states["table"] is not SubsystemState.MOVING
        assert self.moves_while_playing == 0
        if scanner.state in LATCHED:
            assert scanner.journal[-1].dest in ("FAULT", "EMERGENCY_STOP")


TestScanner = ScannerModel.TestCase
TestScanner.settings = settings(max_examples=40, stateful_step_count=12, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])


def test_documented_transition_table_matches_the_code():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "scanner.md").read_text()
    for trigger, _, dest in TRANSITIONS:
        assert f"| `{trigger}` |" in doc and f"| {dest.name} |" in doc, trigger
