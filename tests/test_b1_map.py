"""The transmit coil's spatial B1 map in the simulated physics (docs/prescan.md, ``b1_map``): every voxel's flip
is scaled by the map at its position, so a small-flip gradient echo's image is the error-free one times the map
(the signal is proportional to the flip there), and the prescan's global Bloch–Siegert calibration finds the
object's mean B1."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scanctl.simulators.physics.field import TransmitMap, transmit_map
from scanctl.simulators.physics.pulse import pulse_rotation

from scanctl.config import profile as profiles
from scanctl.data.recon import reconstruct
from scanctl.engine.executor import Scanner
from scanctl.engine.run import place_scene
from scanctl.errors import ConfigError
from scanctl.hw.interfaces import Scene
from scanctl.hw.registry import open_subsystem
from scanctl.prescan import Prescan
from scanctl.sequence.builders import build

PROFILE = profiles.load()
N = 32


def open_scanner(rf_url: str) -> Scanner:
    scanner = Scanner.from_profile(PROFILE, {"rf": rf_url, "gradient": "sim://", "table": "sim://"})
    scanner.connect()
    place_scene(scanner.rf, Scene(matrix=N, fov_m=0.256))
    return scanner


def small_flip_image(rf_url: str) -> tuple[np.ndarray, np.ndarray]:
    """A 2° gradient echo of N x N (TR 100 ms: the signal within 0.1 % of proportional to the flip) and the
    phantom's proton density on the same grid."""
    scanner = open_scanner(rf_url)
    try:
        seq = build("gre_2d", PROFILE, matrix=(N, N), flip_angle_deg=2.0, tr_s=0.1)
        scanner.prepare(seq)
        acquisitions: list = []
        result = scanner.run(on_acquisitions=acquisitions.extend)
        assert result.outcome == "completed", result.message
        return np.squeeze(reconstruct(acquisitions, seq)), scanner.rf._spins.phantom.pd
    finally:
        scanner.close()


def map_on_grid(b1_map: TransmitMap) -> np.ndarray:
    """The map at the image's voxel centres (row y, column x)."""
    p = (np.arange(N) - N // 2) * 0.256 / N
    return b1_map.at(p[None, :], p[:, None], np.zeros(1))


@pytest.mark.parametrize("option", ["radial,0.3", "linear,0.012,-0.006"])
def test_a_small_flip_image_follows_the_transmit_map(option):
    uniform, pd = small_flip_image("sim://")
    mapped, _ = small_flip_image(f"sim://?b1_map={option}")
    inside = np.abs(uniform) > 0.2 * np.abs(uniform).max()
    ratio = np.abs(mapped)[inside] / np.abs(uniform)[inside]
    want = map_on_grid(transmit_map(option))[inside]
    assert np.ptp(want) > 0.15  # the map varies over the object: the test can tell
    assert np.abs(ratio - want).max() < 0.015, float(np.abs(ratio - want).max())
    assert pd.shape == (N, N)


def test_the_prescan_transmit_calibration_finds_the_objects_mean_b1():
    """Global Bloch–Siegert: a signal-weighted mean of B1 over the object; with the coil's efficiency 0.8 and a
    centre brightening of 30 %, the transmit scale then puts the object's mean B1 within 2 % of the programmed."""
    scanner = open_scanner("sim://?b1=0.8&b1_map=radial,0.3")
    try:
        [step] = Prescan(scanner).run(["transmit"]).steps
        assert step.ok, step.message
        vox = scanner.rf._spins._vox
        local = 0.8 * TransmitMap("radial", a=0.3, radius_m=0.1).at(vox["x"], vox["y"], vox["z"])
        mean = float(np.average(local, weights=vox["pd"]))
        assert np.ptp(local) / mean > 0.2
        assert step.values["tx_scale"] * mean == pytest.approx(1.0, abs=0.02)
    finally:
        scanner.close()


@pytest.mark.parametrize("text", ["radial", "radial,x", "radial,0.2,0", "radial,-1", "linear,0.1",
                                  "linear,2,0", "uniform,1", "radial,nan"])
def test_a_bad_b1_map_is_a_config_error_naming_it(text):
    with pytest.raises(ConfigError, match="b1_map"):
        open_subsystem("rf", f"sim://?b1_map={text}", PROFILE)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 3.0), st.floats(-np.pi, np.pi), st.floats(-50.0, 50.0))
def test_a_class_b1_scale_is_the_same_as_a_scaled_pulse(scale, phase, df):
    """Scaling one class's B1 in the rotation is the pulse's B1 scaled, for that class."""
    rng = np.random.default_rng(3)
    nutation = (rng.normal(size=40) + 1j * rng.normal(size=40)) * 0.05 * np.exp(1j * phase)
    dm, dt = np.zeros((40, 3)), np.full(40, 1e-5)
    positions, dfs = np.zeros((2, 3)), np.array([df, df])
    scaled = pulse_rotation(nutation, dm, dt, positions, dfs, np.array([1.0, scale]))
    direct = pulse_rotation(nutation * scale, dm, dt, positions[:1], dfs[:1])
    assert np.allclose(scaled.alpha[1], direct.alpha[0]) and np.allclose(scaled.beta[1], direct.beta[0])
    plain = pulse_rotation(nutation, dm, dt, positions[:1], dfs[:1])
    assert np.allclose(scaled.alpha[0], plain.alpha[0]) and np.allclose(scaled.beta[0], plain.beta[0])


def test_the_b1map_step_maps_b1_over_the_object():
    """The Bloch–Siegert pair imaged: each voxel's B1 (at the transmit scale in force) within 3 % of the map the
    simulator was given, and the spread it reports is the map's."""
    scanner = open_scanner("sim://?b1=0.9&b1_map=radial,0.3&noise=2")
    try:
        prescan = Prescan(scanner)
        [step] = prescan.run(["b1map"]).steps
        assert step.ok, step.message
        measured = prescan.b1_map
        want = 0.9 * map_on_grid(TransmitMap("radial", a=0.3, radius_m=0.1))
        inside = np.isfinite(measured)
        assert inside.sum() > 0.3 * N * N
        assert np.abs(measured[inside] - want[inside]).max() < 0.03 * 1.3
        assert step.values["b1_mean"] == pytest.approx(float(want[inside].mean()), rel=0.01)
        assert step.values["b1_spread"] == pytest.approx(float(want[inside].std() / want[inside].mean()), abs=0.01)
        assert scanner.rf.adjustments()["tx_scale"] == 1.0  # measured only
    finally:
        scanner.close()
