"""Geometry in the built-in sequences (issue 16, part 1): multi-slice, slice position by RF offsets, in-plane
FOV shift by ADC offsets, orientation by ROTATIONS, gre_3d, the localizer, the gradient system's linear region,
bad input, and the round trip through pypulseq and our own reader."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation as ScipyRotation

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.config.protocol import load_protocol
from scanctl.errors import ConfigError
from scanctl.sequence import pulseq_read, pulseq_write
from scanctl.sequence import waveforms as W
from scanctl.sequence.build import rf_spoil_phases
from scanctl.sequence.builders import BUILDERS, Geometry, ParameterError, build
from scanctl.sequence.checks import check
from scanctl.sequence.geometry import Orientation
from scanctl.sequence.labels import label_values
from scanctl.sequence.model import Sequence
from tests.test_builders import block_rotations, logical_kspace, pypulseq_read

PROFILE = profiles.load()
SMALL = dict(matrix=(16, 16), tr_s=0.05, te_s=0.005)


def _adc_blocks(seq: Sequence) -> np.ndarray:
    return np.flatnonzero(seq.blocks.adc >= 0)


def _rf_blocks(seq: Sequence, use: str = "e") -> np.ndarray:
    rf = np.flatnonzero(seq.blocks.rf >= 0)
    return rf[seq.rf.use[seq.blocks.rf[rf]] == ord(use)]


# ----------------------------------------------------------------------------------------------------------
# Slice positions, order and offsets
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gre_2d", "se_2d", "tse_2d", "epi_2d"])
def test_every_2d_builder_excites_each_slice_at_its_offset_in_the_slice_order(name):
    g = Geometry(normal=(0.2, 0.4, 1.0), inplane_rotation_deg=15, slices=4, slice_gap_mm=1.5,
                 position_mm=(5.0, -10.0, 20.0))
    params = {"tse_2d": dict(matrix=(16, 16), etl=4, tr_s=0.4, te_s=0.03),
              "epi_2d": dict(matrix=(16, 16), tr_s=0.12, te_s=0.015),
              "se_2d": dict(matrix=(16, 16), tr_s=0.2, te_s=0.02)}.get(name, SMALL)
    seq = build(name, PROFILE, g, **params)
    assert check(seq, PROFILE).violation_counts == {}
    stack = g.stack(0.005)
    slice_offsets = stack.centres_m() @ stack.orientation.matrix[:, 2]  # along the normal, position order
    exc = _rf_blocks(seq)
    rows = seq.blocks.rf[exc]
    amp = seq.grad.amplitude_hz_per_m[seq.blocks.grad[exc, 2]]  # the logical slice-select gradient
    # which position each excitation selects: the RF frequency over the gradient is the offset
    position = np.array([int(np.argmin(np.abs(slice_offsets - f / a)))
                         for f, a in zip(seq.rf.freq_hz[rows], amp, strict=True)])
    np.testing.assert_allclose(seq.rf.freq_hz[rows], amp * slice_offsets[position], rtol=1e-12, atol=1e-9)
    assert position[:4].tolist() == [0, 2, 1, 3]  # interleaved
    # the phase offset makes the pulse's phase at its centre the nominal one: 90 degrees (TSE), 0, or the RF
    # spoiling phase of the TR, the same for every slice of a TR (each slice sees the quadratic series)
    at_centre = seq.rf.phase_rad[rows] + 2 * math.pi * seq.rf.freq_hz[rows] * seq.rf.center_s[rows]
    nominal = {"tse_2d": math.pi / 2, "gre_2d": np.repeat(rf_spoil_phases(exc.size // 4), 4)}.get(name, 0.0)
    np.testing.assert_allclose(np.angle(np.exp(1j * (at_centre - nominal))), 0.0, atol=1e-9)
    if name in ("se_2d", "tse_2d"):  # refocusing pulses select the same slice as their excitation
        ref = seq.blocks.rf[_rf_blocks(seq, "r")]
        per = ref.size // exc.size
        np.testing.assert_allclose(seq.rf.freq_hz[ref].reshape(-1, per),
                                   np.repeat(seq.rf.freq_hz[rows][:, None], per, axis=1), rtol=1e-12)
    # SLC labels the slice by position: the excitation before each read-out
    adc = _adc_blocks(seq)
    slc = label_values(seq)["SLC"][adc]
    owner = np.searchsorted(exc, adc) - 1
    assert np.array_equal(slc, position[owner])
    assert float(seq.definitions["SliceThickness"]) == 0.005
    np.testing.assert_allclose(np.array(seq.definitions["SlicePositions"].split(), float).reshape(-1, 3),
                               stack.centres_m(), atol=1e-9)


def test_in_plane_offsets_are_on_the_adc_and_the_default_adds_nothing():
    g = Geometry(position_mm=(30.0, -20.0, 0.0))
    seq = build("gre_2d", PROFILE, g, matrix=(16, 16), dummy_scans=0)
    adc = _adc_blocks(seq)
    rows = seq.blocks.adc[adc]
    amp = seq.grad.amplitude_hz_per_m[seq.blocks.grad[adc, 0]]
    np.testing.assert_allclose(seq.adc.freq_hz[rows], amp * 0.030, rtol=1e-12)
    # phase: the RF spoiling phase, minus the read frequency's phase at the k-space centre sample, plus
    # 2 pi ky y_offset
    ky = logical_kspace(seq)[1].reshape(adc.size, 16)[:, 0]
    t_centre = (16 // 2 + 0.5) * seq.adc.dwell_s[rows]
    exc = _rf_blocks(seq)
    spoil = seq.rf.phase_rad[seq.blocks.rf[exc]][np.searchsorted(exc, adc) - 1]
    expected = spoil - 2 * math.pi * seq.adc.freq_hz[rows] * t_centre + 2 * math.pi * ky * -0.020
    np.testing.assert_allclose(np.angle(np.exp(1j * (seq.adc.phase_rad[rows] - expected))), 0.0, atol=1e-6)
    plain = build("gre_2d", PROFILE, matrix=(16, 16), dummy_scans=0)
    assert not plain.adc.freq_hz.any() and not plain.rf.freq_hz.any()
    assert "ROTATIONS" not in plain.extensions.specs and "SlicePositions" not in plain.definitions


def test_tr_minimum_grows_with_the_slice_count_and_is_named():
    one = 0.0
    for slices in (1, 3, 7):
        with pytest.raises(ParameterError, match=r"tr_s: 1 ms is shorter than the minimum") as info:
            build("gre_2d", PROFILE, Geometry(slices=slices), matrix=(16, 16), tr_s=0.001)
        assert info.value.key == "tr_s" and (slices == 1 or f"with {slices} slices" in str(info.value))
        least = float(re.search(r"\(tr_s = ([0-9.e-]+)\)", str(info.value)).group(1))
        if slices == 1:
            one = least
        assert least == pytest.approx(slices * one, rel=0.01)
        seq = build("gre_2d", PROFILE, Geometry(slices=slices), matrix=(16, 16), tr_s=least)
        assert check(seq, PROFILE).ok


# ----------------------------------------------------------------------------------------------------------
# Orientation: ROTATIONS
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("geometry", "rotated"), [
    (Geometry(), False),
    (Geometry(position_mm=(0, 0, 30.0), slices=3), False),
    (Geometry(orientation="sagittal"), True),
    (Geometry(orientation="coronal", inplane_rotation_deg=30), True),
    (Geometry(normal=(1.0, 1.0, 1.0)), True),
    (Geometry(patient_position="FFS"), True),  # transverse, but the patient lies the other way round
])
def test_one_rotation_per_gradient_block_none_at_the_identity(geometry, rotated):
    seq = build("gre_2d", PROFILE, geometry, **SMALL)
    assert ("ROTATIONS" in seq.extensions.specs) == rotated
    if not rotated:
        return
    which, rows = seq.extensions.entries(seq.blocks.ext, "ROTATIONS")
    assert np.array_equal(np.bincount(which, minlength=len(seq.blocks)) == 1, (seq.blocks.grad >= 0).any(axis=1))
    q = seq.extensions.specs["ROTATIONS"].columns["quaternion"][rows]
    expected = geometry.orientation_of().quaternion(geometry.patient_position)
    np.testing.assert_allclose(q, np.tile(expected, (q.shape[0], 1)), atol=1e-12)
    assert check(seq, PROFILE).violation_counts == {}


def test_the_localizer_plays_three_planes_each_with_its_rotation():
    seq = build("localizer", PROFILE, Geometry(slices=3, slice_gap_mm=10.0), matrix=(16, 16), dummy_scans=0)
    assert check(seq, PROFILE).violation_counts == {}
    adc = _adc_blocks(seq)
    slc = label_values(seq)["SLC"][adc]
    rot = block_rotations(seq)[adc]
    for plane, name in enumerate(("transverse", "sagittal", "coronal")):
        sel = (slc >= 3 * plane) & (slc < 3 * plane + 3)
        assert sorted(set(slc[sel].tolist())) == [3 * plane, 3 * plane + 1, 3 * plane + 2]
        np.testing.assert_allclose(rot[sel], np.tile(Orientation.named(name).matrix, (sel.sum(), 1, 1)), atol=1e-12)
        # the physical read-out runs along the plane's read direction
        k = W.kspace_adc(seq).reshape(3, adc.size, 16)[:, sel]
        read = k[:, :, -1] - k[:, :, 0]
        np.testing.assert_allclose(read / np.linalg.norm(read, axis=0), np.tile(
            Orientation.named(name).read[:, None], (1, sel.sum())), atol=1e-9)
    stacks = BUILDERS["localizer"].slice_stacks(BUILDERS["localizer"].params(), Geometry(slices=3, slice_gap_mm=10.0))
    centres = np.concatenate([s.centres_m() for s in stacks])
    np.testing.assert_allclose(np.array(seq.definitions["SlicePositions"].split(), float).reshape(-1, 3), centres)
    assert centres[3, 0] > centres[5, 0]  # sagittal SLC 3..5 run from left (+x) to right


# ----------------------------------------------------------------------------------------------------------
# gre_3d
# ----------------------------------------------------------------------------------------------------------


def test_gre_3d_encodes_partitions_of_the_slab_and_ships_at_64_64_32():
    seq = build("gre_3d", PROFILE, Geometry(position_mm=(0.0, 0.0, 16.0)), matrix=(16, 8, 8), slice_thickness_m=0.08)
    adc = _adc_blocks(seq)
    labels = label_values(seq)
    k = logical_kspace(seq).reshape(3, adc.size, 16)[:, :, 8]  # centre samples
    np.testing.assert_allclose(k[2] * 0.08, labels["PAR"][adc] - 4, atol=1e-6)
    assert sorted(set(labels["PAR"][adc].tolist())) == list(range(8))
    # the slab's RF frequency selects z = 16 mm; the ADC phase follows kz x 16 mm
    rows = seq.blocks.rf[_rf_blocks(seq)]
    gz = seq.grad.amplitude_hz_per_m[seq.blocks.grad[_rf_blocks(seq), 2]]
    np.testing.assert_allclose(seq.rf.freq_hz[rows] / gz, 0.016)
    assert seq.definitions["FOV"] == "0.256 0.256 0.08"
    protocol = load_protocol(Path(__file__).parents[1] / "protocols" / "gre_3d.toml")
    assert protocol.sequence_params.matrix == (64, 64, 32)
    big = protocol.build_sequence(PROFILE)
    assert check(big, PROFILE).ok and int((big.blocks.adc >= 0).sum()) == 64 * 32


# ----------------------------------------------------------------------------------------------------------
# Round trip: pypulseq (its own waveforms and k-space) and our reader
# ----------------------------------------------------------------------------------------------------------

ROUND_TRIP = {
    "oblique": ("gre_2d", dict(matrix=(16, 12), fov_phase_m=0.192, tr_s=0.05),
                Geometry(normal=(0.3, -0.5, 1.0), inplane_rotation_deg=40, slices=3, position_mm=(10, 5, -8))),
    "sagittal_se": ("se_2d", dict(matrix=(16, 16), tr_s=0.1, te_s=0.02), Geometry(orientation="sagittal", slices=2)),
    "epi_hfp": ("epi_2d", dict(matrix=(16, 16), tr_s=0.1, te_s=0.015),
                Geometry(orientation="coronal", slices=2, patient_position="HFP", position_mm=(0, 10, 0))),
    "gre_3d": ("gre_3d", dict(matrix=(16, 8, 4), slice_thickness_m=0.04), Geometry(normal=(0, 1, 1))),
    "localizer": ("localizer", dict(matrix=(16, 16), dummy_scans=0), Geometry(slices=2, slice_gap_mm=5.0)),
}


@pytest.fixture(scope="module", params=list(ROUND_TRIP))
def round_trip(request, tmp_path_factory) -> tuple[Sequence, object]:
    name, params, g = ROUND_TRIP[request.param]
    seq = build(name, PROFILE, g, **params)
    return seq, pypulseq_read(seq, tmp_path_factory.mktemp(request.param) / "seq.seq")


def test_pypulseq_waveforms_turned_by_the_file_quaternions_are_ours(round_trip):
    """pypulseq 1.5.0.post1 reads the file without its ROTATIONS (it cannot read them): its logical waveforms,
    turned block by block by scipy's matrix of each block's quaternion, are the physical waveforms we play."""
    seq, ref = round_trip
    q = np.zeros((len(seq.blocks), 4))
    q[:, 0] = 1.0
    spec = seq.extensions.specs.get("ROTATIONS")
    if spec is not None:
        which, rows = seq.extensions.entries(seq.blocks.ext, "ROTATIONS")
        q[which] = spec.columns["quaternion"][rows]
    mats = ScipyRotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy: (x, y, z, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        waves = ref.waveforms()
    starts = seq.block_start_s
    # sample inside every gradient raster interval, away from the blocks' edges
    t = np.arange(0, seq.duration_s, seq.rasters.gradient_s)[:-1] + 0.37 * seq.rasters.gradient_s
    block = np.searchsorted(starts, t, side="right") - 1
    logical = np.stack([np.interp(t, w[0], w[1], left=0.0, right=0.0) if w.size else np.zeros(t.size) for w in waves])
    expected = np.einsum("nij,jn->in", mats[block], logical)
    ours = np.stack([np.interp(t, w.t_s, w.g_hz_per_m, left=0.0, right=0.0)
                     for w in (W.axis_waveform(seq, a) for a in range(3))])
    # 1e-5 of the largest gradient: pypulseq's block start times, summed over the whole sequence, differ from
    # ours by ~1e-11 s, which on a ramp of 1.7e11 Hz/m/s is ~1.4e-6 of the maximum (measured)
    scale = np.abs(expected).max()
    assert np.abs(ours - expected).max() < 1e-5 * scale
    if spec is not None:
        assert not np.allclose(expected, logical)  # the rotations did something
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k_ref = np.asarray(ref.calculate_kspace()[0])
    adc_block = W.adc_sample_times(seq)[1]
    k_expected = np.einsum("nij,jn->in", mats[adc_block], k_ref)
    # pypulseq's calculate_kspace is off by up to 4e-4 1/m in a spin echo (1.3e-5 of the largest k, measured):
    # within 1e-3 of a k-space step (1/FOV), as tests/test_builders.py allows
    fov = max(float(v) for v in seq.definitions["FOV"].split())
    assert np.abs(W.kspace_adc(seq) - k_expected).max() < 1e-3 / fov


def test_our_reader_reads_back_exactly_what_was_built(round_trip):
    seq, _ = round_trip
    back = pulseq_read.parse(pulseq_write.dumps(seq)[0], path="built.seq")
    assert back.definitions.items() >= seq.definitions.items()
    for a in range(3):
        w0, w1 = W.axis_waveform(seq, a), W.axis_waveform(back, a)
        u = np.union1d(w0.t_s, w1.t_s)
        at = np.concatenate((u, 0.5 * (u[1:] + u[:-1])))
        g0 = np.interp(at, w0.t_s, w0.g_hz_per_m, left=0.0, right=0.0)
        g1 = np.interp(at, w1.t_s, w1.g_hz_per_m, left=0.0, right=0.0)
        assert np.abs(g1 - g0).max() <= 1e-7 * max(np.abs(g0).max(), 1.0)
    np.testing.assert_allclose(W.kspace_adc(back), W.kspace_adc(seq), rtol=0, atol=1e-6)
    for name, values in label_values(seq).items():
        assert np.array_equal(label_values(back)[name], values), name
    np.testing.assert_allclose(back.rf.freq_hz, seq.rf.freq_hz, rtol=1e-8)
    np.testing.assert_allclose(back.adc.freq_hz, seq.adc.freq_hz, rtol=1e-8)
    np.testing.assert_allclose(back.adc.phase_rad, seq.adc.phase_rad, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(block_rotations(back), block_rotations(seq), atol=1e-8)


# ----------------------------------------------------------------------------------------------------------
# Bad input: one ConfigError naming the key (exit 2 through the CLI)
# ----------------------------------------------------------------------------------------------------------

PROTOCOL = """\
[protocol]
name = "bad"
[sequence]
type = "{type}"
matrix = {matrix}
{extra}
[geometry]
{geometry}
[patient]
weight_kg = 70.0
"""

BAD = [
    # (sequence type, matrix, [sequence] extra, [geometry] body, key, message)
    ("gre_2d", "[32, 32]", "", "position_mm = [0.0, 0.0, 200.0]", "geometry.position_mm", "outside the gradient"),
    ("gre_2d", "[32, 32]", "tr_s = 1.0\nfov_m = 0.4", "slices = 30\nslice_gap_mm = 5.0", "sequence.fov_m",
     "linear region"),
    ("gre_2d", "[32, 32]", "", "slices = 3\nslice_gap_mm = -1.0", "geometry.slice_gap_mm", "overlap"),
    ("gre_2d", "[512, 32]", "fov_m = 0.05", "", "sequence.matrix[0]", "the largest for this FOV is"),
    ("gre_2d", "[32, 32, 16]", "", "", "sequence.matrix", "3D matrix"),
    ("gre_2d", "[32, 32]", "", 'orientation = "axial"', "geometry.orientation", "unknown 'axial'"),
    ("gre_2d", "[32, 32]", "", "normal = [0.0, 0.0, 0.0]", "geometry.normal", "not all zero"),
    ("gre_2d", "[32, 32]", "", 'orientation = "sagittal"\nnormal = [1.0, 0.0, 0.0]', "geometry.normal", "not both"),
    ("gre_3d", "[16, 16]", "", "", "sequence.matrix", "three integers"),
    ("gre_3d", "[16, 16, 8]", "", "slices = 2", "geometry.slices", "one slab"),
    ("localizer", "[16, 16]", "", 'orientation = "coronal"', "geometry.orientation", "three fixed planes"),
    ("gre_2d", "[32, 32]", "", "colour = 1", "geometry.colour", "unknown key"),
]


@pytest.mark.parametrize(("type_", "matrix", "extra", "geometry", "key", "message"), BAD,
                         ids=[f"{b[4]}-{i}" for i, b in enumerate(BAD)])
def test_bad_geometry_is_one_config_error_naming_the_key(tmp_path, capsys, type_, matrix, extra, geometry, key,
                                                         message):
    path = tmp_path / "p.toml"
    path.write_text(PROTOCOL.format(type=type_, matrix=matrix, extra=extra, geometry=geometry))
    with pytest.raises(ConfigError) as info:
        load_protocol(path).build_sequence(PROFILE)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}: ") and message in text, text
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and key in err and "Traceback" not in err


def test_unknown_patient_position_names_the_key(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PROTOCOL.format(type="gre_2d", matrix="[32, 32]", extra="", geometry="").replace(
        "weight_kg = 70.0", 'weight_kg = 70.0\npatient_position = "HFX"'))
    with pytest.raises(ConfigError, match=r"patient\.patient_position: unknown 'HFX'"):
        load_protocol(path)


def test_the_largest_read_out_matrix_named_is_encodable():
    with pytest.raises(ParameterError, match="the largest for this FOV is") as info:
        build("gre_2d", PROFILE, matrix=(512, 16), fov_m=0.05)
    largest = int(re.search(r"the largest for this FOV is (\d+)", str(info.value)).group(1))
    assert check(build("gre_2d", PROFILE, matrix=(largest, 16), fov_m=0.05, tr_s=0.1, te_s=0.02), PROFILE).ok
    with pytest.raises(ParameterError, match="matrix"):
        build("gre_2d", PROFILE, matrix=(largest + 2, 16), fov_m=0.05, tr_s=0.1, te_s=0.02)


def test_the_linear_region_comes_from_the_profile():
    text = (Path(__file__).parents[1] / "scanctl" / "profiles" / "default.toml").read_text()
    assert PROFILE.gradient.fov_m == 0.5  # the default when a profile says nothing
    small = profiles.parse(text.replace("[gradient]\n", "[gradient]\nfov_m = 0.3\n"), "small")
    assert small.gradient.fov_m == 0.3
    build("gre_2d", PROFILE, Geometry(position_mm=(0, 0, 120.0)), fov_m=0.15, **SMALL)
    build("gre_2d", small, Geometry(), fov_m=0.15, **SMALL)  # fits at the isocentre
    with pytest.raises(ParameterError, match=r"300 mm diameter \(gradient.fov_m") as info:
        build("gre_2d", small, Geometry(position_mm=(0, 0, 120.0)), fov_m=0.15, **SMALL)
    assert info.value.key == "geometry.position_mm"
    with pytest.raises(ParameterError, match=r"reduce the FOV") as info:
        build("gre_2d", small, Geometry(), **SMALL)  # 256 mm square: its corners are 181 mm out
    assert info.value.key == "fov_m"
    with pytest.raises(ConfigError, match="gradient.fov_m"):
        profiles.parse(text.replace("[gradient]\n", "[gradient]\nfov_m = 0.0\n"), "bad")


# ----------------------------------------------------------------------------------------------------------
# Property: any geometry builds a sequence within the limits, or is refused naming a key
# ----------------------------------------------------------------------------------------------------------

_COORD = st.floats(-300.0, 300.0, allow_nan=False)
_GEOMETRY = st.fixed_dictionaries({
    "position_mm": st.tuples(_COORD, _COORD, _COORD),
    "normal": st.one_of(st.none(), st.tuples(*(st.floats(-1.0, 1.0, allow_nan=False),) * 3)),
    "inplane_rotation_deg": st.floats(-360.0, 360.0, allow_nan=False),
    "slices": st.integers(1, 6),
    "slice_gap_mm": st.floats(-2.0, 30.0, allow_nan=False),
    "slice_order": st.sampled_from(["interleaved", "sequential", "descending"]),
    "patient_position": st.sampled_from(["HFS", "FFS", "HFP", "FFP"]),
})
_KEYS = {"tr_s", "te_s", "fov_m", "matrix[0]", "readout_bandwidth_hz_per_pixel", "slice_thickness_m"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["gre_2d", "se_2d", "tse_2d", "epi_2d", "gre_3d", "localizer"]), geometry=_GEOMETRY,
       fov=st.floats(0.05, 0.6), thickness=st.floats(0.001, 0.05))
def test_any_geometry_passes_the_checks_or_names_a_key(name, geometry, fov, thickness):
    params = {"matrix": (16, 16, 4) if name == "gre_3d" else (16, 16), "fov_m": fov, "tr_s": 0.5, "te_s": 0.03,
              "slice_thickness_m": thickness if name != "gre_3d" else 4 * thickness}
    if name == "tse_2d":
        params["etl"] = 4
    try:
        seq = build(name, PROFILE, Geometry(**geometry), **params)
    except ParameterError as exc:
        assert exc.key.startswith(("geometry.", "patient.")) or exc.key in _KEYS, str(exc)
        return
    report = check(seq, PROFILE)
    assert report.violation_counts == {}, [v.message for v in report.violations[:3]]


# ----------------------------------------------------------------------------------------------------------
# End to end on the simulators
# ----------------------------------------------------------------------------------------------------------

SCAN = """\
[protocol]
name = "shift"
[sequence]
type = "gre_2d"
fov_m = 0.256
matrix = [32, 32]
tr_s = 0.012
te_s = 0.005
flip_angle_deg = 30.0
[geometry]
position_mm = [{x}, {y}, {z}]
[patient]
weight_kg = 70.0
[phantom]
name = "shepp_logan"
matrix = 64
[acquisition]
noise_std = 0.0
"""


def _scan(tmp_path: Path, tag: str, x: float, y: float, z: float) -> np.ndarray:
    from scanctl.engine.session import run_scan

    d = tmp_path / tag
    d.mkdir()
    (d / "p.toml").write_text(SCAN.format(x=x, y=y, z=z))
    report = run_scan(d / "p.toml", PROFILE, d / "out")
    assert report.outcome == "completed", report.message
    return np.load(d / "out" / "image.npy")


def test_a_shifted_fov_shows_the_phantom_shifted_the_other_way(tmp_path):
    """The FOV moved by d = (+24 mm read, -16 mm phase) = (+3, -2) pixels, the phantom at the isocentre: the
    image is the centred one moved by -d, (-3, +2) pixels (columns x, rows y): the ADC offsets are right."""
    centred = _scan(tmp_path, "centred", 0.0, 0.0, 0.0)
    shifted = _scan(tmp_path, "shifted", 24.0, -16.0, 0.0)
    scale = np.abs(centred).max()
    assert scale > 0
    assert np.abs(np.roll(centred, (2, -3), axis=(-2, -1)) - shifted).max() < 1e-4 * scale
    assert np.abs(centred - shifted).max() > 0.1 * scale  # it did move
    report = json.loads((tmp_path / "shifted" / "out" / "report.json").read_text())
    assert report["protocol"]["geometry"]["position_mm"] == [24.0, -16.0, 0.0]  # the run report carries it


def test_a_slice_at_z20_images_something_else_than_at_the_isocentre(tmp_path):
    """The simulator's phantom here is the 2D one (the 3D phantom is another helper's, not on main yet), a thin
    slab at z = 0: a slice 20 mm up sees none of it. The raw data's excitation is 20 mm off by its RF offset."""
    centred = _scan(tmp_path, "z0", 0.0, 0.0, 0.0)
    up = _scan(tmp_path, "z20", 0.0, 0.0, 20.0)
    assert np.abs(centred - up).max() > 0.5 * np.abs(centred).max()
    seq = load_protocol(tmp_path / "z20" / "p.toml").build_sequence(PROFILE)
    exc = _rf_blocks(seq)
    gz = seq.grad.amplitude_hz_per_m[seq.blocks.grad[exc, 2]]
    np.testing.assert_allclose(seq.rf.freq_hz[seq.blocks.rf[exc]] / gz, 0.020, rtol=1e-12)


@pytest.mark.parametrize("name", ["t1_gre_multislice", "gre_3d", "localizer", "gre_oblique"])
def test_the_geometry_protocols_pass_the_safety_prediction(name, capsys):
    """RF duty cycle, SAR and PNS within the normal mode (the localizer's coronal plane puts the slice ramps on
    y, the axis of lowest stimulation threshold: its gradients ramp at half the slew limit)."""
    assert main(["check", str(Path(__file__).parents[1] / "protocols" / f"{name}.toml")]) == 0, capsys.readouterr()
