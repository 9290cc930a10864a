"""scanctl.simulators.physics: the Bloch simulator against closed forms, an EPG reference and a
pypulseq-written RF-spoiled gradient echo on the Shepp–Logan phantom."""

from __future__ import annotations

import math

import numpy as np
import pypulseq as pp
import pytest
from scanctl.simulators.physics import Phantom, SpinSystem, shepp_logan
from scanctl.simulators.physics import pulse as pulse_mod
from scanctl.simulators.physics.pulse import Rotation, compose, pulse_rotation, sample_rotations

from scanctl.engine.segments import compile_segments
from scanctl.errors import ConfigError
from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram
from scanctl.sequence import pulseq_read
from tests.pulseq_factory import default_system

LARMOR_HZ = 42.576e6 * 3.0
EMPTY = np.zeros(0)

# ----------------------------------------------------------------------------------------------------------
# Hand-made programs
# ----------------------------------------------------------------------------------------------------------


def trapezoid(t_start: float, amplitude: float, flat_s: float = 1e-3, ramp_s: float = 1e-4):
    t = t_start + np.array([0.0, ramp_s, ramp_s + flat_s, 2 * ramp_s + flat_s])
    return t, np.array([0.0, amplitude, amplitude, 0.0])


def gradient(t0: float, t1: float, **axes: list[tuple[np.ndarray, np.ndarray]]) -> GradientProgram:
    """``axes``: per axis name, a list of (t, g) breakpoint pieces in time order."""
    ts, gs = [], []
    for name in "xyz":
        pieces = axes.get(name, [])
        ts.append(np.concatenate([p[0] for p in pieces]) if pieces else EMPTY)
        gs.append(np.concatenate([p[1] for p in pieces]) if pieces else EMPTY)
    return GradientProgram(t0, t1, tuple(ts), tuple(gs))


def block_pulse(start: float, flip_rad: float, phase: float = 0.0, dur: float = 100e-6):
    n = int(round(dur / 1e-6))
    return start, np.full(n, flip_rad / (2 * np.pi * dur)) * np.exp(1j * phase), 0.0


def rf_program(t0: float, t1: float, pulses, raster: float = 1e-6) -> RFProgram:
    """``pulses``: list of (start, b1 samples, carrier offset)."""
    starts = np.array([p[0] for p in pulses], float)
    b1 = [np.asarray(p[1], complex) for p in pulses]
    offsets = np.concatenate(([0], np.cumsum([b.size for b in b1]))).astype(np.int64)
    t = [s + (np.arange(b.size) + 0.5) * raster for s, b in zip(starts, b1, strict=True)]
    n = len(pulses)
    return RFProgram(t0, t1, raster, starts, offsets, np.concatenate(t) if t else EMPTY,
                     np.concatenate(b1) if b1 else np.zeros(0, complex), np.array([p[2] for p in pulses], float),
                     np.full(n, ord("e"), np.uint8), np.arange(n))


def adc_program(t0: float, t1: float, windows) -> ADCProgram:
    """``windows``: list of (start, samples, dwell, freq_hz, phase_rad)."""
    w = np.array(windows, float).reshape(-1, 5)
    n = w.shape[0]
    return ADCProgram(t0, t1, w[:, 0], w[:, 1].astype(np.int64), w[:, 2], w[:, 3], w[:, 4], np.arange(n),
                      np.arange(n), {})


def single_voxel(t1=1.0, t2=0.1, df=0.0, shape=(1, 1), voxel=(1e-3, 1e-3, 1e-3)) -> Phantom:
    one = np.ones(shape)
    return Phantom(pd=one, t1_s=t1 * one, t2_s=t2 * one, b0_offset_hz=df * one, voxel_size_m=voxel)


def rf_spoil_phases(n: int, inc_deg: float = 117.0) -> np.ndarray:
    k = np.arange(n)
    return np.deg2rad(inc_deg * k * (k + 1) / 2 % 360)


def spoiled_gre(spins: SpinSystem, flip_deg: float, tr: float, te: float, n_tr: int, per_segment: int = 25,
                spoil_axis: str = "x", spoil_area: float = 5e3) -> np.ndarray:
    """RF-spoiled gradient echo of block pulses, one sample at TE per TR (ADC phase = RF phase)."""
    phases = rf_spoil_phases(n_tr)
    out = []
    for first in range(0, n_tr, per_segment):
        trs = range(first, min(n_tr, first + per_segment))
        t0, t1 = first * tr, trs[-1] * tr + tr
        pulses = [block_pulse(n * tr, np.deg2rad(flip_deg), phases[n]) for n in trs]
        spoilers = [trapezoid(n * tr + te + 0.2e-3, spoil_area / 1.1e-3) for n in trs]
        g = gradient(t0, t1, **{spoil_axis: spoilers})
        windows = [(n * tr + 50e-6 + te - 5e-6, 1, 10e-6, 0.0, phases[n]) for n in trs]
        out += [d[0, 0] for d in spins.play(g, rf_program(t0, t1, pulses), adc_program(t0, t1, windows))]
    return np.array(out)


