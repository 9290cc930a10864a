"""Prescan on imperfect simulators (docs/prescan.md): with injected errors -- B0 300 Hz, B1 0.7, 50 Hz/cm linear
B0 on each axis, a receiver gain that clips -- a scan without prescan is measurably degraded, and after the
prescan it matches the error-free scan: frequency within 1 Hz, flip within 2 %, the residual B0 RMS over the
object down at least 10x, nothing clipped. Safety: a calibration that would exceed a limit is refused like any
scan; a result beyond the hardware's range, or a calibration that does not converge, keeps the previous values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scanctl.simulators.physics.pulse import pulse_intervals, pulse_rotation

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.data.recon import reconstruct
from scanctl.engine.executor import Scanner
from scanctl.engine.run import place_scene
from scanctl.engine.segments import compile_segments
from scanctl.errors import ConfigError
from scanctl.hw.interfaces import Scene
from scanctl.prescan import Prescan, ordered
from scanctl.prescan.plan import steps_for
from scanctl.prescan.sequences import b0_map
from scanctl.sequence.builders import build

PROFILE = profiles.load()
N = 32  # the phantom's and the scan's matrix: small, so the suite stays fast
ERRORS = "b0=300&b1=0.7&b0_grad=50,50,50&adc_range=3e5&gain=30"


def open_scanner(rf_url: str, profile=PROFILE) -> Scanner:
    scanner = Scanner.from_profile(profile, {"rf": rf_url, "gradient": "sim://", "table": "sim://"})
    scanner.connect()
    place_scene(scanner.rf, Scene(matrix=N, fov_m=0.256))
    return scanner


def gre(scanner: Scanner):
    """A gre_2d of N x N on ``scanner``: (image, clipped samples)."""
    seq = build("gre_2d", PROFILE, matrix=(N, N))
    scanner.prepare(seq)
    acquisitions = []
    result = scanner.run(on_acquisitions=acquisitions.extend)
    assert result.outcome == "completed", result.message
    return reconstruct(acquisitions, seq), scanner.rf.status().telemetry["adc_clipped_samples"]


def image_error(image, reference) -> float:
    return float(np.linalg.norm(np.abs(image) - np.abs(reference)) / np.linalg.norm(np.abs(reference)))


def residual_rms_hz(scanner: Scanner, b0_hz: float, gradient_hz_per_m) -> float:
    """The true off-resonance left over the object (voxels with proton density, through the slab): the B0
    error less the synthesiser's offset, plus the linear error plus the shim."""
    spins = scanner.rf._spins
    vox = spins._vox
    z = np.linspace(-0.005, 0.005, 11)
    adj, shim = scanner.rf.adjustments(), scanner.gradient.adjustments()
    g = [gradient_hz_per_m[i] + shim[a] for i, a in enumerate("xyz")]
    field = (b0_hz - adj["frequency_offset_hz"] + g[0] * vox["x"][:, None] + g[1] * vox["y"][:, None]
             + g[2] * z[None, :])
    return float(np.sqrt(np.mean(field**2)))


@pytest.fixture(scope="module")
def reference():
    scanner = open_scanner("sim://?adc_range=3e5")
    try:
        return gre(scanner)[0]
    finally:
        scanner.close()


def test_prescan_undoes_every_injected_error(reference):
    scanner = open_scanner(f"sim://?{ERRORS}")
    try:
        degraded, clipped = gre(scanner)
        assert clipped > 0 and image_error(degraded, reference) > 0.3  # shifted, distorted, darker, clipped
        before = residual_rms_hz(scanner, 300.0, (5000.0,) * 3)
        result = Prescan(scanner).run()
        assert result.ok, [(s.step, s.outcome, s.message) for s in result.steps]
        adj = result.adjustments
        assert abs(adj["frequency_offset_hz"] - 300.0) < 1.0
        assert abs(adj["tx_scale"] * 0.7 - 1.0) < 0.02  # the flip angle within 2 %
        after = residual_rms_hz(scanner, 300.0, (5000.0,) * 3)
        assert after * 10 <= before, (before, after)
        image, clipped = gre(scanner)
        assert clipped == 0
        assert image_error(image, reference) < 0.02 < image_error(degraded, reference)
        assert result.sequence_s < 10.0
    finally:
        scanner.close()


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b0=st.floats(-400, 400), b1=st.floats(0.6, 1.4), grad=st.tuples(*[st.floats(-60, 60)] * 3))
def test_prescan_over_random_errors(b0, b1, grad):
    url = f"sim://?b0={b0}&b1={b1}&b0_grad={grad[0]},{grad[1]},{grad[2]}&noise=20"
    scanner = open_scanner(url)
    try:
        g = tuple(100.0 * v for v in grad)
        before = residual_rms_hz(scanner, b0, g)
        result = Prescan(scanner).run(["frequency", "shim", "transmit"])
        assert result.ok, [(s.step, s.outcome, s.message) for s in result.steps]
        assert abs(result.adjustments["frequency_offset_hz"] - b0) < 1.0
        assert abs(result.adjustments["tx_scale"] * b1 - 1.0) < 0.02
        assert residual_rms_hz(scanner, b0, g) * 10 <= max(before, 10.0)
    finally:
        scanner.close()


