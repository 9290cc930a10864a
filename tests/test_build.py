"""scanctl.sequence.build: event makers on the profile's rasters and limits, and the block accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scanctl.config import profile as profiles
from scanctl.errors import ConfigError
from scanctl.sequence import pulseq_read, pulseq_write
from scanctl.sequence.build import (
    ADC,
    Label,
    SequenceBuilder,
    System,
    adc,
    block_pulse,
    common_duration,
    dwell_step,
    min_trapezoid_duration,
    readout,
    rf_spoil_phases,
    sinc_pulse,
    slice_rephase_area,
    trapezoid,
    valid_dwell,
)
from scanctl.sequence.checks import check
from scanctl.sequence.labels import label_values
from scanctl.sequence.waveforms import kspace_adc

PROFILE = profiles.load()
SYSTEM = System.from_profile(PROFILE)
G_RASTER = SYSTEM.rasters.gradient_s
MAX_G, MAX_S = SYSTEM.limits("x")


def on_raster(t: float, raster: float) -> bool:
    return abs(t / raster - round(t / raster)) < 1e-6


def assert_within_limits(g) -> None:
    for t in (g.rise_s, g.flat_s, g.fall_s, g.delay_s):
        assert on_raster(t, G_RASTER), g
    assert abs(g.amplitude_hz_per_m) <= MAX_G * (1 + 1e-9)
    assert abs(g.amplitude_hz_per_m) / g.rise_s <= MAX_S * (1 + 1e-9)
    assert abs(g.amplitude_hz_per_m) / g.fall_s <= MAX_S * (1 + 1e-9)


def test_system_from_profile_converts_limits_to_hz():
    assert SYSTEM.max_grad_hz_per_m == pytest.approx((0.04 * 42.576e6,) * 3)
    assert SYSTEM.max_slew_hz_per_m_per_s == pytest.approx((200 * 42.576e6,) * 3)
    assert SYSTEM.rf_dead_time_s == PROFILE.timing.rf_dead_time_s
    half = System.from_profile(PROFILE, grad_fraction=0.5, slew_fraction=0.25)
    assert half.max_grad_hz_per_m[2] == pytest.approx(SYSTEM.max_grad_hz_per_m[2] / 2)
    assert half.max_slew_hz_per_m_per_s[1] == pytest.approx(SYSTEM.max_slew_hz_per_m_per_s[1] / 4)


@pytest.mark.parametrize("area", [0.0, 1e-3, 3.9, -3.9, 250.0, -410.0, 800.0, 5000.0, -20000.0])
def test_shortest_trapezoid_has_the_area_within_limits(area):
    g = trapezoid(SYSTEM, "y", area=area)
    assert g.area == pytest.approx(area, abs=1e-9)
    assert_within_limits(g)
    # One gradient raster less on each ramp and the flat top no longer reaches the area within the limits.
    if area and g.flat_s == 0:
        shorter = g.rise_s - G_RASTER
        assert shorter <= 0 or abs(area) / shorter > MAX_S * shorter
    elif area:
        assert abs(area) > MAX_G * (g.rise_s + g.flat_s - G_RASTER) * (1 - 1e-9)


@pytest.mark.parametrize(("area", "duration"), [(250.0, 1e-3), (-410.0, 0.45e-3), (3.9, 0.3e-3), (0.0, 0.5e-3),
                                                 (800.0, 2e-3)])
def test_trapezoid_with_duration_is_exact(area, duration):
    g = trapezoid(SYSTEM, "z", area=area, duration_s=duration)
    assert g.area == pytest.approx(area, abs=1e-9)
    assert g.duration_s == pytest.approx(duration)
    assert_within_limits(g)


def test_trapezoid_that_cannot_fit_is_refused_with_the_shortest():
    shortest = min_trapezoid_duration(SYSTEM, "x", 2000.0)
    with pytest.raises(ConfigError, match=rf"does not fit.*shortest: {shortest * 1e3:.3f} ms"):
        trapezoid(SYSTEM, "x", area=2000.0, duration_s=shortest - G_RASTER)
    assert trapezoid(SYSTEM, "x", area=2000.0, duration_s=shortest).area == pytest.approx(2000.0)
    assert common_duration(SYSTEM, [("x", 2000.0), ("y", 10.0)]) == shortest


def test_flat_area_trapezoid_and_amplitude_limit():
    g = trapezoid(SYSTEM, "x", flat_area=128 / 0.256, flat_time_s=3.84e-3)
    assert g.flat_area == pytest.approx(500.0)
    assert g.flat_s == pytest.approx(3.84e-3)
    assert_within_limits(g)
    with pytest.raises(ConfigError, match="exceeds"):
        trapezoid(SYSTEM, "x", amplitude_hz_per_m=2 * MAX_G, flat_time_s=1e-3)
    with pytest.raises(TypeError):
        trapezoid(SYSTEM, "x")


def _flip(rf) -> float:
    """Flip angle from the pulse's samples: 2π ∫ B1 dt (on resonance, small-angle exact for the area)."""
    b1 = rf.amplitude_hz * rf.magnitude.samples * np.exp(2j * np.pi * rf.phase.samples)
    return float(abs(b1.sum()) * SYSTEM.rasters.rf_s * 2 * np.pi)


