"""Receive coils of the RF simulator (simulators/physics/coils.py; signal.py's read-out per channel).

The ring array's Biot–Savart fields against the closed form on a loop's axis; its geometry and noise
correlation for any parameters (hypothesis); the channel images against the body coil's times the
sensitivities; the measured noise covariance of acquisitions without RF against the configured one, in
the spin system and through ``scanctl run``; the RF simulator's ``coils`` option and ``coil_info``.
"""

from __future__ import annotations

import math

import numpy as np
import pypulseq as pp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scanctl.simulators.physics import Phantom, SpinSystem, shepp_logan
from scanctl.simulators.physics.coils import body_coil, loop_fields, loop_ring

from scanctl.errors import ConfigError
from tests.pulseq_factory import default_system
from tests.test_bloch import adc_program, gradient, rf_program
from tests.test_phantom import gre_slice, image_of, segments_of

# ----------------------------------------------------------------------------------------------------------
# The coil model
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("z", [0.0, 0.03, 0.1])
def test_biot_savart_matches_the_closed_form_on_a_loops_axis(z):
    """On the axis of a loop of radius R: B = µ0 I R² / (2 (R² + z²)^1.5), i.e. 2π R² / (R² + z²)^1.5 in
    units of µ0 I / 4π, along the normal; the 64-segment polygon is within 0.2 %."""
    radius = 0.05
    b = loop_fields(np.zeros((1, 3)), np.array([[1.0, 0.0, 0.0]]), radius, np.array([[z, 0.0, 0.0]]))[0, 0]
    want = 2 * math.pi * radius**2 / (radius**2 + z**2) ** 1.5
    assert abs(b[0]) == pytest.approx(want, rel=2e-3)
    assert np.abs(b[1:]).max() < 1e-9 * want


def test_the_default_ring_correlates_neighbours_as_head_arrays_do():
    coil = loop_ring(8, 0.154)
    corr = coil.correlation
    neighbours = [corr[i, (i + 1) % 8] for i in range(8)]
    others = [corr[i, j] for i in range(8) for j in range(8) if (j - i) % 8 not in (0, 1, 7)]
    print("neighbour correlation", np.round(neighbours, 3), "others", np.round([min(others), max(others)], 3))
    assert all(0.1 <= c <= 0.3 for c in neighbours)
    assert max(abs(c) for c in others) < 0.1
    assert coil.channels == 8 and coil.channel_names[0] == "loop1"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channels=st.integers(1, 12), ring=st.floats(0.05, 0.5), loop=st.floats(0.15, 0.9),
       sample=st.floats(0.05, 1.0), obj=st.floats(0.3, 1.0))
def test_any_ring_has_a_valid_correlation_and_unit_rss_at_its_centre(channels, ring, loop, sample, obj):
    coil = loop_ring(channels, ring, loop_radius_m=loop * ring, sample_noise_fraction=sample, object_fraction=obj)
    corr = coil.correlation
    assert corr.shape == (channels, channels)
    assert np.allclose(corr, corr.T) and np.allclose(np.diag(corr), 1.0)
    assert np.linalg.eigvalsh(corr).min() > 0  # a covariance: noise can be drawn from it
    assert np.all(np.abs(corr[~np.eye(channels, dtype=bool)]) < 1.0)
    centre = coil.sensitivities(np.zeros((1, 3)))
    assert np.sqrt(np.sum(np.abs(centre) ** 2)) == pytest.approx(1.0, rel=1e-9)
    inside = coil.sensitivities(0.5 * ring * np.array([[1.0, 0.0, 0.0], [0.0, -0.7, 0.2]]))
    assert np.isfinite(inside).all()
    # Symmetry of the ring: the element facing a point sees it best.
    if channels >= 2:
        assert np.argmax(np.abs(inside[:, 0])) == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channels": 0}, "channels"),
    ({"channels": 2.5}, "channels"),
    ({"ring_radius_m": -0.1}, "ring_radius_m"),
    ({"ring_radius_m": float("nan")}, "ring_radius_m"),
    ({"loop_radius_m": 0.2}, "smaller than ring_radius_m"),
    ({"sample_noise_fraction": 0.0}, "sample_noise_fraction"),
    ({"object_fraction": 1.5}, "object_fraction"),
])
def test_bad_coil_parameters_are_config_errors(kwargs, message):
    args = {"channels": 8, "ring_radius_m": 0.15, **kwargs}
    with pytest.raises(ConfigError, match=message):
        loop_ring(**args)


