"""SAR, RF duty, heating and the combined safety prediction of `scanctl check` / `scanctl run`: exact
energies for block pulses, the operating modes, refusal before anything moves, the reports."""

from __future__ import annotations

import json
import time

import pypulseq as pp
import pytest
from scanctl.simulators.gradient import SimulatedGradient

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.engine.segments import compile_segments
from scanctl.engine.session import run_scan
from scanctl.safety.heating import predict_heating
from scanctl.safety.predict import predict
from scanctl.sequence import pulseq_read
from tests import pulseq_factory as factory
from tests.test_profile import SHIPPED

GAMMA = 42.576e6
B1_UT = 15.0  # block pulses of 15 µT, 1 ms every 20 ms: 9 kW peak, 450 W mean forward power


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """10 s of block pulses: whole-body SAR over 10 s between the normal and first-level limits."""
    system = factory.default_system()
    seq = pp.Sequence(system)
    flip = 2 * 3.141592653589793 * GAMMA * B1_UT * 1e-6 * 1e-3  # rad for 1 ms at 15 µT
    rf = pp.make_block_pulse(flip_angle=flip, duration=1e-3, delay=100e-6, system=system)
    for _ in range(500):
        seq.add_block(rf)
        seq.add_block(pp.make_delay(20e-3 - 1.1e-3 - rf.ringdown_time))
    path = tmp_path_factory.mktemp("heavy") / "heavy.seq"
    seq.write(str(path))
    profile = tmp_path_factory.mktemp("profile") / "light-head.toml"
    profile.write_text(SHIPPED.read_text() + "\n[safety.rf]\nhead_absorbed_fraction = 0.02\n")
    return path, profile


def test_sar_of_block_pulses_is_the_hand_computed_energy(heavy):
    path, profile_path = heavy
    prof = profiles.load(profile_path)
    seq = pulseq_read.read(path)
    result = predict(seq, prof, 70.0, "normal")
    energy_per_pulse = 40.0 * B1_UT**2 * 1e-3  # W/µT² · µT² · s
    assert result.sar["forward_energy_j"] == pytest.approx(500 * energy_per_pulse, rel=1e-3)
    ten = result.sar["whole_body"]["10s"]
    # the densest 10 s hold all 500 pulses (the sequence lasts 10 s)
    assert ten["peak_w_per_kg"] == pytest.approx(500 * energy_per_pulse * 0.8 / 70.0 / 10.0, rel=1e-3)
    six = result.sar["whole_body"]["6min"]
    assert six["peak_w_per_kg"] == pytest.approx(500 * energy_per_pulse * 0.8 / 70.0 / 360.0, rel=1e-3)
    assert result.heating["rf_amplifier"]["peak_power_w"] == pytest.approx(40.0 * B1_UT**2, rel=1e-3)
    assert result.heating["rf_amplifier"]["duty_cycle_peak"] == pytest.approx(0.05, rel=0.01)


