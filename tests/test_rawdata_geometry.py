"""Raw data geometry (issue 16 part 3): every acquisition's position and read/phase/slice directions (patient
LPS) from the sequence itself — the ROTATIONS of the readout's block, the excitation's frequency offset
over its slice gradient, the ADC's frequency and phase offsets — the slice counter per orientation, the
header's sequence parameters, coils and measurement ID, and contradictory geometry refused by block.

Sequences are written with pypulseq (the pinned test dependency) in the tests: the slice offset by
``rf.freq_offset`` (and the phase that keeps the slice's phase), the in-plane shift by ``adc.freq_offset`` /
``adc.phase_offset`` as conventions.md says; pypulseq 1.5.0.post1 writes no ROTATIONS, so a rotation is added
to the file's blocks afterwards (:func:`with_rotations`) and the file written and parsed again. Expected
values are computed here from the pypulseq objects and the rotation matrices, not by scanctl.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pypulseq as pp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanctl.config import profile as profiles
from scanctl.data.rawdata import (
    RawDataWriter,
    RawHeader,
    SequenceGeometryError,
    header_for,
    read_noise_covariance,
    sequence_labels,
)
from scanctl.data.rawdata.encoding import encoding_of
from scanctl.hw.interfaces import Acquisition
from scanctl.sequence import pulseq_write
from scanctl.sequence.geometry import Orientation, matrix_to_quaternion, patient_to_scanner
from scanctl.sequence.model import Extensions, ExtensionSpec, Sequence
from scanctl.sequence.pulseq_read import parse, read

PROFILE = profiles.load()
SYSTEM = pp.Opts(max_grad=32, grad_unit="mT/m", max_slew=130, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                 rf_dead_time=100e-6, adc_dead_time=10e-6)


@dataclasses.dataclass
class Written:
    """A pypulseq GRE and what the test knows about it: per acquisition (in order) the logical offsets
    (read, phase, slice; m) and the index of the plane (its rotation)."""

    seq: pp.Sequence
    offsets: list[tuple[float, float, float]]
    planes: list[int]
    lines: list[int]
    n: int
    fov: float


def excitation(thickness: float) -> tuple:  # (pypulseq events)
    """The GREs' 15° sinc excitation of a ``thickness`` slice along z, and its slice rephaser."""
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=math.radians(15), duration=1e-3, slice_thickness=thickness,
                                   apodization=0.5, time_bw_product=4, system=SYSTEM, return_gz=True,
                                   delay=SYSTEM.rf_dead_time, use="excitation")
    return rf, gz, pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=0.6e-3, system=SYSTEM)