def ernst(flip_rad: float, tr: float, t1: float) -> float:
    e1 = math.exp(-tr / t1)
    return math.sin(flip_rad) * (1 - e1) / (1 - e1 * math.cos(flip_rad))


def epg_spoiled_gre(flip_rad: float, tr: float, te: float, t1: float, t2: float, n_tr: int, states: int = 1500):
    """Extended phase graph (Weigel 2015) of the same RF-spoiled GRE, one dephasing unit per TR: the
    independent reference. Returns the echo of every TR, demodulated with the RF phase."""
    f = np.zeros((3, states), complex)
    f[2, 0] = 1.0
    e1, e2 = math.exp(-tr / t1), math.exp(-tr / t2)
    out = []
    for p in rf_spoil_phases(n_tr):
        c, s, sa = math.cos(flip_rad / 2) ** 2, math.sin(flip_rad / 2) ** 2, math.sin(flip_rad)
        t = np.array([[c, np.exp(2j * p) * s, -1j * np.exp(1j * p) * sa],
                      [np.exp(-2j * p) * s, c, 1j * np.exp(-1j * p) * sa],
                      [-0.5j * np.exp(-1j * p) * sa, 0.5j * np.exp(1j * p) * sa, math.cos(flip_rad)]])
        f = t @ f
        out.append(f[0, 0] * np.exp(-1j * p) * math.exp(-te / t2))
        f[:2] *= e2
        f[2] *= e1
        f[2, 0] += 1 - e1
        f[0] = np.roll(f[0], 1)
        f[1] = np.roll(f[1], -1)
        f[1, -1] = 0
        f[0, 0] = np.conj(f[1, 0])
    return np.array(out)


# ----------------------------------------------------------------------------------------------------------
# Rotations
# ----------------------------------------------------------------------------------------------------------


