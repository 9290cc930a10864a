"""The built-in sequence builders: limits, pypulseq interoperability, TE/TR, k-space grid and labels, for
single slices at the isocentre and for multi-slice, off-centre, oblique, 3D and three-plane geometries."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pypulseq as pp
import pytest

from scanctl.config import profile as profiles
from scanctl.sequence import pulseq_write
from scanctl.sequence.build import rf_spoil_phases
from scanctl.sequence.builders import BUILDERS, Geometry, ParameterError, build
from scanctl.sequence.builders.gre_2d import GreParams, gre_2d
from scanctl.sequence.builders.tse_2d import line_order
from scanctl.sequence.checks import check
from scanctl.sequence.labels import label_values
from scanctl.sequence.model import Sequence
from scanctl.sequence.waveforms import adc_sample_times, kspace_adc, rf_centres

PROFILE = profiles.load()
T_TOL = 1e-9  # s: TE and TR are exact on the rasters
K_TOL = 1e-6  # in units of 1/FOV

CASES = {
    "gre_default": ("gre_2d", {}),
    "gre_avg_dummy": ("gre_2d", dict(matrix=(32, 32), averages=2, dummy_scans=3)),
    "gre_rect_dwell": ("gre_2d", dict(matrix=(64, 48), dwell_s=10e-6, fov_m=0.2, tr_s=0.012, te_s=0.005,
                                      slice_thickness_m=0.003, flip_angle_deg=30)),
    "se_small": ("se_2d", dict(matrix=(32, 32), tr_s=0.1, te_s=0.02, averages=2, dummy_scans=1)),
    "se_160": ("se_2d", dict(matrix=(64, 64), tr_s=0.05, te_s=0.012, refocusing_angle_deg=160,
                             readout_bandwidth_hz_per_pixel=400)),
    "tse_linear": ("tse_2d", dict(matrix=(32, 32), etl=8, tr_s=0.3, te_s=0.05, averages=2, dummy_scans=1)),
    "tse_centric": ("tse_2d", dict(matrix=(32, 32), etl=4, ordering="centric", tr_s=0.2, te_s=0.01)),
    "epi_small": ("epi_2d", dict(matrix=(32, 32), averages=2, dummy_scans=1, te_s=0.02, tr_s=0.06)),
    "epi_default": ("epi_2d", {}),
    # Geometry: multi-slice, off-centre, rectangular FOV, oblique and non-transverse, 3D, three planes.
    "gre_ms_oblique": ("gre_2d", dict(matrix=(32, 24), fov_m=0.22, fov_phase_m=0.165, tr_s=0.03, averages=2,
                                      dummy_scans=2)),
    "se_ms_sagittal": ("se_2d", dict(matrix=(16, 16), tr_s=0.12, te_s=0.02)),
    "tse_ms_coronal": ("tse_2d", dict(matrix=(16, 16), etl=4, tr_s=0.3, te_s=0.03, dummy_scans=1)),
    "epi_ms_shifted": ("epi_2d", dict(matrix=(16, 16), fov_phase_m=0.2, te_s=0.015, tr_s=0.09, averages=2)),
    "gre_3d_small": ("gre_3d", dict(matrix=(16, 12, 8), slice_thickness_m=0.064, averages=2, dummy_scans=2)),
    "localizer_small": ("localizer", dict(matrix=(16, 16), dummy_scans=1)),
}
#: The geometry of each case (default: one transverse slice at the isocentre).
GEOMETRIES = {
    "gre_ms_oblique": Geometry(normal=(0.3, -0.2, 1.0), inplane_rotation_deg=25.0, slices=3, slice_gap_mm=1.0,
                               position_mm=(8.0, -12.0, 15.0)),
    "se_ms_sagittal": Geometry(orientation="sagittal", slices=2, slice_gap_mm=2.0, slice_order="descending",
                               position_mm=(-10.0, 5.0, 0.0), patient_position="FFS"),
    "tse_ms_coronal": Geometry(orientation="coronal", slices=2, slice_order="sequential", position_mm=(0, 20.0, 0)),
    "epi_ms_shifted": Geometry(slices=3, slice_gap_mm=0.5, position_mm=(20.0, -15.0, -30.0)),
    "gre_3d_small": Geometry(normal=(0.0, 0.5, 1.0), position_mm=(0.0, 0.0, 10.0)),
    "localizer_small": Geometry(slices=2, slice_gap_mm=10.0, position_mm=(0.0, 0.0, 5.0)),
}


@dataclass
class Measured:
    """What a sequence does, measured from its events alone."""

    seq: Sequence
    fov: float
    nx: int
    k: np.ndarray  # (3, n_adc, nx) logical (read, phase, slice) in units of 1/FOV of each axis
    labels: dict[str, np.ndarray]  # per ADC block
    t_exc: np.ndarray
    te: np.ndarray  # per ADC block whose read-out crosses the k-space centre (ky = 0)


def block_rotations(seq: Sequence) -> np.ndarray:
    """``(blocks, 3, 3)``: each block's ROTATIONS matrix (the identity where it has none)."""
    out = np.tile(np.eye(3), (len(seq.blocks), 1, 1))
    spec = seq.extensions.specs.get("ROTATIONS")
    if spec is not None:
        which, rows = seq.extensions.entries(seq.blocks.ext, "ROTATIONS")
        out[which] = np.asarray(spec.columns["matrix"])[rows]
    return out


