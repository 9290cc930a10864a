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


# -- block by block (no envelope) against run by run and the per-sample reference ----------------------------

from scanctl.safety import pns_block_search, pns_block_types, pns_blocks  # noqa: E402


def block_peak(seq, pns=SAFE.safety.pns, gamma=42.576e6, always=True):  # type: ignore[no-untyped-def]
    """predict_blocks, by default even where the runs would be quicker (small test sequences)."""
    model = pns_module._Model((pns.x, pns.y, pns.z), seq.rasters.gradient_s, gamma)
    return pns_blocks.predict_blocks(seq, model.lam, model.weight, model.to_t_per_m_per_s, always=always)


def assert_blocks_match(seq, pns=SAFE.safety.pns, gamma=42.576e6, rtol=1e-9, required=True):  # type: ignore[no-untyped-def]
    """The block-by-block peak is taken (not left to the runs, when ``required``) and is the per-sample
    model's: its value, the reference's value at its sample, each axis's peak; and predict_pns gives the same
    as run by run."""
    found = block_peak(seq, pns, gamma)
    assert found is not None or not required
    dt = seq.rasters.gradient_s
    waves = [axis_waveform(seq, a) for a in range(3)]
    peak, _, axis_peaks, _ = per_sample(waves, dt, pns, gamma, 1)
    tol = rtol * max(peak, 1e-6)
    if found is not None:
        assert peak - tol <= found.peak <= peak + tol
        if peak > 1e-6:
            assert per_sample_value(waves, dt, pns, gamma, found.peak_k) == pytest.approx(found.peak, rel=rtol)
        assert np.allclose(found.axis_peaks, axis_peaks, rtol=rtol, atol=1e-12)
    by_blocks = pns_module._block_prediction(found, seq) if found is not None else None
    by_runs = pns_module.predict_waveforms(waves, dt, seq.block_start_s, pns, gamma, envelope_s=None)
    assert predict_pns(seq, pns, gamma, envelope_s=None).peak_percent == pytest.approx(by_runs.peak_percent, rel=rtol)
    if by_blocks is None:
        return found
    assert by_blocks.peak_percent == pytest.approx(by_runs.peak_percent, rel=rtol)
    assert by_blocks.peak_block == by_runs.peak_block or peak == pytest.approx(
        per_sample_value(waves, dt, pns, gamma, round(by_runs.peak_time_s / dt - 0.5)), rel=rtol)
    assert np.allclose(by_blocks.axis_peak_percent, by_runs.axis_peak_percent, rtol=rtol, atol=1e-12)
    return found


@pytest.mark.parametrize("make", [lambda: factory.gre(8), lambda: factory.epi(8), lambda: factory.radial(6),
                                  lambda: factory.spin_echo(4), lambda: factory.tse(8, 4), lambda: factory.ute(4),
                                  lambda: factory.arbitrary_gradient_oversampled(),
                                  lambda: factory.gre3d(12, 10, 32, labels=False)],
                         ids=["gre", "epi", "radial_rotated", "spin_echo", "tse", "ute", "arbitrary", "gre3d"])
@pytest.mark.parametrize("profile", ["safe-example", "default"])
def test_block_by_block_is_the_per_sample_model_on_sequences(tmp_path, make, profile, monkeypatch):
    seq = make()
    seq.write(str(tmp_path / "s.seq"))
    ours = pulseq_read.read(tmp_path / "s.seq")
    monkeypatch.setattr(pns_blocks, "CHUNK", 48)  # several chunks: the filters' state carries over
    assert_blocks_match(ours, profiles.load(profile).safety.pns)