def rodrigues(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_hard_pulse_rotation_is_right_handed_about_b1_and_frequency():
    rng = np.random.default_rng(1)
    for _ in range(20):
        b = complex(*rng.normal(size=2))
        theta = float(rng.normal())
        alpha, beta = sample_rotations(np.array([b]), np.array([theta]))
        vec = np.array([b.real, b.imag, theta])
        expected = rodrigues(vec / np.linalg.norm(vec), float(np.linalg.norm(vec)))
        assert np.allclose(Rotation(alpha, beta).matrix()[0], expected, atol=1e-12)
    # Composition applies sample 0 first.
    b = rng.normal(size=5) + 1j * rng.normal(size=5)
    th = rng.normal(size=5)
    alpha, beta = sample_rotations(b, th)
    total = np.eye(3)
    for i in range(5):
        total = Rotation(alpha[i:i + 1], beta[i:i + 1]).matrix()[0] @ total
    a, bb = compose(alpha, beta)
    assert np.allclose(Rotation(np.array([a]), np.array([bb])).matrix()[0], total, atol=1e-12)



@pytest.mark.parametrize("uniform", [True, False])
def test_a_hard_pulse_under_a_constant_gradient_is_one_rotation(monkeypatch: pytest.MonkeyPatch, uniform: bool):
    """500 equal intervals (a hard pulse under a static gradient, the moments equal to float rounding) are one
    rotation by 500 times the angle: composed as one interval, equal to the product of the 500 (which a pulse
    whose intervals differ still is)."""
    rng = np.random.default_rng(7)
    n, k = 500, 300
    nutation = np.full(n, 2 * np.pi * 500.0 * 1e-6 * np.exp(0.3j))
    dm = np.tile([5e-3, 5e-3, 5e-3], (n, 1)) * (1 + 1e-15 * rng.standard_normal((n, 3)))
    dt = np.full(n, 1e-6)
    if not uniform:
        nutation = nutation * np.hanning(n + 2)[1:-1]
    positions = rng.uniform(-0.128, 0.128, (k, 3))
    df = rng.uniform(-300.0, 300.0, k)
    theta = 2 * np.pi * (dm @ positions.T + np.outer(dt, df))
    want = compose(*sample_rotations(nutation[:, None], theta))
    lengths = []
    monkeypatch.setattr(pulse_mod, "compose", lambda a, b: (lengths.append(a.shape[0]), compose(a, b))[1])
    got = pulse_rotation(nutation, dm, dt, positions, df)
    assert lengths == ([1] if uniform else [n])
    assert np.abs(got.alpha - want[0]).max() < 1e-12 and np.abs(got.beta - want[1]).max() < 1e-12

# ----------------------------------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("map_hz", "global_hz"), [(30.0, 0.0), (0.0, -55.0), (20.0, 12.5)])
def test_fid_frequency_is_the_off_resonance_and_decays_with_t2(map_hz, global_hz):
    spins = SpinSystem(single_voxel(t2=0.05, df=map_hz), b0_offset_hz=global_hz)
    dwell, n = 50e-6, 1000
    out = spins.play(gradient(0, 0.1), rf_program(0, 0.1, [block_pulse(0.0, np.pi / 2)]),
                     adc_program(0, 0.1, [(200e-6, n, dwell, 0.0, 0.0)]))[0][0]
    t = 200e-6 + (np.arange(n) + 0.5) * dwell - 50e-6  # from the pulse centre
    slope = np.polyfit(t, np.unwrap(np.angle(out)), 1)[0]
    # Protons precess as exp(-iωt): an off-resonance +Δf turns the demodulated FID as exp(-2πiΔf t).
    assert slope / (2 * np.pi) == pytest.approx(-(map_hz + global_hz), abs=1e-3)
    assert np.abs(out) == pytest.approx(np.exp(-t / 0.05), rel=1e-5)  # 1 mm³ of proton density 1: 1
    # A 90 degree pulse of phase 0: at t = 0 the signal is +i (the mirror of Pulseq's -i, module doc).
    assert np.angle(out[0] * np.exp(2j * np.pi * (map_hz + global_hz) * t[0])) == pytest.approx(np.pi / 2, abs=1e-2)


def test_adc_frequency_and_phase_demodulate():
    spins = SpinSystem(single_voxel(t2=1.0, df=40.0))
    out = spins.play(gradient(0, 0.05), rf_program(0, 0.05, [block_pulse(0.0, np.pi / 2)]),
                     adc_program(0, 0.05, [(1e-3, 200, 100e-6, 40.0, -np.pi / 2)]))[0][0]
    # 40 Hz demodulated away and the excitation's phase rotated to 1: the phase stays at what 40 Hz
    # gathered from the pulse centre to the window start (the ADC frequency offset's phase starts with
    # the window), turning as exp(-iωt).
    phase = np.angle(out)
    assert np.ptp(phase) < 1e-5
    assert phase.mean() == pytest.approx(-2 * np.pi * 40.0 * (1e-3 - 50e-6), abs=5e-3)


@pytest.mark.parametrize("te", [20e-3, 40e-3, 80e-3])
def test_spin_echo_amplitude_follows_t2(te):
    t2 = 0.05
    voxel = (4e-3, 4e-3, 4e-3)
    spins = SpinSystem(single_voxel(t1=1.0, t2=t2, df=37.0, voxel=voxel))  # off-resonance: refocused
    crush = 3.6e6  # Hz/m (85 mT/m) for 1.1 ms: 4 cycles per 4 mm voxel, far outside its band
    g = gradient(0, te + 10e-3, x=[trapezoid(te / 2 - 1.5e-3, crush), trapezoid(te / 2 + 0.5e-3, crush)])
    rf = rf_program(0, te + 10e-3, [block_pulse(-50e-6, np.pi / 2), block_pulse(te / 2 - 50e-6, np.pi, np.pi / 2)])
    out = spins.play(g, rf, adc_program(0, te + 10e-3, [(te - 5e-6, 1, 10e-6, 0.0, 0.0)]))[0][0, 0]
    assert abs(out) == pytest.approx(64.0 * math.exp(-te / t2), rel=2e-3)  # a 64 mm³ voxel
    # Without the refocusing pulse the crushers leave nothing.
    spins.reset()
    rf = rf_program(0, te + 10e-3, [block_pulse(-50e-6, np.pi / 2)])
    out = spins.play(g, rf, adc_program(0, te + 10e-3, [(te - 5e-6, 1, 10e-6, 0.0, 0.0)]))[0][0, 0]
    assert abs(out) < 1e-9


@pytest.mark.parametrize(("flip_deg", "tr"), [(5, 10e-3), (10, 10e-3), (20, 10e-3), (35, 10e-3), (60, 10e-3),
                                              (15, 5e-3), (15, 20e-3)])
def test_spoiled_gre_steady_state_follows_ernst(flip_deg, tr):
    # T2 = 20 ms: 117 degree RF spoiling is then close to ideal (the EPG says within 1.7% here; with
    # longer T2 it is genuinely off by several %, see the EPG test below).
    t1, t2, te = 1.0, 0.02, 2e-3
    spins = SpinSystem(single_voxel(t1=t1, t2=t2))
    t1_eff_trs = 1 / (1 - math.exp(-tr / t1) * math.cos(math.radians(flip_deg)))
    signal = np.abs(spoiled_gre(spins, flip_deg, tr, te, min(int(6 * t1_eff_trs) + 150, 1200)))
    expected = ernst(math.radians(flip_deg), tr, t1) * math.exp(-te / t2)
    assert signal[-20:].mean() == pytest.approx(expected, rel=0.025)
    assert signal[-20:].std() < 0.01 * expected  # steady: no spoiling oscillation left


@pytest.mark.parametrize(("t2", "axis"), [(2.0, "x"), (0.5, "z")])
def test_spoiled_gre_matches_the_extended_phase_graph_for_long_t2(t2, axis):
    # CSF-like T2: RF spoiling is then visibly imperfect (Ernst is off by ~10%) and echo pathways
    # live for hundreds of TRs; the phase graph follows the EPG to the last digit.
    flip, tr, te, n_tr = math.radians(30), 10e-3, 2e-3, 300
    voxel = (1e-3, 1e-3, 1e-3)
    spins = SpinSystem(single_voxel(t1=1.0, t2=t2, voxel=voxel))
    area = 2.5 / voxel[0] if axis == "x" else 4.0 / voxel[2]
    signal = spoiled_gre(spins, 30, tr, te, n_tr, spoil_axis=axis, spoil_area=area)
    reference = np.conj(epg_spoiled_gre(flip, tr, te, 1.0, t2, n_tr))  # the EPG runs in Pulseq's mirror
    assert np.abs(signal - reference).max() < 1e-4
    if t2 == 2.0:
        assert abs(np.abs(signal[-50:]).mean() / (ernst(flip, tr, 1.0) * math.exp(-te / t2)) - 1) > 0.05


def test_state_persists_across_segments_of_any_size():
    spins = SpinSystem(single_voxel(t1=0.3, t2=0.05))
    one = spoiled_gre(spins, 20, 10e-3, 3e-3, 60, per_segment=60)
    spins.reset()
    many = spoiled_gre(spins, 20, 10e-3, 3e-3, 60, per_segment=7)
    assert np.allclose(one, many, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Pulseq sequences
# ----------------------------------------------------------------------------------------------------------


def write_and_read(seq: pp.Sequence, tmp_path, name: str):
    path = tmp_path / f"{name}.seq"
    seq.write(str(path))
    return pulseq_read.read(path)


def play_all(spins: SpinSystem, seq, max_duration_s: float = 0.25) -> list[np.ndarray]:
    out = []
    for segment in compile_segments(seq, larmor_hz=LARMOR_HZ, max_duration_s=max_duration_s):
        out += spins.play(segment.gradient, segment.rf, segment.adc)
    return out


def gre_with_dummies(n: int, flip_deg: float, tr: float, dummies: int, fov: float = 0.256,
                     slice_thickness: float = 5e-3) -> pp.Sequence:
    """pypulseq's write_gre: sinc excitation, 117 degree RF spoiling, read and slice spoilers."""
    system = default_system()
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=math.radians(flip_deg), duration=2e-3, slice_thickness=slice_thickness,
                                   apodization=0.5, time_bw_product=4, delay=system.rf_dead_time, system=system,
                                   return_gz=True, use="excitation")
    dk = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * dk, flat_time=n * 40e-6, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system)
    gx_spoil = pp.make_trapezoid(channel="x", area=2 * n * dk, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=system)
    fill = tr - pp.calc_duration(gz) - pp.calc_duration(gx_pre) - pp.calc_duration(gx)
    fill = math.ceil(fill / system.grad_raster_time) * system.grad_raster_time
    phases = rf_spoil_phases(dummies + n)
    for i in range(-dummies, n):
        rf.phase_offset = adc.phase_offset = phases[i + dummies]
        area_y = (i - n / 2) * dk if i >= 0 else 0.0
        gy_pre = pp.make_trapezoid(channel="y", area=area_y, duration=1e-3, system=system)
        seq.add_block(rf, gz)
        seq.add_block(gx_pre, gy_pre, gz_reph)
        seq.add_block(gx, adc) if i >= 0 else seq.add_block(gx)
        seq.add_block(gx_spoil, pp.scale_grad(gy_pre, -1), gz_spoil, pp.make_delay(fill))
    seq.set_definition("FOV", [fov, fov, slice_thickness])
    te = pp.calc_duration(gz) - rf.delay - rf.shape_dur / 2 + pp.calc_duration(gx_pre) + gx.rise_time + gx.flat_time / 2
    seq.set_definition("TE", te)
    return seq


