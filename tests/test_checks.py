"""scanctl.sequence.checks: every violation kind, on hand-written files with known numbers, and no false
alarms on real pypulseq sequences."""

from __future__ import annotations

import dataclasses
import math

import hypothesis.strategies as st
import numpy as np
import pypulseq as pp
import pytest
from hypothesis import given, settings

from scanctl.config import profile as profiles
from scanctl.safety.predict import predict
from scanctl.sequence import checks
from scanctl.sequence.model import ADCEvents, GradEvents, RFEvents
from scanctl.sequence.pulseq_read import parse
from tests import pulseq_factory
from tests.seqtext import pulseq_text

GAMMA = 42.576e6
DEFAULT = profiles.load("default")

# A small sequence that passes the default profile:
#  block 1: 100 µs block RF pulse after the 100 µs dead time (300 µs block)
#  block 2: x trapezoid 400 kHz/m (≈ 9.4 mT/m), 100 µs ramps (4e9 Hz/m/s ≈ 94 T/m/s), ADC inside
#  block 3: y triangle -200 kHz/m (2e9 Hz/m/s)
RF = [(1, 500, 1, 2, 0, 50, 100, 0, 0, 0, 0, "e")]
TRAPS = [(1, 400000, 100, 1000, 100, 0), (2, -200000, 100, 0, 100, 0)]
ADC = [(1, 100, 10000, 100, 0, 0, 0, 0, 0)]
SHAPES = {1: [1.0] * 100, 2: [0.0] * 100}
BLOCKS = [(1, 30, 1, 0, 0, 0, 0, 0), (2, 120, 0, 1, 0, 0, 1, 0), (3, 20, 0, 0, 2, 0, 0, 0)]


def run_check(blocks=BLOCKS, *, rf=RF, traps=TRAPS, adc=ADC, gradients=(), shapes=SHAPES, definitions=None,
              profile=DEFAULT) -> checks.CheckReport:
    text = pulseq_text(blocks, rf=rf, traps=traps, adc=adc, gradients=gradients, shapes=shapes,
                       definitions=definitions)
    return checks.check(parse(text.encode(), path="test.seq"), profile)


def with_gradient_limits(amp_mt: tuple[float, float, float], slew: tuple[float, float, float]):
    return dataclasses.replace(DEFAULT, gradient=profiles.GradientLimits(
        max_amplitude_t_per_m=tuple(a * 1e-3 for a in amp_mt), max_slew_t_per_m_per_s=slew))


def kinds(report: checks.CheckReport) -> dict[str, int]:
    return dict(report.violation_counts)


def test_clean_sequence_passes_with_exact_figures():
    r = run_check()
    assert r.ok and kinds(r) == {} and r.violations == []
    assert r.blocks == 3 and math.isclose(r.duration_s, 1.7e-3)
    assert (r.rf_events, r.adc_events, r.adc_samples) == (1, 1, 100)
    assert r.max_gradient_hz_per_m == pytest.approx({"x": 4e5, "y": 2e5, "z": 0.0})
    assert r.max_slew_hz_per_m_per_s == pytest.approx({"x": 4e9, "y": 2e9, "z": 0.0})
    assert r.format_version == "1.5.1"


def test_gradient_amplitude_is_checked_per_axis():
    # x limit 5 mT/m (212.9 kHz/m) is broken by the 400 kHz/m trapezoid; y limit 4 mT/m (170.3 kHz/m) by
    # the 200 kHz/m triangle; z has nothing.
    r = run_check(profile=with_gradient_limits((5, 4, 1), (200, 200, 200)))
    assert kinds(r) == {"gradient_amplitude": 2}
    vx, vy = r.violations
    assert (vx.block, vy.block) == (2, 3)
    assert vx.value == pytest.approx(4e5) and vx.limit == pytest.approx(5e-3 * GAMMA)
    assert vy.value == pytest.approx(2e5) and vy.limit == pytest.approx(4e-3 * GAMMA)
    assert "x gradient" in vx.message and "y gradient" in vy.message
    # Peak at the start of the flat top: block 2 starts at 0.3 ms, the ramp lasts 0.1 ms.
    assert vx.time_s == pytest.approx(0.4e-3)


def test_slew_rate_is_checked_per_axis():
    r = run_check(profile=with_gradient_limits((40, 40, 40), (50, 50, 50)))  # 2.13e9 Hz/m/s
    assert kinds(r) == {"slew_rate": 1}
    (v,) = r.violations
    assert v.block == 2 and v.value == pytest.approx(4e9) and v.limit == pytest.approx(50 * GAMMA)
    assert v.time_s == pytest.approx(0.3e-3)


def test_every_block_playing_a_bad_event_is_counted():
    blocks = [(i, 120, 0, 1, 0, 0, 0, 0) for i in range(1, 251)]
    r = run_check(blocks, rf=(), adc=(), shapes=None, profile=with_gradient_limits((5, 5, 5), (200, 200, 200)))
    assert r.violation_counts == {"gradient_amplitude": 250}
    listed = [v.block for v in r.violations]
    assert listed == list(range(1, checks.MAX_LISTED_PER_KIND + 1))


