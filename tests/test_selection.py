"""Slice selection along any axis and oblique (issue 15): a pulse played with gradients in the phantom's
plane selects a band there, not the whole object."""

from __future__ import annotations

import copy
import math

import numpy as np
import pypulseq as pp
import pytest
from scanctl.simulators.physics import Phantom, SpinSystem

from tests.pulseq_factory import default_system
from tests.test_bloch import play_all, write_and_read

FOV, N, THICKNESS = 0.128, 64, 10e-3


def square() -> Phantom:
    """A uniform square filling the grid (2 mm voxels), one tissue."""
    one = np.ones((N, N))
    return Phantom(pd=one, t1_s=one, t2_s=0.5 * one, b0_offset_hz=0 * one, voxel_size_m=(FOV / N, FOV / N, 5e-3))


def selective(tmp_path, direction: tuple[float, float], offset_m: float = 0.0, read: bool = False):
    """A 10 degree sinc pulse selecting a 10 mm band across the unit in-plane ``direction``, its rephaser,
    then an FID sample or (``read``) a read-out along x of N samples over the FOV."""
    system = default_system()
    seq = pp.Sequence(system)
    rf, gsel, _ = pp.make_sinc_pulse(flip_angle=math.radians(10), duration=2e-3, slice_thickness=THICKNESS,
                                     apodization=0.5, time_bw_product=4, delay=system.rf_dead_time,
                                     system=system, return_gz=True)
    rf.freq_offset = gsel.amplitude * offset_m
    rephase = pp.make_trapezoid(channel="z", area=-gsel.area / 2, duration=1e-3, system=system)
    pulse_grads, rephasers = [], []
    for channel, weight in zip("xy", direction, strict=True):
        if abs(weight) > 1e-12:
            g = copy.deepcopy(gsel)
            g.channel = channel
            pulse_grads.append(pp.scale_grad(g, weight))
            r = copy.deepcopy(rephase)
            r.channel = channel
            rephasers.append(pp.scale_grad(r, weight))
    seq.add_block(rf, *pulse_grads)
    if read:
        gx = pp.make_trapezoid(channel="x", flat_area=N / FOV, flat_time=N * 20e-6, system=system)
        pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system)
        x_reph = [r for r in rephasers if r.channel == "x"]
        if x_reph:
            pre = pp.make_trapezoid(channel="x", area=-gx.area / 2 + x_reph[0].area, duration=1e-3, system=system)
        seq.add_block(pre, *[r for r in rephasers if r.channel != "x"])
        seq.add_block(gx, pp.make_adc(num_samples=N, duration=gx.flat_time, delay=gx.rise_time, system=system))
    else:
        seq.add_block(*rephasers)
        seq.add_block(pp.make_adc(num_samples=1, duration=10e-6, delay=system.adc_dead_time, system=system))
    return write_and_read(seq, tmp_path, "sel")


def fid_of(tmp_path, direction) -> float:
    return float(np.abs(play_all(SpinSystem(square()), selective(tmp_path, direction))[0][0, 0]))


def test_a_band_selected_along_x_excites_its_share_of_the_object(tmp_path):
    band = fid_of(tmp_path, (1.0, 0.0))
    whole = math.sin(math.radians(10)) * N * N * (FOV / N) ** 2 * 5e-3 * 1e9  # every voxel tipped 10 degrees
    # A 10 mm band of a 128 mm square: 7.8 % (before, the pulse ignored x: the whole object, 100 %).
    assert band / whole == pytest.approx(THICKNESS / FOV, rel=0.1)


def test_an_oblique_band_through_a_square_is_longer_by_the_diagonal(tmp_path):
    along_x = fid_of(tmp_path, (1.0, 0.0))
    oblique = fid_of(tmp_path, (math.sqrt(0.5), math.sqrt(0.5)))
    along_y = fid_of(tmp_path, (0.0, 1.0))
    assert along_y == pytest.approx(along_x, rel=0.02)
    # Across the diagonal the band is √2 times as long (less its two corners: 10 mm of 181 mm).
    assert oblique / along_x == pytest.approx(math.sqrt(2) * (1 - 0.5 * THICKNESS / (FOV * math.sqrt(2))), rel=0.05)


def test_a_band_offset_along_x_shows_where_it_was_selected(tmp_path):
    """Pulseq's convention holds on every axis: freq_offset = G x selects +x; the read-out's image (an
    inverse FFT, ISMRMRD's convention) shows the band there."""
    samples = play_all(SpinSystem(square()), selective(tmp_path, (1.0, 0.0), offset_m=30e-3, read=True))[0][0]
    profile = np.abs(np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(samples))))
    x = (np.arange(N) - N // 2) * FOV / N
    centre = float((profile * x).sum() / profile.sum())
    width = float(profile.sum() / profile.max()) * FOV / N
    assert centre == pytest.approx(30e-3, abs=1e-3)
    assert width == pytest.approx(THICKNESS, rel=0.15)


def test_splitting_the_classes_mid_scan_keeps_the_phase_they_gathered():
    """Voxels of one tissue a little apart in B0 (one 5 Hz bin) dephase for 100 ms, then a pulse with an x
    gradient splits their class: the FID must go on as if each voxel had been its own class all along
    (the parts once took their own mean off-resonance while carrying the class's phase: 27 % off)."""
    from tests.test_bloch import adc_program, block_pulse, gradient, rf_program, trapezoid

    shape = (1, 16)
    b0 = np.linspace(0.0, 2.4, 16)[None, :]
    one = np.ones(shape)
    tissue = Phantom(pd=one, t1_s=one, t2_s=one, b0_offset_hz=b0, voxel_size_m=(1e-3, 1e-3, 1e-3))
    # The same voxels as 16 classes (T2 a hair apart): nothing to split, the reference.
    apart = Phantom(pd=one, t1_s=one, t2_s=one + np.arange(16)[None, :] * 1e-9, b0_offset_hz=b0,
                    voxel_size_m=(1e-3, 1e-3, 1e-3))
    g = gradient(0, 0.3, x=[trapezoid(0.1 - 0.3e-3, 5e5, flat_s=0.2e-3), trapezoid(0.1 + 0.2e-3, -5e5, flat_s=0.2e-3)])
    pulses = [block_pulse(0.0, np.pi / 2), block_pulse(0.05, 0.01), block_pulse(0.1, 0.01)]
    adc = adc_program(0, 0.3, [(0.12, 200, 500e-6, 0.0, 0.0)])
    spins = SpinSystem(tissue)
    split = spins.play(g, rf_program(0, 0.3, pulses), adc)[0][0]
    assert spins.n_classes == 16  # the x gradient during the last pulse split the one tissue class
    reference = SpinSystem(apart).play(g, rf_program(0, 0.3, pulses), adc)[0][0]
    assert np.abs(split - reference).max() < 1e-3 * np.abs(reference).max()


def test_a_wide_b0_map_widens_the_bins_instead_of_multiplying_the_classes():
    n = 64
    ramp = np.linspace(-2000.0, 2000.0, n * n).reshape(n, n)  # 4 kHz across: 800 bins of 5 Hz per tissue
    one = np.ones((n, n))
    spins = SpinSystem(Phantom(pd=one, t1_s=one, t2_s=one, b0_offset_hz=ramp, voxel_size_m=(2e-3, 2e-3, 5e-3)))
    assert 200 < spins.n_classes < 512  # 10 Hz bins: still each voxel's own off-resonance within 5 Hz