def test_few_long_distinct_blocks_are_left_to_the_runs(tmp_path):
    """An MPRAGE-like sequence: long blocks, each played few times: its types would hold more samples than
    the runs it has, so predict_pns plays it run by run (the block-by-block answer is the same)."""
    import pypulseq as pp

    system = factory.default_system()
    seq = pp.Sequence(system)
    for i in range(6):
        seq.add_block(pp.make_trapezoid("x", area=1000 + 300 * i, duration=4e-3, system=system))
        seq.add_block(pp.make_trapezoid("y", area=-800 - 100 * i, duration=6e-3, system=system))
    seq.write(str(tmp_path / "long.seq"))
    ours = pulseq_read.read(tmp_path / "long.seq")
    assert block_peak(ours, always=False) is None
    assert_blocks_match(ours)


def test_repeated_blocks_are_looked_into_once(tmp_path, monkeypatch):
    """A 3D GRE plays its read-out gradient the same in every TR: in the steady state those blocks are the
    same block again (on the x axis), and are searched once, not 480 times; the peaks are the same as when
    every block is searched, and the per-sample model's."""
    seq = factory.gre3d(24, 20, 32, labels=False)
    seq.write(str(tmp_path / "g.seq"))
    ours = pulseq_read.read(tmp_path / "g.seq")
    once = assert_blocks_match(ours)
    monkeypatch.setattr(pns_block_search, "first_of_each", lambda cand, live, which: live)
    every = block_peak(ours)
    assert block_peak(ours, always=False) is not None  # the runs would take longer here
    assert every.blocks_searched > once.blocks_searched + 400
    assert (every.peak, every.peak_k) == (once.peak, once.peak_k) and np.allclose(every.axis_peaks, once.axis_peaks,
                                                                                 rtol=1e-12)


