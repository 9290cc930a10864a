"""The Pulseq 1.5.1 writer (:mod:`scanctl.sequence.pulseq_write`): read -> write -> read keeps the model.

Sources: the MATLAB-written reference files in ``tests/data/pulseq-matlab``, the pypulseq sequences of
:mod:`tests.pulseq_factory` (as pypulseq writes them, in format 1.5.0 and for a few also 1.4.1), and a
hand-written 1.5.1 file with every extension (``ROTATIONS``, ``RF_SHIMS``, labels, triggers, soft delays).

For each source, scanctl reads it, writes it and reads the result back, and

* the model is the same: blocks and their durations, every event and the shapes it plays, extension tables
  and the extension list of every block; the derived figures (duration, ADC times, gradient waveforms,
  k-space at the ADC samples) agree;
* the file declares format 1.5.1 and carries the MD5 of its bytes before the signature, which the reader
  verifies (and a changed byte makes it refuse the file);
* writing what was read back reproduces the written file byte for byte (the writer is a fixed point).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from scanctl.errors import SignatureError
from scanctl.sequence import pulseq_read, pulseq_write
from scanctl.sequence import waveforms as W
from scanctl.sequence.model import Sequence
from tests import pulseq_factory as factory

DATA = Path(__file__).parent / "data" / "pulseq-matlab"
MATLAB_FILES = sorted(p.name for p in DATA.glob("*.seq"))

# Numbers are written with nine significant digits: a relative change below 5e-9 is the format's rounding.
RTOL = 1e-8
TIME_TOL_S = 1e-9

# A small 1.5.1 sequence using every extension scanctl knows. Extension lists (id type ref next):
# 1: rotation 1 | 2: rotation 2 -> label set -> trigger | 5: soft delay | 6: RF shim | 7: label inc -> rotation 1
HANDWRITTEN_EXTENSIONS = """\
# Pulseq sequence file
# Written by hand for scanctl's writer tests

[VERSION]
major 1
minor 5
revision 1

[DEFINITIONS]
AdcRasterTime 1e-07
BlockDurationRaster 1e-05
FOV 0.2 0.2 0.005
GradientRasterTime 1e-05
Name extensions
RadiofrequencyRasterTime 1e-06
RequiredExtensions ROTATIONS RF_SHIMS

# NUM DUR RF  GX  GY  GZ  ADC  EXT
[BLOCKS]
1 120 1 0 0 4 0 6
2  60 0 1 2 0 0 1
3  80 0 3 0 0 1 2
4  60 0 1 2 0 0 7
5  80 0 3 0 0 1 1
6  10 0 0 0 0 0 5

# id ampl. mag_id phase_id time_shape_id center delay freqPPM phasePPM freq phase use
[RF]
1 250 1 2 0 50 150 0 0 125.5 0.25 e

# id amplitude rise flat fall delay
[TRAP]
1 200000 100 400 100 0
2 -100000 100 400 100 0
3 100000 100 600 100 0
4 300000 100 1000 100 0

# id num dwell delay freqPPM phasePPM freq phase phase_id
[ADC]
1 60 10000 100 0 0 0 0.5 0

# id type ref next_id
[EXTENSIONS]
1 1 1 0
2 1 2 3
3 2 1 4
4 3 1 0
5 4 1 0
6 5 1 0
7 6 1 1

extension ROTATIONS 1
1 0.707106781 0 0 0.707106781
2 0.923879533 0.382683432 0 0

extension LABELSET 2
1 3 LIN

extension TRIGGERS 3
1 2 1 10 100

extension DELAYS 4
1 0 -500 1 TE

extension RF_SHIMS 5
1 2 1 0 0.5 1.5707963

extension LABELINC 6
1 1 LIN

[SHAPES]

shape_id 1
num_samples 100
1
0
0
97

shape_id 2
num_samples 100
0
0
98

