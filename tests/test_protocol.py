"""scanctl.config.protocol: the shipped protocols, the documented format and every way a protocol can be wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanctl.config import profile as profiles
from scanctl.config.protocol import KEYS, TABLES, load_protocol
from scanctl.errors import ConfigError, SequenceFormatError
from scanctl.sequence.builders import BUILDERS
from scanctl.sequence.checks import check
from tests.test_builders import measure

ROOT = Path(__file__).parents[1]
PROTOCOLS = ROOT / "protocols"
DOC = (ROOT / "docs" / "protocol.md").read_text()
PROFILE = profiles.load()
SHIPPED = sorted(PROTOCOLS.glob("*.toml"))

GOOD = """\
[protocol]
name = "test"
description = "a test protocol"

[sequence]
type = "gre_2d"
matrix = [32, 32]
te_s = 0.005
tr_s = 0.012

[geometry]
position_mm = [0.0, 0.0, 10.0]
slice_order = "interleaved"

[table]
position_mm = 100.0

[patient]
weight_kg = 70.0
height_m = 1.8

[phantom]
name = "shepp_logan"
matrix = 64

[acquisition]
noise_std = 0.01
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_required_protocols_are_shipped():
    assert {p.name for p in SHIPPED} >= {"gre_2d.toml", "se_2d.toml", "tse_2d.toml", "pulseq_gre.toml",
                                         "t1_gre_multislice.toml", "gre_3d.toml", "localizer.toml",
                                         "gre_oblique.toml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_protocol_loads_builds_and_passes_the_checks(path):
    protocol = load_protocol(path)
    seq = protocol.build_sequence(PROFILE)
    report = check(seq, PROFILE)
    assert report.violation_counts == {}, [v.message for v in report.violations[:5]]
    assert protocol.patient.weight_kg > 0
    assert seq.duration_s < 60  # kept short for the simulators (docs/protocol.md)
    json.dumps(protocol.as_dict())
    if protocol.sequence_params is not None:
        p = protocol.sequence_params
        m = measure(seq)
        per_tr = len(protocol.slice_stack.offsets_m())  # slices excited in every TR
        assert np.allclose(m.te, p.te_s, atol=1e-9) and np.allclose(np.diff(m.t_exc), p.tr_s / per_tr, atol=1e-9)
        assert m.k.shape[2] == p.matrix[0]
        stacks = protocol.slice_stacks
        assert sorted(set(m.labels["SLC"].tolist())) == list(range(sum(st.count for st in stacks)))


def test_shipped_gre_is_the_issue_s_128_spoiled_gre():
    p = load_protocol(PROTOCOLS / "gre_2d.toml")
    assert p.sequence_type == "gre_2d"
    params = p.sequence_params
    assert params.matrix == (128, 128) and params.fov_m == 0.256 and params.flip_angle_deg == 15.0
    assert 0.004 <= params.te_s <= 0.005 and params.tr_s == pytest.approx(0.010)


def test_pulseq_protocol_reads_its_file_relative_to_the_protocol():
    p = load_protocol(PROTOCOLS / "pulseq_gre.toml")
    assert p.sequence_type is None and p.sequence_file == PROTOCOLS / "sequences" / "gre_2d.seq"
    seq = p.build_sequence(PROFILE)
    assert seq.definitions["Name"] == "gre"
    assert int((seq.blocks.adc >= 0).sum()) == 64


def test_a_full_protocol_reads_every_table(tmp_path):
    p = load_protocol(write(tmp_path, GOOD))
    assert (p.name, p.description, p.table_position_mm) == ("test", "a test protocol", 100.0)
    assert (p.patient.weight_kg, p.patient.height_m) == (70.0, 1.8)
    assert p.phantom is not None and (p.phantom.name, p.phantom.file, p.phantom.matrix) == ("shepp_logan", None, 64)
    assert p.noise_std == 0.01
    assert p.sequence_params.matrix == (32, 32) and p.sequence_params.te_s == 0.005
    assert p.build_sequence(PROFILE).definitions["TR"] == "0.012"
    data = p.as_dict()
    assert data["sequence"]["parameters"]["te_s"] == 0.005 and data["table"]["position_mm"] == 100.0
    assert data["geometry"]["position_mm"] == [0.0, 0.0, 10.0] and data["geometry"]["slice_dir"] == [0, 0, 1]
    assert data["patient"]["patient_position"] == "HFS" and p.patient_position == "HFS"
    assert np.allclose(p.slice_stack.centres_m(), [[0.0, 0.0, 0.01]])


def test_minimal_protocol_defaults(tmp_path):
    p = load_protocol(write(tmp_path, '[protocol]\nname = "m"\n[sequence]\ntype = "se_2d"\nmatrix = [16, 16]\n'
                                      "[patient]\nweight_kg = 60\n"))
    assert p.description == "" and p.table_position_mm == 0.0 and p.phantom is None and p.noise_std is None
    assert p.patient.height_m is None and p.sequence_params.tr_s == 0.5
    assert p.as_dict()["phantom"] is None
    assert p.geometry is None and p.as_dict()["geometry"]["slices"] == 1  # the builder's default geometry
    assert np.allclose(p.slice_stack.centres_m(), 0.0) and p.patient_position == "HFS"


def test_a_localizer_without_geometry_takes_three_slices_per_plane(tmp_path):
    p = load_protocol(write(tmp_path, '[protocol]\nname = "m"\n[sequence]\ntype = "localizer"\nmatrix = [16, 16]\n'
                                      "[patient]\nweight_kg = 60\n"))
    assert [s.count for s in p.slice_stacks] == [3, 3, 3] and p.as_dict()["geometry"]["slices"] == 3
    seq = p.build_sequence(PROFILE)
    assert len(seq.definitions["SlicePositions"].split()) == 27


def test_phantom_from_a_file_relative_to_the_protocol(tmp_path):
    (tmp_path / "maps.npz").write_bytes(b"")
    text = GOOD.replace('name = "shepp_logan"', 'file = "maps.npz"')
    p = load_protocol(write(tmp_path, text))
    assert p.phantom is not None and p.phantom.file == tmp_path / "maps.npz" and p.phantom.name is None


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (('name = "test"', 'name = "test"\nauthor = "me"'), "protocol.author", "unknown key"),
        (("[table]", "[tabel]"), "tabel", "unknown table"),
        (('name = "test"\n', ""), "protocol.name", "missing key"),
        (('name = "test"', 'name = "  "'), "protocol.name", "must not be empty"),
        (('name = "test"', "name = 3"), "protocol.name", "must be a string"),
        (("te_s = 0.005", "te_s = 0.005\ncolour = 1"), "sequence.colour", "unknown key"),
        (("te_s = 0.005", 'te_s = "5 ms"'), "sequence.te_s", "must be a number"),
        (("te_s = 0.005", "te_s = 5.0"), "sequence.te_s", "outside"),
        (("matrix = [32, 32]", "matrix = [32, 33]"), r"sequence.matrix\[1\]", "even"),
        (("matrix = [32, 32]", "matrix = 32"), "sequence.matrix", "two integers"),
        (('type = "gre_2d"', 'type = "flash"'), "sequence.type", "is not one of"),
        (('type = "gre_2d"', 'type = "gre_2d"\nfile = "x.seq"'), "sequence", "either type"),
        (('type = "gre_2d"\nmatrix = [32, 32]\nte_s = 0.005\ntr_s = 0.012\n', ""), "sequence", "either type"),
        (('type = "gre_2d"', 'type = "tse_2d"\netl = 5'), "sequence.etl", "does not divide"),
        (("position_mm = 100.0", "position_mm = 5000.0"), "table.position_mm", "outside"),
        (("position_mm = 100.0", "position_mm = true"), "table.position_mm", "must be a number"),
        (("weight_kg = 70.0\n", ""), "patient.weight_kg", "missing key"),
        (("weight_kg = 70.0", "weight_kg = 0.0"), "patient.weight_kg", "outside"),
        (("[patient]\nweight_kg = 70.0\nheight_m = 1.8\n", ""), "patient", "missing table"),
        (('name = "shepp_logan"', 'name = "brain"'), "phantom.name", "is not one of"),
        (('name = "shepp_logan"', 'name = "shepp_logan"\nfile = "x.npz"'), "phantom", "either name"),
        (('name = "shepp_logan"', 'file = "x.npz"'), "phantom.file", "does not exist"),
        (("matrix = 64", "matrix = 64.0"), "phantom.matrix", "must be an integer"),
        (("noise_std = 0.01", "noise_std = -1.0"), "acquisition.noise_std", "outside"),
    ],
)
def test_bad_protocols_give_one_error_naming_file_and_key(tmp_path, edit, key, message):
    old, new = edit
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as info:
        load_protocol(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ")
    assert re.search(rf"{path}: {key}:", text) or re.search(rf"{path}: {key}\b", text), text


def test_sequence_must_be_a_table(tmp_path):
    block = '[sequence]\ntype = "gre_2d"\nmatrix = [32, 32]\nte_s = 0.005\ntr_s = 0.012\n'
    path = write(tmp_path, "sequence = 3\n" + GOOD.replace(block, ""))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: sequence: must be a table$"):
        load_protocol(path)


def test_missing_sequence_file_names_file_and_key(tmp_path):
    path = write(tmp_path, GOOD.replace('type = "gre_2d"\nmatrix = [32, 32]\nte_s = 0.005\ntr_s = 0.012',
                                        'file = "sequences/none.seq"'))
    with pytest.raises(ConfigError, match=r"sequence\.file: 'sequences/none.seq' does not exist") as info:
        load_protocol(path)
    assert str(path) in str(info.value)
    bad = write(tmp_path, GOOD.replace('type = "gre_2d"\nmatrix = [32, 32]\nte_s = 0.005\ntr_s = 0.012',
                                       'file = "seq.seq"\ntr_s = 0.01'))
    (tmp_path / "seq.seq").write_text("[VERSION]\n")
    with pytest.raises(ConfigError, match=r"sequence\.tr_s: unknown key"):
        load_protocol(bad)


GEOMETRY_TABLE = '[geometry]\nposition_mm = [0.0, 0.0, 10.0]\nslice_order = "interleaved"\n'


def test_a_pulseq_file_protocol_takes_no_geometry(tmp_path):
    """The file's RF offsets and rotations say where it images: a [geometry] beside it would contradict them."""
    (tmp_path / "s.seq").write_text("[VERSION]\n")
    path = write(tmp_path, GOOD.replace('type = "gre_2d"\nmatrix = [32, 32]\nte_s = 0.005\ntr_s = 0.012',
                                        'file = "s.seq"'))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: geometry: a Pulseq file carries its own"):
        load_protocol(path)
    p = load_protocol(write(tmp_path, path.read_text().replace(GEOMETRY_TABLE, "")))
    assert p.geometry is None and p.slice_stacks == [] and p.as_dict()["geometry"] is None


def test_unreadable_pulseq_file_is_a_format_error_at_build(tmp_path):
    (tmp_path / "broken.seq").write_text("not a pulseq file\n")
    path = write(tmp_path, GOOD.replace('type = "gre_2d"\nmatrix = [32, 32]\nte_s = 0.005\ntr_s = 0.012',
                                        'file = "broken.seq"').replace(GEOMETRY_TABLE, ""))
    protocol = load_protocol(path)
    with pytest.raises(SequenceFormatError, match="broken.seq"):
        protocol.build_sequence(PROFILE)


@pytest.mark.parametrize("content", [b"[protocol\nname = 1\n", b"\xff\xfe\x00binary", b"name = \"no table\"\n"])
def test_not_toml_or_not_a_protocol(tmp_path, content):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"not valid TOML|not UTF-8|name: unknown table") as info:
        load_protocol(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unreadable_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot read protocol"):
        load_protocol(tmp_path / "missing.toml")


def test_te_below_the_minimum_names_file_key_and_minimum_at_build(tmp_path):
    path = write(tmp_path, GOOD.replace("te_s = 0.005", "te_s = 0.001"))
    protocol = load_protocol(path)  # valid values; the minimum depends on the scanner's gradients
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: sequence\.te_s: 1 ms is shorter than the "
                                          r"minimum [0-9.]+ ms \(te_s = [0-9.]+\)$"):
        protocol.build_sequence(PROFILE)
    weak = profiles.parse((ROOT / "scanctl" / "profiles" / "default.toml").read_text().replace(
        "{ x = 40.0, y = 40.0, z = 40.0 }", "{ x = 5.0, y = 5.0, z = 5.0 }"), "weak")
    with pytest.raises(ConfigError, match=r"sequence\.slice_thickness_m: .*thinnest slice"):
        load_protocol(write(tmp_path, GOOD.replace("te_s = 0.005", "te_s = 0.02").replace("tr_s = 0.012",
                                                                                          "tr_s = 0.05"))
                      ).build_sequence(weak)


