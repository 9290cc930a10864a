"""scanctl.sequence.waveforms: physical gradients (ROTATIONS applied), k-space and moments."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scanctl.config import profile as profiles
from scanctl.sequence import checks, waveforms
from scanctl.sequence.pulseq_read import parse
from tests.seqtext import pulseq_text

# Two identical x trapezoids (200 kHz/m); the second block is rotated 90° about z (w=cos45°, z=sin45°),
# so it plays on +y; the third is rotated 30° about z: x and y both play.
TRAPS = [(1, 200000, 100, 300, 100, 0)]
ROT = (
    "\n[EXTENSIONS]\n1 1 1 0\n2 1 2 0\n"
    "\nextension ROTATIONS 1\n"
    f"1 {np.cos(np.pi / 4):.9f} 0 0 {np.sin(np.pi / 4):.9f}\n"
    f"2 {np.cos(np.pi / 12):.9f} 0 0 {np.sin(np.pi / 12):.9f}\n"
)
BLOCKS = [(1, 50, 0, 1, 0, 0, 0, 0), (2, 50, 0, 1, 0, 0, 0, 1), (3, 50, 0, 1, 0, 0, 0, 2)]


@pytest.fixture(scope="module")
def rotated():
    text = pulseq_text(BLOCKS, traps=TRAPS, extra=ROT, definitions={"RequiredExtensions": "ROTATIONS"})
    return parse(text.encode(), path="rot.seq")


def test_rotations_move_the_gradient_to_the_physical_axes(rotated):
    mid = rotated.block_start_s[:-1] + 250e-6  # the flat top of each block
    g = np.array([waveforms.axis_waveform(rotated, a).sample(mid) for a in range(3)])
    np.testing.assert_allclose(g[:, 0], [2e5, 0, 0], atol=1e-3)
    np.testing.assert_allclose(g[:, 1], [0, 2e5, 0], atol=1e-3)
    np.testing.assert_allclose(g[:, 2], [2e5 * np.cos(np.pi / 6), 2e5 * np.sin(np.pi / 6), 0], atol=1e-3)
    # k-space follows: the rotated moments add on y.
    k = waveforms.kspace_at(rotated, np.array([rotated.duration_s]))
    area = 2e5 * 400e-6
    np.testing.assert_allclose(k[:, 0], [area * (1 + np.cos(np.pi / 6)), area * (1 + np.sin(np.pi / 6)), 0],
                               rtol=1e-9)


def test_checks_use_the_physical_axes(rotated):
    default = profiles.load()
    # 4 mT/m on y (170 kHz/m) is broken only by the rotated blocks; x at 40 mT/m is fine.
    tight_y = dataclasses.replace(default, gradient=profiles.GradientLimits(
        max_amplitude_t_per_m=(0.04, 0.004, 0.04), max_slew_t_per_m_per_s=(200, 200, 200)))
    report = checks.check(rotated, tight_y)
    assert report.violation_counts == {"gradient_amplitude": 1}
    assert report.violations[0].block == 2 and report.violations[0].value == pytest.approx(2e5)
    assert report.max_gradient_hz_per_m["y"] == pytest.approx(2e5)
    assert checks.check(rotated, default).ok
