"""scanctl.simulators.physics.phantom: the MR Shepp–Logan phantom and phantom files."""

from __future__ import annotations

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
