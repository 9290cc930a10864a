"""SAFE PNS prediction against pypulseq's calc_pns on the same waveforms with the same hardware
(pypulseq's safe_example_hw, our shipped safe-example profile): the peak within 1 % — in practice within
a few parts per million, the rounding of the .seq file."""

from __future__ import annotations

import numpy as np
import pytest
from pypulseq.Sequence.calc_pns import calc_pns
from pypulseq.utils.safe_pns_prediction import safe_example_hw

from scanctl import profile as profiles
from scanctl.safety import pns as pns_module
from scanctl.safety.pns import predict_pns
from scanctl.sequence import pulseq_read
from tests import pulseq_factory as factory

SAFE = profiles.load("safe-example")


@pytest.mark.parametrize("make", [lambda: factory.gre(16), lambda: factory.epi(16), lambda: factory.radial(12),
                                  lambda: factory.spin_echo(8)], ids=["gre", "epi", "radial", "spin_echo"])
def test_peak_and_its_time_agree_with_pypulseq_calc_pns(tmp_path, make, monkeypatch):
    seq = make()
    path = tmp_path / "seq.seq"
    seq.write(str(path))
    _, norm, components, t = calc_pns(seq, safe_example_hw(), do_plots=False)
    monkeypatch.setattr(pns_module, "CHUNK_SAMPLES", 1000)  # several chunks: the filters' state carries over
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
    assert any(quiet for _, _, quiet in pns_module._spans(ours_seq, 40_000, 1e-5, 100, 3.0))
    _, norm, components, t = calc_pns(seq, safe_example_hw(), do_plots=False)
    ours = predict_pns(ours_seq, SAFE.safety.pns, seq.system.gamma, envelope_s=1e-4)
    assert ours.peak_percent == pytest.approx(100 * norm.max(), rel=1e-4)
    theirs = np.pad(norm, (0, (-norm.size) % 10)).reshape(-1, 10).max(axis=1) * 100
    assert ours.percent.shape == theirs.shape and np.allclose(ours.percent, theirs, rtol=1e-4, atol=1e-3)
