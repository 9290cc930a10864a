"""SAFE PNS prediction against pypulseq's calc_pns on the same waveforms with the same hardware
(pypulseq's safe_example_hw, our shipped safe-example profile): the peak within 1e-4 — in practice within
a few parts per million, the rounding of the .seq file. And the closed form over runs of constant slew
against a per-sample reference written here (every raster sample through scipy's lfilter) on the same
waveforms: trapezoids, arbitrary shapes, rotations, all axes at once, random piecewise-linear waveforms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypulseq.Sequence.calc_pns import calc_pns
from pypulseq.utils.safe_pns_prediction import safe_example_hw
from scipy.signal import lfilter

from scanctl.config import profile as profiles
from scanctl.safety import pns as pns_module
from scanctl.safety.pns import predict_pns
from scanctl.sequence import pulseq_read
from scanctl.sequence.waveforms import AxisWaveform, axis_waveform
from tests import pulseq_factory as factory

SAFE = profiles.load("safe-example")


@pytest.mark.parametrize("make", [lambda: factory.gre(16), lambda: factory.epi(16), lambda: factory.radial(12),
                                  lambda: factory.spin_echo(8)], ids=["gre", "epi", "radial", "spin_echo"])
def test_peak_and_its_time_agree_with_pypulseq_calc_pns(tmp_path, make, monkeypatch):
    seq = make()
    path = tmp_path / "seq.seq"
    seq.write(str(path))
    _, norm, components, t = calc_pns(seq, safe_example_hw(), do_plots=False)
    monkeypatch.setattr(pns_module, "CHUNK_RUNS", 37)  # several chunks: the filters' state carries over
    ours = predict_pns(pulseq_read.read(path), SAFE.safety.pns, seq.system.gamma, envelope_s=1e-4)
    assert ours.peak_percent == pytest.approx(100 * norm.max(), rel=1e-4)
    at = int(np.argmin(np.abs(t - ours.peak_time_s)))  # the peak's time (a tie may pick another equal peak)
    assert t[at] == pytest.approx(ours.peak_time_s, abs=1e-9) and 100 * norm[at] == pytest.approx(ours.peak_percent,
                                                                                              rel=1e-4)
    assert np.allclose(ours.axis_peak_percent, 100 * components.max(axis=0), rtol=1e-4, atol=1e-6)
    # the envelope is the curve's maximum over each 0.1 ms: compare with pypulseq's, binned the same way
    theirs = np.pad(norm, (0, (-norm.size) % 10)).reshape(-1, 10).max(axis=1) * 100
    assert ours.percent.shape == theirs.shape and np.allclose(ours.percent, theirs, rtol=1e-4, atol=1e-6)


def test_the_peak_is_placed_in_its_block_and_no_gradients_mean_no_stimulation(tmp_path):
    import pypulseq as pp

    seq = factory.gre(8)
    path = tmp_path / "gre.seq"
    seq.write(str(path))
    ours_seq = pulseq_read.read(path)
    result = predict_pns(ours_seq, SAFE.safety.pns, seq.system.gamma)
    starts = ours_seq.block_start_s
    assert result.peak_percent > 10 and starts[result.peak_block] <= result.peak_time_s < starts[result.peak_block + 1]
    quiet = pp.Sequence(factory.default_system())
    quiet.add_block(pp.make_block_pulse(flip_angle=0.1, duration=1e-3, delay=100e-6, system=factory.default_system()))
    quiet.add_block(pp.make_delay(5e-3))
    quiet.write(str(tmp_path / "quiet.seq"))
    silent = predict_pns(pulseq_read.read(tmp_path / "quiet.seq"), SAFE.safety.pns, seq.system.gamma)
    assert silent.peak_percent == 0.0 and silent.percent.size == 0


def test_stronger_stimulation_thresholds_lower_the_response(tmp_path):
    import dataclasses

    seq = factory.gre(8)
    path = tmp_path / "gre.seq"
    seq.write(str(path))
    ours_seq = pulseq_read.read(path)
    pns = SAFE.safety.pns
    doubled = dataclasses.replace(pns, **{a: dataclasses.replace(getattr(pns, a), stim_limit_t_per_m_per_s=2 * getattr(
        pns, a).stim_limit_t_per_m_per_s) for a in "xyz"})
    assert predict_pns(ours_seq, doubled, seq.system.gamma).peak_percent == pytest.approx(
        predict_pns(ours_seq, pns, seq.system.gamma).peak_percent / 2)


def test_long_gradient_free_stretches_are_skipped_exactly(tmp_path):
    import pypulseq as pp

    seq = factory.gre(8)
    system = factory.default_system()
    seq.add_block(pp.make_delay(0.25))  # 25,000 raster samples without gradients: skipped, the filters decayed
    seq.add_block(pp.make_trapezoid("x", area=2000, system=system))
    path = tmp_path / "gap.seq"
    seq.write(str(path))
    ours_seq = pulseq_read.read(path)
    waves = [axis_waveform(ours_seq, a) for a in range(3)]
    assert pns_module._run_starts(waves, 40_000, 1e-5, 0).size < 1_000  # the 25,000 samples of delay: one run
    _, norm, components, t = calc_pns(seq, safe_example_hw(), do_plots=False)
    ours = predict_pns(ours_seq, SAFE.safety.pns, seq.system.gamma, envelope_s=1e-4)
    assert ours.peak_percent == pytest.approx(100 * norm.max(), rel=1e-4)
    theirs = np.pad(norm, (0, (-norm.size) % 10)).reshape(-1, 10).max(axis=1) * 100
    assert ours.percent.shape == theirs.shape and np.allclose(ours.percent, theirs, rtol=1e-4, atol=1e-3)


# -- the closed form against a per-sample reference ------------------------------------------------------

def per_sample(waves, dt, pns, gamma, per_bin):  # type: ignore[no-untyped-def]
    """The SAFE model sample by sample, as docs/safety.md states it (and as calc_pns computes it): the
    peak, its sample, each axis's peak and the maximum per ``per_bin`` samples."""
    ends = [float(w.t_s[-1]) for w in waves if w.t_s.size]
    n = int(np.ceil((max(ends) - 1e-10) / dt)) if ends else 0
    t = (np.arange(n) + 0.5) * dt
    total, axis_peaks = np.zeros(n), []
    for wave, axis in zip(waves, (pns.x, pns.y, pns.z), strict=True):
        g = wave.sample(t) / gamma
        slew = np.diff(g, prepend=0.0) / dt
        stim = np.zeros(n)
        for tau, a, x in ((axis.tau1_ms, axis.a1, slew), (axis.tau2_ms, axis.a2, np.abs(slew)),
                          (axis.tau3_ms, axis.a3, slew)):
            alpha = dt * 1e3 / (tau + dt * 1e3)
            stim += a * np.abs(lfilter([alpha], [1, alpha - 1], x))
        stim *= axis.g_scale * 100 / axis.stim_limit_t_per_m_per_s
        axis_peaks.append(stim.max(initial=0.0))
        total += stim * stim
    total = np.sqrt(total)
    envelope = np.pad(total, (0, (-n) % per_bin)).reshape(-1, per_bin).max(axis=1)
    return total.max(initial=0.0), int(np.argmax(total)) if n else 0, np.array(axis_peaks), envelope