def test_every_key_and_parameter_is_documented():
    for table in TABLES:
        assert f"## `[{table}]`" in DOC, table
    for table, keys in KEYS.items():
        for key in keys:
            assert f"| `{key}` |" in DOC, f"{table}.{key}"
    for name, builder in BUILDERS.items():
        assert f"### `{name}`" in DOC, name
        for row in builder.params.describe():
            assert f"`{row['name']}`" in DOC, f"{name}.{row['name']}"
    for path in SHIPPED:
        assert f"`{path.name}`" in DOC, path.name


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else "inf" if value == float("inf") else "-inf" if value == -float("inf") \
            else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    assert isinstance(value, list)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


_SCALARS = st.one_of(st.integers(-10**6, 10**6), st.floats(), st.text(max_size=6), st.booleans())
_TARGETS = [("sequence", row["name"]) for row in BUILDERS["gre_2d"].params.describe()] + [
    (table, key) for table, keys in KEYS.items() for key in sorted(keys)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(_TARGETS), value=st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3)))
def test_any_value_for_any_key_loads_or_is_one_config_error(tmp_path, target, value):
    """Whatever a user writes for a key, the result is a protocol or a ConfigError naming the file."""
    table, key = target
    lines = [line for line in GOOD.splitlines() if not line.startswith(f"{key} =")]
    at = lines.index(f"[{table}]") + 1
    lines.insert(at, f"{key} = {_toml_value(value)}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    try:
        load_protocol(path).build_sequence(PROFILE)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")