def test_sinc_pulse_flip_slice_select_and_timing():
    rf, gz = sinc_pulse(SYSTEM, flip_angle_rad=math.radians(30), duration_s=2e-3, slice_thickness_m=5e-3)
    assert _flip(rf) == pytest.approx(math.radians(30))
    assert gz.amplitude_hz_per_m == pytest.approx(4 / 2e-3 / 5e-3)  # bandwidth / thickness
    assert gz.flat_s == pytest.approx(2e-3) and rf.duration_s == pytest.approx(2e-3)
    assert rf.delay_s == pytest.approx(gz.delay_s + gz.rise_s)  # the pulse plays on the flat top
    assert rf.delay_s >= SYSTEM.rf_dead_time_s
    assert rf.centre_in_block_s == pytest.approx(rf.delay_s + 1e-3)
    assert on_raster(rf.centre_in_block_s, G_RASTER)
    assert slice_rephase_area(gz) == pytest.approx(-gz.amplitude_hz_per_m * (1e-3 + gz.fall_s / 2))
    assert set(np.unique(rf.phase.samples)) <= {0.0, 0.5}  # the sinc's negative lobes
    assert_within_limits(gz)
    with pytest.raises(ConfigError, match="thinnest slice"):
        sinc_pulse(SYSTEM, flip_angle_rad=1.0, duration_s=1e-3, slice_thickness_m=0.05e-3)


def test_block_pulse_flip_and_dead_time():
    rf = block_pulse(SYSTEM, flip_angle_rad=math.pi, duration_s=0.5e-3, use="r")
    assert _flip(rf) == pytest.approx(math.pi)
    assert rf.amplitude_hz == pytest.approx(1 / (2 * 0.5e-3))
    assert rf.delay_s == pytest.approx(SYSTEM.rf_dead_time_s) and rf.use == "r"


def test_adc_on_its_rasters():
    a = adc(SYSTEM, num_samples=64, dwell_s=10.04e-6)
    assert a.dwell_s == pytest.approx(10e-6) and a.delay_s == pytest.approx(SYSTEM.adc_dead_time_s)
    assert a.end_s == pytest.approx(a.delay_s + 640e-6)


@pytest.mark.parametrize("n", [8, 32, 64, 96, 128, 256, 250])
def test_valid_dwell_puts_the_centre_sample_on_the_rf_raster(n):
    step = dwell_step(SYSTEM, n)
    for wanted in (3e-6, 10e-6, 17.3e-6, 30e-6, 31e-6):
        d = valid_dwell(SYSTEM, n, wanted)
        assert abs(d - wanted) <= step / 2 + 1e-15 or d == step
        assert on_raster(d, SYSTEM.rasters.adc_s)
        assert on_raster((n + 1) * d / 2, SYSTEM.rasters.rf_s)
    assert on_raster(valid_dwell(SYSTEM, n, 7.7e-6, reversible=True), SYSTEM.rasters.rf_s)
    assert dwell_step(SYSTEM, 128) == pytest.approx(2e-6) and dwell_step(SYSTEM, 64) == pytest.approx(0.4e-6)


