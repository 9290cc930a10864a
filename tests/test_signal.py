"""The Bloch simulator's read-out (simulators/physics/signal.py, nufft.py) and benchmarks/bench_physics.py.

The fast read-out (separable products for Cartesian windows, a NUFFT for the others) against the direct
voxel-by-voxel sums it replaces; the BLAS thread limit; the benchmark in a tiny mode, so that it cannot rot.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scanctl.simulators.physics import SpinSystem, shepp_logan
from scanctl.simulators.physics import bloch as bloch_mod
from scanctl.simulators.physics import signal as signal_mod
from scanctl.simulators.physics.coils import loop_ring
from scanctl.simulators.physics.nufft import PlaneNufft, plane_direct
from scanctl.simulators.physics.planesums import SparseMaps, unique_rows
from scanctl.simulators.physics.signal import Readout
from threadpoolctl import threadpool_info

from scanctl.config import profile as profiles
from scanctl.engine.segments import compile_segments
from scanctl.prescan import sequences as prescan_sequences
from scanctl.sequence import pulseq_read
from tests import pulseq_factory

REPO = Path(__file__).resolve().parents[1]
LARMOR_HZ = 42.576e6 * 3.0


@pytest.mark.parametrize(("n_c", "ny", "nx"), [(1, 8, 8), (3, 17, 12), (6, 64, 64), (2, 9, 31)])
def test_nufft_matches_the_direct_sum(n_c: int, ny: int, nx: int) -> None:
    rng = np.random.default_rng(ny * nx)
    maps = rng.standard_normal((n_c, ny, nx)) + 1j * rng.standard_normal((n_c, ny, nx))
    dx, dy = 0.002, 0.003
    x = (np.arange(nx) - nx // 2) * dx
    y = (np.arange(ny) - ny // 2) * dy
    # Inside the band (what the read-out asks for) and beyond it (the sums are periodic: still exact).
    kx = rng.uniform(-0.75 / dx, 0.75 / dx, 500)
    ky = rng.uniform(-0.75 / dy, 0.75 / dy, 500)
    ref = plane_direct(maps, x, y, kx, ky)
    got = PlaneNufft(maps, dx, dy)(kx, ky)
    scale = np.abs(maps).reshape(n_c, -1).sum(axis=1)
    assert got.shape == (500, n_c)
    assert np.max(np.abs(got - ref) / scale) < 1e-9



@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_maps=st.integers(1, 40), fill=st.floats(0.0, 0.3),
       complex_maps=st.booleans())
def test_sparse_plane_sums_match_the_direct_sum(seed: int, n_maps: int, fill: float, complex_maps: bool) -> None:
    """The voxel-by-voxel sum over the nonzero voxels (maps empty or not, real or complex, the grid off the
    isocentre) equals the direct sum, with the maps' own values and with values given per nonzero voxel."""
    rng = np.random.default_rng(seed)
    ny, nx = 13, 10
    maps = rng.standard_normal((n_maps, ny, nx)) * (rng.random((n_maps, ny, nx)) < fill)
    if complex_maps:
        maps = maps * np.exp(1j * rng.uniform(0, 2 * np.pi, maps.shape))
    x = (np.arange(nx) - nx // 2) * 0.004 + 0.01
    y = (np.arange(ny) - ny // 2) * 0.003 - 0.02
    kx, ky = rng.uniform(-200.0, 200.0, 70), rng.uniform(-200.0, 200.0, 70)
    sparse = SparseMaps(maps, x, y)
    assert sparse.nnz == np.count_nonzero(maps)
    scale = max(1.0, float(np.abs(maps).sum()))
    assert np.abs(sparse(kx, ky) - plane_direct(maps, x, y, kx, ky)).max() < 1e-12 * scale
    phase = np.exp(1j * rng.uniform(0, 2 * np.pi, sparse.nnz))
    shifted = np.zeros(maps.shape, np.complex128)
    shifted[sparse.index] = sparse.values * phase
    assert np.abs(sparse(kx, ky, sparse.values * phase) - plane_direct(shifted, x, y, kx, ky)).max() < 1e-12 * scale


@pytest.mark.parametrize("b0_map", [False, True])
def test_classes_split_along_a_static_gradient_are_read_voxel_by_voxel(monkeypatch: pytest.MonkeyPatch,
                                                                       b0_map: bool) -> None:
    """A hard pulse under a linear B0 inhomogeneity on x and y (the prescan's FID before the shim) splits the
    tissue classes into a hundred thin strips; their FID's read-out, along no axis, sums the strips' few
    voxels one by one (a NUFFT of every strip's map took 1.6 s of the 64 x 64 prescan's FID, and 18 s to set
    up at 128 x 128) and gives the direct sums' samples -- with off-resonance inside the classes too (the
    Taylor series' terms, which were summed over every voxel of every class: 3 s for one FID at 32 x 32)."""
    fid = prescan_sequences.fid(profiles.load(), samples=256)
    segments = list(compile_segments(fid.seq, larmor_hz=LARMOR_HZ))
    phantom = shepp_logan(32)
    if b0_map:
        xx = np.linspace(-1.0, 1.0, 32)
        phantom.b0_offset_hz[...] = 40.0 * (xx[None, :] ** 2 - xx[:, None] ** 2)
    dense = []
    monkeypatch.setattr(signal_mod, "plane_direct", lambda *a: (dense.append(1), plane_direct(*a))[1])
    data, readouts = {}, {}
    for method in ("fast", "direct"):
        # The spins build a new read-out when they split their classes: make that one of the method too.
        monkeypatch.setattr(bloch_mod, "Readout", lambda *a, m=method, **k: Readout(*a, method=m, **k))
        spins = SpinSystem(phantom, isochromats=8, static_gradient_hz_per_m=(5000.0, 5000.0, 5000.0))
        data[method] = _play(spins, segments)
        readouts[method] = spins._readout
        assert spins.n_classes > 50  # split along (1, 1)
        assert (spins._dfr_max > 0) == b0_map
        if method == "fast":
            assert not dense  # no sum over every voxel of every class
    assert readouts["fast"]._nufft is None and readouts["fast"]._sparse is not None
    ref = data["direct"]
    assert np.linalg.norm(ref) > 0
    assert np.linalg.norm(data["fast"] - ref) / np.linalg.norm(ref) < 1e-6  # complex64 output

def _segments(seq_builder) -> list:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.seq"
        seq_builder().write(str(path))
        seq = pulseq_read.read(path)
    return list(compile_segments(seq, larmor_hz=LARMOR_HZ))


def _play(spins: SpinSystem, segments: list) -> np.ndarray:
    out = [spins.play(s.gradient, s.rf, s.adc) for s in segments]
    return np.concatenate([w.ravel() for o in out for w in o]).astype(np.complex128)


@pytest.mark.parametrize("maps", ["uniform", "b0-map", "t2prime", "coils-off-centre", "oblong-voxels",
                                  "static-gradient"])
@pytest.mark.parametrize("builder", ["radial", "gre"])
def test_fast_readout_matches_direct_sums(builder: str, maps: str) -> None:
    """Radial (NUFFT) and Cartesian (separable) windows, with and without off-resonance inside the classes
    (Taylor series) and T2′, and with a 3-channel ring array on a grid off the isocentre (the NUFFT's grid
    offset), and with voxels longer in y than in x (the cached sample phasors of x and y were once taken
    for each other when the two axes had as many voxels), give the direct sums' samples."""
    make = {"radial": lambda: pulseq_factory.radial(n_spokes=6), "gre": lambda: pulseq_factory.gre(n=32)}[builder]
    segments = _segments(make)
    phantom = shepp_logan(32)
    if maps == "b0-map":
        xx = np.linspace(-1.0, 1.0, 32)
        phantom.b0_offset_hz[...] = 40.0 * xx[None, :] * xx[:, None]
    elif maps == "t2prime":
        phantom = dataclasses.replace(phantom, t2prime_s=np.where(phantom.pd > 0.5, 0.02, 0.05))
    kwargs = {}
    if maps == "oblong-voxels":
        phantom = dataclasses.replace(phantom, voxel_size_m=(0.008, 0.011, 0.01))
    if maps == "coils-off-centre":
        phantom = dataclasses.replace(phantom, origin_m=(0.013, -0.021, 0.0))
        kwargs["coil"] = loop_ring(3, 0.154)
    if maps == "static-gradient":  # a prescan's shim: the Cartesian phase moment drifts through the window
        kwargs["static_gradient_hz_per_m"] = (-3.0, 8.5, 0.5)
    data = {}
    for method in ("fast", "direct"):
        spins = SpinSystem(phantom, isochromats=8, **kwargs)
        spins._readout.method = method
        assert spins._readout._r2p.any() == (maps == "t2prime")
        data[method] = _play(spins, segments)
    ref = data["direct"]
    assert np.linalg.norm(ref) > 0
    assert np.linalg.norm(data["fast"] - ref) / np.linalg.norm(ref) < 1e-6  # complex64 output


def _synthetic(trajectory: str, n: int = 64, n_states: int = 60, n_t: int = 64) -> tuple[Readout, tuple]:
    """A read-out of the Shepp–Logan geometry and ``n_states`` transverse states inside the band, over one
    window whose moment sweeps along x (Cartesian) or along a 30 degree line (radial)."""
    spins = SpinSystem(shepp_logan(n), isochromats=4)
    readout = spins._readout
    rng = np.random.default_rng(3)
    half = 0.5 / spins._voxel[0]
    f_k = np.zeros((n_states, 3))
    f_k[:, :2] = rng.uniform(-0.5 * half, 0.5 * half, (n_states, 2))
    f_k[:, 2] = rng.uniform(-50.0, 50.0, n_states)
    f = rng.standard_normal((n_states, spins.n_classes, 4)) + 0j
    sweep = np.linspace(-half, half, n_t)
    angle = 0.0 if trajectory == "cartesian" else np.pi / 6
    dm = np.stack((np.cos(angle) * sweep, np.sin(angle) * sweep, np.zeros(n_t)))
    dt = np.linspace(0.0, 5e-3, n_t)
    decay = np.exp(-dt[None, :] / 0.1) * np.ones((spins.n_classes, 1))
    return readout, (f_k, np.zeros(n_states), f, dm, dt, decay)


@pytest.mark.parametrize("case", ["cartesian", "radial", "b0-map", "radial-b0-map"])
def test_channels_share_the_states_and_each_sees_its_own_maps(case: str) -> None:
    """A read-out with ``sens`` (3 channels) gives, channel by channel, what a one-channel read-out of the
    maps ``sens_n · pd`` gives from the same states: the stacked plane sums are the channels' own, and the
    slab sums and decay are shared."""
    n, n_classes = 24, 3
    rng = np.random.default_rng(5)
    pd = rng.uniform(0.0, 1.0, (n_classes, n, n))
    sens = rng.standard_normal((3, n_classes, n, n)) + 1j * rng.standard_normal((3, n_classes, n, n))
    dfr = 20.0 * rng.standard_normal(pd.shape) if "b0-map" in case else np.zeros(pd.shape)
    dfr_max = float(np.abs(dfr).max())
    d = 0.256 / n
    x = (np.arange(n) - n // 2) * d + 0.004  # off the isocentre, as a posed phantom's grid
    y = (np.arange(n) - n // 2) * d - 0.007
    voxel = (d, d, 0.01)
    iso = ((np.arange(4) + 0.5) / 4 - 0.5) * 0.01
    geometry = (x, y, voxel, iso, np.zeros(n_classes), 2)
    joint = Readout(pd, dfr, dfr_max, np.zeros(n_classes), *geometry, sens=sens)
    half = 0.5 / d
    f_k = np.zeros((20, 3))
    f_k[:, :2] = rng.uniform(-0.4 * half, 0.4 * half, (20, 2))
    f_k[:, 2] = rng.uniform(-50.0, 50.0, 20)
    f = rng.standard_normal((20, n_classes, 4)) + 1j * rng.standard_normal((20, n_classes, 4))
    sweep = np.linspace(-half, half, 40)
    angle = np.pi / 6 if "radial" in case else 0.0
    dm = np.stack((np.cos(angle) * sweep, np.sin(angle) * sweep, np.zeros(40)))
    dt = np.linspace(0.0, 4e-3, 40)
    decay = np.exp(-dt[None, :] / 0.1) * np.ones((n_classes, 1))
    args = (f_k, np.zeros(20), f, dm, dt, decay)
    got = joint.signal(*args)
    assert got.shape == (3, 40)
    for ch in range(3):
        alone = Readout(pd * sens[ch], dfr, dfr_max, np.zeros(n_classes), *geometry)
        want = alone.signal(*args)
        assert want.shape == (1, 40)
        assert np.abs(got[ch] - want[0]).max() < 1e-9 * np.abs(want).max()


def _cpu(readout: Readout, args: tuple) -> float:
    best = np.inf
    for _ in range(3):
        t = time.process_time()
        readout.signal(*args)
        best = min(best, time.process_time() - t)
    return best


def test_a_radial_window_is_not_summed_voxel_by_voxel() -> None:
    """The old read-out summed every voxel at every sample of a non-separable window (a 64-spoke radial GRE
    took 475 s): at 128 x 128 the NUFFT must take well under half the direct sums' CPU time (best of 3;
    measured ~4x less; the gap grows with the grid, as nx·ny against width²)."""
    readout, args = _synthetic("radial", n=128, n_states=150)
    fast = _cpu(readout, args)
    readout.method = "direct"
    direct = _cpu(readout, args)
    assert fast < 0.5 * direct, (fast, direct)


def test_readout_runs_blas_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    inner = Readout._signal

    def spy(self: Readout, *args: object) -> np.ndarray:
        seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return inner(self, *args)

    monkeypatch.setattr(Readout, "_signal", spy)
    readout, args = _synthetic("cartesian", n=16, n_states=4, n_t=8)
    readout.signal(*args)
    assert seen and seen[0] and all(t == signal_mod.BLAS_THREADS == 1 for t in seen[0])


def test_bench_physics_tiny_mode() -> None:
    """The benchmark end to end at 16 x 16 (4 spokes), without MRzeroCore: every case a completed scan."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_physics.py"), "--n", "16", "--spokes",
                           "4", "--no-mrzero", "--no-targets", "--json", "--cases", "gre_2d,tse_2d,epi_2d,radial_gre"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {r["case"]: r for r in report["results"]}
    assert set(rows) == {"gre_2d", "tse_2d", "epi_2d", "radial_gre"}
    for r in rows.values():
        assert r["outcome"] == "completed"
        assert r["duration_s"] > 0 and r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_mb"] > 0
        assert r["real_time_factor"] == pytest.approx(r["duration_s"] / r["wall_s"])
        assert r["speedup"] is None
    assert rows["radial_gre"]["kind"] == "radial"


def test_bench_physics_against_mrzero() -> None:
    pytest.importorskip("torch", reason="MRzeroCore needs torch (./setup-env bench)")
    pytest.importorskip("MRzeroCore", reason="MRzeroCore is optional (./setup-env bench)")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_physics.py"), "--n", "16", "--no-targets",
                           "--json", "--cases", "gre_2d"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    assert row["mrzero_wall_s"] > 0 and row["speedup"] == pytest.approx(row["mrzero_wall_s"] / row["wall_s"])


@pytest.mark.parametrize("beyond", [-2e-4, 2e-4])
def test_the_band_edge_line_survives_a_hair_of_extra_moment(beyond):
    """A scan whose grid equals the phantom's samples its first line at k = -1/(2 voxel): a shim's static
    gradient or Pulseq's rounding moves it a hair outside, and the line must not vanish (it was zeroed: the
    prescan's 8 Hz/m shim made one k-space line of gre_2d zero)."""
    from tests.test_bloch import adc_program, block_pulse, gradient, rf_program

    n, fov = 16, 0.256
    spins = SpinSystem(shepp_logan(n, fov_m=fov))
    edge = -0.5 * n / fov * (1 + beyond)  # 1/m: the band's edge, a hair inside or outside
    area_t = 1e-3  # a constant gradient from t = 1 ms reaches the edge at t = 2 ms
    g = edge / area_t
    grad = gradient(0.0, 3e-3, x=[(np.array([1e-3, 2e-3, 2e-3 + 1e-9]), np.array([g, g, 0.0]))])
    out = spins.play(grad, rf_program(0.0, 3e-3, [block_pulse(0.0, np.pi / 2)]),
                     adc_program(0.0, 3e-3, [(2.2e-3, 4, 10e-6, 0.0, 0.0)]))[0]
    assert np.abs(out).min() > 0.0


def _states_3d() -> tuple[Readout, tuple, int]:
    """A 3D read-out (one plane per class) and transverse states in groups of 4 that share an in-plane
    moment and differ in k_z, some of them leaving the band along z during the window (whose z moment
    drifts); returns the read-out, the signal's arguments and the number of distinct in-plane moments."""
    n, n_classes, n_xy, per_xy, n_t = 16, 3, 6, 4, 24
    rng = np.random.default_rng(11)
    d, dz = 0.256 / n, 0.008
    x = (np.arange(n) - n // 2) * d
    pd = rng.uniform(0.0, 1.0, (n_classes, n, n))
    z_class = np.array([-dz, 0.0, 2 * dz])
    readout = Readout(pd, np.zeros(pd.shape), 0.0, np.zeros(n_classes), x, x.copy(), (d, d, dz), np.zeros(1),
                      z_class, 3)
    half, half_z = 0.5 / d, 0.5 / dz
    xy = rng.uniform(-0.4 * half, 0.4 * half, (n_xy, 2))
    f_k = np.zeros((n_xy * per_xy, 3))
    f_k[:, :2] = np.repeat(xy, per_xy, axis=0)
    f_k[:, 2] = rng.uniform(-1.3 * half_z, 1.3 * half_z, n_xy * per_xy)
    f = (rng.standard_normal((f_k.shape[0], n_classes, 1)) + 1j * rng.standard_normal((f_k.shape[0], n_classes, 1)))
    sweep = np.linspace(-half, half, n_t)
    dm = np.stack((sweep, np.zeros(n_t), np.linspace(-0.3 * half_z, 0.3 * half_z, n_t)))
    dt = np.linspace(0.0, 3e-3, n_t)
    decay = np.exp(-dt[None, :] / np.array([0.05, 0.1, 0.2])[:, None]) + 0j
    return readout, (f_k, np.zeros(f_k.shape[0]), f, dm, dt, decay), n_xy


def test_3d_readout_matches_the_sum_over_states_and_voxels() -> None:
    """In 3D, states that share an in-plane moment share one plane sum while each keeps its own z phase
    and its own band along z: the signal equals the sum, state by state and voxel by voxel, of
    ``F_j[c] exp(2πi z_c (k_z + Δm_z)) decay_c Σ_v pd_c exp(2πi k·r_v)`` over the states in the band on
    every axis."""
    readout, args, _ = _states_3d()
    f_k, _, f, dm, _, decay = args
    got = readout.signal(*args)[0]
    x = readout._x
    want = np.zeros(dm.shape[1], np.complex128)
    for j in range(f_k.shape[0]):
        kappa = f_k[j][:, None] + dm  # (3, T)
        inside = np.all(np.abs(kappa) * np.array(readout._voxel)[:, None] <= signal_mod.BAND, axis=0)
        for t in np.flatnonzero(inside):
            plane = np.einsum("cyx,y,x->c", readout._pd, np.exp(2j * np.pi * kappa[1, t] * x),
                              np.exp(2j * np.pi * kappa[0, t] * x))
            want[t] += np.sum(f[j, :, 0] * np.exp(2j * np.pi * readout._z_class * kappa[2, t]) * decay[:, t] * plane)
    assert np.count_nonzero(want) > 0
    assert np.abs(got - want).max() < 1e-9 * np.abs(want).max()


def test_3d_states_differing_only_in_kz_share_their_plane_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plane sum (the costly part: every voxel of every class) is taken once per in-plane moment, not
    once per state: states that differ only in k_z see the same voxels (gre_3d's read-outs)."""
    readout, args, n_xy = _states_3d()
    groups = []
    inner = Readout._plane

    def counting(self, kx, *rest):
        groups.append(kx.shape[0])
        return inner(self, kx, *rest)

    monkeypatch.setattr(Readout, "_plane", counting)
    readout.signal(*args)
    assert sum(groups) == n_xy


def _drifting(read: str, n_states: int = 12, n_t: int = 48) -> tuple[Readout, tuple]:
    """A 3D read-out on a grid off the isocentre and a Cartesian window read along ``read`` (x or y) whose
    other moment drifts by 0.05 cycles across the field of view (a static gradient: a shim)."""
    n, n_classes = 24, 5
    rng = np.random.default_rng(17)
    d, dz = 0.256 / n, 0.008
    x = (np.arange(n) - n // 2) * d + 0.006
    y = (np.arange(n) - n // 2) * d - 0.011
    pd = rng.uniform(0.0, 1.0, (n_classes, n, n))
    readout = Readout(pd, np.zeros(pd.shape), 0.0, np.zeros(n_classes), x, y, (d, d, dz), np.zeros(1),
                      dz * np.arange(n_classes), 3)
    half = 0.5 / d
    f_k = np.zeros((n_states, 3))
    f_k[:, :2] = rng.uniform(-0.4 * half, 0.4 * half, (n_states, 2))
    f_k[:, 2] = rng.uniform(-0.3 / dz, 0.3 / dz, n_states)
    f = rng.standard_normal((n_states, n_classes, 1)) + 1j * rng.standard_normal((n_states, n_classes, 1))
    dm = np.zeros((3, n_t))
    along, across = (0, 1) if read == "x" else (1, 0)
    dm[along] = np.linspace(-half, half, n_t)
    dm[across] = np.linspace(0.0, 0.05 / (n * d), n_t)
    dt = np.linspace(0.0, 3e-3, n_t)
    decay = np.exp(-dt[None, :] / 0.08) * np.ones((n_classes, 1)) + 0j
    return readout, (f_k, np.zeros(n_states), f, dm, dt, decay)


@pytest.mark.parametrize("read", ["x", "y"])
def test_a_cartesian_window_under_a_static_gradient_stays_separable(read: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shim's static gradient makes the phase moment of a Cartesian read-out drift a little through the
    window: the plane sums are still two matrix products (a short Taylor series of the drift), not the
    NUFFT (gre_3d spent two thirds of its run gathering its 279 maps' NUFFT taps), and give the direct sums
    to 1e-9."""
    readout, args = _drifting(read)
    readout.method = "direct"
    want = readout.signal(*args)
    readout.method = "fast"

    def no_nufft(self, kx, ky):  # noqa: ANN001, ANN202
        raise AssertionError("a Cartesian window under a static gradient went through the NUFFT")

    monkeypatch.setattr(PlaneNufft, "__call__", no_nufft)
    got = readout.signal(*args)
    assert np.count_nonzero(want) > 0
    assert np.abs(got - want).max() < 1e-9 * np.abs(want).max()


def test_cached_drift_products_equal_fresh_ones() -> None:
    """The drift series' first products are cached by the quantised reference moment: after other windows
    (another partition: moments a few 1e-4 /m apart, other amplitudes) a read-out holds, bit for bit, the
    products a fresh one computes, and gives the same signal (to 1e-12: the sample phasors are cached by
    their moment rounded to 1e-6 /m, as before); a repeated window computes no new product."""
    fresh, args = _drifting("x")
    warm, _ = _drifting("x")
    f_k, tau, f, dm, dt, decay = args
    shifted = f_k + np.array([3e-4, -2e-4, 5.0])
    warm.signal(shifted, tau, 0.5 * f, dm, dt, decay)
    got = warm.signal(*args)
    want = fresh.signal(*args)
    assert np.abs(got - want).max() < 1e-12 * np.abs(want).max()
    assert fresh._drift_cache and set(fresh._drift_cache) <= set(warm._drift_cache)
    assert all(np.array_equal(v, warm._drift_cache[k]) for k, v in fresh._drift_cache.items())
    seen = dict(warm._drift_cache)
    again = warm.signal(*args)
    assert np.array_equal(again, got)
    assert warm._drift_cache.keys() == seen.keys() and all(warm._drift_cache[k] is v for k, v in seen.items())


@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-2**62, 2**62), st.integers(-1, 1)), max_size=60),
       st.integers(1, 3))
def test_unique_rows_is_numpys_unique_along_rows(rows: list[tuple[int, int, int]], width: int) -> None:
    """The read-out groups its states by ``unique_rows``: the same first indices and inverse as
    ``np.unique(axis=0)``, repeated rows, one column, huge values and no rows included."""
    key = np.array(rows, np.int64).reshape(-1, 3)[:, :width]
    first, inverse = unique_rows(key)
    if not key.shape[0]:
        assert first.size == 0 and inverse.size == 0
        return
    _, want_first, want_inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    assert np.array_equal(first, want_first)
    assert np.array_equal(inverse, want_inverse.reshape(-1))