def logical_kspace(seq: Sequence) -> np.ndarray:
    """k at every ADC sample ``(3, samples)`` in the logical axes: the physical k turned back by each ADC
    block's rotation (every builder keeps one rotation from an excitation to its read-outs)."""
    k = kspace_adc(seq)
    _, blocks = adc_sample_times(seq)
    rot = block_rotations(seq)[blocks]
    return np.einsum("nji,jn->in", rot, k)


def measure(seq: Sequence) -> Measured:
    fovs = np.array([float(v) for v in seq.definitions["FOV"].split()])
    fov = float(fovs[0])
    t, blocks = adc_sample_times(seq)
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)
    nx = int(seq.adc.num_samples[seq.blocks.adc[adc_blocks[0]]])
    k = (logical_kspace(seq) * fovs[:, None]).reshape(3, adc_blocks.size, nx)
    labels = {name: v[adc_blocks] for name, v in label_values(seq).items()}
    t_rf, _, rows = rf_centres(seq)
    t_exc = t_rf[seq.rf.use[rows] == ord("e")]
    centre = np.flatnonzero((np.abs(k[0].ravel()) < K_TOL) & (np.abs(k[1].ravel()) < K_TOL))
    tc = t.reshape(adc_blocks.size, nx).ravel()[centre]
    last_exc = t_exc[np.searchsorted(t_exc, tc, side="right") - 1]
    return Measured(seq, fov, nx, k, labels, t_exc, tc - last_exc)


@pytest.fixture(scope="module", params=list(CASES))
def built(request) -> tuple[str, dict, Measured]:
    name, params = CASES[request.param]
    return name, params, measure(build(name, PROFILE, GEOMETRIES.get(request.param), **params))


def shape_of(m: Measured, name: str, params: dict) -> tuple[int, int]:
    """(slices per TR, partitions) of a built case, from its labels."""
    p = BUILDERS[name].params.from_mapping(params)
    slc = m.labels["SLC"]
    per_tr = len(set(slc.tolist())) if name != "localizer" else len(set(slc.tolist())) // 3
    return per_tr, (p.matrix[2] if len(p.matrix) == 3 else 1)


def test_every_builder_is_covered():
    assert {name for name, _ in CASES.values()} == set(BUILDERS)


