"""scanctl.simulators.physics.phantom: the MR Shepp–Logan phantom and phantom files."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
from scanctl.simulators.physics import Phantom, load_phantom, shepp_logan
from scanctl.simulators.physics.phantom import DEFAULT_SLAB_M, TISSUES, tissue_values

from scanctl.errors import ConfigError


def maps(shape=(4, 5)):
    one = np.ones(shape)
    return {"pd": one, "t1_s": one, "t2_s": 0.1 * one, "b0_offset_hz": 0 * one, "voxel_size_m": (1e-3, 1e-3)}


# ----------------------------------------------------------------------------------------------------------
# Shepp–Logan
# ----------------------------------------------------------------------------------------------------------


def test_shepp_logan_2d_has_the_papers_tissues_at_3t():
    ph = shepp_logan(128)
    assert ph.shape == (128, 128) and ph.ndim == 2
    assert ph.voxel_size_m == pytest.approx((0.256 / 128, 0.256 / 128, DEFAULT_SLAB_M))
    values = tissue_values(3.0)
    # Gray matter T1 = A * B0**C (Gach et al. 2008), CSF explicit.
    assert values["gray_matter"][1] == pytest.approx(0.857 * 3.0**0.376)
    assert values["csf"][1:] == (4.2, 1.99)
    found = {tuple(v) for v in np.column_stack((ph.pd.ravel(), ph.t1_s.ravel(), ph.t2_s.ravel()))}
    assert found == {(0.0, 0.0, 0.0)} | {values[name] for name in TISSUES}
    # Every voxel holds one tissue: T1/T2 are set exactly where there is proton density.
    assert np.array_equal(ph.pd > 0, ph.t1_s > 0) and np.array_equal(ph.pd > 0, ph.t2_s > 0)
    assert not ph.b0_offset_hz.any()


def test_shepp_logan_geometry_and_axes():
    n = 128
    ph = shepp_logan(n)
    x, y, z = ph.axis_positions_m()
    assert x[n // 2] == 0 and y[n // 2] == 0 and z.tolist() == [0.0]
    # Outline: the scalp ellipse spans 0.72 (x) by 0.95 (y) of the half field of view (at z = -0.25).
    rows = np.flatnonzero(ph.pd.any(axis=1))
    cols = np.flatnonzero(ph.pd.any(axis=0))
    assert (y[rows[-1]] - y[rows[0]]) > (x[cols[-1]] - x[cols[0]])
    # Rows are y: the three small "tumours" at y = -0.605 lie in the lower rows, the large white-matter
    # ellipse at y = +0.35 in the upper ones.
    wm = tissue_values(3.0)["white_matter"][1]
    wm_rows = np.flatnonzero((ph.t1_s == wm).any(axis=1))
    assert y[wm_rows].min() > 0
    tumour = tissue_values(3.0)["tumor"][1]
    t_rows = np.flatnonzero((ph.t1_s == tumour).any(axis=1))
    assert y[t_rows].min() < -0.3 * 0.128


def test_shepp_logan_3d_and_field_strength():
    ph = shepp_logan(32, nz=16, b0_t=1.5, b0_offset_hz=5.0)
    assert ph.shape == (16, 32, 32) and ph.shape3d == (16, 32, 32)
    assert ph.voxel_size_m == pytest.approx((0.008, 0.008, 0.016))
    assert ph.t1_s.max() == 4.2
    gm = 0.857 * 1.5**0.376
    assert np.any(np.isclose(ph.t1_s, gm))
    assert np.all(ph.b0_offset_hz == 5.0)
    with pytest.raises(ConfigError, match="positive"):
        shepp_logan(0)


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "message"), [
    ("pd", -np.ones((4, 5)), "pd has negative values"),
    ("t2_s", np.full((4, 5), np.nan), "t2_s contains NaN"),
    ("t1_s", np.ones((4, 6)), r"t1_s has shape \(4, 6\), expected \(4, 5\)"),
    ("t1_s", np.zeros((4, 5)), "t1_s must be > 0 wherever pd > 0"),
    ("b0_offset_hz", np.full((4, 5), np.inf), "b0_offset_hz contains NaN or infinite"),
    ("pd", np.ones(5), "pd must be 2D"),
    ("voxel_size_m", (1e-3, -1e-3), "voxel_size_m must be positive"),
    ("voxel_size_m", (1e-3,), "voxel_size_m must be"),
])
def test_invalid_maps_are_config_errors(key, value, message):
    kwargs = maps()
    kwargs[key] = value
    with pytest.raises(ConfigError, match=message):
        Phantom(**kwargs, source="test.npz")


def test_background_may_have_zero_relaxation_times():
    kwargs = maps()
    kwargs["pd"] = np.zeros((4, 5))
    kwargs["t1_s"] = np.zeros((4, 5))
    ph = Phantom(**kwargs)
    assert ph.fov_m == pytest.approx((5e-3, 4e-3, DEFAULT_SLAB_M))


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    ph = shepp_logan(16)
    path = tmp_path / "p.npz"
    np.savez(path, pd=ph.pd, t1_s=ph.t1_s, t2_s=ph.t2_s, voxel_size_m=np.array(ph.voxel_size_m))
    back = load_phantom(path)
    for key in ("pd", "t1_s", "t2_s", "b0_offset_hz"):
        assert np.array_equal(getattr(back, key), getattr(ph, key))
    assert back.voxel_size_m == ph.voxel_size_m and back.source == str(path)


@pytest.mark.parametrize(("drop", "change", "message"), [
    ("t2_s", None, "missing key 't2_s'"),
    ("voxel_size_m", None, "missing key 'voxel_size_m'"),
    (None, ("pd", -np.ones((3, 3))), "pd has negative values"),
    (None, ("t1_s", np.full((3, 3), np.nan)), "t1_s contains NaN"),
    (None, ("b0_offset_hz", np.zeros((2, 3))), r"b0_offset_hz has shape \(2, 3\)"),
])
def test_npz_errors_name_the_file_and_the_key(tmp_path, drop, change, message):
    one = np.ones((3, 3))
    data = {"pd": one, "t1_s": one, "t2_s": one, "b0_offset_hz": 0 * one, "voxel_size_m": np.array([1e-3, 1e-3])}
    if drop:
        del data[drop]
    if change:
        data[change[0]] = change[1]
    path = tmp_path / "bad.npz"
    np.savez(path, **data)
    with pytest.raises(ConfigError, match=message) as err:
        load_phantom(path)
    assert str(path) in str(err.value)


def test_unreadable_missing_and_unknown_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_phantom(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read as .npz"):
        load_phantom(junk)
    other = tmp_path / "p.mat"
    other.write_bytes(b"")
    with pytest.raises(ConfigError, match="unknown phantom format '.mat'"):
        load_phantom(other)


def test_h5_round_trip_and_errors(tmp_path):
    import h5py  # a dependency, through ismrmrd

    ph = shepp_logan(8, b0_offset_hz=3.0)
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        for key in ("pd", "t1_s", "t2_s", "b0_offset_hz"):
            f[key] = getattr(ph, key)
        f.attrs["voxel_size_m"] = ph.voxel_size_m
    back = load_phantom(path)
    assert np.array_equal(back.b0_offset_hz, ph.b0_offset_hz) and back.voxel_size_m == ph.voxel_size_m
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["pd"] = ph.pd
    with pytest.raises(ConfigError, match=r"bad.h5: missing key 't1_s'"):
        load_phantom(tmp_path / "bad.h5")


def test_h5_without_h5py_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "p.h5"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(ConfigError, match="needs h5py"):
        load_phantom(path)


# ----------------------------------------------------------------------------------------------------------
# The 3D phantom in the patient, and slices anywhere (simulators/physics/placement.py)
# ----------------------------------------------------------------------------------------------------------

#: sha256 of the 2D default's pd, t1_s and t2_s bytes at 128 and 64, computed with the phantom.py of main
#: at 86ac204 (before the 3D phantom): the 2D default must not change.
DEFAULT_2D_SHA256 = {128: "7be8ee11a38b0c078e815be7c13b6bb242d2b8f0399352b88e5fdca59280a6c4",
                     64: "e51d001d81d3583cc9e906505b7a7ce2a6aa22b6cae1aae950abf929e2bc2835"}
FOV = 0.256
LARMOR_HZ = 42.576e6 * 3.0


def _digest(ph) -> str:
    import hashlib

    h = hashlib.sha256()
    for key in ("pd", "t1_s", "t2_s"):
        h.update(np.ascontiguousarray(getattr(ph, key)).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("n", [128, 64])
def test_the_2d_default_is_unchanged(n):
    ph = shepp_logan(n)
    assert _digest(ph) == DEFAULT_2D_SHA256[n]
    assert ph.axes is None and ph.origin_m == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(("n", "nz"), [(64, 32), (33, 17), (128, 8)])
def test_the_3d_phantoms_mid_plane_is_the_2d_default(n, nz):
    three, two = shepp_logan(n, nz=nz), shepp_logan(n)
    for key in ("pd", "t1_s", "t2_s"):
        assert np.array_equal(getattr(three, key)[nz // 2], getattr(two, key))
    assert not np.array_equal(three.pd[0], two.pd)  # and the other planes are other planes


def test_shepp_logan_at_samples_the_patient_and_the_isocentre_plane_is_the_2d_default():
    from scanctl.simulators.physics.phantom import shepp_logan_at

    two = shepp_logan(64)
    x = (np.arange(64) - 32) * FOV / 64
    xx, yy = np.meshgrid(x, x, indexing="xy")
    pd, t1, t2 = shepp_logan_at(np.stack((xx, yy, np.zeros_like(xx)), axis=-1), fov_m=FOV)
    assert np.array_equal(pd, two.pd) and np.array_equal(t1, two.t1_s) and np.array_equal(t2, two.t2_s)
    # The head's top is at z = (0.93 + 0.25) / 2 fov above the isocentre, its bottom (0.93 - 0.25) / 2 below.
    top, bottom = (0.93 + 0.25) / 2 * FOV, -(0.93 - 0.25) / 2 * FOV
    inside = shepp_logan_at(np.array([[0, 0, top - 1e-3], [0, 0, bottom + 1e-3]]), fov_m=FOV)[0]
    outside = shepp_logan_at(np.array([[0, 0, top + 1e-3], [0, 0, bottom - 1e-3]]), fov_m=FOV)[0]
    assert (inside > 0).all() and (outside == 0).all()
    with pytest.raises(ConfigError, match=r"\(\.\.\., 3\)"):
        shepp_logan_at(np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="finite"):
        shepp_logan_at(np.array([0.0, np.nan, 0.0]))


@pytest.mark.parametrize(("axes", "origin", "message"), [
    (np.diag([1.0, 1.0, -1.0]), (0, 0, 0), "rotation"),
    (2 * np.eye(3), (0, 0, 0), "rotation"),
    (np.eye(3), (0, np.inf, 0), "finite"),
    (np.eye(2), (0, 0, 0), "3x3"),
])
def test_a_pose_that_is_no_rotation_is_a_config_error(axes, origin, message):
    with pytest.raises(ConfigError, match=message):
        Phantom(**maps(), axes=axes, origin_m=origin, source="posed")


def test_patient_positions():
    from scanctl.simulators.physics.placement import patient_to_scanner

    assert np.array_equal(patient_to_scanner("HFS"), np.eye(3))
    head = np.array([0.0, 0.0, 1.0])  # +z patient: toward the head
    assert (patient_to_scanner("FFS") @ head)[2] == -1.0  # feet first: the head points to scanner -z
    assert (patient_to_scanner("HFP") @ np.array([0.0, 1.0, 0.0]))[1] == -1.0  # prone: posterior is up
    for pos in ("HFS", "FFS", "HFP", "FFP"):
        m = patient_to_scanner(pos)
        assert np.allclose(m @ m.T, np.eye(3)) and np.linalg.det(m) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="LFS"):
        patient_to_scanner("LFS")


def gre_slice(n: int, channels: tuple[str, str, str] = ("x", "y", "z"), offset_m: float | list[float] = 0.0,
              thickness_m: float = 5e-3, tr_delay_s: float = 5e-3, line_shift: float = 0.0):
    """A 2D gradient echo written with pypulseq: read, phase, slice on the given gradient ``channels``, the
    slice ``offset_m`` (or each of a list: every line of every slice, slices inner) along the slice channel
    the pypulseq way (RF ``freq_offset`` = slice gradient x
    offset, ``phase_offset`` = -2π freq_offset x the pulse centre), ``n`` lines over :data:`FOV`, a spoiler
    along the slice and ``tr_delay_s`` after each line; ``line_shift``: the phase encodes move by that
    fraction of a line (0.5 keeps every line off the voxels' band edge ±1/(2 voxel), where file rounding
    can push the first line out: the read-out drops a state beyond the band)."""
    import pypulseq as pp

    from tests.pulseq_factory import default_system

    system = default_system()
    seq = pp.Sequence(system)
    read, phase, slc = channels
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=np.deg2rad(15), duration=2e-3, slice_thickness=thickness_m,
                                   apodization=0.5, time_bw_product=4, delay=system.rf_dead_time, system=system,
                                   return_gz=True, use="excitation")
    gz.channel = slc
    pulses = []
    for offset in np.atleast_1d(offset_m).tolist():
        one = copy.copy(rf)
        one.freq_offset = gz.amplitude * offset
        one.phase_offset = -2 * np.pi * one.freq_offset * pp.calc_rf_center(one)[0]
        pulses.append(one)
    dk = 1 / FOV
    gx = pp.make_trapezoid(channel=read, flat_area=n * dk, flat_time=n * 40e-6, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel=read, area=-gx.area / 2, duration=1e-3, system=system)
    gz_reph = pp.make_trapezoid(channel=slc, area=-gz.area / 2, duration=1e-3, system=system)
    spoil = pp.make_trapezoid(channel=slc, area=4 / thickness_m, system=system)
    for i in range(n):
        gy = pp.make_trapezoid(channel=phase, area=(i - n / 2 + line_shift) * dk, duration=1e-3, system=system)
        for pulse in pulses:
            seq.add_block(pulse, gz)
            seq.add_block(gx_pre, gy, gz_reph)
            seq.add_block(gx, adc)
            seq.add_block(spoil, pp.scale_grad(gy, -1), pp.make_delay(tr_delay_s))
    seq.set_definition("FOV", [FOV, FOV, thickness_m])
    return seq


def segments_of(seq) -> list:
    import tempfile
    from pathlib import Path

    from scanctl.engine.segments import compile_segments
    from scanctl.sequence import pulseq_read

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.seq"
        seq.write(str(path))
        read = pulseq_read.read(path)
    return list(compile_segments(read, larmor_hz=LARMOR_HZ))


def image_of(spins, segments: list, n: int) -> np.ndarray:
    """``(channels, n, n)`` complex images (rows: the phase axis, columns: the read axis) by an inverse FFT."""
    data = np.concatenate([w for s in segments for w in spins.play(s.gradient, s.rf, s.adc)], axis=1)
    k = data.reshape(data.shape[0], n, n).astype(np.complex128)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1))), axes=(-2, -1))


def posed_for(segments: list, n: int):
    """The phantom the RF simulator images for these segments (its first selective pulse's plane)."""
    from scanctl.simulators.physics import placement

    sel = next(s for seg in segments for s in placement.selections(seg.gradient, seg.rf))
    return sel, placement.posed_phantom(sel, n, FOV, 3.0, np.eye(3))


def _plane_phantom(points: np.ndarray, n: int) -> Phantom:
    """A 2D phantom at the isocentre holding the 3D phantom's maps at ``points`` (rows, cols, 3)."""
    from scanctl.simulators.physics.phantom import shepp_logan_at

    pd, t1, t2 = shepp_logan_at(points, fov_m=FOV)
    return Phantom(pd=pd, t1_s=t1, t2_s=t2, b0_offset_hz=0 * pd, voxel_size_m=(FOV / n, FOV / n))


def _grid(shape: tuple[int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    rows = (np.arange(shape[0]) - shape[0] // 2) * FOV / n
    cols = (np.arange(shape[1]) - shape[1] // 2) * FOV / n
    c, r = np.meshgrid(cols, rows, indexing="xy")
    return r, c


# (name, gradient channels read/phase/slice, offset along the slice channel, the plane's points from
# row and column positions): rows run along +phase, columns along +read.
PLANES = [
    ("transverse z = +20 mm", ("x", "y", "z"), 0.020, lambda r, c: np.stack((c, r, np.full(r.shape, 0.020)), -1)),
    ("sagittal x = -15 mm", ("y", "z", "x"), -0.015, lambda r, c: np.stack((np.full(r.shape, -0.015), c, r), -1)),
    ("coronal y = +10 mm", ("x", "z", "y"), 0.010, lambda r, c: np.stack((c, np.full(r.shape, 0.010), r), -1)),
]


@pytest.mark.parametrize(("name", "channels", "offset", "points"), PLANES, ids=[p[0] for p in PLANES])
def test_a_slice_anywhere_images_the_phantoms_plane_there(name, channels, offset, points):
    """The image of a slice off the isocentre, or sagittal, or coronal, equals the image that a transverse
    slice at the isocentre gives of a 2D phantom holding the 3D phantom's maps of that plane (same lattice,
    same aliasing), to the slice profile's numerics (3e-4 of the peak); and its magnitude follows that
    plane's proton density, not the default's."""
    from scanctl.simulators.physics import SpinSystem

    n = 32
    segments = segments_of(gre_slice(n, channels, offset))
    sel, posed = posed_for(segments, n)
    assert abs(sel.position_m) == pytest.approx(abs(offset), abs=1e-6)
    got = image_of(SpinSystem(posed), segments, n)[0]
    r, c = _grid(posed.shape, n)
    plane = _plane_phantom(points(r, c), n)
    want = image_of(SpinSystem(plane), segments_of(gre_slice(n)), n)[0]
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
    # Against the phantom's own map in the field of view (rows/columns of the scan's lattice).
    r0, c0 = (posed.shape[0] - n) // 2, (posed.shape[1] - n) // 2
    own = plane.pd[r0:r0 + n, c0:c0 + n]
    default = shepp_logan(n).pd
    assert np.corrcoef(np.abs(got).ravel(), own.ravel())[0, 1] > 0.9
    assert np.corrcoef(np.abs(got).ravel(), default.ravel())[0, 1] < 0.8


def _rotated(segment, rot: np.ndarray):
    """The segment with its gradients rotated by ``rot`` (3x3): all axes resampled on the union of their
    breakpoints (exact for piecewise-linear waveforms), then rotated. A ROTATIONS-extension file plays
    the same; pypulseq's ``rotate`` instead writes arbitrary shapes rounded to 6 digits, whose rewinders
    no longer cancel."""
    import dataclasses

    from scanctl.hw.program import GradientProgram

    g = segment.gradient
    t = np.unique(np.concatenate([a for a in g.t_s if a.size]))
    rotated = rot @ g.sample(t)
    program = GradientProgram(g.t0_s, g.t1_s, (t, t, t), tuple(rotated))
    return dataclasses.replace(segment, gradient=program)


def test_an_oblique_slice_images_the_oblique_plane():
    """A transverse slice at +12 mm tilted 30° about x (slice normal (0, -sin, cos)): the image equals the
    isocentre image of the oblique plane's maps."""
    from scanctl.simulators.physics import SpinSystem

    n = 32
    a = np.deg2rad(30)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    segments = [_rotated(s, rot) for s in segments_of(gre_slice(n, offset_m=0.012))]
    sel, posed = posed_for(segments, n)
    assert sel.normal == pytest.approx(rot[:, 2], abs=1e-9)
    got = image_of(SpinSystem(posed), segments, n)[0]
    r, c = _grid(posed.shape, n)
    points = c[..., None] * rot[:, 0] + r[..., None] * rot[:, 1] + 0.012 * rot[:, 2]
    want = image_of(SpinSystem(_plane_phantom(points, n)), segments_of(gre_slice(n)), n)[0]
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()


def test_the_isocentre_transverse_slice_keeps_the_2d_default():
    from scanctl.simulators.physics import placement

    sel, _ = posed_for(segments_of(gre_slice(16)), 16)
    assert placement.is_default(sel, np.eye(3))
    assert not placement.is_default(sel, placement.patient_to_scanner("FFS"))  # feet first: another view
    off, _ = posed_for(segments_of(gre_slice(16, offset_m=0.01)), 16)
    assert not placement.is_default(off, np.eye(3))
    assert sel.thickness_m == pytest.approx(5e-3, rel=0.05)  # bandwidth / gradient: the slice thickness


def test_scanctl_run_images_an_off_centre_slice(tmp_path):
    """Through the RF simulator (``scanctl run``): the image of a slice at z = +20 mm follows that plane's
    proton density, not the isocentre's."""
    from scanctl.cli import main

    n = 32
    gre_slice(n, offset_m=0.020).write(str(tmp_path / "off.seq"))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "off.seq"), "--rf", f"sim://?matrix={n}", "--out", str(out)]) == 0
    image = np.load(out / "image.npy")[0]
    r, c = _grid((n, n), n)
    own = _plane_phantom(np.stack((c, r, np.full(r.shape, 0.020)), -1), n).pd
    assert np.corrcoef(image.ravel(), own.ravel())[0, 1] > 0.9
    assert np.corrcoef(image.ravel(), shepp_logan(n).pd.ravel())[0, 1] < 0.8


def gre_slab(n: int, partitions: int, slab_m: float):
    """A 3D gradient echo: a sinc pulse selecting a transverse slab ``slab_m`` thick at the isocentre, then
    ``partitions`` phase encodes along z over ``slab_m`` (partition thickness slab / partitions) and ``n``
    along y, read along x; partitions in the outer loop."""
    import pypulseq as pp

    from tests.pulseq_factory import default_system

    system = default_system()
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=np.deg2rad(10), duration=2e-3, slice_thickness=slab_m,
                                   apodization=0.5, time_bw_product=8, delay=system.rf_dead_time, system=system,
                                   return_gz=True, use="excitation")
    dk = 1 / FOV
    gx = pp.make_trapezoid(channel="x", flat_area=n * dk, flat_time=n * 40e-6, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1.5e-3, system=system)
    spoil = pp.make_trapezoid(channel="x", area=4 * n * dk, system=system)
    for j in range(partitions):
        kz = (j - partitions // 2) / slab_m
        for i in range(n):
            gy = pp.make_trapezoid(channel="y", area=(i - n / 2 + 0.5) * dk, duration=1.5e-3, system=system)
            gz_pre = pp.make_trapezoid(channel="z", area=kz - gz.area / 2, duration=1.5e-3, system=system)
            seq.add_block(rf, gz)
            seq.add_block(gx_pre, gy, gz_pre)
            seq.add_block(gx, adc)
            gz_rew = pp.make_trapezoid(channel="z", area=-kz, duration=1.5e-3, system=system)
            seq.add_block(spoil, pp.scale_grad(gy, -1), gz_rew, pp.make_delay(20e-3))
    seq.set_definition("FOV", [FOV, FOV, slab_m])
    return seq


def test_a_3d_slab_images_the_volume_partition_by_partition():
    """A 64 mm transverse slab, 8 partitions of 8 mm: the simulator lays a 3D grid through the slab, and
    each central partition's image follows the phantom's proton density at its own z, better than at any
    other partition's z."""
    from scanctl.simulators.physics import SpinSystem
    from scanctl.simulators.physics.phantom import shepp_logan_at

    n, partitions, slab = 16, 8, 0.064
    segments = segments_of(gre_slab(n, partitions, slab))
    sel, posed = posed_for(segments, n)
    assert sel.thickness_m == pytest.approx(slab, rel=0.1)
    assert posed.ndim == 3 and posed.shape[0] >= 16 and posed.voxel_size_m[2] <= slab / 16 + 1e-12
    spins = SpinSystem(posed)
    data = np.concatenate([w for s in segments for w in spins.play(s.gradient, s.rf, s.adc)], axis=1)
    k = data.reshape(partitions, n, n).astype(np.complex128)
    images = np.abs(np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(k))))  # (z, y, x)
    r, c = _grid((n, n), n)
    z = (np.arange(partitions) - partitions // 2) * slab / partitions
    maps = []
    for zk in z:  # the proton density averaged through each partition (5 samples)
        through = [shepp_logan_at(np.stack((c, r, np.full(r.shape, zk + dz)), -1), fov_m=FOV)[0]
                   for dz in np.linspace(-0.4, 0.4, 5) * slab / partitions]
        maps.append(np.mean(through, axis=0))
    for j in range(2, partitions - 2):  # the edges: the slab profile's transition, and aliasing
        corr = [np.corrcoef(images[j].ravel(), m.ravel())[0, 1] for m in maps]
        assert corr[j] > 0.8, (j, np.round(corr, 3))
        assert corr[j] == max(corr), (j, np.round(corr, 3))


def test_a_multi_slice_scan_images_each_slice_at_its_place(tmp_path, caplog):
    """Three transverse slices at -24, 0 and +24 mm, interleaved in every TR, through the RF simulator
    (``scanctl run``): the simulator finds the three planes from the pulses queued with the first, lays
    the phantom on a stack of slabs through them, and each slice's image follows its own plane's proton
    density; no warning that a plane is not simulated."""
    import logging

    import ismrmrd

    from scanctl.cli import main

    n, offsets = 32, [-0.024, 0.0, 0.024]
    gre_slice(n, offset_m=offsets).write(str(tmp_path / "ms.seq"))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="scanctl.simulators.rf"):
        assert main(["run", str(tmp_path / "ms.seq"), "--rf", f"sim://?matrix={n}", "--out", str(out),
                     "--no-recon"]) == 0
    assert not [r for r in caplog.records if "outside the planes" in r.getMessage() or "not one stack" in
                r.getMessage()]
    assert any("on 3 slabs" in r.getMessage() for r in caplog.records)
    with ismrmrd.Dataset(str(out / "raw.h5"), "dataset", create_if_needed=False) as ds:
        data = np.stack([ds.read_acquisition(i).data[0] for i in range(ds.number_of_acquisitions())])
    k = data.reshape(n, len(offsets), n).transpose(1, 0, 2).astype(np.complex128)
    images = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1))), axes=(-2, -1)))
    r, c = _grid((n, n), n)
    maps = [_plane_phantom(np.stack((c, r, np.full(r.shape, z)), -1), n).pd for z in offsets]
    for j in range(len(offsets)):
        corr = [np.corrcoef(images[j].ravel(), m.ravel())[0, 1] for m in maps]
        assert corr[j] > 0.9 and corr[j] == max(corr), (j, np.round(corr, 3))