"""


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------


def _pypulseq_file(builder: Callable[[], object], v141: bool = False, **write_kwargs: object) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        path = d / ("pypulseq_v141.seq" if v141 else "pypulseq.seq")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            builder().write(str(path), v141_compat=v141, **write_kwargs)  # type: ignore[attr-defined]
        return path

    return make


def _handwritten(d: Path) -> Path:
    path = d / "extensions.seq"
    path.write_text(HANDWRITTEN_EXTENSIONS)
    return path


def _matlab_file(name: str) -> Callable[[Path], Path]:
    return lambda _d: DATA / name


SOURCES: dict[str, Callable[[Path], Path]] = {f"matlab/{name}": _matlab_file(name) for name in MATLAB_FILES}
SOURCES.update({f"pypulseq/{name}": _pypulseq_file(builder) for name, builder in factory.ALL_SMALL.items()})
SOURCES["pypulseq/half_raster"] = _pypulseq_file(
    lambda: factory.arbitrary_gradient_oversampled(oversampled=True), remove_duplicates=False
)
for _name in ("gre", "spin_echo", "arbitrary_gradient_oversampled", "labels_and_triggers"):
    SOURCES[f"pypulseq-1.4.1/{_name}"] = _pypulseq_file(factory.ALL_SMALL[_name], v141=True)
SOURCES["handwritten/extensions"] = _handwritten


@dataclass
class RoundTrip:
    name: str
    source: Path
    first: Sequence  # read from the source
    path: Path  # scanctl's file
    digest: str  # what write() returned
    second: Sequence  # read back from scanctl's file


@pytest.fixture(scope="module", params=list(SOURCES), ids=list(SOURCES))
def round_trip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    d = tmp_path_factory.mktemp(request.param.replace("/", "_"))
    source = SOURCES[request.param](d)
    first = pulseq_read.read(source)
    path = d / "scanctl.seq"
    digest = pulseq_write.write(first, path)
    return RoundTrip(request.param, source, first, path, digest, pulseq_read.read(path))


# ----------------------------------------------------------------------------------------------------------
# Model comparison
# ----------------------------------------------------------------------------------------------------------


def _shape(seq: Sequence, row: int, length_if_none: int | None = None) -> np.ndarray | None:
    if row >= 0:
        return seq.shapes.get(row)
    return None if length_if_none is None else np.zeros(length_if_none)


def _order(ids: np.ndarray) -> np.ndarray:
    return np.argsort(ids, kind="stable")


def _close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(b, a, rtol=RTOL, atol=1e-12, err_msg=what)


def assert_same_rf(a: Sequence, b: Sequence) -> None:
    ia, ib = _order(a.rf.id), _order(b.rf.id)
    np.testing.assert_array_equal(a.rf.id[ia], b.rf.id[ib])
    for field in ("amplitude_hz", "center_s", "delay_s", "freq_ppm", "phase_ppm", "freq_hz", "phase_rad"):
        _close(getattr(a.rf, field)[ia], getattr(b.rf, field)[ib], f"RF {field}")
    np.testing.assert_array_equal(a.rf.use[ia], b.rf.use[ib])
    for ra, rb in zip(ia.tolist(), ib.tolist(), strict=True):
        mag_a, mag_b = a.shapes.get(int(a.rf.mag_shape[ra])), b.shapes.get(int(b.rf.mag_shape[rb]))
        np.testing.assert_array_equal(mag_b, mag_a)
        # no phase shape == zero phase (the writer stores the zeros explicitly)
        np.testing.assert_array_equal(
            _shape(b, int(b.rf.phase_shape[rb]), mag_b.size), _shape(a, int(a.rf.phase_shape[ra]), mag_a.size)
        )
        ta, tb = _shape(a, int(a.rf.time_shape[ra])), _shape(b, int(b.rf.time_shape[rb]))
        assert (ta is None) == (tb is None)
        if ta is not None:
            np.testing.assert_array_equal(tb, ta)


def assert_same_gradients(a: Sequence, b: Sequence) -> None:
    ia, ib = _order(a.grad.id), _order(b.grad.id)
    np.testing.assert_array_equal(a.grad.id[ia], b.grad.id[ib])
    np.testing.assert_array_equal(a.grad.is_trap[ia], b.grad.is_trap[ib])
    for field in ("amplitude_hz_per_m", "rise_s", "flat_s", "fall_s", "delay_s", "first_hz_per_m", "last_hz_per_m"):
        _close(getattr(a.grad, field)[ia], getattr(b.grad, field)[ib], f"gradient {field}")
    for ra, rb in zip(ia.tolist(), ib.tolist(), strict=True):
        if a.grad.is_trap[ra]:
            continue
        np.testing.assert_array_equal(b.shapes.get(int(b.grad.shape[rb])), a.shapes.get(int(a.grad.shape[ra])))
        ta, tb = int(a.grad.time_shape[ra]), int(b.grad.time_shape[rb])
        assert (ta >= 0) == (tb >= 0)
        if ta >= 0:
            np.testing.assert_array_equal(b.shapes.get(tb), a.shapes.get(ta))
        else:
            assert ta == tb  # default raster or half raster


def assert_same_adc(a: Sequence, b: Sequence) -> None:
    ia, ib = _order(a.adc.id), _order(b.adc.id)
    np.testing.assert_array_equal(a.adc.id[ia], b.adc.id[ib])
    np.testing.assert_array_equal(a.adc.num_samples[ia], b.adc.num_samples[ib])
    for field in ("dwell_s", "delay_s", "freq_ppm", "phase_ppm", "freq_hz", "phase_rad"):
        _close(getattr(a.adc, field)[ia], getattr(b.adc, field)[ib], f"ADC {field}")
    for ra, rb in zip(ia.tolist(), ib.tolist(), strict=True):
        pa, pb = _shape(a, int(a.adc.phase_shape[ra])), _shape(b, int(b.adc.phase_shape[rb]))
        assert (pa is None) == (pb is None)
        if pa is not None:
            np.testing.assert_array_equal(pb, pa)


def assert_same_blocks(a: Sequence, b: Sequence) -> None:
    np.testing.assert_array_equal(b.blocks.id, a.blocks.id)
    np.testing.assert_array_equal(b.blocks.duration_ticks, a.blocks.duration_ticks)
    assert b.rasters.block_duration_s == a.rasters.block_duration_s

    def ids(table_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, table_ids[np.maximum(rows, 0)] if table_ids.size else 0, 0)

    np.testing.assert_array_equal(ids(b.rf.id, b.blocks.rf), ids(a.rf.id, a.blocks.rf))
    np.testing.assert_array_equal(ids(b.adc.id, b.blocks.adc), ids(a.adc.id, a.blocks.adc))
    for axis in range(3):
        np.testing.assert_array_equal(ids(b.grad.id, b.blocks.grad[:, axis]), ids(a.grad.id, a.blocks.grad[:, axis]))


def _spec_rows(seq: Sequence, name: str) -> list[tuple]:
    """Every row of an extension's table as a tuple of (id, column values...), sorted by id."""
    spec = seq.extensions.specs[name]
    rows = []
    for r in range(spec.id.size):
        values: list[object] = [int(spec.id[r])]
        for key in sorted(spec.columns):
            v = spec.columns[key][r]
            values.append(
                tuple(np.round(np.ravel(np.asarray(v, dtype=float)), 9).tolist()) if not isinstance(v, str) else v
            )
        rows.append(tuple(values))
    return sorted(rows, key=lambda t: t[0])