def assert_matches_reference(waves, dt, pns=SAFE.safety.pns, gamma=42.576e6, per_bin=7, rtol=1e-9):  # type: ignore[no-untyped-def]
    peak, k, axis_peaks, envelope = per_sample(waves, dt, pns, gamma, per_bin)
    for envelope_s in (None, per_bin * dt):
        ours = pns_module.predict_waveforms(waves, dt, np.zeros(1), pns, gamma, envelope_s=envelope_s)
        tol = rtol * max(peak, 1e-6)
        assert peak - tol <= ours.peak_percent <= peak + tol  # never below the reference, nor above
        if peak > 1e-6:  # the reference's value at our peak's sample is our peak (ties may pick another)
            ref_at = per_sample_value(waves, dt, pns, gamma, round(ours.peak_time_s / dt - 0.5))
            assert ref_at == pytest.approx(ours.peak_percent, rel=rtol, abs=1e-12)
        assert np.allclose(ours.axis_peak_percent, axis_peaks, rtol=rtol, atol=1e-12)
        if envelope_s is not None:
            assert ours.percent.shape == envelope.shape
            assert np.allclose(ours.percent, envelope, rtol=rtol, atol=1e-12)
    return peak


def per_sample_value(waves, dt, pns, gamma, k):  # type: ignore[no-untyped-def]
    return per_sample_curve(waves, dt, pns, gamma)[k]