def recon(kspace: np.ndarray, voxel_mm3: float) -> np.ndarray:
    """Cartesian 2D image: an inverse FFT (the signal is Σ ρ exp(-2πi k·r)), in proton density."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace))) / voxel_mm3


@pytest.fixture(scope="module")
def gre_image(tmp_path_factory):
    # 10 degrees (the usual FLASH flip): at 30 degrees CSF's 2 s T2 makes even ideal 117 degree RF
    # spoiling oscillate by ~15% from TR to TR (see the EPG test), which ghosts -- physics, not a bug.
    n, flip, tr = 32, 10.0, 10e-3
    built = gre_with_dummies(n, flip, tr, dummies=400)  # ~5 T1 of the slice flanks: steady state
    seq = write_and_read(built, tmp_path_factory.mktemp("gre"), "gre")
    phantom = shepp_logan(n)
    spins = SpinSystem(phantom)
    kspace = np.concatenate(play_all(spins, seq), axis=0)
    return phantom, recon(kspace, float(np.prod(phantom.voxel_size_m)) * 1e9), (flip, tr, built.get_definition("TE"))


def test_rf_spoiled_gre_image_shows_the_steady_state_contrast(gre_image):
    phantom, image, (flip, tr, te) = gre_image
    mag = np.abs(image)
    inside = phantom.pd > 0
    t1 = np.where(inside, phantom.t1_s, 1.0)
    e1 = np.exp(-tr / t1)
    a = np.radians(flip)
    expected = np.where(inside, phantom.pd * np.sin(a) * (1 - e1) / (1 - e1 * np.cos(a)), 0)
    assert np.corrcoef(mag.ravel(), expected.ravel())[0, 1] > 0.9
    # Orientation: the phantom is not flipped (a mirrored image correlates worse).
    assert np.corrcoef(mag.ravel(), expected.ravel())[0, 1] > np.corrcoef(mag[::-1].ravel(), expected.ravel())[0, 1]
    # Tissue contrast: white matter / grey matter as the Ernst equation says, averaged over the slice
    # profile (the sinc pulse tips less than 10 degrees in the slice's flanks, where the contrast flips).
    flips = slice_profile_flips(flip, tr)
    wm = np.isclose(phantom.t1_s, 0.583 * 3**0.382)
    gm = np.isclose(phantom.t1_s, 0.857 * 3**0.376)

    def tissue(mask):
        t1, t2 = phantom.t1_s[mask][0], phantom.t2_s[mask][0]
        e1 = math.exp(-tr / t1)
        ernst_z = np.sin(flips) * (1 - e1) / (1 - e1 * np.cos(flips))
        return phantom.pd[mask][0] * np.mean(ernst_z) * math.exp(-te / t2)

    assert mag[wm].mean() / mag[gm].mean() == pytest.approx(tissue(wm) / tissue(gm), rel=0.02)


def slice_profile_flips(flip_deg: float, tr: float, slab: float = 10e-3) -> np.ndarray:
    """The flip angle through the slab of the test GRE's sinc pulse, small-tip (Fourier) approximation:
    an independent estimate of the slice profile."""
    system = default_system()
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=math.radians(flip_deg), duration=2e-3, slice_thickness=5e-3,
                                   apodization=0.5, time_bw_product=4, delay=system.rf_dead_time, system=system,
                                   return_gz=True)
    z = (np.arange(256) + 0.5) / 256 * slab - slab / 2
    t = rf.t - rf.t.mean()
    dt = system.rf_raster_time
    return 2 * np.pi * np.abs(np.exp(2j * np.pi * gz.amplitude * np.outer(z, t)) @ (rf.signal * dt))


def test_rf_spoiled_gre_image_has_no_spoiling_artefacts(gre_image):
    phantom, image, _ = gre_image
    mag = np.abs(image)
    inside = phantom.pd > 0
    # Background: no ghosts (an unspoiled or badly simulated sequence puts coherent echoes there).
    grown = inside.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            grown |= np.roll(inside, shift, axis=axis)
    assert mag[~grown].mean() < 0.01 * mag[inside].mean()
    # Flat tissue: grey matter is uniform (no stripes across phase-encode lines).
    gm = np.isclose(phantom.t1_s, 0.857 * 3**0.376)
    core = gm & np.roll(gm, 1, 0) & np.roll(gm, -1, 0) & np.roll(gm, 1, 1) & np.roll(gm, -1, 1)
    assert mag[core].std() < 0.03 * mag[core].mean()


def test_slice_profile_excites_the_slice_thickness(tmp_path):
    system = default_system()
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=math.radians(5), duration=3e-3, slice_thickness=4e-3,
                                   apodization=0.5, time_bw_product=6, delay=system.rf_dead_time, system=system,
                                   return_gz=True)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system)
    adc = pp.make_adc(num_samples=8, duration=80e-6, delay=system.adc_dead_time, system=system)
    seq.add_block(rf, gz)
    seq.add_block(gz_reph)
    seq.add_block(adc)
    offset = pp.make_sinc_pulse(flip_angle=math.radians(5), duration=3e-3, slice_thickness=4e-3, apodization=0.5,
                                time_bw_product=6, delay=system.rf_dead_time, system=system, return_gz=True)
    rf2, gz2, _ = offset
    rf2.freq_offset = gz2.amplitude * 20e-3  # a slice 20 mm away: outside the 16 mm slab
    seq.add_block(pp.make_delay(5.0))
    seq.add_block(rf2, gz2)
    seq.add_block(gz_reph)
    seq.add_block(adc)
    parsed = write_and_read(seq, tmp_path, "slice")
    slab = 16e-3
    one = np.ones((1, 1))
    phantom = Phantom(pd=one, t1_s=0.2 * one, t2_s=10.0 * one, b0_offset_hz=0 * one, voxel_size_m=(1e-3, 1e-3, slab))
    first, second = play_all(SpinSystem(phantom, isochromats=64), parsed, max_duration_s=10.0)
    # Small flip: the signal is sin(flip) x the excited volume (1 x 1 x 4 mm³), in phase through the slice.
    assert np.abs(first[0]).mean() == pytest.approx(math.sin(math.radians(5)) * 4.0, rel=0.03)
    assert np.abs(second[0]).max() < 1e-3 * np.abs(first[0]).mean()


# ----------------------------------------------------------------------------------------------------------
# Options, noise
# ----------------------------------------------------------------------------------------------------------


def test_noise_is_seeded_and_has_the_given_deviation_at_10_us():
    phantom = single_voxel()
    g, rf = gradient(0, 0.1), rf_program(0, 0.1, [])
    adc = adc_program(0, 0.1, [(1e-3, 20000, 10e-6, 0.0, 0.0)])
    spins = SpinSystem(phantom, noise_std=0.5, seed=7)
    first = spins.play(g, rf, adc)[0]
    assert first.dtype == np.complex64 and first.shape == (1, 20000)
    assert np.std(first) == pytest.approx(0.5, rel=0.03)
    assert np.std(first.real) == pytest.approx(0.5 / math.sqrt(2), rel=0.03)
    spins.reset()
    assert np.array_equal(spins.play(g, rf, adc)[0], first)


@pytest.mark.parametrize("dwell", [2.5e-6, 40e-6])
def test_noise_scales_as_one_over_the_square_root_of_the_dwell(dwell):
    """White receiver noise: a four times longer dwell (a quarter of the bandwidth) halves σ."""
    g, rf = gradient(0, 1.0), rf_program(0, 1.0, [])
    spins = SpinSystem(single_voxel(), noise_std=0.5, seed=3)
    data = spins.play(g, rf, adc_program(0, 1.0, [(1e-3, 20000, dwell, 0.0, 0.0)]))[0]
    assert np.std(data) == pytest.approx(0.5 * math.sqrt(10e-6 / dwell), rel=0.03)


@pytest.mark.parametrize("n", [32, 64, 128])
def test_the_signal_of_an_object_does_not_depend_on_its_phantom_grid(n):
    """An FID of the whole Shepp–Logan object: the same object on a coarser or finer grid gives the same
    signal (the voxel volume weights each voxel), to the gridding of its edges."""
    spins = SpinSystem(shepp_logan(n))
    out = spins.play(gradient(0, 0.01), rf_program(0, 0.01, [block_pulse(0.0, np.pi / 2)]),
                     adc_program(0, 0.01, [(200e-6, 1, 10e-6, 0.0, 0.0)]))[0][0, 0]
    reference = shepp_logan(256)
    expected = float((reference.pd * np.exp(-(200e-6 - 45e-6) / np.where(reference.pd > 0, reference.t2_s, 1))).sum()
                     * np.prod(reference.voxel_size_m) * 1e9)
    assert abs(out) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"isochromats": 0}, "isochromats"), ({"noise_std": -1.0}, "noise_std"), ({"b0_offset_hz": math.nan}, "b0"),
    ({"tolerance": 0.0}, "tolerance"),
])
def test_invalid_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SpinSystem(single_voxel(), **kwargs)


def test_tissue_classes_make_work_independent_of_the_matrix():
    small, large = SpinSystem(shepp_logan(32)), SpinSystem(shepp_logan(128))
    assert small.n_classes == large.n_classes == 6
    assert large.n_spins == 32 * int((shepp_logan(128).pd > 0).sum())


def test_a_scans_data_do_not_depend_on_the_scans_before_it(tmp_path):
    """One simulator, kept between scans as the control server keeps it: gre_2d after another protocol
    gives exactly the data of gre_2d on a fresh one (a read-out phasor cached from an earlier scan for a
    moment within 1e-6 made them differ by up to 6e-8, relative)."""
    from pathlib import Path

    from scanctl.config import profile as profiles
    from scanctl.engine.executor import Scanner
    from scanctl.engine.run import load_source, place_scene, scene_for

    profile = profiles.load()
    gre = Path(__file__).parents[1] / "protocols" / "gre_2d.toml"
    nearby = tmp_path / "gre_nearby.toml"  # read-out moments within 1e-6 of gre_2d's, not equal
    nearby.write_text(gre.read_text().replace("fov_m = 0.256", "fov_m = 0.25600001"))

    def scan(scanner: Scanner, path: Path) -> np.ndarray:
        seq, _ = load_source(path, profile)
        scanner.prepare(seq)
        got: list[np.ndarray] = []
        assert scanner.run(on_acquisitions=lambda batch: got.extend(a.data for a in batch)).outcome == "completed"
        return np.array(got)

    seq, protocol = load_source(gre, profile)
    scanners = [Scanner.from_profile(profile) for _ in range(2)]
    for scanner in scanners:
        scanner.connect()
        assert place_scene(scanner.rf, scene_for(seq, protocol))
    fresh = scan(scanners[0], gre)
    scan(scanners[1], nearby)
    assert np.array_equal(scan(scanners[1], gre), fresh)
    for scanner in scanners:
        scanner.close()


def test_states_that_land_on_one_key_are_summed_not_overwritten():
    """Two transverse states a hair apart, on either side of a rounding boundary, move onto one quantum:
    an RF rotation must merge them into one state holding the sum of both (issue 15's CSF contrast bug)."""
    from scanctl.simulators.physics.graph import MOMENT_QUANTUM, PhaseGraph

    g = PhaseGraph(1, 1)
    g.f_k = np.array([[0.49 * MOMENT_QUANTUM, 0, 0], [0.51 * MOMENT_QUANTUM, 0, 0]])
    g.f_tau = np.zeros(2)
    g.f = np.array([[[0.3 + 0j]], [[0.2j]]])
    g.evolve(np.array([0.02 * MOMENT_QUANTUM, 0, 0]), 0.0, np.ones(1, complex), np.ones(1))  # 0.51 and 0.53
    identity = (np.ones((1, 1), complex), np.zeros((1, 1), complex), np.zeros((1, 1), complex),
                np.zeros((1, 1), complex), np.ones((1, 1)))
    g.rotate(*identity)
    assert g.f.shape[0] == 1
    assert g.f[0, 0, 0] == pytest.approx(0.3 + 0.2j)
    assert g.z[0, 0, 0] == pytest.approx(1.0)


def test_a_pypulseq_block_pulse_with_a_time_shape_tips_90_degrees(tmp_path):
    """pypulseq writes a block pulse as 2 samples and a time shape: it must play as the 0.5 ms waveform
    those describe (it played as two 1 µs samples: 0.18 degrees)."""
    system = default_system()
    seq = pp.Sequence(system)
    rf = pp.make_block_pulse(flip_angle=math.pi / 2, duration=0.5e-3, delay=system.rf_dead_time, system=system)
    assert rf.signal.size == 2
    seq.add_block(rf)
    seq.add_block(pp.make_adc(num_samples=4, duration=40e-6, delay=system.adc_dead_time, system=system))
    parsed = write_and_read(seq, tmp_path, "block")
    out = play_all(SpinSystem(single_voxel(t1=10.0, t2=10.0)), parsed)[0]
    assert np.abs(out) == pytest.approx(1.0, abs=1e-3)


def fid(spins: SpinSystem, n: int = 400, dwell: float = 50e-6, freq: float = 0.0, pulse=None) -> tuple:
    start, b1, carrier = pulse if pulse is not None else block_pulse(0.0, np.pi / 2)
    end = start + b1.size * 1e-6
    out = spins.play(gradient(0, 0.1), rf_program(0, 0.1, [(start, b1, carrier)]),
                     adc_program(0, 0.1, [(end + 100e-6, n, dwell, freq, 0.0)]))[0][0]
    t = end + 100e-6 + (np.arange(n) + 0.5) * dwell - 0.5 * (start + end)  # from the pulse centre
    return t, out


def test_the_fid_decays_with_t2_star_when_the_phantom_has_t2_prime():
    t2, t2p = 0.08, 0.02
    one = np.ones((1, 1))
    phantom = Phantom(pd=one, t1_s=one, t2_s=t2 * one, b0_offset_hz=0 * one, voxel_size_m=(1e-3, 1e-3, 1e-3),
                      t2prime_s=t2p * one)
    t, out = fid(SpinSystem(phantom))
    assert np.abs(out) == pytest.approx(np.exp(-t / t2 - t / t2p), rel=1e-4)


def test_a_spin_echo_refocuses_t2_prime_but_not_t2():
    t2, t2p, te = 0.08, 0.01, 0.04
    one = np.ones((1, 1))
    phantom = Phantom(pd=one, t1_s=one, t2_s=t2 * one, b0_offset_hz=0 * one, voxel_size_m=(1e-3, 1e-3, 1e-3),
                      t2prime_s=t2p * one)
    spins = SpinSystem(phantom)
    rf = rf_program(0, 0.1, [block_pulse(-50e-6, np.pi / 2), block_pulse(te / 2 - 50e-6, np.pi, np.pi / 2)])
    offsets = np.array([-4e-3, 0.0, 4e-3])
    adc = adc_program(0, 0.1, [(te + d - 5e-6, 1, 10e-6, 0.0, 0.0) for d in offsets])
    out = np.array([w[0, 0] for w in spins.play(gradient(0, 0.1), rf, adc)])
    expected = np.exp(-(te + offsets) / t2 - np.abs(offsets) / t2p)
    assert np.abs(out) == pytest.approx(expected, rel=2e-3)


def test_each_voxel_sees_its_own_off_resonance_during_rf():
    """Two voxels of one tissue at +3 kHz and -3 kHz; a 1 ms 90 degree block pulse with its carrier at
    +3 kHz tips the first and (6 kHz off resonance) hardly touches the second. With the tissue's mean
    off-resonance (0 Hz) used during the pulse both were 3 kHz off and barely tipped."""
    shape = (1, 2)
    phantom = Phantom(pd=np.ones(shape), t1_s=np.ones(shape), t2_s=np.ones(shape),
                      b0_offset_hz=np.array([[3000.0, -3000.0]]), voxel_size_m=(1e-3, 1e-3, 1e-3))
    start, b1, _ = block_pulse(0.0, np.pi / 2, dur=1e-3)
    t, out = fid(SpinSystem(phantom), n=600, dwell=10e-6, freq=3000.0, pulse=(start, b1, 3000.0))
    # The +3 kHz voxel is demodulated to DC; the other turns at 6 kHz and averages out over 6 ms.
    assert abs(out.mean()) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_states_a_rounding_error_apart_on_a_half_quantum_are_merged(axis):
    """Moments on a lattice of 1/64 mm (a 256 mm field of view: 15.625 /m) sit on half-quanta of a 1e-3 /m
    rounding, so two copies of one moment a float rounding apart rounded to two keys and never merged:
    se_2d kept 7337 transverse states of which 1334 were such twins (issue 15, speed). One state now."""
    from scanctl.simulators.physics.graph import PhaseGraph

    g = PhaseGraph(1, 2)
    k = np.zeros((2, 3))
    k[:, axis] = -64929.6875 + np.array([-1e-11, 1e-11])  # -64929687.5 quanta, give or take a rounding
    g.f_k, g.f_tau = k, np.zeros(2)
    g.f = np.array([[[0.3 + 0j, 0.1]], [[0.2j, 0.1]]])
    identity = (np.ones((1, 2), complex), np.zeros((1, 2), complex), np.zeros((1, 2), complex),
                np.zeros((1, 2), complex), np.ones((1, 2)))
    g.rotate(*identity)
    assert g.f.shape[0] == 1
    assert g.f[0, 0] == pytest.approx([0.3 + 0.2j, 0.2])


def test_states_further_apart_than_the_quantum_stay_apart():
    """Merging by nearness must not chain distinct moments together: states 1.5 quanta apart, in a row,
    stay separate states."""
    from scanctl.simulators.physics.graph import MOMENT_QUANTUM, PhaseGraph

    g = PhaseGraph(1, 1)
    g.f_k = np.zeros((5, 3))
    g.f_k[:, 0] = 1000.0 + 1.5 * MOMENT_QUANTUM * np.arange(5)
    g.f_tau = np.zeros(5)
    g.f = np.full((5, 1, 1), 0.1 + 0j)
    identity = (np.ones((1, 1), complex), np.zeros((1, 1), complex), np.zeros((1, 1), complex),
                np.zeros((1, 1), complex), np.ones((1, 1)))
    g.rotate(*identity)
    assert g.f.shape[0] == 5


def test_states_are_pruned_by_their_effect_on_the_signal_not_their_peak():
    """A voxel's signal is the mean over its isochromats: a state strong at one isochromat of 32 only (a
    slice edge) but weak over the slab (root mean square below the tolerance) is dropped; one just above
    the tolerance everywhere is kept (issue 15, speed: se_2d held 32,000 states kept by their peak)."""
    from scanctl.simulators.physics.graph import PhaseGraph

    g = PhaseGraph(2, 32, tolerance=1e-5)
    g.f_k = np.array([[100.0, 0, 0], [200.0, 0, 0]])
    g.f_tau = np.zeros(2)
    g.f = np.zeros((2, 2, 32), complex)
    g.f[0, 1, 5] = 5e-5  # peak 5e-5, root mean square over the isochromats 9e-6: below 1e-5
    g.f[1, 0, :] = 2e-5j  # 2e-5 at every isochromat of class 0
    identity = (np.ones((2, 32), complex), np.zeros((2, 32), complex), np.zeros((2, 32), complex),
                np.zeros((2, 32), complex), np.ones((2, 32)))
    g.rotate(*identity)
    assert g.f_k[:, 0].tolist() == [200.0]
    assert g.f[0, 0] == pytest.approx(np.full(32, 2e-5j))


def test_merge_keys_agree_with_rounding_away_from_bin_boundaries_for_many_states():
    """50,000 states with moments and dephasing times all different (so the combined key would overflow
    int64 unless ranked): one merged state per distinct (k, τ), as rounding gives away from boundaries."""
    from scanctl.simulators.physics.graph import MOMENT_QUANTUM, TIME_QUANTUM, _merge_keys

    rng = np.random.default_rng(1)
    n = 50_000
    k = (rng.permutation(n)[:, None] * 7 + rng.integers(0, 3, (n, 3)) + 0.3) * MOMENT_QUANTUM
    tau = (rng.permutation(n) * 5 + 0.3) * TIME_QUANTUM
    rows = np.concatenate((np.arange(n), rng.integers(0, n, 1000)))  # 1000 repeated rows
    first, inverse = _merge_keys(k[rows], tau[rows])
    want = np.unique(np.column_stack((np.floor(k[rows] / MOMENT_QUANTUM), np.floor(tau[rows] / TIME_QUANTUM))),
                     axis=0, return_inverse=True)[1].reshape(-1)
    assert first.size == n
    # The same partition: each merged state is one rounded key and vice versa.
    assert np.unique(np.column_stack((inverse, want)), axis=0).shape[0] == n
    assert np.array_equal(inverse[first], np.arange(n))


def test_a_plane_with_no_tissue_gives_silence_not_a_crash():
    """The simulator can be asked to image a plane that misses the object (a slice placed outside the
    head): no tissue class at all. Pulses and read-outs must give zeros (the phase graph's pruning crashed
    on zero classes)."""
    empty = Phantom(pd=np.zeros((4, 4)), t1_s=np.ones((4, 4)), t2_s=np.ones((4, 4)), b0_offset_hz=np.zeros((4, 4)),
                    voxel_size_m=(1e-3,) * 3)
    spins = SpinSystem(empty)
    out = spins.play(gradient(0, 0.01), rf_program(0, 0.01, [block_pulse(0.0, np.pi / 2)]),
                     adc_program(0, 0.01, [(1e-3, 16, 10e-6, 0.0, 0.0)]))
    assert out[0].shape == (1, 16) and not np.any(out[0])