def test_the_body_coil_is_one_channel_of_sensitivity_one():
    coil = body_coil()
    assert coil.channels == 1 and coil.is_body
    assert np.array_equal(coil.sensitivities(np.random.default_rng(0).normal(size=(5, 3))), np.ones((1, 5)))
    info = coil.info(2.0)
    assert info == {"name": "body", "channels": 1, "channel_names": ["body"], "noise_covariance": [[4.0]],
                    "noise_correlation": [[1.0]]}


# ----------------------------------------------------------------------------------------------------------
# Channel images
# ----------------------------------------------------------------------------------------------------------


def _pointwise_scan(n: int):
    """A phantom and scan whose image is the proton density times one weight at each voxel: T1 = T2 = 5 s
    and a 100 s TR (every line starts from equilibrium: no approach to steady state modulating k-space
    along the phase axis, and no decay through the read-out blurring along the read axis), the phase
    encodes half a line off the band edge (``gre_slice``'s ``line_shift``: the first line of a centred
    table can fall just outside it and be dropped). Otherwise the image is the object convolved with a
    point-spread function, and a channel's image is not the body image times the sensitivity."""
    pd = shepp_logan(n, fov_m=0.256).pd
    one = np.ones_like(pd)
    phantom = Phantom(pd=pd, t1_s=5.0 * one, t2_s=5.0 * one, b0_offset_hz=0 * one, voxel_size_m=(0.256 / n,) * 2)
    return phantom, segments_of(gre_slice(n, tr_delay_s=100.0, line_shift=0.5))


def test_channel_images_are_the_body_coils_times_the_sensitivities():
    """A Cartesian scan of the phantom's own grid (:func:`_pointwise_scan`): channel n's image is the body
    coil's image times its sensitivity at each voxel, so the root sum of squares of the 8 images is the body
    image times the RSS sensitivity (without noise: to 1e-4 of the peak; the magnetization is simulated once
    for all channels), and the sensitivities the simulator used are the coil's own (interpolated between
    nodes: within 1 %)."""
    n = 32
    phantom, segments = _pointwise_scan(n)
    coil = loop_ring(8, 0.154)
    body = image_of(SpinSystem(phantom), segments, n)[0]
    spins = SpinSystem(phantom, coil=coil)
    channels = image_of(spins, segments, n)
    assert channels.shape == (8, n, n)
    sens = spins.sensitivities()[:, 0]
    scale = np.abs(body).max()
    assert np.abs(channels - body[None] * sens).max() < 1e-4 * scale
    rss = np.sqrt(np.sum(np.abs(channels) ** 2, axis=0))
    assert np.abs(rss - np.abs(body) * np.sqrt(np.sum(np.abs(sens) ** 2, axis=0))).max() < 1e-4 * scale
    direct = coil.sensitivities(phantom.scanner_positions_m()[0])
    assert np.abs(sens - direct).max() < 0.01 * np.abs(direct).max()


def test_channel_images_with_noise_match_within_the_noise():
    """The same with receiver noise: the RSS image differs from the body image times the RSS sensitivity
    by no more than the noise allows: the norm of 8 channels' image noise, σ/n per channel and voxel after
    the inverse FFT (n² samples summed, divided by n²), below 5 sqrt(8) σ/n in every voxel."""
    n = 32
    sigma = 2.0
    phantom, segments = _pointwise_scan(n)
    body = image_of(SpinSystem(phantom), segments, n)[0]
    spins = SpinSystem(phantom, coil=loop_ring(8, 0.154), noise_std=sigma, seed=3)
    channels = image_of(spins, segments, n)
    dwell = segments[0].adc.dwell_s[0]
    per_voxel = sigma * math.sqrt(10e-6 / dwell) / n
    rss = np.sqrt(np.sum(np.abs(channels) ** 2, axis=0))
    want = np.abs(body) * np.sqrt(np.sum(np.abs(spins.sensitivities()[:, 0]) ** 2, axis=0))
    error = np.abs(rss - want)
    assert error.max() < 5 * per_voxel * math.sqrt(8)
    assert error.mean() > 0.5 * per_voxel  # the noise is there
    assert want.max() > 100 * per_voxel  # and the signal far above it