def per_sample_curve(waves, dt, pns, gamma):  # type: ignore[no-untyped-def]
    ends = [float(w.t_s[-1]) for w in waves if w.t_s.size]
    n = int(np.ceil((max(ends) - 1e-10) / dt))
    t = (np.arange(n) + 0.5) * dt
    total = np.zeros(n)
    for wave, axis in zip(waves, (pns.x, pns.y, pns.z), strict=True):
        slew = np.diff(wave.sample(t) / gamma, prepend=0.0) / dt
        stim = np.zeros(n)
        for tau, a, x in ((axis.tau1_ms, axis.a1, slew), (axis.tau2_ms, axis.a2, np.abs(slew)),
                          (axis.tau3_ms, axis.a3, slew)):
            alpha = dt * 1e3 / (tau + dt * 1e3)
            stim += a * np.abs(lfilter([alpha], [1, alpha - 1], x))
        total += (stim * axis.g_scale * 100 / axis.stim_limit_t_per_m_per_s) ** 2
    return np.sqrt(total)


def wave(t, g):  # type: ignore[no-untyped-def]
    t, g = np.asarray(t, dtype=np.float64), np.asarray(g, dtype=np.float64)
    return AxisWaveform(t, g, np.zeros(t.size, dtype=np.int64))


EMPTY = wave([], [])


@pytest.mark.parametrize("make", [lambda: factory.gre(8), lambda: factory.epi(8), lambda: factory.radial(6),
                                  lambda: factory.spin_echo(4), lambda: factory.ute(4),
                                  lambda: factory.arbitrary_gradient_oversampled()],
                         ids=["gre", "epi", "radial_rotated", "spin_echo", "ute", "arbitrary"])
def test_closed_form_is_the_per_sample_model_on_sequences(tmp_path, make, monkeypatch):
    seq = make()
    seq.write(str(tmp_path / "s.seq"))
    ours = pulseq_read.read(tmp_path / "s.seq")
    monkeypatch.setattr(pns_module, "CHUNK_RUNS", 53)  # many chunks: the state carries over, odd padding
    waves = [axis_waveform(ours, a) for a in range(3)]
    assert assert_matches_reference(waves, ours.rasters.gradient_s) > 1.0


def test_a_peak_inside_a_run_is_found():
    """Three axes ramping at once: the filters of different time constants move in different directions
    inside one run of constant slew, and the combined response peaks strictly between the run's ends
    (3.8e-5 above them here). The bound forces that run to be searched; the peak is the per-sample one."""
    dt = 1e-5
    waves = [wave([0, 18e-5, 35e-5], [0, -425019.64179501, 0]),
             wave([0, 39e-5, 85e-5, 122e-5], [0, 50018.59047436, 292809.21538564, 0]),
             wave([0, 11e-5, 68e-5, 96e-5], [0, -321014.54213687, 993411.96423237, 0])]
    curve = per_sample_curve(waves, dt, SAFE.safety.pns, 42.576e6)
    k = int(np.argmax(curve))
    run_ends = pns_module._run_starts(waves, curve.size, dt, 0)[1:] - 1
    assert k not in run_ends and k != curve.size - 1  # the maximum is inside a run
    peak = assert_matches_reference(waves, dt, per_bin=10, rtol=1e-12)
    ours = pns_module.predict_waveforms(waves, dt, np.zeros(1), SAFE.safety.pns, 42.576e6)
    assert peak == curve.max() and ours.peak_time_s == pytest.approx((k + 0.5) * dt)


def test_non_finite_gradients_are_an_infinite_peak():
    bad = wave([0, 1e-4, 2e-4], [0, np.nan, 0])
    ours = pns_module.predict_waveforms([bad, EMPTY, EMPTY], 1e-5, np.zeros(1), SAFE.safety.pns, 42.576e6)
    assert ours.peak_percent == np.inf


@st.composite
def piecewise_linear(draw):  # type: ignore[no-untyped-def]
    """Up to three axes of random breakpoints: times anywhere (on or off the raster, steps where two
    coincide), values up to 2e6 Hz/m of either sign, zero or not at the ends."""
    axes = []
    for _ in range(3):
        count = draw(st.integers(0, 12))
        gaps = draw(st.lists(st.one_of(st.just(0.0), st.integers(1, 80).map(lambda k: k * 1e-5),
                                       st.floats(1e-7, 8e-4)), min_size=count, max_size=count))
        values = draw(st.lists(st.one_of(st.just(0.0), st.floats(-2e6, 2e6)), min_size=count, max_size=count))
        t0 = draw(st.floats(0.0, 3e-4))
        axes.append(wave(t0 + np.cumsum(gaps), values) if count else EMPTY)
    return axes


@settings(max_examples=150, deadline=None)
@given(piecewise_linear(), st.integers(1, 12))
def test_closed_form_is_the_per_sample_model_on_random_waveforms(waves, per_bin):
    if not any(w.t_s.size for w in waves) or max(float(w.t_s[-1]) for w in waves if w.t_s.size) < 1e-5:
        return
    assert_matches_reference(waves, 1e-5, per_bin=per_bin, rtol=1e-8)