@pytest.mark.parametrize("normal", [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0)])
def test_a_stack_of_slabs_lies_on_the_selected_planes(normal):
    """The stack's planes sit at the slices' positions along the normal (either sign of the grid's slice
    axis), every plane between them included, and hold the phantom's maps there; positions off one even
    spacing, or thick slabs, give no stack."""
    from scanctl.simulators.physics import placement
    from scanctl.simulators.physics.phantom import shepp_logan_at

    sel = placement.Selection(np.array(normal), 0.0, 0.005, 1e5, (100, 1.0))
    positions = [-0.03, 0.0, 0.015]  # spacing 15 mm: planes at -30, -15, 0, +15 mm
    ph = placement.stacked_phantom(sel, positions, 16, FOV, 3.0, np.eye(3))
    assert ph is not None and ph.ndim == 3 and ph.shape[0] == 4 and ph.voxel_size_m[2] == pytest.approx(0.015)
    where = ph.scanner_positions_m()  # (nz, ny, nx, 3)
    along = where[:, 0, 0] @ np.array(normal)
    assert sorted(np.round(along, 9).tolist()) == pytest.approx([-0.03, -0.015, 0.0, 0.015])
    pd, _, _ = shepp_logan_at(where, fov_m=FOV)
    assert np.array_equal(pd, ph.pd)
    assert placement.stacked_phantom(sel, [-0.03, 0.0, 0.011], 16, FOV, 3.0, np.eye(3)) is None  # uneven
    thick = placement.Selection(np.array(normal), 0.0, 0.03, 1e5, (100, 1.0))
    assert placement.stacked_phantom(thick, positions, 16, FOV, 3.0, np.eye(3)) is None
    assert placement.stack_positions(sel, []) == [0.0]


def test_a_hard_pulse_under_a_shim_gradient_selects_nothing():
    """A shim's static gradient (here 5 kHz/m on every axis, 50 Hz/cm) under a 100 µs hard pulse selects a
    slab metres thick: the pulse excites everything, the simulator must not take it for a slice (it did,
    and imaged a plane 250 mm away); the same pulse under a real slice-select gradient selects a slice."""
    from scanctl.simulators.physics import placement

    from tests.test_bloch import block_pulse, gradient, rf_program

    rf = rf_program(0.0, 1e-3, [block_pulse(0.0, np.pi / 2)[:2] + (200.0,)])
    flat = (np.array([0.0, 1e-3]), np.array([5000.0, 5000.0]))
    assert placement.selections(gradient(0.0, 1e-3, x=[flat], y=[flat], z=[flat]), rf) == []
    strong = (np.array([0.0, 1e-3]), np.array([4e6, 4e6]))
    (sel,) = placement.selections(gradient(0.0, 1e-3, z=[strong]), rf)
    assert np.allclose(sel.normal, [0, 0, 1]) and sel.position_m == pytest.approx(200.0 / 4e6)