def test_passes_every_check_against_the_profile(built):
    _, _, m = built
    report = check(m.seq, PROFILE)
    assert report.violation_counts == {}, [v.message for v in report.violations[:5]]
    assert (m.seq.blocks.duration_ticks > 0).all()  # no empty fill blocks


def test_te_and_tr_are_the_requested_values(built):
    name, params, m = built
    p = BUILDERS[name].params.from_mapping(params)
    slices, nz = shape_of(m, name, params)
    planes = 3 if name == "localizer" else 1
    n_slc = slices * planes
    assert m.te.size == p.averages * n_slc * nz  # one k-space centre sample per average, slice and partition
    assert np.allclose(m.te, p.te_s, rtol=0, atol=T_TOL)
    assert np.allclose(np.diff(m.t_exc), p.tr_s / slices, rtol=0, atol=T_TOL)  # slices spread evenly over TR
    per_average = {"tse_2d": p.matrix[1] // getattr(p, "etl", 1), "epi_2d": 1}.get(name, p.matrix[1] * nz)
    # excitations: dummies first (per plane), every slice once per TR
    assert m.t_exc.size == planes * slices * (p.dummy_scans + p.averages * per_average)
    assert m.seq.duration_s == pytest.approx(m.t_exc.size * p.tr_s / slices)
    assert float(m.seq.definitions["TE"]) == pytest.approx(p.te_s)
    assert float(m.seq.definitions["TR"]) == pytest.approx(p.tr_s)


def test_kspace_is_the_cartesian_grid_once_per_average(built):
    name, params, m = built
    p = BUILDERS[name].params.from_mapping(params)
    nx, ny = p.matrix[0], p.matrix[1]
    k = m.k
    assert np.abs(k - np.round(k)).max() < K_TOL  # multiples of 1/FOV
    if len(p.matrix) == 2:
        assert np.abs(k[2]).max() < K_TOL  # slice rephased
    reverse = m.labels.get("REV", np.zeros(k.shape[1], np.int64)).astype(bool)
    samples = np.arange(nx) - nx // 2
    assert np.allclose(k[0][~reverse], samples, atol=K_TOL)
    assert np.allclose(k[0][reverse], -samples - 1, atol=K_TOL)  # backwards: nx/2 - 1 down to -nx/2
    ky = np.round(k[1]).astype(int)
    assert (ky == ky[:, :1]).all()  # one ky per read-out
    avg, slc = m.labels["AVG"], m.labels["SLC"]
    assert sorted(set(avg.tolist())) == list(range(p.averages))
    nz = p.matrix[2] if len(p.matrix) == 3 else 1
    kz = np.round(k[2]).astype(int)
    assert (kz == kz[:, :1]).all()
    grid = sorted((y, z) for z in range(-(nz // 2), nz - nz // 2) for y in range(-ny // 2, ny // 2))
    for a in range(p.averages):
        for s_ in set(slc.tolist()):
            sel = (avg == a) & (slc == s_)
            assert sorted(zip(ky[sel, 0].tolist(), kz[sel, 0].tolist(), strict=True)) == grid


def test_labels_sort_every_line_once(built):
    name, params, m = built
    p = BUILDERS[name].params.from_mapping(params)
    ny = p.matrix[1]
    lin, slc = m.labels["LIN"], m.labels["SLC"]
    assert np.array_equal(lin, np.round(m.k[1, :, 0]).astype(int) + ny // 2)  # the label names the ky line
    slices, nz = shape_of(m, name, params)
    planes = 3 if name == "localizer" else 1
    assert sorted(set(slc.tolist())) == list(range(slices * planes))  # SLC: 0 .. slices - 1 per plane
    if nz > 1:
        assert np.array_equal(m.labels["PAR"], np.round(m.k[2, :, 0]).astype(int) + nz // 2)
    for a in range(p.averages):
        for s_ in range(slices * planes):
            assert sorted(lin[(m.labels["AVG"] == a) & (slc == s_)].tolist()) == sorted(list(range(ny)) * nz)
    expected = {"LIN", "SLC", "AVG"} | {"tse_2d": {"SEG"}, "epi_2d": {"REV"}, "gre_3d": {"PAR"}}.get(name, set())
    assert set(m.labels) == expected
    if name == "epi_2d":
        assert np.array_equal(m.labels["REV"], lin % 2)


def _pypulseq_system() -> pp.Opts:
    t = PROFILE.timing
    return pp.Opts(max_grad=40, grad_unit="mT/m", max_slew=200, slew_unit="T/m/s",
                   rf_dead_time=t.rf_dead_time_s, rf_ringdown_time=t.rf_ringdown_time_s,
                   adc_dead_time=t.adc_dead_time_s, grad_raster_time=t.gradient_raster_s,
                   rf_raster_time=t.rf_raster_s, adc_raster_time=t.adc_raster_s,
                   block_duration_raster=t.block_duration_raster_s, gamma=PROFILE.gamma_hz_per_t)


def without_rotations(text: str) -> str:
    """A Pulseq file's text with its ``ROTATIONS`` extension removed (pypulseq 1.5.0.post1 cannot read it:
    'Unknown section code: extension ROTATIONS'): its section, its list entries (the builders put them last in
    every list) and its name in ``RequiredExtensions``. The gradients then play in the logical axes."""
    found = re.search(r"^extension ROTATIONS (\d+)\n(?:.+\n)*\n", text, flags=re.M)
    if found is None:
        return text
    type_id = int(found.group(1))
    text = text[:found.start()] + text[found.end():]
    head, rest = text.split("[EXTENSIONS]\n", 1)
    table, tail = rest.split("\n\n", 1)
    rows = [line.split() for line in table.splitlines() if not line.startswith("#")]
    gone = {int(r[0]): int(r[3]) for r in rows if int(r[1]) == type_id}
    assert all(nxt == 0 for nxt in gone.values())  # rotations end their lists
    kept = "".join(f"{r[0]} {r[1]} {r[2]} {0 if int(r[3]) in gone else r[3]}\n" for r in rows if int(r[0]) not in gone)
    blocks_head, blocks_rest = head.split("[BLOCKS]\n", 1)
    blocks, after = blocks_rest.split("\n\n", 1)
    fixed = []
    for line in blocks.splitlines():
        f = line.split()
        if not line.startswith("#") and len(f) == 8 and int(f[7]) in gone:
            f[7] = "0"
        fixed.append(" ".join(f) if not line.startswith("#") else line)
    head = blocks_head + "[BLOCKS]\n" + "\n".join(fixed) + "\n\n" + after
    head = re.sub(r"^RequiredExtensions ROTATIONS\n", "", head, flags=re.M)
    return head + "[EXTENSIONS]\n" + kept + "\n" + tail


def pypulseq_read(seq: Sequence, path) -> pp.Sequence:
    """pypulseq's reading of ``seq`` written by scanctl (without its rotations, see :func:`without_rotations`)."""
    text = pulseq_write.dumps(seq)[0].decode()
    path.write_text(without_rotations(text))
    ref = pp.Sequence(system=_pypulseq_system())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.read(str(path))
    return ref


def test_pypulseq_reads_the_written_file_and_agrees(built, tmp_path):
    _, _, m = built
    ref = pypulseq_read(m.seq, tmp_path / "seq.seq")
    fovs = np.array([float(v) for v in m.seq.definitions["FOV"].split()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, errors = ref.check_timing()
        assert ok, errors[:3]
        assert len(ref.block_events) == len(m.seq.blocks)
        assert ref.duration()[0] == pytest.approx(m.seq.duration_s, abs=1e-9)
        if len(m.seq.blocks) <= 2000:  # pypulseq's k-space is slow on the 128 x 128 sequence
            k_adc = ref.calculate_kspace()[0]  # logical: pypulseq read the file without its rotations
            assert np.abs(k_adc * fovs[:, None] - m.k.reshape(3, -1)).max() < 1e-3
    assert ref.get_definition("Name") == m.seq.definitions["Name"]


def _suggested(error: ParameterError) -> float:
    found = re.search(rf"\({error.key} = ([0-9.e+-]+)\)", str(error))
    assert found, str(error)
    return float(found.group(1))


@pytest.mark.parametrize("case", ["gre_avg_dummy", "se_small", "tse_linear", "tse_centric", "epi_small"])
def test_impossible_te_and_tr_name_the_minimum_which_then_works(case):
    name, params = CASES[case]
    with pytest.raises(ParameterError, match=r"te_s: 0\.5 ms is shorter than the minimum") as info:
        build(name, PROFILE, **{**params, "te_s": 0.0005})
    assert info.value.key == "te_s"
    te_min = _suggested(info.value)
    with pytest.raises(ParameterError, match=r"tr_s: 1 ms is shorter than the minimum .* at TE") as info:
        build(name, PROFILE, **{**params, "te_s": te_min, "tr_s": 0.001})
    tr_min = _suggested(info.value)
    m = measure(build(name, PROFILE, **{**params, "te_s": te_min, "tr_s": tr_min}))
    assert np.allclose(m.te, te_min, atol=T_TOL)
    assert np.allclose(np.diff(m.t_exc), tr_min, atol=T_TOL)
    assert check(m.seq, PROFILE).ok
    assert (m.seq.blocks.duration_ticks > 0).all()
    # The minima are tight: one step of the timing grid less is refused.
    p = BUILDERS[name].params.from_mapping(params)
    centre_echo = p.etl // 2 if name == "tse_2d" and p.ordering == "linear" else 0
    te_step = {"se_2d": 2e-5, "tse_2d": 2e-5 * (centre_echo + 1)}.get(name, 1e-5)
    with pytest.raises(ParameterError, match="te_s"):
        build(name, PROFILE, **{**params, "te_s": te_min - te_step})
    with pytest.raises(ParameterError, match="tr_s"):
        build(name, PROFILE, **{**params, "te_s": te_min, "tr_s": tr_min - 1e-5})


def test_gre_rf_spoiling_and_adc_phase():
    seq = build("gre_2d", PROFILE, matrix=(16, 16), dummy_scans=4)
    exc_blocks = np.flatnonzero(seq.blocks.rf >= 0)
    phases = seq.rf.phase_rad[seq.blocks.rf[exc_blocks]]
    assert np.allclose(phases, rf_spoil_phases(20))
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)
    tr_of_adc = np.searchsorted(exc_blocks, adc_blocks) - 1
    assert np.allclose(seq.adc.phase_rad[seq.blocks.adc[adc_blocks]], phases[tr_of_adc])
    assert tr_of_adc[0] == 4  # the dummy TRs have no ADC


def test_se_refocusing_at_half_te_and_tse_cpmg_timing():
    te = 0.02
    seq = build("se_2d", PROFILE, matrix=(16, 16), te_s=te, tr_s=0.05)
    t, _, rows = rf_centres(seq)
    use = seq.rf.use[rows]
    assert np.allclose(t[use == ord("r")] - t[use == ord("e")], te / 2, atol=T_TOL)
    assert np.allclose(seq.rf.phase_rad[rows[use == ord("r")]] - seq.rf.phase_rad[rows[use == ord("e")]],
                       math.pi / 2)

    etl, n_te = 8, 8 // 2 + 1
    seq = build("tse_2d", PROFILE, matrix=(32, 32), etl=etl, te_s=0.05, tr_s=0.3)
    esp = 0.05 / n_te
    t, _, rows = rf_centres(seq)
    use = seq.rf.use[rows]
    exc, ref = t[use == ord("e")], t[use == ord("r")].reshape(-1, etl)
    assert np.allclose(ref - exc[:, None], (np.arange(etl) + 0.5) * esp, atol=T_TOL)
    times, blocks = adc_sample_times(seq)
    centre = times.reshape(-1, 32)[:, 16].reshape(-1, etl)  # sample nx/2 of every echo
    assert np.allclose(centre - exc[:, None], (np.arange(etl) + 1) * esp, atol=T_TOL)
    seg = label_values(seq)["SEG"][np.flatnonzero(seq.blocks.adc >= 0)]
    assert np.array_equal(seg, np.tile(np.arange(etl), 32 // etl))
    assert seq.definitions["ETL"] == "8"


def test_tse_line_orders():
    linear = line_order(32, 8, "linear")
    assert linear.shape == (4, 8) and sorted(linear.ravel().tolist()) == list(range(32))
    assert np.argwhere(linear == 16)[0].tolist() == [0, 4]  # ky = 0 in echo etl/2 of the first shot
    centric = line_order(32, 8, "centric")
    assert sorted(centric.ravel().tolist()) == list(range(32))
    assert centric[0, 0] == 16  # ky = 0 first
    distance = np.abs(centric - 16)
    assert (np.diff(distance.max(axis=0)) >= 0).all()  # later echoes lie further out


@pytest.mark.parametrize(
    ("params", "key", "message"),
    [
        (dict(colour="red"), "colour", "unknown key"),
        (dict(fov_m="0.2"), "fov_m", "must be a number"),
        (dict(fov_m=True), "fov_m", "must be a number"),
        (dict(fov_m=5.0), "fov_m", "outside"),
        (dict(averages=2.0), "averages", "must be an integer"),
        (dict(averages=0), "averages", "outside"),
        (dict(matrix=[128]), "matrix", "two integers"),
        (dict(matrix=[127, 128]), "matrix[0]", "even"),
        (dict(matrix=[128, 4]), "matrix[1]", "outside"),
        (dict(dwell_s=10e-6, readout_bandwidth_hz_per_pixel=200), "dwell_s", "not both"),
        (dict(slice_thickness_m=0.0006, rf_duration_s=0.0005), "slice_thickness_m", "thinnest slice"),
        (dict(readout_bandwidth_hz_per_pixel=100_000), "readout_bandwidth_hz_per_pixel", "largest bandwidth"),
        (dict(dwell_s=1e-6), "dwell_s", "shortest dwell"),
        (dict(flip_angle_deg=120), "flip_angle_deg", "outside"),
    ],
)
def test_bad_parameters_name_the_parameter(params, key, message):
    with pytest.raises(ParameterError, match=message) as info:
        build("gre_2d", PROFILE, **params)
    assert info.value.key == key


def test_tse_parameter_checks_and_unknown_type():
    with pytest.raises(ParameterError, match="does not divide") as info:
        build("tse_2d", PROFILE, matrix=(32, 32), etl=5)
    assert info.value.key == "etl"
    with pytest.raises(ParameterError, match="must be one of linear, centric"):
        build("tse_2d", PROFILE, ordering="random")
    with pytest.raises(ParameterError, match="unknown sequence type 'flash'"):
        build("flash", PROFILE)


def test_python_api_params_and_overrides():
    p = GreParams(matrix=[32, 32], te_s=5e-3)  # a list is accepted and normalised
    assert p.matrix == (32, 32)
    seq = gre_2d(PROFILE, p, tr_s=0.012)
    assert seq.definitions["TR"] == "0.012" and seq.definitions["TE"] == "0.005"
    assert gre_2d(PROFILE, matrix=(16, 16)).definitions["FOV"] == "0.256 0.256 0.005"
    with pytest.raises(ParameterError, match="fov_m"):
        GreParams(fov_m=-1.0)
    rows = BUILDERS["tse_2d"].params.describe()
    assert {r["name"] for r in rows} >= {"etl", "ordering", "te_s", "tr_s", "matrix"}