def _block_extensions(seq: Sequence) -> list[list[tuple[str, int]]]:
    """For every block, the (extension name, spec id) pairs of its extension list, in list order."""
    per_block: list[list[tuple[str, int]]] = [[] for _ in range(len(seq.blocks))]
    ext = seq.extensions
    for b, head in enumerate(seq.blocks.ext.tolist()):
        row = head
        while row >= 0:
            name = next(n for n, s in ext.specs.items() if s.type_id == ext.type_id[row])
            per_block[b].append((name, int(ext.ref[row])))
            row = int(ext.next[row])
    return per_block


def assert_same_extensions(a: Sequence, b: Sequence) -> None:
    assert set(b.extensions.specs) == set(a.extensions.specs)
    for name in a.extensions.specs:
        assert _spec_rows(b, name) == _spec_rows(a, name), f"extension {name}"
        # and what the model's own accessor sees per block
        which_a, rows_a = a.extensions.entries(a.blocks.ext, name)
        which_b, rows_b = b.extensions.entries(b.blocks.ext, name)
        np.testing.assert_array_equal(which_b, which_a)
        np.testing.assert_array_equal(b.extensions.specs[name].id[rows_b], a.extensions.specs[name].id[rows_a])
    assert _block_extensions(b) == _block_extensions(a)