def _with_block_raster(tmp_path, raster):  # type: ignore[no-untyped-def]
    """A sequence whose blocks start between gradient raster points (a block raster finer than it): delays
    of 3, 8, 12 and 4 µs between gradient blocks put their samples at several phases."""
    import pypulseq as pp

    system = pp.Opts(max_grad=30, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s", block_duration_raster=raster)
    seq = pp.Sequence(system)
    for i, extra in enumerate((3e-6, 8e-6, 12e-6, 4e-6)):
        seq.add_block(pp.make_trapezoid("x", area=(i + 1) * 800, system=system),
                      pp.make_trapezoid("y", area=-600, system=system))
        seq.add_block(pp.make_delay(extra))
        seq.add_block(pp.make_trapezoid("z", area=900, duration=1.2e-3, system=system))
    seq.write(str(tmp_path / "r.seq"))
    return pulseq_read.read(tmp_path / "r.seq")


def test_padding_of_the_lane_layout_is_no_block(tmp_path):
    """One block of two samples: the scan's lane layout pads it to 16 places; a padding place holds the
    block's end, but its state at a "first sample" is no block's and must not count (it did: 5.39 % for a
    3.13 % peak, found by the random sequences)."""
    import pypulseq as pp

    system = pp.Opts(max_grad=40, grad_unit="mT/m", max_slew=180, slew_unit="T/m/s")
    seq = pp.Sequence(system)
    seq.add_block(pp.make_trapezoid("x", amplitude=50000, rise_time=1e-5, flat_time=0, fall_time=1e-5,
                                    system=system))
    seq.write(str(tmp_path / "p.seq"))
    assert_blocks_match(pulseq_read.read(tmp_path / "p.seq"))


def test_blocks_between_raster_points(tmp_path):
    assert_blocks_match(_with_block_raster(tmp_path, 1e-6))


def test_a_sample_centred_on_a_block_boundary_is_left_to_the_runs(tmp_path):
    """Delays of odd multiples of 5 µs put a raster sample centre on a block boundary: which block's
    waveform holds it is a matter of rounding, so the block-by-block path declines; the result is the
    run-by-run one."""
    import pypulseq as pp

    system = pp.Opts(max_grad=30, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s", block_duration_raster=5e-6)
    seq = pp.Sequence(system)
    seq.add_block(pp.make_trapezoid("x", area=800, system=system))
    seq.add_block(pp.make_delay(5e-6))
    seq.add_block(pp.make_trapezoid("x", area=-800, system=system))
    seq.write(str(tmp_path / "b.seq"))
    ours = pulseq_read.read(tmp_path / "b.seq")
    assert block_peak(ours) is None
    waves = [axis_waveform(ours, a) for a in range(3)]
    assert predict_pns(ours, SAFE.safety.pns, 42.576e6, envelope_s=None).peak_percent == pytest.approx(
        per_sample(waves, 1e-5, SAFE.safety.pns, 42.576e6, 1)[0], rel=1e-9)


def _broken(tmp_path, **changes):  # type: ignore[no-untyped-def]
    """A GRE whose gradient events are changed (fields of the event table, all events)."""
    import dataclasses

    seq = factory.gre(4)
    seq.write(str(tmp_path / "g.seq"))
    ours = pulseq_read.read(tmp_path / "g.seq")
    grad = dataclasses.replace(ours.grad, **{k: v(ours.grad) for k, v in changes.items()})
    return dataclasses.replace(ours, grad=grad)


@pytest.mark.parametrize("changes", [
    {"fall_s": lambda g: np.where(g.is_trap, 0.0, g.fall_s)},  # a step down inside each trapezoid
    {"amplitude_hz_per_m": lambda g: g.amplitude_hz_per_m * np.where(np.arange(g.id.size) == 1, np.nan, 1.0)},
    {"rise_s": lambda g: g.rise_s * 3},  # events beyond their blocks
], ids=["steps", "non_finite", "beyond_block"])
def test_what_blocks_cannot_play_is_left_to_the_runs(tmp_path, changes):
    seq = _broken(tmp_path, **changes)
    assert block_peak(seq) is None
    waves = [axis_waveform(seq, a) for a in range(3)]
    ours = predict_pns(seq, SAFE.safety.pns, 42.576e6, envelope_s=None)
    peak = per_sample(waves, 1e-5, SAFE.safety.pns, 42.576e6, 1)[0]
    assert ours.peak_percent == pytest.approx(peak, rel=1e-9) or (np.isnan(peak) and ours.peak_percent == np.inf)


def test_where_blocks_play_what_the_per_sample_model_plays_between_events():
    """Between two events the per-sample model interpolates from one's last value to the next's first (0
    before the first and after the last); a block plays only its own event. Samples (centred at (k + ½)·10
    µs) inside a gap whose ends are not both 0, at a step from one block to the next, or just past a last
    non-zero breakpoint, leave the sequence to the runs."""
    fits = pns_block_types.gaps_fit
    dt = 1e-5
    t, z = np.array, np.zeros(2)
    assert fits(t([0.0, 100e-6]), z, t([40e-6, 140e-6]), z, dt)  # zeros around a gap with samples in it
    assert not fits(t([0.0, 100e-6]), t([0.0, 5.0]), t([40e-6, 140e-6]), t([5.0, 0.0]), dt)  # left on: 5 to 5
    assert fits(t([0.0, 40e-6]), t([0.0, 5.0]), t([40e-6, 140e-6]), t([5.0, 0.0]), dt)  # continues at 40 µs
    assert fits(t([0.0, 40e-6]), t([0.0, 7.0]), t([40e-6, 140e-6]), t([5.0, 0.0]), dt)  # a step between samples
    assert not fits(t([0.0, 45e-6]), t([0.0, 7.0]), t([45e-6, 145e-6]), t([5.0, 0.0]), dt)  # a step on sample 4
    assert fits(t([5e-6]), t([3.0]), t([95e-6]), t([0.0]), dt)  # starts non-zero on sample 0: as the model
    assert not fits(t([5e-6 + 1e-18]), t([3.0]), t([95e-6]), t([0.0]), dt)  # sample 0 a hair before: model's 0


def test_an_arbitrary_gradient_left_on_is_the_per_sample_model_either_way(tmp_path):
    """Arbitrary gradients whose last value is not 0: whichever way they are played, the peak is the
    per-sample model's."""
    import dataclasses

    factory.arbitrary_gradient_oversampled().write(str(tmp_path / "a.seq"))
    ours = pulseq_read.read(tmp_path / "a.seq")
    g = ours.grad
    last = np.where(g.time_shape == -1, 2e5, g.last_hz_per_m)
    seq = dataclasses.replace(ours, grad=dataclasses.replace(g, last_hz_per_m=last))
    waves = [axis_waveform(seq, a) for a in range(3)]
    peak = per_sample(waves, 1e-5, SAFE.safety.pns, 42.576e6, 1)[0]
    assert predict_pns(seq, SAFE.safety.pns, 42.576e6, envelope_s=None).peak_percent == pytest.approx(peak, rel=1e-9)


@st.composite
def block_sequences(draw):  # type: ignore[no-untyped-def]
    """Random sequences of blocks written by pypulseq: trapezoids (a few, played again and again, some
    scaled), arbitrary gradients, delays of any multiple of the block raster (1 µs or 10 µs), blocks
    without gradients, on the three axes."""
    import pypulseq as pp

    raster = draw(st.sampled_from([1e-5, 1e-6]))
    system = pp.Opts(max_grad=40, grad_unit="mT/m", max_slew=180, slew_unit="T/m/s", block_duration_raster=raster)
    areas = draw(st.lists(st.floats(-3000, 3000).filter(lambda a: abs(a) > 1), min_size=1, max_size=4))
    durations = draw(st.lists(st.integers(0, 30).map(lambda k: k * 1e-5), min_size=1, max_size=3))
    seq = pp.Sequence(system)
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["trap", "trap", "trap", "arb", "delay"]))
        if kind == "delay":
            seq.add_block(pp.make_delay(draw(st.integers(1, 60)) * (1e-6 if raster == 1e-6 else 1e-5)))
            continue
        events = []
        for axis in draw(st.lists(st.sampled_from("xyz"), min_size=1, max_size=3, unique=True)):
            area = draw(st.sampled_from(areas)) * draw(st.sampled_from([1.0, 1.0, -0.5, 0.25]))
            if kind == "arb":  # a smooth lobe within the slew limit, from 0 to 0 or not
                n = draw(st.integers(3, 40))
                height = min(abs(area) / (n * 1e-5), 180 * 42.576e6 * n * 1e-5 / np.pi / 2) * np.sign(area)
                ends = draw(st.sampled_from([slice(None), slice(None), slice(1, -1)]))
                waveform = np.sin(np.linspace(0, np.pi, n + 2)[ends]) * height
                events.append(pp.make_arbitrary_grad(axis, waveform, system=system, first=0, last=0))
            else:
                duration = draw(st.sampled_from(durations))
                try:
                    events.append(pp.make_trapezoid(axis, area=area, duration=duration or None, system=system)
                                  if duration else pp.make_trapezoid(axis, area=area, system=system))
                except Exception:  # noqa: BLE001 - that duration cannot hold that area: the shortest then
                    events.append(pp.make_trapezoid(axis, area=area, system=system))
        seq.add_block(*events)
    return seq


@settings(max_examples=100, deadline=None)
@given(block_sequences())
def test_block_by_block_is_the_per_sample_model_on_random_sequences(tmp_path_factory, seq):
    """On the gradient raster, with gradients that start and end at 0, the blocks always fit; on a finer
    block raster some sample centres may fall on block boundaries, and a waveform that ends at a non-zero
    value on a sample centre has a value there that depends on rounding (the runs take those sequences):
    either way the per-sample model's peaks."""
    path = tmp_path_factory.mktemp("random") / "r.seq"
    seq.write(str(path))
    ours = pulseq_read.read(path)
    if not any(axis_waveform(ours, a).t_s.size for a in range(3)):
        return
    g = ours.grad
    arbitrary = np.flatnonzero(~g.is_trap)
    zero_ends = all(ours.shapes.get(int(g.shape[r]))[[0, -1]].tolist() == [0.0, 0.0] for r in arbitrary)
    assert_blocks_match(ours, rtol=1e-8,
                        required=ours.rasters.block_duration_s == ours.rasters.gradient_s and zero_ends)