def _default_text() -> str:
    return profiles.resources.files("scanctl.profiles").joinpath("default.toml").read_text()


def _profile(extra: str):
    return profiles.parse(_default_text() + extra)


@pytest.mark.parametrize("off_resonance_hz", [0.0, 768.0, -1536.0])
def test_the_field_map_excites_the_unshimmed_object_uniformly(off_resonance_hz):
    """Before the shim the object spreads over ±1.5 kHz (60 Hz/cm on x and y over the 25.6 cm field): the
    field map's 5° pulse flips all of it within 1 % (the 500 µs pulse it had flipped the corners 1.5°), so
    the map's magnitude weighting holds over the object -- and its rotation varies so little across the
    object that the simulator keeps its tissue classes whole (split into 221 strips, the first map took 1.6 s
    of a 64 x 64 prescan's computing)."""
    seq = b0_map(PROFILE).seq
    rf = next(s.rf for s in compile_segments(seq, larmor_hz=PROFILE.gamma_hz_per_t * PROFILE.b0_t) if s.rf.n_pulses)
    edges, b1, _, _, dt = pulse_intervals(rf, 0)
    rot = pulse_rotation(2 * np.pi * b1 * dt, np.zeros((dt.size, 3)), dt, np.zeros((1, 3)),
                         np.array([off_resonance_hz]))
    flip = np.degrees(2 * np.arcsin(np.abs(rot.beta[0])))
    assert abs(flip - 5.0) < 0.05, flip
    scanner = open_scanner(f"sim://?b0_grad=60,60,60&b0={off_resonance_hz}")
    try:
        classes = scanner.rf._spins.n_classes
        Prescan(scanner).acquire(b0_map)
        assert scanner.rf._spins.n_classes == classes
    finally:
        scanner.close()

def test_a_calibration_that_would_exceed_a_limit_is_refused_and_keeps_the_values():
    """At transmit scale 2 the Bloch-Siegert pulse's peak power is four times the programmed one: beyond an
    amplifier of 10 kW, so the safety prediction refuses it, as it would any scan; nothing moves."""
    scanner = open_scanner("sim://", _profile("\n[safety.rf]\npeak_power_w = 10000.0\n"))
    try:
        scanner.rf.set_tx_scale(2.0)
        energy = scanner.rf.status().telemetry["forward_energy_j"]
        [step] = Prescan(scanner).run(["transmit"]).steps
        assert step.outcome == "refused" and "safety prediction at transmit scale 2" in step.message
        assert "previous values kept" in step.message
        assert scanner.rf.adjustments()["tx_scale"] == 2.0
        assert scanner.rf.status().telemetry["forward_energy_j"] == energy  # nothing was transmitted
    finally:
        scanner.close()


@pytest.mark.parametrize(("extra", "url", "step", "key", "words"), [
    ("\n[rf]\nmax_tx_scale = 1.2\n", "sim://?b1=0.7", "transmit", "tx_scale", "amplifier"),
    ("\n[rf]\nmax_frequency_offset_hz = 100.0\n", "sim://?b0=300", "frequency", "frequency_offset_hz",
     "synthesiser"),
])
def test_a_result_beyond_the_hardware_is_refused_and_keeps_the_values(extra, url, step, key, words):
    scanner = open_scanner(url, _profile(extra))
    try:
        before = scanner.rf.adjustments()
        [result] = Prescan(scanner).run([step]).steps
        assert result.outcome == "refused" and words in result.message and "previous values kept" in result.message
        assert scanner.rf.adjustments() == before and result.values == {}
    finally:
        scanner.close()


