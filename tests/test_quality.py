"""Image-quality measures (scanctl.data.quality) on images whose truth is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanctl.data.quality import (
    QualityError,
    background_mean_factor,
    contrast,
    ghosting_ratio,
    measure,
    nrmse,
    object_mask,
    snr,
)


def disk(n: int = 128, radius: float = 0.3, value: float = 100.0) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n] / n - 0.5
    return np.where(x**2 + y**2 < radius**2, value, 0.0)


def magnitude(clean: np.ndarray, sigma: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Signal in the first channel only; RSS over all channels.
    noise = rng.normal(0, sigma, (channels, 2) + clean.shape)
    re = noise[:, 0]
    re[0] += clean
    return np.sqrt((re**2 + noise[:, 1] ** 2).sum(axis=0))


@pytest.mark.parametrize("channels", [1, 8])
@settings(max_examples=10, deadline=None)
@given(sigma=st.floats(0.5, 10.0), seed=st.integers(0, 2**31 - 1))
def test_snr_recovers_the_noise_sigma(channels, sigma, seed):
    img = magnitude(disk(), sigma, channels, seed)
    got = snr(img, object_mask(disk() + 0.0), channels=channels)
    assert got == pytest.approx(100.0 / sigma, rel=0.08)


def test_background_factor_is_rayleigh_for_one_channel():
    assert background_mean_factor(1) == pytest.approx(math.sqrt(math.pi / 2))
    # Many channels: the chi mean tends to sqrt(2N - 1/2).
    assert background_mean_factor(32) == pytest.approx(math.sqrt(63.5), rel=1e-3)


def test_ghosting_ratio_measures_an_n2_ghost():
    clean = disk(radius=0.2)
    ghosted = clean + 0.08 * np.roll(clean, 64, axis=0)
    img, ghost_img = magnitude(clean, 1.0), magnitude(ghosted, 1.0)
    mask = object_mask(clean)
    assert ghosting_ratio(img, mask) < 0.005
    assert ghosting_ratio(ghost_img, mask) == pytest.approx(0.08, abs=0.01)


def test_measure_flags_what_looks_wrong():
    good = measure(magnitude(disk(), 1.0))
    assert good.flags == () and good.snr > 50
    noisy = measure(magnitude(disk(value=5.0), 2.0))
    assert any("low SNR" in f for f in noisy.flags)
    clean = disk(radius=0.2)
    ghosted = measure(magnitude(clean + 0.2 * np.roll(clean, 64, axis=0), 1.0))
    assert any("ghosting" in f for f in ghosted.flags)


def test_contrast_and_nrmse():
    a = np.zeros((16, 16), bool)
    a[:8] = True
    img = np.where(a, 3.0, 1.0)
    assert contrast(img, a, ~a) == pytest.approx(0.5)
    assert nrmse(2 * img, img) == pytest.approx(0.0, abs=1e-12)  # a global gain does not count
    assert nrmse(img + np.eye(16), img) > 0.1


@pytest.mark.parametrize("bad", [np.full((8, 8), np.nan), np.zeros((8, 8)), np.ones(8)])
def test_bad_images_are_refused(bad):
    with pytest.raises(QualityError):
        measure(bad)