@pytest.mark.parametrize(("n", "dwell"), [(128, 30e-6), (64, 4e-6), (256, 10e-6), (32, 20e-6)])
def test_readout_samples_land_on_the_cartesian_grid(n, dwell):
    fov = 0.256
    dwell = valid_dwell(SYSTEM, n, dwell, reversible=True)
    ro = readout(SYSTEM, num_samples=n, dwell_s=dwell, fov_m=fov)
    g = ro.grad
    assert_within_limits(g)
    assert g.amplitude_hz_per_m * dwell == pytest.approx(1 / fov)  # one sample per 1/FOV
    assert ro.centre_s == pytest.approx(g.rise_s + g.flat_s / 2)
    assert on_raster(ro.adc.delay_s, SYSTEM.rasters.rf_s) and ro.adc.delay_s >= SYSTEM.adc_dead_time_s
    # kx of every sample after a -area/2 prephaser: (i - n/2) / fov, forward and reversed.
    for window, sign, centre in ((ro.adc, 1, n // 2), (ro.adc_reversed, -1, n // 2 - 1)):
        assert window is not None
        t = window.delay_s + (np.arange(n) + 0.5) * dwell
        assert window.sample_time_s(centre) == pytest.approx(ro.centre_s)
        assert t[0] >= g.rise_s - 1e-12 and t[-1] <= g.rise_s + g.flat_s + 1e-12
        k = sign * (-g.area / 2 + g.amplitude_hz_per_m * (g.rise_s / 2 + t - g.rise_s)) * fov
        assert np.allclose(k, sign * (np.arange(n) - centre), atol=1e-9)
    with pytest.raises(ConfigError, match="shortest\\s+dwell"):
        readout(SYSTEM, num_samples=n, dwell_s=dwell_step(SYSTEM, n), fov_m=0.02)


def test_rf_spoil_phases_follow_the_quadratic_recursion():
    phases = rf_spoil_phases(500)
    expected, phase, inc = [], 0.0, 0.0
    for _ in range(500):
        expected.append(phase)
        inc = (inc + 117.0) % 360.0
        phase = (phase + inc) % 360.0
    assert np.allclose(np.rad2deg(phases), expected)
    assert np.unique(phases).size <= 360  # phases repeat exactly: few distinct RF events


def _demo_sequence() -> tuple[SequenceBuilder, list]:
    b = SequenceBuilder(SYSTEM)
    rf, gz = sinc_pulse(SYSTEM, flip_angle_rad=0.3, duration_s=2e-3, slice_thickness_m=5e-3)
    ro = readout(SYSTEM, num_samples=32, dwell_s=valid_dwell(SYSTEM, 32, 20e-6), fov_m=0.2)
    pre = trapezoid(SYSTEM, "x", area=-ro.grad.area / 2, duration_s=1e-3)
    reph = trapezoid(SYSTEM, "z", area=slice_rephase_area(gz), duration_s=1e-3)
    lines = [trapezoid(SYSTEM, "y", area=(j - 16) / 0.2, duration_s=1e-3) for j in range(32)]
    for j in range(32):
        b.add_block(rf.with_phase(0.5 * (j % 2)), gz)
        b.add_block(pre, lines[j], reph)
        b.add_block(ro.grad, ro.adc.with_phase(0.5 * (j % 2)), Label("LIN", j), Label("SLC", 0))
        b.add_block(min_duration_s=2e-3)
    return b, lines


def test_builder_stores_identical_events_shapes_and_labels_once():
    b, lines = _demo_sequence()
    seq = b.build({"Name": "demo", "FOV": (0.2, 0.2, 5e-3), "TE": 4.5e-3, "Count": 3})
    assert len(seq.blocks) == len(b) == 128
    assert seq.rf.id.size == 2  # two phases
    assert len(seq.shapes) == 2  # magnitude and phase, shared by both RF events
    assert seq.adc.id.size == 2
    # gz, pre, reph, read-out and 32 phase lines (line 16 has zero area, still one event)
    assert seq.grad.id.size == 4 + 32
    assert seq.extensions.specs["LABELSET"].id.size == 32 + 1  # LIN 0..31 and SLC 0
    assert seq.extensions.id.size == 32 + 1  # one LIN entry per line, all pointing at one SLC entry
    assert seq.definitions == {"Name": "demo", "FOV": "0.2 0.2 0.005", "TE": "0.0045", "Count": "3"}
    labels = label_values(seq)
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)
    assert labels["LIN"][adc_blocks].tolist() == list(range(32))
    assert (labels["SLC"][adc_blocks] == 0).all()
    report = check(seq, PROFILE)
    assert report.ok, report.violations[:3]
    assert seq.duration_s == pytest.approx(b.duration_s)


def test_block_duration_includes_ringdown_and_adc_dead_time():
    rf = block_pulse(SYSTEM, flip_angle_rad=0.1, duration_s=100e-6)
    b = SequenceBuilder(SYSTEM)
    assert b.add_block(rf) == pytest.approx(SYSTEM.rf_dead_time_s + 100e-6 + SYSTEM.rf_ringdown_time_s)
    window = ADC(10, 1e-6, 10e-6)
    assert b.add_block(window) == pytest.approx(30e-6)  # 10 + 10 µs, plus the 10 µs dead time
    assert b.add_block(window, min_duration_s=1e-3) == pytest.approx(1e-3)
    assert b.add_block(min_duration_s=15e-6) == pytest.approx(20e-6)  # up to the block raster


def test_builder_refuses_malformed_blocks():
    b = SequenceBuilder(SYSTEM)
    g = trapezoid(SYSTEM, "x", area=10.0)
    rf = block_pulse(SYSTEM, flip_angle_rad=0.1, duration_s=100e-6)
    with pytest.raises(ValueError, match="one gradient per axis"):
        b.add_block(g, g)
    with pytest.raises(ValueError, match="one RF"):
        b.add_block(rf, rf)
    with pytest.raises(ValueError, match="label name"):
        b.add_block(Label("lin", 1))
    with pytest.raises(TypeError):
        b.add_block("delay")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no blocks"):
        SequenceBuilder(SYSTEM).build()


def test_label_increments_and_written_file_round_trip(tmp_path):
    b = SequenceBuilder(SYSTEM)
    ro = readout(SYSTEM, num_samples=16, dwell_s=valid_dwell(SYSTEM, 16, 10e-6), fov_m=0.2)
    pre = trapezoid(SYSTEM, "x", area=-ro.grad.area / 2)
    b.add_block(pre, Label("LIN", 0), Label("SLC", 2))
    for _ in range(4):
        b.add_block(ro.grad, ro.adc)
        b.add_block(ro.grad.scaled(-1.0), Label("LIN", 1, increment=True))
        b.add_block(ro.grad.scaled(1.0))
        b.add_block(ro.grad.scaled(-1.0))
    seq = b.build({"Name": "labels"})
    labels = label_values(seq)
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)
    assert labels["LIN"][adc_blocks].tolist() == [0, 1, 2, 3]
    assert labels["SLC"][adc_blocks].tolist() == [2] * 4
    assert check(seq, PROFILE).ok
    k = kspace_adc(seq) * 0.2
    assert np.allclose(k[0], np.tile(np.arange(16) - 8, 4), atol=1e-9)  # every line starts at -area/2
    path = tmp_path / "labels.seq"
    pulseq_write.write(seq, path)
    back = pulseq_read.read(path)
    assert len(back.blocks) == len(seq.blocks)
    assert back.duration_s == pytest.approx(seq.duration_s)
    assert {n: v.tolist() for n, v in label_values(back).items()} == {n: v.tolist() for n, v in labels.items()}
    assert np.allclose(kspace_adc(back), kspace_adc(seq), atol=1e-4)
    assert back.definitions["Name"] == "labels"
