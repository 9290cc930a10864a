"""Imperfect simulated hardware (docs/prescan.md): the B0 offset, the linear and second-order B0 terms, the B1
transmit scale and the clipping ADC of the RF simulator, and the adjustments a console sets (frequency, transmit
scale, receiver gain, shim) applied by the simulator's physics -- each error undone exactly by its setting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scanctl.simulators.physics.moments import Moments, with_static_gradient

from scanctl.config import profile as profiles
from scanctl.data.recon import reconstruct
from scanctl.engine.executor import Scanner
from scanctl.engine.run import place_scene
from scanctl.errors import ConfigError
from scanctl.hw.interfaces import Scene
from scanctl.hw.program import GradientProgram
from scanctl.hw.registry import open_subsystem
from scanctl.sequence.builders import build

PROFILE = profiles.load()
N = 32


def scan(rf_url: str, setup=None, matrix: int = N, **params):
    """A gre_2d of ``matrix`` on the simulators: (image, clipped samples)."""
    scanner = Scanner.from_profile(PROFILE, {"rf": rf_url, "gradient": "sim://"})
    scanner.connect()
    try:
        if setup is not None:
            setup(scanner)
        seq = build("gre_2d", PROFILE, matrix=(matrix, matrix), **params)
        place_scene(scanner.rf, Scene(matrix=matrix, fov_m=0.256))
        scanner.prepare(seq)
        acquisitions = []
        result = scanner.run(on_acquisitions=acquisitions.extend)
        assert result.outcome == "completed", result.message
        return reconstruct(acquisitions, seq), scanner.rf.status().telemetry["adc_clipped_samples"]
    finally:
        scanner.close()


def error(image, reference):
    return float(np.linalg.norm(np.abs(image) - np.abs(reference)) / np.linalg.norm(np.abs(reference)))


@pytest.fixture(scope="module")
def reference():
    return scan("sim://")[0]


def test_each_injected_error_degrades_and_its_adjustment_undoes_it(reference):
    cases = [  # (URL error, what a console sets to undo it)
        ("b0=300", lambda s: s.rf.set_frequency_offset(300.0)),
        ("b1=0.7", lambda s: s.rf.set_tx_scale(1 / 0.7)),
        ("b0_grad=50,-30,20", lambda s: s.gradient.set_shim({"x": -5000.0, "y": 3000.0, "z": -2000.0})),
    ]
    for option, undo in cases:
        degraded = error(scan(f"sim://?{option}")[0], reference)
        adjusted = error(scan(f"sim://?{option}", undo)[0], reference)
        assert degraded > 0.05, option
        assert adjusted < 1e-5, option


def test_the_adc_clips_and_the_gain_decides_what_clips(reference):
    peak = float(np.abs(reference).max())  # (image units; the ADC range is in signal units)
    clipped_image, clipped = scan("sim://?adc_range=20000")
    assert clipped > 0 and error(clipped_image, reference) > 0.05
    image, clipped = scan("sim://?adc_range=20000", lambda s: s.rf.set_receiver_gain(-20.0))
    assert clipped == 0 and error(image, reference) < 1e-5 and peak > 0
    _, clipped = scan("sim://?adc_range=20000", lambda s: s.rf.set_receiver_gain(-20.0) or s.rf.set_receiver_gain(20))
    assert clipped > 0  # the last gain set is the one in force


def test_second_order_terms_are_added_to_the_phantoms_map():
    rf = open_subsystem("rf", "sim://?b0_2nd=0,0,0,10,0&b0=5&matrix=16", PROFILE)
    rf.connect()
    spins = rf._spins
    xs = spins._vox["x"]
    ys = spins._vox["y"]
    assert np.allclose(spins._vox["df"], 5.0 + 10e4 * (xs**2 - ys**2))
    rf.set_frequency_offset(2.0)
    assert np.allclose(spins._vox["df"], 3.0 + 10e4 * (xs**2 - ys**2))  # the synthesiser follows
    rf.close()


@pytest.mark.parametrize("option", ["b0_grad=1,2", "b0_grad=1,2,nan", "b0_2nd=1,2,3", "b1=0", "adc_range=-1"])
def test_bad_imperfection_options_are_config_errors(option):
    with pytest.raises(ConfigError, match=option.split("=")[0]):
        open_subsystem("rf", f"sim://?{option}", PROFILE)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3),
       st.lists(st.floats(0.0, 1e-3), min_size=2, max_size=5, unique=True),
       st.floats(-3e3, 3e3))
def test_a_static_gradient_adds_offset_times_time_to_the_moment(offset, times, value):
    """Whatever the program's breakpoints (none, inside the span, starting or ending away from 0), the moment
    gains exactly offset x (t - t0) over the span."""
    t = np.sort(np.array(times)) + 1e-4
    g = np.full(t.size, value)
    empty = np.zeros(0)
    program = GradientProgram(0.0, 2e-3, (t, empty, t), (g, empty, g))
    shimmed = with_static_gradient(program, tuple(offset))
    probe = np.linspace(0.0, 2e-3, 17)
    added = Moments(shimmed)(probe) - Moments(program)(probe)
    assert np.allclose(added, np.outer(offset, probe), atol=1e-9)


def _profile_text(gradient_extra: str = "", tail: str = "") -> str:
    text = profiles.resources.files("scanctl.profiles").joinpath("default.toml").read_text()
    line = "max_slew_t_per_m_per_s = { x = 200.0, y = 200.0, z = 200.0 }"
    return text.replace(line, line + gradient_extra) + tail


def test_profile_adjustment_limits_parse_and_check():
    rf = "\n[rf]\nmax_frequency_offset_hz = 1000.0\nreceiver_gain_db = { min = 0.0, max = 30.0 }\n"
    p = profiles.parse(_profile_text("\nshim_second_order_max_mt_per_m2 = { z2 = 1.0, xy = 2.0 }", rf))
    a = p.adjustments
    assert a.shim_channels == ("x", "y", "z", "z2", "xy")
    assert a.max_shim_second_order_hz_per_m2["xy"] == pytest.approx(2e-3 * PROFILE.gamma_hz_per_t)
    assert a.check_frequency_offset(-1000.0) == -1000.0 and a.receiver_gain_db == (0.0, 30.0)


@pytest.mark.parametrize(("gradient_extra", "tail", "key"), [
    ("", "\n[rf]\nmax_tx = 2.0\n", "rf.max_tx"),
    ("", "\n[rf]\nreceiver_gain_db = { min = 10.0, max = 0.0 }\n", "rf.receiver_gain_db.max"),
    ("", "\n[rf]\nmax_tx_scale = nan\n", "rf.max_tx_scale"),
    ("\nshim_max_mt_per_m = { x = 1.0, y = 1.0 }", "", "gradient.shim_max_mt_per_m"),
    ("\nshim_second_order_max_mt_per_m2 = { q2 = 1.0 }", "", "gradient.shim_second_order_max_mt_per_m2"),
])
def test_bad_adjustment_limits_are_config_errors_naming_the_key(gradient_extra, tail, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        profiles.parse(_profile_text(gradient_extra, tail))