def gre(n: int = 8, fov: float = 0.2, planes: list[list[tuple[float, float, float]]] | None = None,
        spoil: bool = True, fov_definition: bool = True, thickness: float = 5e-3) -> Written:
    """An RF-spoiled GRE: for each plane, each of its (read, phase, slice) offsets (m), ``n`` lines. The slice
    offset by the RF frequency (phase kept as pypulseq does), the FOV shift by the ADC's frequency (read) and
    phase (2 pi k_y d_phase, and the read shift's phase at the echo)."""
    planes = planes or [[(0.0, 0.0, 0.0)]]
    seq = pp.Sequence(SYSTEM)
    rf, gz, gz_reph = excitation(thickness)
    gx = pp.make_trapezoid(channel="x", flat_area=n / fov, flat_time=0.64e-3, system=SYSTEM)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=SYSTEM)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=0.6e-3, system=SYSTEM)
    spoiler = pp.make_trapezoid(channel="z", area=4 / thickness, system=SYSTEM)
    rf_centre = pp.calc_rf_center(rf)[0]
    offsets, plane_of, lines = [], [], []
    phase, increment = 0.0, 0.0
    for p, plane in enumerate(planes):
        for read_off, phase_off, slice_off in plane:
            for i in range(n):
                ky = (i - n // 2) / fov
                spoil_phase = math.radians(phase) if spoil else 0.0
                rf.freq_offset = gz.amplitude * slice_off
                # wrapped: pypulseq writes phases with 6 significant digits (-100.123 rad loses 1e-3 rad)
                rf.phase_offset = (spoil_phase - 2 * math.pi * rf.freq_offset * rf_centre) % (2 * math.pi)
                adc.freq_offset = gx.amplitude * read_off
                # k_x = 0 half-way through the ADC window (it spans the flat top)
                adc.phase_offset = (spoil_phase + 2 * math.pi * ky * phase_off
                                    - 2 * math.pi * adc.freq_offset * adc.num_samples * adc.dwell / 2) % (2 * math.pi)
                gy = pp.make_trapezoid(channel="y", area=ky, duration=0.6e-3, system=SYSTEM)
                seq.add_block(rf, gz)
                seq.add_block(gx_pre, gy, gz_reph)
                seq.add_block(gx, adc)
                seq.add_block(pp.scale_grad(gy, -1), spoiler)
                increment += 117.0
                phase = (phase + increment) % 360.0
                offsets.append((read_off, phase_off, slice_off))
                plane_of.append(p)
                lines.append(i)
    if fov_definition:
        seq.set_definition("FOV", [fov, fov, thickness])
    seq.set_definition("Name", "gre_geom")
    return Written(seq, offsets, plane_of, lines, n, fov)


def to_scanctl(written: Written, tmp_path: Path, name: str = "g") -> Sequence:
    path = tmp_path / f"{name}.seq"
    written.seq.write(str(path))
    return read(path)


def with_rotations(seq: Sequence, rotation_of_block: list[np.ndarray | None]) -> Sequence:
    """``seq`` with a ROTATIONS entry (a rotation matrix, scanner <- logical) on each block that has one,
    written to Pulseq text and parsed back (so the file is what is tested)."""
    mats = [m for m in rotation_of_block if m is not None]
    distinct: list[np.ndarray] = []
    for m in mats:
        if not any(np.allclose(m, d) for d in distinct):
            distinct.append(m)
    ext = seq.extensions
    type_id = int(max([s.type_id for s in ext.specs.values()], default=0)) + 1
    q = np.array([matrix_to_quaternion(m) for m in distinct]).reshape(-1, 4)
    spec = ExtensionSpec("ROTATIONS", type_id, np.arange(1, len(distinct) + 1, dtype=np.int64),
                         {"quaternion": q, "matrix": np.array(distinct).reshape(-1, 3, 3)})
    ids, types, refs, nexts = list(ext.id), list(ext.type_id), list(ext.ref), list(ext.next)
    heads = seq.blocks.ext.copy()
    made: dict[tuple[int, int], int] = {}
    for b, m in enumerate(rotation_of_block):
        if m is None:
            continue
        r = next(i for i, d in enumerate(distinct) if np.allclose(m, d))
        key = (r, int(heads[b]))
        if key not in made:
            made[key] = len(ids)
            ids.append(len(ids) + 1)
            types.append(type_id)
            refs.append(r + 1)
            nexts.append(int(heads[b]))
        heads[b] = made[key]
    arr = [np.array(v, dtype=np.int64) for v in (ids, types, refs, nexts)]
    extensions = Extensions(arr[0], arr[1], arr[2], arr[3], {**ext.specs, "ROTATIONS": spec})
    rotated = dataclasses.replace(seq, blocks=dataclasses.replace(seq.blocks, ext=heads), extensions=extensions)
    text, _ = pulseq_write.dumps(rotated)
    return parse(text, path="rotated.seq")


def rotate_planes(seq: Sequence, planes: list[int], matrices: list[np.ndarray]) -> Sequence:
    """Every block of acquisition ``a`` (4 blocks each, :func:`gre`) rotated by ``matrices[planes[a]]``."""
    per_block: list[np.ndarray | None] = []
    for p in planes:
        per_block += [matrices[p]] * 4
    per_block += [None] * (len(seq.blocks) - len(per_block))
    return with_rotations(seq, per_block)


def write_and_read(seq: Sequence, tmp_path: Path, header: RawHeader | None = None) -> ismrmrd.Dataset:
    """Write one (zero) acquisition per ADC window of ``seq`` with the writer, open it with ismrmrd."""
    header = header or RawHeader.from_sequence(seq, larmor_hz=63.9e6)
    path = tmp_path / "raw.h5"
    n = encoding_of(seq).num_samples
    blocks = np.flatnonzero(seq.blocks.adc >= 0)
    with RawDataWriter.open(path, header, seq=seq) as writer:
        writer.extend(Acquisition(index=i, block=int(b), start_s=0.0, dwell_s=1e-5,
                                  data=np.zeros((header.channels, int(n[i])), np.complex64), labels={})
                      for i, b in enumerate(blocks.tolist()))
    return ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)


def heads(dset: ismrmrd.Dataset) -> list:
    return [dset.read_acquisition(i) for i in range(dset.number_of_acquisitions())]


