"""pypulseq's own example sequences (``write_*.py`` of pypulseq 1.5.0.post1, built as
:mod:`tests.pypulseq_examples` says) run with ``scanctl run`` and show the phantom: in place (not mirrored),
slices apart, no N/2 ghost above a stated level (issue 16). Matrices are scaled down to keep the runs short.
"""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import numpy as np
from scanctl.simulators.physics import shepp_logan

from scanctl.config import profile as profiles
from scanctl.data.rawdata import is_set, read_acquisitions
from scanctl.engine.session import run_scan
from tests import pypulseq_examples as examples

PROFILE = profiles.load()
#: The N/2 ghost: mean magnitude where the object shifted by half the FOV in y lands (outside the object),
#: less the mean over the rest of the background, as a fraction of the mean over the object. pypulseq's
#: epi_se at 32 x 32: 0.052 without line reversal, 0.003 reversed by the trajectory.
GHOST_LIMIT = 0.02


def scan(tmp_path: Path, seq, name: str) -> tuple[np.ndarray, object]:
    """Write ``seq`` as a .seq file, run it on the default (simulated) scanner, return the images and the
    raw data read back."""
    path = tmp_path / f"{name}.seq"
    seq.write(str(path))
    out = tmp_path / "out"
    report = run_scan(path, PROFILE, out)
    assert report.outcome == "completed", report.message
    return np.load(out / "image.npy"), read_acquisitions(out / "raw.h5")


def truth(n: int, fov_m: float) -> np.ndarray:
    """What a perfect Cartesian scan of ``n x n`` over ``fov_m`` shows of the simulator's phantom (the
    default: 128 x 128 voxels over 0.256 m) by proton density, ``[y, x]``: the phantom's Fourier transform
    at the scan's k-space grid (s(k) = sum rho(r) exp(-2 pi i k r), voxel j at (j - 64) 2 mm), transformed
    back as the recon does — so with the scan's resolution, and folded over where the FOV is smaller than
    the phantom (pypulseq's epi: 220 mm)."""
    pd = np.squeeze(shepp_logan(128, fov_m=0.256, b0_t=PROFILE.b0_t).pd)
    r = (np.arange(128) - 64) * 0.256 / 128
    k = (np.arange(n) - n // 2) / fov_m
    e = np.exp(-2j * np.pi * np.outer(k, r))
    kspace = e @ pd @ e.T
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace)))
    return np.abs(image)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def mirrored(image: np.ndarray, axis: int) -> np.ndarray:
    """``image`` mirrored about its centre pixel ``n // 2`` (pixel j to n - j) along ``axis``."""
    n = image.shape[axis]
    return np.take(image, (n - np.arange(n)) % n, axis=axis)


def assert_in_place(image: np.ndarray, expected: np.ndarray, what: str) -> None:
    """The image shows the phantom (correlation above 0.8), better than mirrored in x or in y."""
    r = correlation(image, expected)
    ry, rx = correlation(image, mirrored(expected, 0)), correlation(image, mirrored(expected, 1))
    assert r > 0.8 and r > ry and r > rx, f"{what}: correlation {r:.3f} (mirrored in y {ry:.3f}, in x {rx:.3f})"


def ghost(image: np.ndarray, expected: np.ndarray) -> float:
    """The N/2 ghost level (see GHOST_LIMIT)."""
    inside = expected > 0.05 * expected.max()
    shifted = np.roll(inside, image.shape[0] // 2, axis=0) & ~inside
    rest = ~inside & ~shifted
    return float((image[shifted].mean() - image[rest].mean()) / image[inside].mean())


def test_epi_se_lines_are_reversed_by_the_trajectory(tmp_path):
    n = 32
    images, raw = scan(tmp_path, examples.epi_se(n), "epi_se")
    assert images.shape == (1, n, n)
    reverse = [is_set(f, ismrmrd.ACQ_IS_REVERSE) for f in raw.flags]
    assert reverse == [i % 2 == 1 for i in range(n)]  # every other line runs towards -k_x
    expected = truth(n, raw.header.fov_m[1])
    assert_in_place(images[0], expected, "epi_se")
    assert ghost(images[0], expected) < GHOST_LIMIT


def test_epi_slices_are_told_apart_by_the_excitation_frequency(tmp_path):
    n = 32
    images, raw = scan(tmp_path, examples.epi(n, n_slices=3), "epi")
    assert images.shape == (3, n, n)  # one image per slice, not the three averaged into one
    slices = np.array([a.labels["SLC"] for a in raw.acquisitions])
    assert slices.tolist() == [s for s in range(3) for _ in range(n)]  # acquired bottom to top: 0, 1, 2
    assert raw.header.limit("slice").maximum == 2
    # Each acquisition's position: the centre of its 3 mm slice along z, in mm.
    z = np.repeat([-3.0, 0.0, 3.0], n)
    np.testing.assert_allclose(raw.positions_mm, np.stack([0 * z, 0 * z, z], axis=1), atol=1e-3)
    reverse = [is_set(f, ismrmrd.ACQ_IS_REVERSE) for f in raw.flags]
    assert reverse == [i % 2 == 1 for _ in range(3) for i in range(n)]
    expected = truth(n, raw.header.fov_m[1])
    for s in range(3):  # the 2D phantom is a 10 mm slab: each slice shows it
        assert_in_place(images[s], expected, f"epi slice {s}")
        assert ghost(images[s], expected) < GHOST_LIMIT