def test_a_shim_beyond_the_supplies_is_refused_and_keeps_the_shim():
    text = _default_text().replace("max_slew_t_per_m_per_s = { x = 200.0, y = 200.0, z = 200.0 }",
                                   "max_slew_t_per_m_per_s = { x = 200.0, y = 200.0, z = 200.0 }\n"
                                   "shim_max_mt_per_m = { x = 0.02, y = 0.02, z = 0.02 }")  # 852 Hz/m: < 50 Hz/cm
    scanner = open_scanner("sim://?b0_grad=50,0,0", profiles.parse(text))
    try:
        [result] = Prescan(scanner).run(["shim"]).steps
        assert result.outcome == "refused" and "shim supply" in result.message
        assert scanner.gradient.adjustments() == {"x": 0.0, "y": 0.0, "z": 0.0}
    finally:
        scanner.close()


def test_a_calibration_without_signal_does_not_converge_and_keeps_the_values():
    scanner = open_scanner("sim://?physics=0&noise=1")  # noise only: no FID to measure
    try:
        scanner.rf.set_frequency_offset(12.5)
        [result] = Prescan(scanner).run(["frequency"]).steps
        assert result.outcome == "failed" and "no signal" in result.message
        assert scanner.rf.adjustments()["frequency_offset_hz"] == 12.5
    finally:
        scanner.close()


def test_noise_covariance_is_the_receivers_noise():
    scanner = open_scanner("sim://?noise=3&seed=5")
    try:
        result = Prescan(scanner).run(["noise"])
        [[(re, im)]] = result.noise_covariance
        # σ = 3 at 10 µs dwell, the scan's dwell: covariance σ²
        assert re == pytest.approx(9.0, rel=0.05) and im == 0.0 and result.noise_dwell_s == pytest.approx(1e-5)
    finally:
        scanner.close()


def test_steps_and_what_each_protocol_needs():
    assert ordered(["noise", "frequency"]) == ("frequency", "noise")
    with pytest.raises(ConfigError, match="unknown prescan step 'b1'"):
        ordered(["b1"])
    gre_seq, se_seq = build("gre_2d", PROFILE, matrix=(16, 16)), build("se_2d", PROFILE, matrix=(16, 16))
    from types import SimpleNamespace

    assert steps_for(gre_seq, SimpleNamespace(sequence_type="gre_2d")) == ("gain", "frequency", "shim", "transmit")
    assert steps_for(se_seq, SimpleNamespace(sequence_type="se_2d")) == ("gain", "frequency", "transmit")
    assert steps_for(se_seq, None, channels=4)[-1] == "noise"


def test_cli_prescan_json_and_bad_input(capsys):
    code = main(["prescan", "--rf", "sim://?b0=120&matrix=32", "--json", "frequency"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and abs(out["frequency_offset_hz"] - 120) < 1 and out["tx_scale"] == 1.0
    assert {"shim", "receiver_gain_db", "uncertainty", "steps"} <= set(out)
    assert out["uncertainty"]["frequency_offset_hz"] < 1
    assert main(["prescan", "b1"]) == 2
    assert "unknown prescan step 'b1'" in capsys.readouterr().err


def test_run_prescans_first_unless_told_not_to(tmp_path):
    protocol = tmp_path / "gre.toml"
    protocol.write_text(Path("protocols/gre_2d.toml").read_text().replace("matrix = [128, 128]", "matrix = [32, 32]"))
    url = "sim://?b0=200&adc_range=3e5&gain=30"
    assert main(["run", str(protocol), "--out", str(tmp_path / "a"), "--rf", url, "--no-recon"]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["prescan"]["steps_run"] == ["gain", "frequency", "shim", "transmit"]
    assert abs(report["prescan"]["frequency_offset_hz"] - 200) < 1
    assert report["telemetry"]["rf"]["adc_clipped_samples"] == 0
    assert main(["run", str(protocol), "--out", str(tmp_path / "b"), "--rf", url, "--no-recon", "--no-prescan"]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["prescan"] == {} and report["telemetry"]["rf"]["adc_clipped_samples"] > 0