def expected(written: Written, matrices: list[np.ndarray], patient_position: str = "HFS"
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per acquisition: position (mm, patient) and directions ``(3 [read, phase, slice], 3)`` (patient)."""
    to_patient = patient_to_scanner(patient_position).T
    pos, dirs = [], []
    for off, p in zip(written.offsets, written.planes, strict=True):
        r = matrices[p]
        pos.append(to_patient @ r @ np.array(off) * 1e3)
        dirs.append((to_patient @ r).T)
    return np.array(pos), np.array(dirs)


def assert_geometry(dset: ismrmrd.Dataset, pos: np.ndarray, dirs: np.ndarray, atol_mm: float = 1e-3) -> None:
    acqs = heads(dset)
    got_pos = np.array([a.position for a in acqs])
    got_dirs = np.array([[a.read_dir, a.phase_dir, a.slice_dir] for a in acqs])
    np.testing.assert_allclose(got_pos, pos, atol=atol_mm)
    np.testing.assert_allclose(got_dirs, dirs, atol=1e-6)


# -- position and directions ------------------------------------------------------------------------------

def test_multislice_transverse_slices_placed_and_numbered_in_position_order(tmp_path):
    # excited out of position order (interleaved): +5, -5, 0 mm
    w = gre(planes=[[(0, 0, 5e-3), (0, 0, -5e-3), (0, 0, 0.0)]])
    seq = to_scanctl(w, tmp_path)
    dset = write_and_read(seq, tmp_path)
    pos, dirs = expected(w, [np.eye(3)])
    assert_geometry(dset, pos, dirs)
    slices = [a.idx.slice for a in heads(dset)]
    assert slices == [2] * 8 + [0] * 8 + [1] * 8  # numbered along +z
    assert [a.idx.kspace_encode_step_1 for a in heads(dset)] == w.lines


@pytest.mark.parametrize("name", ["sagittal", "coronal"])
def test_sagittal_and_coronal(tmp_path, name):
    w = gre(planes=[[(0.01, -0.02, 0.015), (0.01, -0.02, -0.005)]])
    r = Orientation.named(name).in_scanner("HFS")
    seq = rotate_planes(to_scanctl(w, tmp_path), w.planes, [r])
    dset = write_and_read(seq, tmp_path)
    pos, dirs = expected(w, [r])
    assert_geometry(dset, pos, dirs)
    # LIN from the logical k_y (not the physical one): the same lines as unrotated
    assert [a.idx.kspace_encode_step_1 for a in heads(dset)] == w.lines
    # slice 0 lies further back along the slice direction than slice 1
    assert [a.idx.slice for a in heads(dset)][::8] == [1, 0]


def test_oblique_shifted_fov(tmp_path):
    w = gre(planes=[[(0.012, -0.031, 0.007)]])
    r = Orientation.from_normal([0.3, -0.4, 0.87], 25.0).in_scanner("HFS")
    seq = rotate_planes(to_scanctl(w, tmp_path), w.planes, [r])
    dset = write_and_read(seq, tmp_path)
    pos, dirs = expected(w, [r])
    assert_geometry(dset, pos, dirs)
    header = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
    enc = header.encoding[0].encodedSpace
    assert (enc.matrixSize.x, enc.matrixSize.y, enc.matrixSize.z) == (8, 8, 1)
    assert enc.fieldOfView_mm.z == pytest.approx(5.0)  # the FOV definition's slice thickness


def test_localizer_three_planes_one_file(tmp_path):
    w = gre(planes=[[(0, 0, 0.0)], [(0, 0, 0.01)], [(0, 0, -0.02)]])
    mats = [Orientation.named(n).in_scanner("HFS") for n in ("transverse", "sagittal", "coronal")]
    seq = rotate_planes(to_scanctl(w, tmp_path), w.planes, mats)
    dset = write_and_read(seq, tmp_path)
    pos, dirs = expected(w, mats)
    assert_geometry(dset, pos, dirs)
    # one slice per plane, numbered in the order the orientations come
    assert [a.idx.slice for a in heads(dset)] == [0] * 8 + [1] * 8 + [2] * 8


def test_multi_orientation_slices_numbered_per_orientation(tmp_path):
    w = gre(planes=[[(0, 0, 0.01), (0, 0, -0.01)], [(0, 0, 0.02), (0, 0, 0.0)]])
    mats = [Orientation.named("transverse").in_scanner(), Orientation.from_normal([1, 0.2, 0.1]).in_scanner()]
    seq = rotate_planes(to_scanctl(w, tmp_path), w.planes, mats)
    slc = sequence_labels(seq)["SLC"]
    assert slc[::8].tolist() == [1, 0, 3, 2]


@pytest.mark.parametrize("patient_position", ["FFS", "HFP", "FFP"])
def test_patient_position_turns_the_geometry_into_patient_coordinates(tmp_path, patient_position):
    w = gre(planes=[[(0.01, 0.02, 0.03)]])
    r = Orientation.from_normal([0.2, 0.1, 1.0], 10.0).in_scanner("HFS")
    seq = rotate_planes(to_scanctl(w, tmp_path), w.planes, [r])
    header = header_for(seq, PROFILE, patient_position=patient_position)
    dset = write_and_read(seq, tmp_path, header)
    pos, dirs = expected(w, [r], patient_position)
    assert_geometry(dset, pos, dirs)
    parsed = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
    assert parsed.measurementInformation.patientPosition.value == patient_position


def test_without_spoiling_or_fov_definition(tmp_path):
    """No FOV definition (the FOV from the k-space steps) and constant RF/ADC phases: same geometry."""
    w = gre(planes=[[(-0.02, 0.045, 0.01)]], spoil=False, fov_definition=False)
    r = Orientation.named("coronal").in_scanner()
    seq = rotate_planes(to_scanctl(w, tmp_path), w.planes, [r])
    dset = write_and_read(seq, tmp_path)
    pos, dirs = expected(w, [r])
    assert_geometry(dset, pos, dirs)


@given(normal=st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda v: np.linalg.norm(v) > 0.1),
       angle=st.floats(-180, 180), read=st.floats(-0.09, 0.09), phase=st.floats(-0.09, 0.09),
       slice_=st.floats(-0.05, 0.05))
@settings(max_examples=25, deadline=None)
def test_position_and_directions_round_trip(tmp_path_factory, normal, angle, read, phase, slice_):
    """Any orientation and any offset within half the FOV: position within 1e-3 mm, directions within 1e-6."""
    tmp = tmp_path_factory.mktemp("rt")
    w = gre(n=4, planes=[[(read, phase, slice_)]])
    r = Orientation.from_normal(normal, angle).in_scanner()
    seq = rotate_planes(to_scanctl(w, tmp), w.planes, [r])
    dset = write_and_read(seq, tmp)
    pos, dirs = expected(w, [r])
    assert_geometry(dset, pos, dirs, atol_mm=1e-3)


# -- contradictory geometry ------------------------------------------------------------------------------

def test_adc_rotated_otherwise_than_its_excitation_is_refused_naming_the_block(tmp_path):
    w = gre(planes=[[(0, 0, 0.01)]])
    seq = to_scanctl(w, tmp_path)
    per_block: list[np.ndarray | None] = [np.eye(3)] * len(seq.blocks)
    per_block[2] = Orientation.named("sagittal").in_scanner()  # the first readout only
    per_block[0] = np.array(Orientation.named("transverse").in_scanner())
    bad = with_rotations(seq, per_block)
    with pytest.raises(SequenceGeometryError, match=r"block 3: the ADC's rotation .* differs from that of its "
                                                    r"excitation in block 1"):
        RawHeader.from_sequence(bad, larmor_hz=1.0)


def test_slice_gradient_off_the_slice_axis_is_refused(tmp_path):
    w = gre(planes=[[(0, 0, 0.01)]])
    seq = to_scanctl(w, tmp_path)
    # The excitation block rotated so its gradient lies along x, but labelled with a rotation whose slice axis
    # is z: build it by rotating gz onto x with one rotation and claiming another is impossible in one file,
    # so instead give the excitation a rotation whose slice axis is not its gradient's: the gradient also
    # plays on y (a combined gz + gy event).
    tilted = dataclasses.replace(seq, grad=dataclasses.replace(seq.grad))
    row = int(seq.blocks.grad[0, 2])
    gy = seq.blocks.grad.copy()
    gy[0, 1] = row  # the slice-select trapezoid on y too: the gradient points along (0, 1, 1)/sqrt 2
    tilted = dataclasses.replace(seq, blocks=dataclasses.replace(seq.blocks, grad=gy))
    turned = Orientation.from_normal([0.1, 0.0, 1.0]).in_scanner()
    bad = with_rotations(tilted, [turned] * len(seq.blocks))
    with pytest.raises(SequenceGeometryError, match=r"block 1: the excitation's slice-select gradient"):
        RawHeader.from_sequence(bad, larmor_hz=1.0)


def test_fov_definition_contradicting_the_k_steps_is_refused(tmp_path):
    w = gre()
    w.seq.set_definition("FOV", [0.2, 0.13, 5e-3])  # k_y steps of 1/0.2 m are not on a grid of 1/0.13 m
    with pytest.raises(SequenceGeometryError, match=r"FOV definition \(130 mm along y\) contradicts"):
        RawHeader.from_sequence(to_scanctl(w, tmp_path), larmor_hz=1.0)


def test_contradictory_geometry_is_one_line_and_exit_2_through_the_cli(tmp_path):
    import subprocess
    import sys

    w = gre()
    w.seq.set_definition("FOV", [0.2, 0.13, 5e-3])
    path = tmp_path / "bad.seq"
    w.seq.write(str(path))
    out = subprocess.run([sys.executable, "-m", "scanctl", "run", str(path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "FOV definition (130 mm along y) contradicts" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


# -- header ----------------------------------------------------------------------------------------------

def test_header_coils_measurement_id_and_noise_covariance(tmp_path):
    seq = to_scanctl(gre(), tmp_path)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))
    cov = a @ a.conj().T
    coil = {"name": "ring", "channel_names": ["L1", "L2", "L3", "L4"], "noise_covariance": cov,
            "noise_dwell_s": 1e-5}
    header = header_for(seq, PROFILE, channels=4, coil_info=coil)
    dset = write_and_read(seq, tmp_path, header)
    parsed = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
    system = parsed.acquisitionSystemInformation
    assert system.receiverChannels == 4
    assert [(c.coilNumber, c.coilName) for c in system.coilLabel] == [(0, "L1"), (1, "L2"), (2, "L3"), (3, "L4")]
    assert parsed.measurementInformation.measurementID == header.measurement_id
    assert header.measurement_id != header_for(seq, PROFILE).measurement_id  # unique per run
    xml = dset.read_xml_header()
    dset.close()
    np.testing.assert_allclose(read_noise_covariance(tmp_path / "raw.h5"), cov, rtol=1e-6)
    with h5py.File(tmp_path / "raw.h5", "r") as f:
        assert f["dataset/noise_covariance"].attrs["noise_dwell_time_us"] == pytest.approx(10.0)
    back = RawHeader.from_xml(xml)
    assert back.coil_names == ("L1", "L2", "L3", "L4") and back.measurement_id == header.measurement_id
    with pytest.raises(Exception, match="noise covariance must be 4 x 4"):
        header_for(seq, PROFILE, channels=4, coil_info={"noise_covariance": np.eye(3)})
    # without coil info: every channel still labelled
    plain = header_for(seq, PROFILE, channels=2)
    assert plain.coil_labels == ("channel 0", "channel 1") and plain.noise_covariance is None


def test_header_parses_with_the_ismrmrd_schema_bindings(tmp_path):
    """The XML is made and parsed by ismrmrd's xsd bindings (generated from ismrmrd.xsd; the parser refuses
    unknown elements); every field the raw data need is there."""
    w = gre(planes=[[(0, 0, 0.0), (0, 0, 0.006)]])
    seq = to_scanctl(w, tmp_path)
    header = header_for(seq, PROFILE, channels=2, coil_info={"name": "pair"})
    parsed = ismrmrd.xsd.CreateFromDocument(header.to_xml())
    text = ismrmrd.xsd.ToXML(parsed)
    assert ismrmrd.xsd.CreateFromDocument(text) == parsed
    params = parsed.sequenceParameters
    assert params.TR and params.TE and params.flipAngle_deg
    assert params.flipAngle_deg[0] == pytest.approx(15.0, rel=0.02)  # measured from the pulse
    assert [c.coilName for c in parsed.acquisitionSystemInformation.coilLabel] == ["pair 0", "pair 1"]


# -- sequence parameters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gre_2d", "se_2d", "tse_2d", "epi_2d"])
def test_sequence_parameters_measured_from_our_builders(name):
    """Without a protocol or definitions, TR / TE / flip angle / echo spacing / ETL are measured from the
    sequence's timing and pulses: they equal the parameters it was built with."""
    from scanctl.sequence.builders import BUILDERS

    builder = BUILDERS[name]
    params = builder.params.from_mapping({})
    seq = builder.build(PROFILE, params)
    # the builders write TR / TE (/ ETL) definitions: left out, so the values are measured
    header = RawHeader.from_sequence(dataclasses.replace(seq, definitions={
        k: v for k, v in seq.definitions.items() if k not in ("TR", "TE", "FlipAngle", "ETL")}), larmor_hz=1.0)
    assert header.te_s == pytest.approx((params.te_s,), abs=1e-6)
    assert header.flip_angle_deg == pytest.approx((params.flip_angle_deg,), rel=1e-3)
    if name == "epi_2d":  # one excitation: no TR to measure; every line of the train an echo
        assert header.tr_s == ()
        assert header.echo_train_length == params.matrix[1]
        assert header.echo_spacing_s[0] == pytest.approx(
            np.median(np.diff(encoding_of(seq).echo_s)), rel=1e-9)
    else:
        assert header.tr_s == pytest.approx((params.tr_s,), abs=1e-6)
    if name == "tse_2d":
        assert header.echo_train_length == params.etl
        # k_y = 0 in echo etl / 2 (0-based, docs of tse_2d): TE = (etl / 2 + 1) echo spacings
        assert header.echo_spacing_s[0] == pytest.approx(params.te_s / (params.etl // 2 + 1), rel=1e-6)
    elif name != "epi_2d":
        assert header.echo_spacing_s == () and header.echo_train_length is None
    # the z FOV of a 2D scan: its slice thickness (FWHM bandwidth over the slice gradient)
    assert header.fov_m[2] == pytest.approx(params.slice_thickness_m, rel=0.01)


def test_sequence_parameters_from_the_protocol_then_the_definitions(tmp_path):
    from scanctl.config.protocol import load_protocol

    protocol = load_protocol("protocols/tse_2d.toml")
    seq = protocol.build_sequence(PROFILE)
    header = header_for(seq, PROFILE, protocol)
    p = protocol.sequence_params
    assert header.tr_s == (p.tr_s,) and header.te_s == (p.te_s,) and header.flip_angle_deg == (p.flip_angle_deg,)
    assert header.echo_train_length == p.etl
    parsed = ismrmrd.xsd.CreateFromDocument(header.to_xml())
    tr_ms = parsed.sequenceParameters.TR
    assert tr_ms == pytest.approx([p.tr_s * 1e3])
    assert parsed.sequenceParameters.echo_spacing == pytest.approx([header.echo_spacing_s[0] * 1e3])
    assert RawHeader.from_xml(header.to_xml()).echo_train_length == p.etl
    # definitions beat the measurement
    w = gre()
    w.seq.set_definition("TR", 0.123)
    w.seq.set_definition("TE", [0.004, 0.009])
    w.seq.set_definition("FlipAngle", 12)
    header = RawHeader.from_sequence(to_scanctl(w, tmp_path), larmor_hz=1.0)
    assert header.tr_s == (0.123,) and header.te_s == (0.004, 0.009) and header.flip_angle_deg == (12.0,)


@pytest.mark.parametrize("build, te, esp, etl", [("tse", None, 12e-3, 16), ("haste", 9 * 12e-3, 12e-3, 24),
                                                 ("epi_se", 60e-3, None, 32)])
def test_sequence_parameters_of_pypulseq_examples(tmp_path, build, te, esp, etl):
    from tests import pypulseq_examples as examples

    path = tmp_path / "x.seq"
    getattr(examples, build)(32).write(str(path))
    header = RawHeader.from_sequence(read(path), larmor_hz=1.0)
    if te is not None:
        assert header.te_s == pytest.approx((te,), abs=1e-5)  # to a sample: k = 0 may fall between two
    else:  # tse: the echo whose line is k_y = 0, a whole number of echo spacings
        assert header.te_s[0] / 12e-3 == pytest.approx(round(header.te_s[0] / 12e-3), abs=1e-3)
    if esp is not None:
        assert header.echo_spacing_s == pytest.approx((esp,), abs=5e-6)
    assert header.echo_train_length == etl
    assert header.flip_angle_deg == pytest.approx((90.0,), rel=1e-3)


# -- trajectories ----------------------------------------------------------------------------------------

def spiral(n_turns: int = 3, samples: int = 1000, fov: float = 0.2, interleaves: int = 2) -> pp.Sequence:
    """An Archimedean spiral-out GRE (arbitrary gradients), ``interleaves`` shots rotated in plane."""
    seq = pp.Sequence(SYSTEM)
    rf, gz, gz_reph = pp.make_sinc_pulse(flip_angle=math.radians(20), duration=1e-3, slice_thickness=5e-3,
                                         apodization=0.5, time_bw_product=4, system=SYSTEM, return_gz=True,
                                         delay=SYSTEM.rf_dead_time, use="excitation")
    raster = SYSTEM.grad_raster_time
    t = np.arange(samples) / samples
    kmax = 16 / fov
    for shot in range(interleaves):
        phi = 2 * np.pi * n_turns * t + 2 * np.pi * shot / interleaves
        k = kmax * t * np.exp(1j * phi)
        g = np.diff(np.concatenate(([0], k))) / raster
        g *= np.minimum(1.0, np.linspace(samples / 100, 0, samples))  # ramped down over the last 100 samples
        gx = pp.make_arbitrary_grad(channel="x", waveform=g.real, system=SYSTEM, first=0, last=0)
        gy = pp.make_arbitrary_grad(channel="y", waveform=g.imag, system=SYSTEM, first=0, last=0)
        adc = pp.make_adc(num_samples=samples // 2, dwell=2 * raster, delay=SYSTEM.adc_dead_time, system=SYSTEM)
        seq.add_block(rf, gz)
        seq.add_block(gz_reph)
        seq.add_block(gx, gy, adc)
        seq.add_block(pp.make_delay(5e-3))
    seq.set_definition("FOV", [fov, fov, 5e-3])
    return seq


def test_spiral_and_radial_trajectories(tmp_path):
    from tests import pypulseq_examples as examples

    path = tmp_path / "spiral.seq"
    spiral().write(str(path))
    seq = read(path)
    dset = write_and_read(seq, tmp_path)
    header = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
    assert header.encoding[0].trajectory.value == "other"
    acq = dset.read_acquisition(1)
    assert acq.traj.shape == (500, 2)
    radius = np.hypot(acq.traj[:, 0], acq.traj[:, 1])
    assert radius[0] < 0.5 and 7 < radius.max() < 17  # from the centre out to k_max (16 / FOV) in 1/FOV units
    dset.close()
    rpath = tmp_path / "radial.seq"
    examples.radial_gre(16, 8, 2).write(str(rpath))
    rseq = read(rpath)
    (tmp_path / "raw.h5").unlink()
    rset = write_and_read(rseq, tmp_path)
    assert ismrmrd.xsd.CreateFromDocument(rset.read_xml_header()).encoding[0].trajectory.value == "radial"
    assert rset.read_acquisition(0).traj.shape == (encoding_of(rseq).num_samples[0], 2)


def test_oblique_3d_partitions_from_the_logical_kz(tmp_path):
    """A 3D slab without labels, turned oblique: LIN and PAR come from the logical k_y and k_z (the physical
    ones mix both), the z FOV is the slab, the position its centre."""
    n, nz, fov, slab = 8, 4, 0.2, 0.04
    seq = pp.Sequence(SYSTEM)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=math.radians(10), duration=1e-3, slice_thickness=slab,
                                   apodization=0.5, time_bw_product=4, system=SYSTEM, return_gz=True,
                                   delay=SYSTEM.rf_dead_time, use="excitation")
    gx = pp.make_trapezoid(channel="x", flat_area=n / fov, flat_time=0.64e-3, system=SYSTEM)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=SYSTEM)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=0.8e-3, system=SYSTEM)
    slab_off = 0.012
    rf.freq_offset = gz.amplitude * slab_off
    rf.phase_offset = -2 * math.pi * rf.freq_offset * pp.calc_rf_center(rf)[0]
    order = []
    for j in range(nz):
        for i in range(n):
            gy = pp.make_trapezoid(channel="y", area=(i - n // 2) / fov, duration=0.8e-3, system=SYSTEM)
            gzp = pp.make_trapezoid(channel="z", area=-gz.area / 2 + (j - nz // 2) / slab, duration=0.8e-3,
                                    system=SYSTEM)
            seq.add_block(rf, gz)
            seq.add_block(gx_pre, gy, gzp)
            seq.add_block(gx, adc)
            seq.add_block(pp.make_delay(2e-3))
            order.append((i, j))
    path = tmp_path / "g3d.seq"
    seq.write(str(path))
    r = Orientation.from_normal([0.5, 0.3, 0.8], 40.0).in_scanner()
    rotated = with_rotations(read(path), [r] * len(order) * 4)
    labels = sequence_labels(rotated)
    assert list(zip(labels["LIN"].tolist(), labels["PAR"].tolist(), strict=True)) == order
    header = RawHeader.from_sequence(rotated, larmor_hz=1.0)
    assert header.encoded_matrix == (n, n, nz)
    assert header.fov_m[2] == pytest.approx(slab, rel=1e-6)
    np.testing.assert_allclose(encoding_of(rotated).position_m, np.tile(r[:, 2] * slab_off, (len(order), 1)),
                               atol=1e-9)


def test_adc_frequencies_fitting_no_read_shift_are_refused(tmp_path):
    """Two lines of one slice shifted differently along read: the FOV centre is contradictory."""
    w = gre(n=4)
    seq = to_scanctl(w, tmp_path)
    rows = seq.blocks.adc[seq.blocks.adc >= 0]
    freq = seq.adc.freq_hz.copy()
    freq[rows[1]] = 1234.0  # the second line's ADC (its own event row: pypulseq writes one per line)
    assert len(set(rows.tolist())) == len(rows)
    bad = dataclasses.replace(seq, adc=dataclasses.replace(seq.adc, freq_hz=freq))
    with pytest.raises(SequenceGeometryError, match=r"block \d+: the ADC frequency offsets of this slice do not "
                                                    r"fit one read-direction shift"):
        RawHeader.from_sequence(bad, larmor_hz=1.0)


def test_a_run_of_an_oblique_file_writes_its_geometry(tmp_path):
    """Through the scan session (``scanctl run``'s path): the raw data carry the file's geometry and a
    measurement ID."""
    from scanctl.data.rawdata import read_acquisitions
    from scanctl.engine.session import run_scan

    w = gre(planes=[[(0.01, -0.02, 0.004), (0.01, -0.02, -0.004)]])
    r = Orientation.from_normal([0.2, -0.3, 1.0], 15.0).in_scanner()
    seq = rotate_planes(to_scanctl(w, tmp_path), w.planes, [r])
    path = tmp_path / "oblique.seq"
    path.write_bytes(pulseq_write.dumps(seq)[0])
    # without the physics (the geometry is the sequence's, not the image's): a fast run
    report = run_scan(path, PROFILE, tmp_path / "out", overrides={"rf": "sim://?physics=0"}, reconstruct=False)
    assert report.outcome == "completed", report.message
    dset = ismrmrd.Dataset(str(tmp_path / "out" / "raw.h5"), "dataset", create_if_needed=False)
    pos, dirs = expected(w, [r])
    assert_geometry(dset, pos, dirs)
    assert ismrmrd.xsd.CreateFromDocument(dset.read_xml_header()).measurementInformation.measurementID
    dset.close()
    assert read_acquisitions(tmp_path / "out" / "raw.h5").positions_mm.shape == (len(w.offsets), 3)


# -- a readout along another logical axis ------------------------------------------------------------------

def gre_read_along_y(n: int = 8, fov_read: float = 0.2, fov_phase: float = 0.16, offset=(0.0, 0.0, 0.0),
                     fov_definition: bool = False, thickness: float = 5e-3) -> pp.Sequence:
    """A 2D GRE with read and phase swapped: the readout along logical y (``n`` samples over ``fov_read``), the
    phase encoding along x (``n`` lines over ``fov_phase``, ``LIN`` unlabelled), slice z; the FOV centre at
    ``offset`` (read, phase, slice; m) by the ADC's frequency and phase and the RF frequency, as :func:`gre`."""
    seq = pp.Sequence(SYSTEM)
    rf, gz, gz_reph = excitation(thickness)
    g_read = pp.make_trapezoid(channel="y", flat_area=n / fov_read, flat_time=0.64e-3, system=SYSTEM)
    adc = pp.make_adc(num_samples=n, duration=g_read.flat_time, delay=g_read.rise_time, system=SYSTEM)
    g_pre = pp.make_trapezoid(channel="y", area=-g_read.area / 2, duration=0.6e-3, system=SYSTEM)
    read_off, phase_off, slice_off = offset
    rf.freq_offset = gz.amplitude * slice_off
    rf.phase_offset = (-2 * math.pi * rf.freq_offset * pp.calc_rf_center(rf)[0]) % (2 * math.pi)
    adc.freq_offset = g_read.amplitude * read_off
    for i in range(n):
        k_phase = (i - n // 2) / fov_phase
        adc.phase_offset = (2 * math.pi * k_phase * phase_off
                            - 2 * math.pi * adc.freq_offset * adc.num_samples * adc.dwell / 2) % (2 * math.pi)
        g_phase = pp.make_trapezoid(channel="x", area=k_phase, duration=0.6e-3, system=SYSTEM)
        seq.add_block(rf, gz)
        seq.add_block(g_pre, g_phase, gz_reph)
        seq.add_block(g_read, adc)
        seq.add_block(pp.scale_grad(g_phase, -1), pp.make_delay(2e-3))
    if fov_definition:
        seq.set_definition("FOV", [fov_phase, fov_read, thickness])  # the file's x, y, z
    return seq


@pytest.mark.parametrize("fov_definition", [False, True])
def test_a_readout_along_y_is_a_cartesian_scan_with_its_own_directions(tmp_path, fov_definition):
    """Read along logical y, phase-encoded along x (a swapped frequency direction), FOV shifted: the raw
    data's header is Cartesian with the read FOV along its x and the phase FOV along its y (from the k-space
    steps, or the file's FOV definition read in its own axes), every acquisition's read_dir y, phase_dir x,
    slice_dir z, its position the FOV's centre (the read shift along y, the phase shift along x); before: an
    ``other`` trajectory, the identity directions and the read shift along x."""
    n, fov_read, fov_phase, offset = 8, 0.2, 0.16, (0.02, -0.015, 0.01)
    path = tmp_path / "swap.seq"
    gre_read_along_y(n, fov_read, fov_phase, offset, fov_definition).write(str(path))
    seq = read(path)
    header = RawHeader.from_sequence(seq, larmor_hz=1.0)
    assert header.trajectory == "cartesian" and header.encoded_matrix == (n, n, 1)
    np.testing.assert_allclose(header.fov_m[:2], (fov_read, fov_phase), rtol=0, atol=1e-6)
    raw_path = tmp_path / "swap.h5"
    with RawDataWriter.open(raw_path, header, seq=seq) as writer:
        writer.extend(Acquisition(i, 0, 0.0, 1e-5, np.zeros((1, n), np.complex64), {}) for i in range(n))
    with h5py.File(raw_path, "r") as f:
        head = f["dataset/data"]["head"]
        np.testing.assert_allclose(head["read_dir"], np.tile([0.0, 1.0, 0.0], (n, 1)), atol=1e-12)
        np.testing.assert_allclose(head["phase_dir"], np.tile([1.0, 0.0, 0.0], (n, 1)), atol=1e-12)
        np.testing.assert_allclose(head["slice_dir"], np.tile([0.0, 0.0, 1.0], (n, 1)), atol=1e-12)
        np.testing.assert_allclose(head["position"], np.tile(np.array([offset[1], offset[0], offset[2]]) * 1e3,
                                                             (n, 1)), atol=0.05)
        assert sorted(head["idx"]["kspace_encode_step_1"].tolist()) == list(range(n))


def test_a_readout_along_y_is_reconstructed_from_the_file_alone(tmp_path):
    """Exact data of two points (s(k) = sum rho exp(-2 pi i k.r) at the sequence's k) read along y: the recon
    of the file alone equals the recon with the sequence, each point at its pixel (rows x, columns y)."""
    from scanctl.data.rawdata import read_acquisitions
    from scanctl.data.recon import reconstruct_file
    from scanctl.sequence.waveforms import kspace_adc

    n, fov_read, fov_phase = 8, 0.2, 0.16
    path = tmp_path / "swap.seq"
    gre_read_along_y(n, fov_read, fov_phase).write(str(path))
    seq = read(path)
    cells = np.array([[2, -3], [-4, 1]])  # (phase x, read y) in pixels
    points = np.column_stack((cells[:, 0] * fov_phase / n, cells[:, 1] * fov_read / n, np.zeros(2)))
    rho = np.array([1.0, 2.0])
    signal = np.exp(-2j * np.pi * points @ kspace_adc(seq)).T @ rho
    raw_path = tmp_path / "swap.h5"
    with RawDataWriter.open(raw_path, RawHeader.from_sequence(seq, larmor_hz=1.0), seq=seq) as writer:
        writer.extend(Acquisition(i, 0, 0.0, 1e-5, signal[i * n:(i + 1) * n][np.newaxis].astype(np.complex64), {})
                      for i in range(n))
    raw = read_acquisitions(raw_path)
    alone, with_seq = reconstruct_file(raw), reconstruct_file(raw, seq)
    expected = np.zeros((1, n, n))
    for (row, col), value in zip(cells, rho, strict=True):
        expected[0, row + n // 2, col + n // 2] = value
    np.testing.assert_allclose(alone.images, expected, atol=1e-4)
    np.testing.assert_allclose(alone.images, with_seq.images, rtol=0, atol=1e-6)
    entry = alone.meta["images"][0]
    assert entry["read_dir"] == [0.0, 1.0, 0.0] and entry["phase_dir"] == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(entry["fov_mm"][:2], (fov_read * 1e3, fov_phase * 1e3), atol=1e-3)
