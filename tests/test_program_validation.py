"""Programs fail closed: a non-finite value anywhere in a gradient, RF or ADC program is refused where the
program is made (so also as it is decoded from a wire) and again where a subsystem loads it, with an error
naming the program type, the field, the axis or key and the index."""

from __future__ import annotations

import copy
import dataclasses

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from scanctl.config import profile as profiles
from scanctl.engine.segments import compile_segments
from scanctl.errors import SafetyLimitError
from scanctl.hw.program import breakpoint_slew
from scanctl.hw.registry import open_subsystem
from scanctl.sequence import pulseq_read
from tests.test_cli import GRE

PROFILE = profiles.load()
SEGMENT = next(s for s in compile_segments(pulseq_read.read(GRE), larmor_hz=PROFILE.gamma_hz_per_t * PROFILE.b0_t,
                                           max_duration_s=0.5)
               if s.rf.n_pulses and s.adc.n_windows > 1)
# ADC labels are integers as compiled; a peer on a wire may send floats, so they are checked alike.
ADC = dataclasses.replace(SEGMENT.adc, labels={"LIN": SEGMENT.adc.index.astype(np.float64)})
PROGRAMS = {"gradient": SEGMENT.gradient, "rf": SEGMENT.rf, "adc": ADC}
NON_FINITE = (np.nan, np.inf, -np.inf)


def _places(program):
    """Every (field, key, size) of ``program`` that holds numbers: ``key`` is None for a plain array or
    number, an axis index for the per-axis tuples, a label name for ``labels``."""
    out = []
    for f in dataclasses.fields(program):
        value = getattr(program, f.name)
        if isinstance(value, tuple):
            out += [(f.name, axis, item.size) for axis, item in enumerate(value) if item.size]
        elif isinstance(value, dict):
            out += [(f.name, key, item.size) for key, item in value.items() if item.size]
        elif np.asarray(value).dtype.kind in "fc":
            out.append((f.name, None, np.size(value)))
    return out


@st.composite
def spoiled(draw):
    """``(kind, program with one non-finite value, field, where)`` — the value written in a copy."""
    kind = draw(st.sampled_from(sorted(PROGRAMS)))
    program = PROGRAMS[kind]
    field, key, size = draw(st.sampled_from(_places(program)))
    index = draw(st.integers(0, size - 1))
    bad = draw(st.sampled_from(NON_FINITE))
    bad_copy = copy.deepcopy(program)  # (no __post_init__: the copy is spoiled past the check)
    value = getattr(bad_copy, field)
    if key is None and np.ndim(value) == 0:
        object.__setattr__(bad_copy, field, bad)
        where = ""
    else:
        target = value if key is None else value[key]
        if target.dtype.kind == "c":
            bad = complex(bad, 0.0) if draw(st.booleans()) else complex(0.0, bad)
        target[index] = bad
        axis = "" if key is None else f"[{'xyz'[key] if isinstance(key, int) else key}]"
        where = f"{axis}[{index}]"
    return kind, bad_copy, field, where


def _fields(program):
    return {f.name: getattr(program, f.name) for f in dataclasses.fields(program)}


@settings(max_examples=300, deadline=None)
@given(spoiled())
def test_a_program_with_a_non_finite_value_is_refused_when_made(case):
    kind, bad, field, where = case
    with pytest.raises(SafetyLimitError) as info:
        type(bad)(**_fields(bad))
    assert f"{type(bad).__name__}: {field}{where} is " in str(info.value)
    assert "must be finite" in str(info.value)


@settings(max_examples=100, deadline=None)
@given(spoiled())
def test_a_subsystem_refuses_a_program_spoiled_after_it_was_made(case):
    kind, bad, field, where = case
    gradient = open_subsystem("gradient", "sim://", PROFILE)
    rf = open_subsystem("rf", "sim://?physics=0", PROFILE)
    for sub in (gradient, rf):
        sub.connect()
        sub.arm()
    with pytest.raises(SafetyLimitError, match=f"{field}.* is "):
        if kind == "gradient":
            gradient.load(bad)
        else:
            rf.load(bad if kind == "rf" else SEGMENT.rf, bad if kind == "adc" else ADC)
    assert gradient.status().telemetry["buffered_s"] == 0.0 and rf.status().telemetry["buffered_s"] == 0.0


def test_a_program_that_ends_before_it_starts_is_refused():
    with pytest.raises(SafetyLimitError, match="GradientProgram: t1_s 0.5 is before t0_s 1.0"):
        dataclasses.replace(SEGMENT.gradient, t0_s=1.0, t1_s=0.5)


@given(st.floats(0.0, 1e-12), st.floats(-1e7, 1e7), st.floats(-1e7, 1e7))
def test_a_change_in_no_time_is_an_infinite_slew(dt, g0, g1):
    slew = breakpoint_slew(np.array([0.0, dt]), np.array([g0, g1]), step_tolerance=10.0)
    assert slew[0] == (np.inf if abs(g1 - g0) > 10.0 else 0.0)


def test_slew_of_nan_is_nan_so_that_a_limit_refuses_it():
    slew = breakpoint_slew(np.array([0.0, 1e-3, np.nan, 3e-3]), np.array([0.0, 1.0, 2.0, np.nan]), 1.0)
    assert slew[0] == pytest.approx(1e3) and np.isnan(slew[1:]).all()
    assert not (slew <= 1e9).all()