# ----------------------------------------------------------------------------------------------------------
# Noise covariance
# ----------------------------------------------------------------------------------------------------------


def _covariance_tolerance(cov: np.ndarray, samples: int) -> np.ndarray:
    """5 standard errors of each entry of a sample covariance of ``samples`` complex Gaussian vectors:
    var(Ĉ_ij) = Σ_ii Σ_jj / samples."""
    d = np.diag(cov).real
    return 5.0 * np.sqrt(np.outer(d, d) / samples)


def _check_covariance(data: np.ndarray, cov: np.ndarray) -> None:
    samples = data.shape[1]
    measured = data @ data.conj().T / samples
    tol = _covariance_tolerance(cov, samples)
    assert np.all(np.abs(measured - cov) <= tol), np.round(np.abs(measured - cov) / tol, 2)
    # And the correlation is there (a white-noise receiver fails this): neighbours at ~0.18 >> 5 σ.
    i, j = 0, 1
    assert abs(measured[i, j]) > 0.5 * abs(cov[i, j]) > tol[i, j]


def test_the_noise_of_an_acquisition_without_rf_has_the_coils_covariance():
    coil = loop_ring(8, 0.154)
    sigma = 1.5
    spins = SpinSystem(shepp_logan(16), coil=coil, noise_std=sigma, seed=11)
    n, dwell = 20000, 20e-6
    end = 1e-3 + n * dwell + 1e-3
    (data,) = spins.play(gradient(0, end), rf_program(0, end, []), adc_program(0, end, [(1e-3, n, dwell, 0, 0)]))
    assert data.shape == (8, n)
    cov = sigma**2 * (10e-6 / dwell) * coil.correlation
    _check_covariance(data.astype(np.complex128), cov)


def test_scanctl_run_with_coils_writes_every_channel_with_the_coils_noise(tmp_path):
    """``scanctl run --rf sim://?coils=8&noise=1``: raw data of 8 channels whose noise (no RF) has the
    covariance the RF simulator's ``coil_info`` gives."""
    import ismrmrd
    from scanctl.simulators.rf import SimulatedRF

    from scanctl.cli import main
    from scanctl.config.profile import load as load_profile

    system = default_system()
    seq = pp.Sequence(system)
    for _ in range(8):
        seq.add_block(pp.make_adc(num_samples=2048, dwell=10e-6, delay=system.adc_dead_time, system=system))
    seq.write(str(tmp_path / "noise.seq"))
    out = tmp_path / "out"
    url = "sim://?noise=1.0&coils=8"
    assert main(["run", str(tmp_path / "noise.seq"), "--rf", url, "--out", str(out), "--no-recon"]) == 0
    with ismrmrd.Dataset(str(out / "raw.h5"), "dataset", create_if_needed=False) as ds:
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    assert all(a.data.shape == (8, 2048) for a in acqs)
    data = np.concatenate([a.data for a in acqs], axis=1).astype(np.complex128)
    rf = SimulatedRF(url, load_profile("default"), noise=1.0, coils=8)
    cov = np.array(rf.coil_info()["noise_covariance"])
    _check_covariance(data, cov)


# ----------------------------------------------------------------------------------------------------------
# The RF simulator's option
# ----------------------------------------------------------------------------------------------------------


def test_the_rf_simulator_reports_its_channels_and_coil():
    from scanctl.simulators.rf import SimulatedRF

    from scanctl.config.profile import load as load_profile
    from scanctl.hw.registry import open_subsystem

    profile = load_profile("default")
    body = SimulatedRF("sim://", profile)
    assert body.channels == 1 and body.coil_info()["name"] == "body"
    rf = open_subsystem("rf", "sim://?coils=8&noise=2", profile)
    assert rf.channels == 8
    info = rf.coil_info()
    assert info["name"] == "ring8" and info["channels"] == 8 and len(info["channel_names"]) == 8
    cov = np.array(info["noise_covariance"])
    assert cov.shape == (8, 8) and np.allclose(np.diag(cov), 4.0)
    for bad in ("sim://?coils=0", "sim://?coils=two", "sim://?patient_position=LFS"):
        with pytest.raises(ConfigError, match="coils|patient_position"):
            open_subsystem("rf", bad, profile)