def test_normal_mode_refuses_what_first_level_allows(heavy, capsys):
    path, profile_path = heavy
    args = ["check", str(path), "--system", str(profile_path), "--patient-weight", "70", "--json"]
    assert main(args) == 1
    out = json.loads(capsys.readouterr().out)
    kinds = {v["kind"] for v in out["violations"]}
    assert kinds == {"sar_wb"} and not out["ok"]
    v = out["violations"][0]
    assert v["limit"] == 4.0 and v["value"] > 4.0 and "margin" in v["message"] and v["block"] is not None
    assert v["margin"] == pytest.approx(v["limit"] - v["value"]) and v["time_s"] >= 0.0
    assert set(out) >= {"sar", "pns", "heating"} and "peak_percent" in out["pns"]
    assert main([*args, "--mode", "first-level"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]


def test_run_refuses_before_anything_moves(heavy, tmp_path, capsys):
    path, profile_path = heavy
    report = run_scan(path, profiles.load(profile_path), tmp_path / "out", patient_weight_kg=70.0)
    assert report.outcome == "refused" and "whole-body SAR" in report.message
    assert report.acquisitions == 0 and not (tmp_path / "out" / "raw.h5").exists()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["outcome"] == "refused"
    assert not any(entry["trigger"] == "connect" for entry in report.journal)
    assert report.safety["sar"]["whole_body"]["10s"]["peak_w_per_kg"] > 4.0
    assert main(["run", str(path), "--system", str(profile_path), "--patient-weight", "70", "--out",
                 str(tmp_path / "cli")]) == 1
    assert "refused before anything moved" in capsys.readouterr().err


def test_heating_prediction_is_the_simulators_model(tmp_path):
    """The prediction and the gradient simulator playing the same sequence agree to rounding: same model,
    same 10 ms grid (the simulator synced on multiples of 10 ms)."""
    system = factory.default_system()
    seq = pp.Sequence(system)
    for axis in "xyz":
        g = pp.make_trapezoid(axis, amplitude=0.9 * system.max_grad, flat_time=20e-3, system=system)
        for _ in range(20):
            seq.add_block(g)
            seq.add_block(pp.make_delay(10e-3))
    seq.write(str(tmp_path / "heat.seq"))
    played = pulseq_read.read(tmp_path / "heat.seq")
    prof = profiles.load(None)
    predicted = predict_heating(played, prof)
    sim = SimulatedGradient("sim://", prof, buffer_s=1e3)
    sim.connect()
    sim.arm()
    for segment in compile_segments(played, larmor_hz=prof.gamma_hz_per_t * prof.b0_t, max_duration_s=0.5):
        sim.load(segment.gradient)
    sim.start()
    ambient = prof.safety.gradient_thermal.ambient_c
    checked = 0
    for k in range(25, int(played.duration_s / 0.01) + 1, 25):
        temperature = sim.sync(k * 0.01).telemetry["coil_temperature_c"]
        rise = predicted.temperature_c[k - 1] - ambient
        assert rise > 0.0
        assert temperature - ambient == pytest.approx(rise, rel=1e-6)
        checked += 1
    assert checked >= 6 and predicted.peak_c > ambient + 0.15


def test_reports_and_bad_input(heavy, tmp_path, capsys):
    path, profile_path = heavy
    assert main(["check", "protocols/gre_2d.toml", "--report", str(tmp_path / "r")]) == 0
    for name in ("sar.png", "pns.png", "temperature.png"):
        assert (tmp_path / "r" / name).stat().st_size > 1000
    assert main(["check", "protocols/gre_2d.toml", "--patient-weight", "-5"]) == 2
    assert "patient weight" in capsys.readouterr().err


def test_a_remote_run_is_refused_by_the_server_before_anything_moves(heavy, tmp_path):
    from scanctl.services.remote_run import run_remote
    from tests.test_server import FAST, Served

    path, _ = heavy
    served = Served(FAST)
    try:
        client = served.client("console")
        deadline = time.monotonic() + 10
        while client.status()["state"] != "IDLE" and time.monotonic() < deadline:
            time.sleep(0.05)
        journal_before = len(served.server.scanner.journal)
        report = run_remote(client, path, tmp_path / "remote", upload=True, patient_weight_kg=70.0)
        assert report.outcome == "refused" and "SAR" in report.message
        assert client.status()["state"] == "IDLE"
        assert len(served.server.scanner.journal) == journal_before  # not even prepared
    finally:
        served.close()


def test_windows_find_a_burst_in_10_s_and_average_the_scan_over_6_min():
    """Sparse pulses with a dense 4 s burst: the 10 s peak is the burst's window, the 6 min peak the whole
    scan (shorter than 6 min) over 360 s."""
    import numpy as np

    from scanctl.safety.sar import window_curve, window_peak

    sparse = np.arange(0.0, 100.0, 1.0)
    burst = 50.5 + np.arange(0.0, 4.0, 0.01)
    start = np.sort(np.concatenate((sparse, burst)))
    end = start + 1e-3
    energy = np.ones(start.size)
    blocks = np.concatenate((start, [101.0]))  # one block per pulse
    ten = window_peak(start, end, energy, 10.0, blocks)
    # the densest 10 s hold the 400 burst pulses and 10 of the sparse ones (or 9 plus partial edges)
    assert ten.value == pytest.approx(410 / 10.0)
    assert ten.start_s + 10.0 >= burst[-1] + 1e-3 and ten.start_s <= burst[0]
    assert blocks[ten.block] <= ten.start_s < blocks[ten.block + 1]
    six = window_peak(start, end, energy, 360.0, blocks)
    assert six.value == pytest.approx(start.size / 360.0)
    curve = window_curve(start, end, energy, 10.0, np.array([ten.start_s + 10.0, 200.0]))
    assert curve[0] == pytest.approx(ten.value) and curve[1] == 0.0


def test_unknown_mode_is_bad_input(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["check", "protocols/gre_2d.toml", "--mode", "extreme"])
    assert exit_.value.code == 2
    assert "mode" in capsys.readouterr().err


def test_pns_skips_a_long_delay_that_shares_its_block_with_a_spoiler_exactly(tmp_path):
    """MPRAGE-like: a spoiler and a 0.25 s delay in one block. The zero stretch after the spoiler is one run
    of constant (zero) slew, not sampled, and the peak and the envelope still agree with pypulseq's calc_pns."""
    import numpy as np
    from pypulseq.Sequence.calc_pns import calc_pns
    from pypulseq.utils.safe_pns_prediction import safe_example_hw

    from scanctl.safety import pns as pns_module

    system = factory.default_system()
    seq = factory.gre(4)
    seq.add_block(pp.make_trapezoid("y", area=4000, system=system), pp.make_delay(0.25))
    seq.add_block(pp.make_trapezoid("x", area=2000, system=system))
    seq.write(str(tmp_path / "spoil.seq"))
    ours_seq = pulseq_read.read(tmp_path / "spoil.seq")
    safe = profiles.load("safe-example").safety.pns
    from scanctl.sequence.waveforms import axis_waveform

    runs = pns_module._run_starts([axis_waveform(ours_seq, a) for a in range(3)], 10**6, 1e-5, 0)
    assert runs.size < 3_000  # the 25,000 samples of delay are one run, not visited sample by sample
    _, norm, _, _ = calc_pns(seq, safe_example_hw(), do_plots=False)
    ours = pns_module.predict_pns(ours_seq, safe, seq.system.gamma, envelope_s=1e-4)
    assert ours.peak_percent == pytest.approx(100 * norm.max(), rel=1e-4)
    theirs = np.pad(norm, (0, (-norm.size) % 10)).reshape(-1, 10).max(axis=1) * 100
    assert ours.percent.shape == theirs.shape and np.allclose(ours.percent, theirs, rtol=1e-4, atol=1e-6)


def test_every_limit_kind_names_its_limit_value_margin_and_place(heavy, tmp_path):
    """A profile with tight limits: the block pulses break both SAR regions and the amplifier's peak power
    and duty cycle; the 2D GRE protocol breaks the coil temperature."""
    path, _ = heavy
    tight = tmp_path / "tight.toml"
    tight.write_text(SHIPPED.read_text() + "\n[safety.rf]\npeak_power_w = 5000.0\nmax_duty_cycle = 0.02\n"
                     "\n[safety.gradient_thermal]\nmax_temp_c = 20.01\n")
    prof = profiles.load(tight)
    result = predict(pulseq_read.read(path), prof, 70.0, "normal")
    by_kind = {v.kind: v for v in result.violations}
    assert set(by_kind) == {"sar_wb", "sar_head", "rf_peak", "rf_duty"}
    assert by_kind["rf_peak"].limit == 5000.0 and by_kind["rf_peak"].value == pytest.approx(9000.0, rel=1e-3)
    assert by_kind["rf_duty"].value == pytest.approx(0.05, rel=0.01)
    for v in by_kind.values():
        assert v.margin == pytest.approx(v.limit - v.value) and v.margin < 0 and v.block is not None
        assert f"block {v.block}" in v.message and "margin" in v.message
    gre = predict(profiles_protocol_sequence("protocols/gre_2d.toml", prof), prof, 70.0, "normal")
    coil = {v.kind: v for v in gre.violations}["gradient_heating"]
    assert coil.value == pytest.approx(gre.heating["gradient_coil"]["peak_temperature_c"]) and coil.limit == 20.01


def profiles_protocol_sequence(path: str, prof):  # type: ignore[no-untyped-def]
    from scanctl.config.protocol import load_protocol

    return load_protocol(path).build_sequence(prof)


def test_check_imports_nothing_it_does_not_need(tmp_path):
    """`scanctl check` (read, checks, SAR, PNS, heating) starts lean: no scipy (the filters are numpy), no
    ZeroMQ, state machine, plotting or raw-data libraries."""
    import subprocess
    import sys

    code = ("import sys; from scanctl.cli import main; code = main(['check', 'protocols/gre_2d.toml']); "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'zmq', 'transitions', "
            "'matplotlib', 'ismrmrd', 'h5py', 'pypulseq'}); print(code, heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 []"