def assert_same_derived(a: Sequence, b: Sequence) -> None:
    assert b.duration_s == a.duration_s
    np.testing.assert_allclose(W.adc_sample_times(b)[0], W.adc_sample_times(a)[0], rtol=0, atol=TIME_TOL_S)
    for axis in range(3):
        wa, wb = W.axis_waveform(a, axis), W.axis_waveform(b, axis)
        np.testing.assert_array_equal(wb.block, wa.block)
        np.testing.assert_allclose(wb.t_s, wa.t_s, rtol=0, atol=TIME_TOL_S)
        scale = float(np.abs(wa.g_hz_per_m).max(initial=0.0))
        np.testing.assert_allclose(wb.g_hz_per_m, wa.g_hz_per_m, rtol=0, atol=RTOL * scale)
    ka, kb = W.kspace_adc(a), W.kspace_adc(b)
    assert ka.shape == kb.shape
    if ka.size:
        k_max = np.abs(ka).max(axis=1)
        overall = k_max.max()
        for axis in range(3):
            scale = k_max[axis] if k_max[axis] > 1e-6 * overall else overall
            np.testing.assert_allclose(kb[axis], ka[axis], rtol=0, atol=1e-6 * scale)


# ----------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------


def test_round_trip_keeps_the_model(round_trip: RoundTrip) -> None:
    a, b = round_trip.first, round_trip.second
    assert len(a.blocks) > 0
    assert b.rasters.gradient_s == a.rasters.gradient_s and b.rasters.rf_s == a.rasters.rf_s
    assert b.rasters.adc_s == a.rasters.adc_s
    for key, value in a.definitions.items():
        if key in ("GradientRasterTime", "RadiofrequencyRasterTime", "AdcRasterTime", "BlockDurationRaster"):
            assert float(b.definitions[key]) == float(value)
        elif key == "RequiredExtensions":
            assert set(value.split()) <= set(b.definitions[key].split())
        else:
            assert b.definitions[key] == value, f"definition {key}"
    assert_same_blocks(a, b)
    assert_same_rf(a, b)
    assert_same_gradients(a, b)
    assert_same_adc(a, b)
    assert_same_extensions(a, b)
    assert_same_derived(a, b)


def test_written_file_is_1_5_1_and_its_signature_verifies(round_trip: RoundTrip) -> None:
    data = round_trip.path.read_bytes()
    assert b"\n[VERSION]\nmajor 1\nminor 5\nrevision 1\n" in data
    assert round_trip.second.version == (1, 5, 1)
    cut = data.rindex(b"\n[SIGNATURE]")
    assert hashlib.md5(data[:cut]).hexdigest() == round_trip.digest
    assert data.endswith(f"\nType md5\nHash {round_trip.digest}\n".encode())
    # read() verified it (verify_signature defaults to True) and kept it
    assert round_trip.second.signature == round_trip.digest


def test_a_changed_byte_breaks_the_signature(round_trip: RoundTrip) -> None:
    data = round_trip.path.read_bytes()
    start = data.index(b"\n[BLOCKS]\n") + len(b"\n[BLOCKS]\n")
    line_end = data.index(b"\n", start)
    # Another valid first block: one more duration tick (still a well-formed file, just not the signed one).
    fields = data[start:line_end].split()
    fields[1] = str(int(fields[1]) + 1).encode()
    tampered = data[:start] + b" ".join(fields) + data[line_end:]
    with pytest.raises(SignatureError, match="signature mismatch"):
        pulseq_read.parse(tampered, path="tampered.seq")
    changed = pulseq_read.parse(tampered, path="tampered.seq", verify_signature=False)
    assert changed.blocks.duration_ticks[0] == round_trip.second.blocks.duration_ticks[0] + 1


def test_writing_what_was_read_back_gives_the_same_bytes(round_trip: RoundTrip, tmp_path: Path) -> None:
    again = tmp_path / "again.seq"
    digest = pulseq_write.write(round_trip.second, again)
    assert digest == round_trip.digest
    assert again.read_bytes() == round_trip.path.read_bytes()