def test_event_beyond_block_and_adc_dead_time():
    blocks = [BLOCKS[0], (2, 110, 0, 1, 0, 0, 1, 0), BLOCKS[2]]  # the trapezoid needs 1.2 ms
    r = run_check(blocks)
    beyond = [v for v in r.violations if v.kind == "event_beyond_block"]
    assert len(beyond) == 1 and beyond[0].block == 2
    assert beyond[0].value == pytest.approx(1.2e-3) and beyond[0].limit == pytest.approx(1.1e-3)
    adc = [v for v in r.violations if v.kind == "adc_dead_time"]
    assert len(adc) == 1 and adc[0].value == pytest.approx(1.11e-3)
    assert not r.ok


def test_rf_dead_time_and_ringdown():
    rf = [(1, 500, 1, 2, 0, 50, 50, 0, 0, 0, 0, "e")]  # 50 µs delay < 100 µs dead time
    r = run_check(rf=rf)
    assert kinds(r) == {"rf_dead_time": 1}
    assert r.violations[0].value == pytest.approx(50e-6) and r.violations[0].limit == pytest.approx(100e-6)
    blocks = [(1, 21, 1, 0, 0, 0, 0, 0)] + BLOCKS[1:]  # 100 + 100 + 20 µs ringdown > 210 µs
    r = run_check(blocks)
    assert kinds(r) == {"rf_ringdown_time": 1}
    assert r.violations[0].value == pytest.approx(220e-6) and r.violations[0].limit == pytest.approx(210e-6)


def test_event_rasters_use_the_files_rasters():
    traps = [(1, 400000, 105, 1000, 95, 0), TRAPS[1]]  # 105 µs is off the 10 µs gradient raster
    r = run_check(traps=traps)
    assert kinds(r) == {"raster": 2}
    assert {v.message.split(":")[1].split(" ")[1] for v in r.violations} == {"trapezoid"}
    assert {v.block for v in r.violations} == {2}
    # The same times are fine on a 5 µs raster when the scanner's raster is 5 µs too.
    five = dataclasses.replace(DEFAULT, timing=dataclasses.replace(DEFAULT.timing, gradient_raster_s=5e-6))
    r = run_check(traps=traps, definitions={"GradientRasterTime": "5e-06"}, profile=five)
    assert r.ok, r.violations


def test_file_raster_must_fit_the_scanner_raster():
    # GE-style 4 µs gradient raster on a scanner with a 10 µs raster: the timing is internally fine.
    r = run_check(definitions={"GradientRasterTime": "4e-06"})
    assert kinds(r) == {"raster": 1}
    assert r.violations[0].block is None and r.violations[0].value == pytest.approx(4e-6)
    four = dataclasses.replace(DEFAULT, timing=dataclasses.replace(DEFAULT.timing, gradient_raster_s=4e-6))
    assert run_check(definitions={"GradientRasterTime": "4e-06"}, profile=four).ok


def test_gradient_jump_between_blocks():
    # An arbitrary x gradient ending at 20 kHz/m followed by a block without gradients: a jump.
    grads = [(3, 20000, 0, 20000, 3, 0, 0)]
    blocks = BLOCKS + [(4, 2, 0, 3, 0, 0, 0, 0), (5, 10, 0, 0, 0, 0, 0, 0)]
    r = run_check(blocks, gradients=grads, shapes={**SHAPES, 3: [0.5, 1.0]})
    assert kinds(r) == {"gradient_continuity": 1}
    (v,) = r.violations
    assert v.block == 5 and v.value == pytest.approx(-2e4) and v.time_s == pytest.approx(1.72e-3)
    # Continued by a gradient that starts at the same value, it is fine.
    grads.append((4, 20000, 20000, 0, 4, 0, 0))
    blocks = BLOCKS + [(4, 2, 0, 3, 0, 0, 0, 0), (5, 2, 0, 4, 0, 0, 0, 0)]
    assert run_check(blocks, gradients=grads, shapes={**SHAPES, 3: [0.5, 1.0], 4: [1.0, 0.5]}).ok


def test_gradient_ending_early_at_non_zero_value():
    grads = [(3, 20000, 0, 20000, 3, 0, 0)]
    blocks = BLOCKS + [(4, 5, 0, 3, 0, 0, 0, 0)]  # the 20 µs gradient ends 30 µs before its block does
    r = run_check(blocks, gradients=grads, shapes={**SHAPES, 3: [0.5, 1.0]})
    assert kinds(r) == {"gradient_continuity": 1}
    assert "before the block ends" in r.violations[0].message and r.violations[0].block == 4


def test_sequence_must_start_and_end_at_zero_gradient():
    grads = [(3, 20000, 20000, 20000, 3, 0, 0)]
    r = run_check([(1, 2, 0, 3, 0, 0, 0, 0)], rf=(), adc=(), traps=(), gradients=grads, shapes={3: [1.0, 1.0]})
    assert r.violation_counts == {"gradient_continuity": 2}
    assert [v.time_s for v in r.violations] == pytest.approx([0.0, 20e-6])


