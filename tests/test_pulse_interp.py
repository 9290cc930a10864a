"""The constant-gradient fast path of pulse_rotation (a grid in off-resonance, interpolated) against the exact
per-class composition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scanctl.simulators.physics import pulse
from scanctl.simulators.physics.pulse import pulse_rotation

RASTER_S = 1e-6


def _shaped(kind: str, n: int, peak_hz: float, offset_hz: float) -> np.ndarray:
    """``2 pi b1 dt`` of a sinc or an off-resonant Hann pulse (like the Bloch–Siegert one) of ``n`` samples."""
    t = (np.arange(n) + 0.5) / n
    if kind == "sinc":
        shape = np.sinc(6.0 * (t - 0.5)) * (0.54 + 0.46 * np.cos(2 * np.pi * (t - 0.5)))
    else:
        shape = 0.5 - 0.5 * np.cos(2 * np.pi * t)
    b1 = peak_hz * shape * np.exp(2j * np.pi * offset_hz * t * n * RASTER_S)
    return 2 * np.pi * b1 * RASTER_S


def _count_fast(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, per call of the grid path, whether it was taken (returned a rotation)."""
    taken: list[bool] = []
    real = pulse._on_frequency_grid

    def spy(*args: object) -> object:
        rot = real(*args)  # type: ignore[arg-type]
        taken.append(rot is not None)
        return rot

    monkeypatch.setattr(pulse, "_on_frequency_grid", spy)
    return taken


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["sinc", "hann"]), n=st.integers(200, 4000), peak_hz=st.floats(100.0, 1500.0),
       offset_hz=st.sampled_from([0.0, 2000.0, -4000.0]), grad=st.lists(st.floats(-2e3, 2e3), min_size=3, max_size=3),
       k=st.integers(2000, 6000), seed=st.integers(0, 2**31 - 1), b1_bins=st.integers(0, 3))
def test_grid_path_equals_exact_composition(kind: str, n: int, peak_hz: float, offset_hz: float, grad: list[float],
                                            k: int, seed: int, b1_bins: int) -> None:
    rng = np.random.default_rng(seed)
    nutation = _shaped(kind, n, peak_hz, offset_hz)
    dt = np.full(n, RASTER_S)
    g = np.array(grad)  # Hz/m
    dm = np.outer(dt, g)
    positions = rng.uniform(-0.1, 0.1, (k, 3))
    df = rng.uniform(-300.0, 300.0, k)
    b1 = None if b1_bins == 0 else 1.0 + 0.01 * rng.integers(-b1_bins, b1_bins + 1, k)
    f = positions @ g + df
    assert pulse._constant_gradient(dm, dt, positions) is not None
    fast = pulse._on_frequency_grid(nutation, dt, f, b1)
    exact = pulse._exact(nutation, dm, dt, positions, df, b1)
    if fast is None:  # too wide a spread of off-resonance for these classes: check that it was right to decline
        n_b1 = 1 if b1 is None else np.unique(b1).size
        assert n_b1 * (np.ptp(f) / pulse._grid_spacing_hz(n * RASTER_S)) > 0.2 * k
        return
    assert np.abs(fast.alpha - exact.alpha).max() < 1e-9
    assert np.abs(fast.beta - exact.beta).max() < 1e-9


def test_bloch_siegert_like_pulse_takes_the_grid_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _count_fast(monkeypatch)
    n, k = 4000, 5000
    rng = np.random.default_rng(7)
    nutation = _shaped("hann", n, 500.0, 4000.0)
    dt = np.full(n, RASTER_S)
    dm = np.outer(dt, [50.0, 50.0, 50.0])
    positions = rng.uniform(-0.128, 0.128, (k, 3))
    df = rng.uniform(-200.0, 200.0, k)
    b1 = 1.0 + 0.01 * rng.integers(-2, 3, k)
    got = pulse_rotation(nutation, dm, dt, positions, df, b1)
    assert taken == [True]
    exact = pulse._exact(nutation, dm, dt, positions, df, b1)
    assert np.abs(got.alpha - exact.alpha).max() < 1e-9
    assert np.abs(got.beta - exact.beta).max() < 1e-9


def test_varying_gradient_is_composed_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _count_fast(monkeypatch)
    n, k = 1000, 3000
    rng = np.random.default_rng(3)
    nutation = _shaped("sinc", n, 800.0, 0.0)
    dt = np.full(n, RASTER_S)
    dm = np.outer(dt, [0.0, 0.0, 1e3]) * np.linspace(1.0, 1.01, n)[:, None]  # a ramp: not constant
    positions = rng.uniform(-0.1, 0.1, (k, 3))
    df = rng.uniform(-100.0, 100.0, k)
    pulse_rotation(nutation, dm, dt, positions, df)
    assert taken == []
    assert pulse._constant_gradient(dm, dt, positions) is None


def test_few_classes_are_composed_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _count_fast(monkeypatch)
    n = 1000
    nutation = _shaped("sinc", n, 800.0, 0.0)
    dt = np.full(n, RASTER_S)
    dm = np.outer(dt, [0.0, 0.0, 1e3])
    positions = np.array([[0, 0, z] for z in np.linspace(-0.1, 0.1, 20)])
    got = pulse_rotation(nutation, dm, dt, positions, np.zeros(20))
    assert taken == [False]  # the grid would be larger than the 20 classes
    exact = pulse._exact(nutation, dm, dt, positions, np.zeros(20), None)
    np.testing.assert_array_equal(got.alpha, exact.alpha)


def test_grid_spacing_bound_is_met_on_a_fine_check() -> None:
    """The derived spacing's error bound holds (checked against exact composition at many in-between points)."""
    n = 2000
    nutation = _shaped("hann", n, 1200.0, 3000.0)
    dt = np.full(n, RASTER_S)
    h = pulse._grid_spacing_hz(n * RASTER_S)
    f = np.linspace(-5e3, 5e3, 40000)
    fast = pulse._on_frequency_grid(nutation, dt, f, None)
    assert fast is not None
    exact = pulse._exact(nutation, np.zeros((n, 3)), dt, np.zeros((f.size, 3)), f, None)
    assert np.abs(fast.alpha - exact.alpha).max() < pulse._INTERP_TOL
    assert np.abs(fast.beta - exact.beta).max() < pulse._INTERP_TOL
    assert h > 10.0  # a 2 ms pulse: tens of Hz between nodes, so a kHz spread needs ~100 nodes


def test_rounding_noise_in_the_moments_still_takes_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Moments differenced from a running moment late in a scan carry ~1e-13 /m of rounding (as in the prescan):
    still a constant gradient, and the result still within 1e-9 of composing the noisy moments exactly."""
    taken = _count_fast(monkeypatch)
    n, k = 4000, 6000
    rng = np.random.default_rng(11)
    nutation = _shaped("hann", n, 500.0, -4000.0)
    dt = np.full(n, RASTER_S)
    dm = np.outer(dt, [-41.0, -119.0, -264.0]) + 1.1e-13 * rng.uniform(-1.0, 1.0, (n, 3))
    positions = rng.uniform(-0.128, 0.128, (k, 3))
    df = rng.uniform(-300.0, 300.0, k)
    got = pulse_rotation(nutation, dm, dt, positions, df)
    assert taken == [True]
    exact = pulse._exact(nutation, dm, dt, positions, df, None)
    assert np.abs(got.alpha - exact.alpha).max() < 1e-9
    assert np.abs(got.beta - exact.beta).max() < 1e-9