# ----------------------------------------------------------------------------------------------------------
# The extension round trips are not vacuous
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "extensions"),
    [
        ("handwritten/extensions", {"ROTATIONS", "RF_SHIMS", "LABELSET", "LABELINC", "TRIGGERS", "DELAYS"}),
        ("matlab/tests_legacy_approved_epi_rs.seq", {"LABELSET", "LABELINC", "TRIGGERS", "DELAYS"}),
        ("pypulseq/labels_and_triggers", {"LABELSET", "LABELINC", "TRIGGERS"}),
        ("pypulseq/soft_delays", {"LABELSET", "LABELINC", "DELAYS"}),
    ],
)
def test_sources_carry_the_extensions_whose_round_trip_is_tested(
    source: str, extensions: set[str], tmp_path: Path
) -> None:
    seq = pulseq_read.read(SOURCES[source](tmp_path))
    assert extensions <= set(seq.extensions.specs)
    used = {name for per_block in _block_extensions(seq) for name, _ in per_block}
    assert extensions <= used


def test_handwritten_extensions_survive_with_their_values(tmp_path: Path) -> None:
    first = pulseq_read.read(_handwritten(tmp_path))
    path = tmp_path / "out.seq"
    pulseq_write.write(first, path)
    text = path.read_text()
    second = pulseq_read.read(path)
    required = next(line for line in text.splitlines() if line.startswith("RequiredExtensions "))
    assert {"ROTATIONS", "RF_SHIMS"} <= set(required.split()[1:])

    rot = second.extensions.specs["ROTATIONS"]
    order = _order(rot.id)
    np.testing.assert_allclose(
        rot.columns["quaternion"][order],
        [[0.707106781, 0, 0, 0.707106781], [0.923879533, 0.382683432, 0, 0]],
        rtol=0,
        atol=1e-9,
    )
    # the rotation matrix of the first quaternion: 90 degrees about z
    np.testing.assert_allclose(rot.columns["matrix"][order[0]], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-8)
    assert _block_extensions(second) == [
        [("RF_SHIMS", 1)],
        [("ROTATIONS", 1)],
        [("ROTATIONS", 2), ("LABELSET", 1), ("TRIGGERS", 1)],
        [("LABELINC", 1), ("ROTATIONS", 1)],
        [("ROTATIONS", 1)],
        [("DELAYS", 1)],
    ]
    delays = second.extensions.specs["DELAYS"].columns
    assert (delays["num"][0], delays["offset_s"][0], delays["factor"][0], delays["hint"][0]) == (0, -500e-6, 1.0, "TE")
    trig = second.extensions.specs["TRIGGERS"].columns
    assert (trig["type"][0], trig["channel"][0]) == (2, 1)
    np.testing.assert_allclose([trig["delay_s"][0], trig["duration_s"][0]], [10e-6, 100e-6], rtol=1e-12)
    shim = second.extensions.specs["RF_SHIMS"].columns["magnitude_phase"][0]
    np.testing.assert_allclose(np.asarray(shim, dtype=float), np.array([[1, 0], [0.5, 1.5707963]]), rtol=1e-12)
    labels = {name: second.extensions.specs[name].columns for name in ("LABELSET", "LABELINC")}
    assert [(lab, int(v)) for lab, v in zip(labels["LABELSET"]["label"], labels["LABELSET"]["value"], strict=True)] == [
        ("LIN", 3)
    ]
    assert [(lab, int(v)) for lab, v in zip(labels["LABELINC"]["label"], labels["LABELINC"]["value"], strict=True)] == [
        ("LIN", 1)
    ]


def test_v141_source_is_upgraded_to_explicit_1_5_fields(tmp_path: Path) -> None:
    """A 1.4.1 file's derived RF use/centre and gradient first/last are written out explicitly."""
    first = pulseq_read.read(SOURCES["pypulseq-1.4.1/spin_echo"](tmp_path))
    assert first.version[:2] == (1, 4)
    path = tmp_path / "out.seq"
    pulseq_write.write(first, path)
    rf_lines = path.read_text().split("[RF]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert sorted(line.split()[-1] for line in rf_lines) == ["e", "r"]
    assert len(rf_lines[0].split()) == 12  # id amp mag phase time center delay freqPPM phasePPM freq phase use
    second = pulseq_read.read(path)
    np.testing.assert_allclose(second.rf.center_s, first.rf.center_s, rtol=RTOL)
    assert (first.rf.center_s > 0).all()