@pytest.fixture(scope="module")
def factory_reports(tmp_path_factory):
    out = {}
    for name, build in pulseq_factory.ALL_SMALL.items():
        path = tmp_path_factory.mktemp(name) / f"{name}.seq"
        seq = build()
        seq.write(str(path), **({"remove_duplicates": False} if name == "arbitrary_gradient_oversampled" else {}))
        written = pp.Sequence()  # the file rounds amplitudes: compare with what pypulseq reads back
        written.read(str(path))
        out[name] = (written, checks.check(parse(path.read_bytes(), path=path), DEFAULT))
    return out


@pytest.mark.parametrize("name", sorted(pulseq_factory.ALL_SMALL))
def test_real_sequences_pass_and_report_pypulseq_peaks(factory_reports, name):
    seq, report = factory_reports[name]
    assert report.ok, report.violations[:3]
    assert report.blocks == len(seq.block_events)
    # Peak gradients against pypulseq's own waveforms (breakpoints of the piecewise-linear waveform).
    waves = seq.waveforms()
    for axis, w in zip("xyz", waves[:3], strict=True):
        expected = float(np.abs(w[1]).max()) if w.size else 0.0
        assert report.max_gradient_hz_per_m[axis] == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("dt_rasters", [0.0, 1e-8, 5e-8])  # 0, 1e-13 and 5e-13 s with the 10 µs raster
def test_a_step_in_no_time_is_refused(dt_rasters):
    """A gradient that steps to 95 % of the limit between two samples (almost) at one time is an infinite
    slew: it is refused, however short the interval (the interval is never skipped as too short to count)."""
    amp = 0.95 * DEFAULT.max_gradient_hz_per_m()[0]
    grads = [(3, amp, 0, 0, 3, 4, 0)]
    shapes = {**SHAPES, 3: [0.0, 0.0, 1.0, 1.0, 0.0], 4: [0.0, 10.0, 10.0 + dt_rasters, 30.0, 70.0]}
    r = run_check(BLOCKS + [(4, 70, 0, 3, 0, 0, 0, 0)], gradients=grads, shapes=shapes)
    assert not r.ok
    (v,) = [v for v in r.violations if v.block == 4]
    assert v.kind == "gradient_continuity" and "steps within its event (infinite slew)" in v.message


FLOAT_COLUMNS = [(table, f.name) for table, cls in (("rf", RFEvents), ("grad", GradEvents), ("adc", ADCEvents))
                 for f in dataclasses.fields(cls) if f.type == "FloatArray"]


@settings(max_examples=100, deadline=None)
@given(column=st.sampled_from(FLOAT_COLUMNS), value=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_a_non_finite_number_in_any_event_is_a_violation(column, value):
    """Fail closed: a sequence made in code (the reader refuses such files) with NaN or infinity in any
    column of a played event is refused, the violation naming the table and column."""
    text = pulseq_text(BLOCKS, rf=RF, traps=TRAPS, adc=ADC, shapes=SHAPES)
    seq = parse(text.encode(), path="test.seq")
    table, name = column
    events = getattr(seq, table)
    spoiled = getattr(events, name).copy()
    spoiled[0] = value
    seq = dataclasses.replace(seq, **{table: dataclasses.replace(events, **{name: spoiled})})
    r = checks.check(seq, DEFAULT)
    assert not r.ok and r.violation_counts.get("non_finite") == 1
    (v,) = [v for v in r.violations if v.kind == "non_finite"]
    assert f"event {name} is not finite" in v.message and v.block is not None


def test_a_non_finite_shape_sample_is_a_violation():
    text = pulseq_text(BLOCKS, rf=RF, traps=TRAPS, adc=ADC, shapes=SHAPES)
    seq = parse(text.encode(), path="test.seq")
    samples = seq.shapes.samples.copy()
    samples[seq.shapes.offsets[0] + 5] = math.nan  # shape 1: the RF pulse's magnitude
    seq = dataclasses.replace(seq, shapes=dataclasses.replace(seq.shapes, samples=samples))
    r = checks.check(seq, DEFAULT)
    assert r.violation_counts == {"non_finite": 1}
    assert r.violations[0].block == 1 and "RF event mag_shape (a sample) is not finite" in r.violations[0].message


@pytest.mark.parametrize(("table", "name", "expected"), [
    ("rf", "amplitude_hz", {"sar_wb", "sar_head", "rf_peak"}),
    ("grad", "amplitude_hz_per_m", {"pns", "gradient_heating"}),
])
def test_the_safety_prediction_of_a_non_finite_sequence_fails_closed(table, name, expected):
    """SAR, RF peak power, PNS and coil heating computed from a NaN are violations, never a pass."""
    seq = parse(pulseq_text(BLOCKS, rf=RF, traps=TRAPS, adc=ADC, shapes=SHAPES).encode(), path="test.seq")
    events = getattr(seq, table)
    spoiled = getattr(events, name).copy()
    spoiled[0] = math.nan
    seq = dataclasses.replace(seq, **{table: dataclasses.replace(events, **{name: spoiled})})
    with np.errstate(invalid="ignore"):
        kinds_found = {v.kind for v in predict(seq, DEFAULT, 70.0).violations}
    assert expected <= kinds_found
