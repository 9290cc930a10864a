"""Reading Pulseq files: the MATLAB reference files, signatures, formats 1.3 to 1.5.1 and the known traps.

Figures are cross-checked against pypulseq (the pinned reference reader) reading the same file, except
for what pypulseq 1.5.0.post1 cannot read (rotations, RF shims, a custom label such as ``OFF``, a file
that ends in ``[SHAPES]`` without a trailing newline, on which it hangs): there the expected values are
worked out by hand from the file text.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pypulseq as pp
import pytest
from pypulseq.decompress_shape import decompress_shape

from scanctl.errors import SequenceFormatError, SignatureError
from scanctl.sequence.model import TIME_DEFAULT, TIME_OVERSAMPLED, Sequence
from scanctl.sequence.pulseq_read import parse, read
from scanctl.sequence.timing import grad_shape_duration_s, rf_shape_duration_s
from tests import pulseq_factory as factory

DATA = Path(__file__).parent / "data" / "pulseq-matlab"
REFERENCE_FILES = sorted(DATA.glob("*.seq"))
_SIG = b"\n[SIGNATURE]"


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def pp_read(path: Path) -> pp.Sequence:
    """pypulseq's reading of a file, with the event ids kept as the file has them."""
    seq = pp.Sequence()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq.read(str(path), remove_duplicates=False)
    return seq


def pp_shape(ref: pp.Sequence, shape_id: int) -> np.ndarray:
    packed = np.asarray(ref.shape_library.data[shape_id], dtype=float)
    return np.asarray(decompress_shape(SimpleNamespace(num_samples=int(packed[0]), data=packed[1:])))


def unsigned(data: bytes) -> bytes:
    """The file without its [SIGNATURE] section: the signed text and the newline that ends it."""
    cut = data.rfind(_SIG)
    assert cut > 0
    return data[: cut + 1]


def signed(body: bytes) -> bytes:
    """``body`` with a [SIGNATURE] section, as pypulseq and MATLAB write it (``body`` ends in a newline)."""
    digest = hashlib.md5(body).hexdigest()
    return body + b"\n[SIGNATURE]\n# the hash of the text above\nType md5\nHash " + digest.encode() + b"\n"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanctl.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def ext_rows(seq: Sequence, name: str) -> dict[int, list[int]]:
    """Per block index: the rows of extension ``name``'s table its extension list points to."""
    which, rows = seq.extensions.entries(seq.blocks.ext, name)
    out: dict[int, list[int]] = {}
    for b, r in zip(which.tolist(), rows.tolist(), strict=True):
        out.setdefault(b, []).append(r)
    return out


def labels(seq: Sequence, name: str) -> dict[int, list[tuple[str, int]]]:
    """Per block index: the (label, value) pairs of ``name`` (LABELSET or LABELINC)."""
    cols = seq.extensions.specs[name].columns
    return {
        b: sorted((str(cols["label"][r]), int(cols["value"][r])) for r in rows)
        for b, rows in ext_rows(seq, name).items()
    }


def pp_labels(ref: pp.Sequence, name: str) -> dict[int, list[tuple[str, int]]]:
    """The same from pypulseq's reading (blocks are 1-based there)."""
    out: dict[int, list[tuple[str, int]]] = {}
    for b in sorted(ref.block_events):
        block = ref.get_block(b)
        for lab in (getattr(block, "label", None) or {}).values():
            if lab.type == name.lower():
                out.setdefault(b - 1, []).append((lab.label, int(lab.value)))
    return {b: sorted(pairs) for b, pairs in out.items()}


# ----------------------------------------------------------------------------------------------------------
# The MATLAB reference files
# ----------------------------------------------------------------------------------------------------------


def test_all_seven_reference_files_are_present() -> None:
    assert len(REFERENCE_FILES) == 7


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.stem)
def test_reference_file_reads_as_pypulseq_reads_it(path: Path) -> None:
    seq = read(path)  # verify_signature=True: the signature must match
    ref = pp_read(path)
    data = path.read_bytes()
    assert seq.signature == hashlib.md5(data[: data.rfind(_SIG)]).hexdigest() == ref.signature_value
    assert seq.version[:2] == (1, 5)
    assert seq.definitions.keys() == ref.definitions.keys()

    keys = sorted(ref.block_events)
    assert len(seq.blocks) == len(keys) > 0
    assert seq.blocks.id.tolist() == keys
    assert seq.duration_s == pytest.approx(ref.duration()[0], rel=1e-9)
    durations = np.array([ref.block_durations[k] for k in keys])
    np.testing.assert_allclose(seq.block_duration_s, durations, rtol=0, atol=1e-12)
    r = seq.rasters
    assert (r.gradient_s, r.rf_s, r.adc_s, r.block_duration_s) == (
        ref.grad_raster_time,
        ref.rf_raster_time,
        ref.adc_raster_time,
        ref.block_duration_raster,
    )

    # The event ids of every block, as the file has them (0: none).
    events = np.array([ref.block_events[k] for k in keys])
    for col, rows, table_ids in (
        (1, seq.blocks.rf, seq.rf.id),
        (2, seq.blocks.grad[:, 0], seq.grad.id),
        (3, seq.blocks.grad[:, 1], seq.grad.id),
        (4, seq.blocks.grad[:, 2], seq.grad.id),
        (5, seq.blocks.adc, seq.adc.id),
    ):
        ours = np.zeros(rows.size, np.int64)
        ours[rows >= 0] = table_ids[rows[rows >= 0]]
        assert ours.tolist() == events[:, col].tolist()

    # The events' values.
    assert sorted(seq.rf.id.tolist()) == sorted(ref.rf_library.data)
    for row, rf_id in enumerate(seq.rf.id.tolist()):
        d = ref.rf_library.data[rf_id]
        assert seq.rf.amplitude_hz[row] == pytest.approx(d[0])
        got = [
            seq.rf.center_s[row],
            seq.rf.delay_s[row],
            seq.rf.freq_ppm[row],
            seq.rf.phase_ppm[row],
            seq.rf.freq_hz[row],
            seq.rf.phase_rad[row],
        ]
        np.testing.assert_allclose(got, d[4:10], rtol=1e-12, atol=1e-12)
        assert chr(seq.rf.use[row]) == ref.rf_library.type[rf_id]
    assert sorted(seq.adc.id.tolist()) == sorted(ref.adc_library.data)
    for row, adc_id in enumerate(seq.adc.id.tolist()):
        d = ref.adc_library.data[adc_id]
        assert seq.adc.num_samples[row] == d[0]
        np.testing.assert_allclose([seq.adc.dwell_s[row], seq.adc.delay_s[row]], d[1:3], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(
            [seq.adc.freq_ppm[row], seq.adc.phase_ppm[row], seq.adc.freq_hz[row], seq.adc.phase_rad[row]],
            d[3:7],
        )
    assert sorted(seq.grad.id.tolist()) == sorted(ref.grad_library.data)
    for row, g_id in enumerate(seq.grad.id.tolist()):
        d = ref.grad_library.data[g_id]
        assert bool(seq.grad.is_trap[row]) == (ref.grad_library.type[g_id] == "t")
        assert seq.grad.amplitude_hz_per_m[row] == pytest.approx(d[0])
        if seq.grad.is_trap[row]:
            got = [seq.grad.rise_s[row], seq.grad.flat_s[row], seq.grad.fall_s[row], seq.grad.delay_s[row]]
            np.testing.assert_allclose(got, d[1:5], rtol=0, atol=1e-12)
        else:
            assert (seq.grad.first_hz_per_m[row], seq.grad.last_hz_per_m[row]) == pytest.approx((d[1], d[2]))
            assert seq.grad.delay_s[row] == pytest.approx(d[5], abs=1e-12)
    # Every shape decompresses to pypulseq's samples.
    assert sorted(seq.shapes.id.tolist()) == sorted(ref.shape_library.data)
    for row, shape_id in enumerate(seq.shapes.id.tolist()):
        np.testing.assert_allclose(seq.shapes.get(row), pp_shape(ref, shape_id), rtol=0, atol=1e-9)

    # ADC samples in all, and the labels of every block.
    adc_samples = sum(int(ref.adc_library.data[a][0]) for a in events[:, 5] if a)
    assert int(seq.adc.num_samples[seq.blocks.adc[seq.blocks.adc >= 0]].sum()) == adc_samples
    for name in ("LABELSET", "LABELINC"):
        if name in seq.extensions.specs:
            assert labels(seq, name) == pp_labels(ref, name) != {}


def test_reference_epi_extensions_and_rf_fields() -> None:
    """The 1.5.1 EPI: triggers, soft delays, labels, the RF ``use`` and ppm offsets, time-shaped gradients."""
    path = DATA / "tests_legacy_approved_epi_rs.seq"
    seq = read(path)
    ref = pp_read(path)
    assert seq.version == (1, 5, 1)

    trig = seq.extensions.specs["TRIGGERS"]
    assert trig.type_id == 3
    assert trig.id.tolist() == [1]
    assert (int(trig.columns["type"][0]), int(trig.columns["channel"][0])) == (1, 1)
    assert trig.columns["delay_s"][0] == 0 and trig.columns["duration_s"][0] == pytest.approx(100e-6)
    assert ref.trigger_library.data[1][3] == pytest.approx(trig.columns["duration_s"][0])

    delays = seq.extensions.specs["DELAYS"]
    assert delays.id.tolist() == [1, 2, 3]
    assert delays.columns["num"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(delays.columns["offset_s"], [-35010e-6, 100000e-6, -141290e-6])
    assert delays.columns["factor"].tolist() == [1, -1, 4]
    assert delays.columns["hint"].tolist() == ["TE", "TE", "TR"]
    for k, d in ref.soft_delay_library.data.items():
        assert [d[0], d[1], d[2], d[3]] == [
            delays.columns["num"][k - 1],
            pytest.approx(delays.columns["offset_s"][k - 1]),
            delays.columns["factor"][k - 1],
            delays.columns["hint"][k - 1],
        ]
    # The blocks that carry a soft delay, as pypulseq sees them.
    ours = {b: [int(delays.id[r]) for r in rows] for b, rows in ext_rows(seq, "DELAYS").items()}
    theirs = {}
    for b in sorted(ref.block_events):
        sd = getattr(ref.get_block(b), "soft_delay", None)
        if sd is not None:
            theirs[b - 1] = sd
    assert set(ours) == set(theirs) != set()
    for b, sd in theirs.items():
        (row,) = ext_rows(seq, "DELAYS")[b]
        assert (delays.columns["hint"][row], delays.columns["num"][row]) == (sd.hint, sd.numID)

    # RF 1: a fat saturation pulse written with its use, centre and ppm offsets (format 1.5).
    row = int(np.flatnonzero(seq.rf.id == 1)[0])
    assert chr(seq.rf.use[row]) == "s"
    assert seq.rf.center_s[row] == pytest.approx(4000e-6)
    assert seq.rf.delay_s[row] == pytest.approx(100e-6)
    assert seq.rf.freq_ppm[row] == pytest.approx(-3.45)
    assert seq.rf.phase_ppm[row] == pytest.approx(0.086708)
    assert [chr(u) for u in seq.rf.use[seq.rf.id != 1]] == ["e"] * 4
    # ADC with a phase shape (format 1.5).
    assert seq.adc.phase_shape[0] >= 0 and seq.shapes.id[seq.adc.phase_shape[0]] == 5
    # Arbitrary gradients with time shapes and explicit first/last.
    g = {int(i): k for k, i in enumerate(seq.grad.id.tolist())}
    assert (seq.grad.first_hz_per_m[g[8]], seq.grad.last_hz_per_m[g[8]]) == (0, -151515)
    assert (seq.grad.first_hz_per_m[g[10]], seq.grad.last_hz_per_m[g[10]]) == (-151515, 0)
    assert seq.shapes.id[seq.grad.time_shape[g[8]]] == 7
    assert seq.grad.delay_s[g[8]] == pytest.approx(610e-6)


# ----------------------------------------------------------------------------------------------------------
# Signatures
# ----------------------------------------------------------------------------------------------------------


def _tamper(data: bytes) -> bytes:
    """Change one digit of the signed text: the amplitude of the first trapezoid."""
    at = data.index(b"[TRAP]")
    at = data.index(b"\n", at) + 1
    while not (data[at : at + 1].isdigit() and data[at + 1 : at + 2].isdigit()):  # a digit inside a number
        at += 1
    digit = data[at : at + 1]
    return data[:at] + (b"7" if digit != b"7" else b"8") + data[at + 1 :]


@pytest.fixture
def tampered(tmp_path: Path) -> tuple[Path, Path]:
    original = DATA / "tests_expected_output_seq2.seq"
    path = tmp_path / "tampered.seq"
    path.write_bytes(_tamper(original.read_bytes()))
    return original, path


def test_tampered_file_raises_signature_error(tampered: tuple[Path, Path]) -> None:
    original, path = tampered
    assert len(original.read_bytes()) == len(path.read_bytes()) and original.read_bytes() != path.read_bytes()
    with pytest.raises(SignatureError) as info:
        read(path)
    assert isinstance(info.value, SequenceFormatError)
    assert info.value.path == str(path)
    assert info.value.line == path.read_bytes()[: path.read_bytes().index(b"[SIGNATURE]")].count(b"\n") + 1
    assert "signature" in str(info.value)


def test_tampered_file_reads_without_verification(tampered: tuple[Path, Path]) -> None:
    original, path = tampered
    good, changed = read(original), read(path, verify_signature=False)
    assert len(changed.blocks) == len(good.blocks)
    assert changed.grad.amplitude_hz_per_m[0] != good.grad.amplitude_hz_per_m[0]
    np.testing.assert_array_equal(changed.grad.amplitude_hz_per_m[1:], good.grad.amplitude_hz_per_m[1:])


def test_cli_refuses_tampered_file_with_one_line(tampered: tuple[Path, Path]) -> None:
    _, path = tampered
    res = run_cli("check", path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and "signature" in lines[0] and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_cli_ignore_signature_checks_tampered_file(tampered: tuple[Path, Path]) -> None:
    original, path = tampered
    expected = run_cli("check", original)
    res = run_cli("check", path, "--ignore-signature")
    assert expected.returncode in (0, 1)
    assert res.returncode == expected.returncode  # one trapezoid amplitude changed a little: same verdict
    assert str(path) in res.stdout and "6 blocks" in res.stdout
    assert "Traceback" not in res.stderr


def test_file_without_signature_is_accepted() -> None:
    path = DATA / "tests_legacy_approved_gre.seq"
    with_sig = read(path)
    without = parse(unsigned(path.read_bytes()), path="gre.seq")  # verify_signature defaults to True
    assert without.signature is None and with_sig.signature is not None
    assert len(without.blocks) == len(with_sig.blocks) == 320
    np.testing.assert_array_equal(without.block_duration_s, with_sig.block_duration_s)


def test_signature_of_a_windows_written_file_is_verified() -> None:
    """pypulseq on Windows writes CRLF line ends and hashes the text as read back (LF): accepted as valid."""
    path = DATA / "tests_legacy_approved_gre.seq"
    crlf = path.read_bytes().replace(b"\n", b"\r\n")
    seq = parse(crlf, path="windows.seq")
    assert seq.signature == read(path).signature
    assert len(seq.blocks) == 320
    # A change to a CRLF file is still caught.
    with pytest.raises(SignatureError):
        parse(_tamper(crlf), path="windows.seq")


def test_section_after_signature_is_refused_unless_ignored() -> None:
    """Text after [SIGNATURE] is not covered by the hash: a verified read must not take it in."""
    data = (DATA / "tests_expected_output_seq1.seq").read_bytes() + b"\nextension NOTES 9\n1 added later\n"
    with pytest.raises(SignatureError) as info:
        parse(data, path="x.seq")
    assert info.value.line == data.count(b"\n") - 1 and "extension NOTES 9" in str(info.value)
    seq = parse(data, path="x.seq", verify_signature=False)
    assert seq.extensions.specs["NOTES"].columns["text"].tolist() == ["1 added later"]


# ----------------------------------------------------------------------------------------------------------
# Hand-written files in formats 1.3 and 1.4
# ----------------------------------------------------------------------------------------------------------

# Shapes shared by the 1.3 and 1.4 files: 1000 ones (a block pulse), 1000 zeros, a 3-sample gradient
# lobe and its time shape, a compressed form as long as the waveform (1.3: still compressed) and one
# longer than the waveform.
_SHAPES_14 = """\
[SHAPES]

shape_id 1
num_samples 1000
1
0
0
997

shape_id 2
num_samples 1000
0
0
998

shape_id 3
num_samples 3
0
1
0

shape_id 4
num_samples 3
0
20
50

"""

FILE_14 = (
    """\
# hand-written Pulseq file, format 1.4.0

[VERSION]
major 1
minor 4
revision 0

[DEFINITIONS]
AdcRasterTime 1e-07
BlockDurationRaster 1e-05
GradientRasterTime 1e-05
RadiofrequencyRasterTime 1e-06

# Format of blocks:
# NUM DUR RF  GX  GY  GZ  ADC  EXT
[BLOCKS]
1 120 1 0 0 1 0 0
2 290 0 2 0 0 0 0
3 350 0 3 0 0 1 0
4 1000 0 0 0 0 0 0
5 50 0 4 0 0 0 0

# Format of RF events:
# id amplitude mag_id phase_id time_shape_id delay freq phase
# ..        Hz   ....     ....          ....    us   Hz   rad
[RF]
1 250 1 2 0 100 0 0

# Format of arbitrary gradients:
# id amplitude amp_shape_id time_shape_id delay
# ..      Hz/m       ..         ..          us
[GRADIENTS]
4 100000 3 4 0

# Format of trapezoid gradients:
# id amplitude rise flat fall delay
# ..      Hz/m   us   us   us    us
[TRAP]
1 100000 100 1000 100 0
2 -200000 200 2500 200 0
3 300000 250 3000 250 0

# Format of ADC events:
# id num dwell delay freq phase
# ..  ..    ns    us   Hz   rad
[ADC]
1 300 10000 250 0 0

"""
    + _SHAPES_14
)

FILE_13 = """\
# hand-written Pulseq file, format 1.3.1

[VERSION]
major 1
minor 3
revision 1

[DEFINITIONS]
GradientRasterTime 1e-05
RadiofrequencyRasterTime 1e-06

# Format of blocks:
#  #  D RF  GX  GY  GZ ADC EXT
[BLOCKS]
1 1 1 0 0 1 0 0
2 0 0 2 0 0 0 0
3 0 0 3 0 0 1 0
4 2 0 0 0 0 0 0
5 0 0 4 0 6 0 0

# Format of RF events:
# id amplitude mag_id phase_id delay freq phase
# ..        Hz   ....     ....    us   Hz   rad
[RF]
1 250 1 2 100 0 0

# Format of arbitrary gradients:
# id amplitude shape_id delay
# ..      Hz/m     ....    us
[GRADIENTS]
4 100000 3 20
6 100000 6 0

# Format of trapezoid gradients:
# id amplitude rise flat fall delay
# ..      Hz/m   us   us   us    us
[TRAP]
1 100000 100 1000 100 0
2 -200000 200 2500 200 0
3 300000 250 3000 250 0

# Format of ADC events:
# id num dwell delay freq phase
# ..  ..    ns    us   Hz   rad
[ADC]
1 300 10000 250 0 0

# Format of delays:
# id delay (us)
[DELAYS]
1 2000
2 10000

# Sequence Shapes
[SHAPES]

shape_id 1
num_samples 1000
1
0
0
997

shape_id 2
num_samples 1000
0
0
998

shape_id 3
num_samples 10
0.1
0.1
8

shape_id 6
num_samples 5
0
0.5
0.5
0
0
0
0

"""


@pytest.fixture
def file_14(tmp_path: Path) -> Path:
    path = tmp_path / "v14.seq"
    path.write_text(FILE_14)
    return path


@pytest.fixture
def file_13(tmp_path: Path) -> Path:
    path = tmp_path / "v13.seq"
    path.write_text(FILE_13)
    return path


def test_format_14_block_durations(file_14: Path) -> None:
    seq = read(file_14)
    assert seq.version == (1, 4, 0)
    np.testing.assert_allclose(seq.block_duration_s, [1.2e-3, 2.9e-3, 3.5e-3, 10e-3, 0.5e-3], rtol=0, atol=1e-12)
    ref = pp_read(file_14)
    np.testing.assert_allclose(
        seq.block_duration_s, [ref.block_durations[k] for k in sorted(ref.block_events)], atol=1e-12
    )
    # The time-shaped gradient: samples at 0, 20 and 50 gradient rasters, so it lasts 0.5 ms.
    g = int(np.flatnonzero(seq.grad.id == 4)[0])
    assert seq.grad.time_shape[g] >= 0
    np.testing.assert_allclose(seq.shapes.get(int(seq.grad.time_shape[g])), [0, 20, 50])
    assert grad_shape_duration_s(seq)[g] == pytest.approx(0.5e-3)
    # Fields 1.4 does not store are derived: a 90° block pulse is an excitation centred on its middle.
    assert chr(seq.rf.use[0]) == "e"
    assert seq.rf.center_s[0] == pytest.approx(500e-6, abs=1e-9)
    assert seq.rf.center_s[0] == pytest.approx(ref.rf_library.data[1][4], abs=1e-9)
    assert (seq.grad.first_hz_per_m[g], seq.grad.last_hz_per_m[g]) == (0, 0)
    np.testing.assert_allclose(seq.shapes.get(int(seq.rf.mag_shape[0])), np.ones(1000))
    assert rf_shape_duration_s(seq)[0] == pytest.approx(1e-3)


def test_format_13_block_durations_from_delays_and_events(file_13: Path) -> None:
    """1.3 has no block durations: the longest of the block's [DELAYS] delay and its events."""
    seq = read(file_13)
    assert seq.version == (1, 3, 1)
    # 1: delay 2 ms beats RF 1.1 ms and trapezoid 1.2 ms; 2: trapezoid 2.9 ms; 3: trapezoid 3.5 ms beats
    # the ADC's 3.25 ms; 4: delay 10 ms; 5: gradient delay 20 us + 10 samples of 10 us.
    np.testing.assert_allclose(seq.block_duration_s, [2e-3, 2.9e-3, 3.5e-3, 10e-3, 120e-6], rtol=0, atol=1e-12)
    ref = pp_read(file_13)
    np.testing.assert_allclose(
        seq.block_duration_s, [ref.block_durations[k] for k in sorted(ref.block_events)], atol=1e-12
    )
    by_id = {int(i): seq.shapes.get(k) for k, i in enumerate(seq.shapes.id.tolist())}
    np.testing.assert_allclose(by_id[3], np.arange(1, 11) / 10, atol=1e-12)
    # 1.3 stores a shape compressed even when that is longer than the waveform (7 values for 5 samples).
    np.testing.assert_allclose(by_id[6], [0, 0.5, 1, 1, 1], atol=1e-12)
    for shape_id, samples in by_id.items():
        np.testing.assert_allclose(samples, pp_shape(ref, shape_id), atol=1e-12)
    assert seq.rf.delay_s[0] == pytest.approx(100e-6)


def test_format_13_shape_as_long_as_its_waveform_is_still_compressed() -> None:
    """Unlike 1.4, 1.3 has no uncompressed form: ``0.1 0.2 -0.1`` is the derivative of 0.1 0.3 0.2.

    (pypulseq 1.5.0.post1 fails on such a file with a TypeError, so this is worked out by hand.)
    """
    extra = "shape_id 5\nnum_samples 3\n0.1\n0.2\n-0.1\n\n"
    seq = parse((FILE_13 + extra).encode(), path="v13.seq")
    np.testing.assert_allclose(seq.shapes.get(int(np.flatnonzero(seq.shapes.id == 5)[0])), [0.1, 0.3, 0.2])
    seq = parse((FILE_14 + extra).encode(), path="v14.seq")  # 1.4: the same text is the waveform itself
    np.testing.assert_allclose(seq.shapes.get(int(np.flatnonzero(seq.shapes.id == 5)[0])), [0.1, 0.2, -0.1])


# ----------------------------------------------------------------------------------------------------------
# Trap: a file without [SIGNATURE] ending in [SHAPES] without a final newline (pypulseq hangs on it)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"", b"\n", b"   ", b"\n\n"], ids=["no-newline", "newline", "spaces", "blank"])
def test_file_ending_in_shapes_without_newline(ending: bytes) -> None:
    body = unsigned((DATA / "tests_expected_output_seq2.seq").read_bytes()).rstrip() + ending
    assert b"[SIGNATURE]" not in body and body.rstrip().endswith(b"\nshape_id 3\nnum_samples 2\n0\n1000")
    start = time.perf_counter()
    seq = parse(body, path="no-newline.seq")
    assert time.perf_counter() - start < 1.0
    k = int(np.flatnonzero(seq.shapes.id == 3)[0])
    np.testing.assert_array_equal(seq.shapes.get(k), [0, 1000])
    assert len(seq.blocks) == 6


# ----------------------------------------------------------------------------------------------------------
# GE-style rasters
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rf_raster", [2e-6, 4e-6])
def test_ge_rasters_are_taken_from_the_file(tmp_path: Path, rf_raster: float) -> None:
    system = pp.Opts(
        max_grad=28,
        grad_unit="mT/m",
        max_slew=150,
        slew_unit="T/m/s",
        rf_ringdown_time=20e-6,
        rf_dead_time=100e-6,
        adc_dead_time=12e-6,
        grad_raster_time=4e-6,
        rf_raster_time=rf_raster,
        block_duration_raster=4e-6,
        adc_raster_time=2e-6,
    )
    path = tmp_path / "ge.seq"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factory.gre(n=8, system=system).write(str(path))
    seq = read(path)
    assert (seq.rasters.gradient_s, seq.rasters.rf_s, seq.rasters.adc_s, seq.rasters.block_duration_s) == (
        4e-6,
        rf_raster,
        2e-6,
        4e-6,
    )
    ref = pp_read(path)
    keys = sorted(ref.block_events)
    np.testing.assert_allclose(seq.block_duration_s, [ref.block_durations[k] for k in keys], rtol=0, atol=1e-12)
    assert seq.duration_s == pytest.approx(ref.duration()[0])
    # The RF pulse lasts its samples times the file's RF raster (2 ms here, whatever the raster).
    rf_dur = rf_shape_duration_s(seq)
    assert rf_dur[0] == pytest.approx(ref.get_block(1).rf.shape_dur) == pytest.approx(2e-3)
    assert seq.shapes.length(seq.rf.mag_shape)[0] == round(2e-3 / rf_raster)
    # A block's duration counts in the file's 4 us ticks.
    text = path.read_text()
    first_block = text[text.index("[BLOCKS]") :].splitlines()[1].split()
    assert seq.block_duration_s[0] == pytest.approx(int(first_block[1]) * 4e-6)


# ----------------------------------------------------------------------------------------------------------
# Labels and triggers, soft delays, oversampled gradients (pypulseq-written files)
# ----------------------------------------------------------------------------------------------------------


def _write(seq: pp.Sequence, path: Path, **kw: object) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq.write(str(path), **kw)
    return path


def test_labels_and_triggers(tmp_path: Path) -> None:
    path = _write(factory.labels_and_triggers(), tmp_path / "lt.seq")
    seq = read(path)
    ref = pp_read(path)
    for name in ("LABELSET", "LABELINC"):
        assert labels(seq, name) == pp_labels(ref, name) != {}
    trig = seq.extensions.specs["TRIGGERS"]
    rows = ext_rows(seq, "TRIGGERS")
    theirs: dict[int, list[tuple[float, float]]] = {}
    for b in sorted(ref.block_events):
        for ev in (getattr(ref.get_block(b), "trigger", None) or {}).values():
            theirs.setdefault(b - 1, []).append((ev.delay, ev.duration))
    ours = {b: [(trig.columns["delay_s"][r], trig.columns["duration_s"][r]) for r in rs] for b, rs in rows.items()}
    assert set(ours) == set(theirs) != set()
    for b in ours:
        np.testing.assert_allclose(sorted(ours[b]), sorted(theirs[b]), atol=1e-12)
    # The physio trigger waits 2 ms.
    assert 2e-3 in [pytest.approx(d) for d in trig.columns["duration_s"].tolist()]


def test_soft_delays(tmp_path: Path) -> None:
    path = _write(factory.soft_delays(), tmp_path / "sd.seq")
    seq = read(path)
    ref = pp_read(path)
    spec = seq.extensions.specs["DELAYS"]
    assert sorted(set(spec.columns["hint"].tolist())) == ["TE", "TR"]
    assert sorted(set(spec.columns["factor"].tolist())) == [-1.0, 1.0]
    for k, d in ref.soft_delay_library.data.items():
        r = int(np.flatnonzero(spec.id == k)[0])
        assert spec.columns["num"][r] == d[0]
        assert spec.columns["offset_s"][r] == pytest.approx(d[1], abs=1e-9)
        assert spec.columns["factor"][r] == d[2]
        assert spec.columns["hint"][r] == d[3]
    rows = ext_rows(seq, "DELAYS")
    assert len(rows) == 3 * 16  # three soft-delay blocks per TR
    keys = sorted(ref.block_events)
    np.testing.assert_allclose(seq.block_duration_s, [ref.block_durations[k] for k in keys], atol=1e-12)


@pytest.fixture(scope="module")
def oversampled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("os") / "os.seq"
    return _write(factory.arbitrary_gradient_oversampled(oversampled=True), path, remove_duplicates=False)


def test_oversampled_gradient_time_id_minus_one(oversampled_file: Path) -> None:
    seq = read(oversampled_file)
    text = oversampled_file.read_text()
    rows = [line.split() for line in text[text.index("[GRADIENTS]") :].split("\n\n")[0].splitlines()[1:]]
    over_ids = [int(r[0]) for r in rows if r and r[0].isdigit() and r[5] == "-1"]
    assert len(over_ids) == 1
    g = int(np.flatnonzero(seq.grad.id == over_ids[0])[0])
    assert seq.grad.time_shape[g] == TIME_OVERSAMPLED
    n = int(seq.shapes.length(seq.grad.shape[g : g + 1])[0])
    assert n == 79  # 2 * 40 - 1 samples on the half raster
    assert grad_shape_duration_s(seq)[g] == pytest.approx(40 * seq.rasters.gradient_s)
    # The others keep the default timing (0) or a time shape.
    others = seq.grad.time_shape[(~seq.grad.is_trap) & (np.arange(seq.grad.id.size) != g)]
    assert ((others == TIME_DEFAULT) | (others >= 0)).all()
    ref = pp_read(oversampled_file)
    np.testing.assert_allclose(
        seq.shapes.get(int(seq.grad.shape[g])),
        pp_shape(ref, int(rows[[int(r[0]) for r in rows].index(over_ids[0])][4])),
        atol=1e-9,
    )


def test_gradient_first_and_last(oversampled_file: Path) -> None:
    seq = read(oversampled_file)
    ref = pp_read(oversampled_file)
    arb = np.flatnonzero(~seq.grad.is_trap)
    assert arb.size > 5
    nonzero = 0
    for row in arb.tolist():
        d = ref.grad_library.data[int(seq.grad.id[row])]
        assert (seq.grad.first_hz_per_m[row], seq.grad.last_hz_per_m[row]) == pytest.approx((d[1], d[2]))
        nonzero += d[1] != 0 or d[2] != 0
    assert nonzero >= 2  # the split spoiler ends and starts at a non-zero amplitude


# ----------------------------------------------------------------------------------------------------------
# A hand-written 1.5.1 file with every extension
# ----------------------------------------------------------------------------------------------------------


def _oversampled_lobe() -> list[float]:
    t = np.arange(1, 80) * 0.5  # in gradient rasters: 79 samples on the half raster, 40 rasters long
    return [float(v) for v in np.sin(np.pi * t / 40) ** 2]


FILE_151 = (
    """\
# hand-written Pulseq file, format 1.5.1

[VERSION]
major 1
minor 5
revision 1

[DEFINITIONS]
AdcRasterTime 1e-07
BlockDurationRaster 1e-05
GradientRasterTime 1e-05
RadiofrequencyRasterTime 1e-06
RequiredExtensions ROTATIONS RF_SHIMS

# Format of blocks:
# NUM DUR RF  GX  GY  GZ  ADC  EXT
[BLOCKS]
1   0 0 0 0 0 0 1
2 120 1 0 0 1 0 6
3  40 0 2 0 0 0 0
4 350 0 3 0 0 1 3
5 500 0 0 0 0 0 5
6  10 0 4 5 0 0 7

# Format of RF events:
# id ampl. mag_id phase_id time_shape_id center delay freqPPM phasePPM freq phase use
[RF]
1 250 1 2 0 500 100 -3.45 0.5 100 1.5 e

# Format of arbitrary gradients:
# id amplitude first last amp_shape_id time_shape_id delay
[GRADIENTS]
2 200000 0 0 4 -1 0
4 150000 0 150000 5 0 0
5 -50000 -50000 0 6 0 0

# Format of trapezoid gradients:
# id amplitude rise flat fall delay
[TRAP]
1 100000 100 1000 100 0
3 300000 250 3000 250 0

# Format of ADC events:
# id num dwell delay freqPPM phasePPM freq phase phase_id
[ADC]
1 300 10000 250 1.5 0.25 0 0.5 0

# Format of extension lists:
# id type ref next_id
[EXTENSIONS]
1 1 1 2
2 2 1 0
3 3 1 4
4 4 1 0
5 5 1 0
6 6 1 0
7 3 2 0

extension LABELSET 1
1 1 OFF

extension LABELINC 2
1 2 OFF

extension ROTATIONS 3
# id RotQuat0 RotQuatX RotQuatY RotQuatZ
1 0.7071067811865476 0 0 0.7071067811865476
2 0.5 0.5 0.5 0.5

extension TRIGGERS 4
# id type channel delay (us) duration (us)
1 2 1 10 100

extension DELAYS 5
# id num offset factor hint
1 0 -1000 2 TE

extension RF_SHIMS 6
# id num_chan magnitude phase ...
1 2 1 0 0.5 1.5707963267948966

[SHAPES]

shape_id 1
num_samples 1000
1
0
0
997

shape_id 2
num_samples 1000
0
0
998

shape_id 4
num_samples 79
"""
    + "".join(f"{v:.12g}\n" for v in _oversampled_lobe())
    + """
shape_id 5
num_samples 10
0.05
0.1
0.1
7

shape_id 6
num_samples 10
0.95
-0.1
-0.1
7

"""
)


@pytest.fixture
def seq_151() -> Sequence:
    return parse(signed(FILE_151.encode()), path="v151.seq")


def test_151_block_durations_and_events(seq_151: Sequence) -> None:
    seq = seq_151
    assert seq.version == (1, 5, 1)
    np.testing.assert_allclose(seq.block_duration_s, [0, 1.2e-3, 0.4e-3, 3.5e-3, 5e-3, 0.1e-3], atol=1e-12)
    # RF: centre, use and ppm offsets as written (1.5).
    rf = seq.rf
    assert (rf.center_s[0], rf.delay_s[0]) == (pytest.approx(500e-6), pytest.approx(100e-6))
    assert (rf.freq_ppm[0], rf.phase_ppm[0], rf.freq_hz[0], rf.phase_rad[0]) == (-3.45, 0.5, 100, 1.5)
    assert chr(rf.use[0]) == "e"
    adc = seq.adc
    assert (adc.freq_ppm[0], adc.phase_ppm[0], adc.phase_rad[0], adc.phase_shape[0]) == (1.5, 0.25, 0.5, -1)
    # Oversampled gradient (time id -1): 79 samples on the half raster, 40 rasters long.
    g = {int(i): k for k, i in enumerate(seq.grad.id.tolist())}
    assert seq.grad.time_shape[g[2]] == TIME_OVERSAMPLED
    assert grad_shape_duration_s(seq)[g[2]] == pytest.approx(400e-6)
    np.testing.assert_allclose(seq.shapes.get(int(seq.grad.shape[g[2]])), _oversampled_lobe(), atol=1e-11)
    # First/last as written; compressed ramps decode to (i + 0.5) / 10 and back down.
    assert (seq.grad.first_hz_per_m[g[4]], seq.grad.last_hz_per_m[g[4]]) == (0, 150000)
    assert (seq.grad.first_hz_per_m[g[5]], seq.grad.last_hz_per_m[g[5]]) == (-50000, 0)
    np.testing.assert_allclose(seq.shapes.get(int(seq.grad.shape[g[4]])), (np.arange(10) + 0.5) / 10, atol=1e-12)
    np.testing.assert_allclose(seq.shapes.get(int(seq.grad.shape[g[5]])), (9.5 - np.arange(10)) / 10, atol=1e-12)


def test_151_custom_label_off(seq_151: Sequence) -> None:
    assert labels(seq_151, "LABELSET") == {0: [("OFF", 1)]}
    assert labels(seq_151, "LABELINC") == {0: [("OFF", 2)]}


def test_151_rotations_as_matrices(seq_151: Sequence) -> None:
    spec = seq_151.extensions.specs["ROTATIONS"]
    m = spec.columns["matrix"]
    assert m.shape == (2, 3, 3)
    # 90 degrees about z: x -> y, y -> -x.
    np.testing.assert_allclose(m[0], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    # 120 degrees about (1, 1, 1): x -> y -> z -> x.
    np.testing.assert_allclose(m[1], [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-12)
    for r in m:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1)
    rows = ext_rows(seq_151, "ROTATIONS")
    assert rows == {3: [0], 5: [1]}  # block 4 (readout) and block 6


def test_151_triggers_soft_delays_and_rf_shims(seq_151: Sequence) -> None:
    ext = seq_151.extensions
    trig = ext.specs["TRIGGERS"]
    assert (int(trig.columns["type"][0]), int(trig.columns["channel"][0])) == (2, 1)
    assert (trig.columns["delay_s"][0], trig.columns["duration_s"][0]) == (pytest.approx(10e-6), pytest.approx(1e-4))
    assert ext_rows(seq_151, "TRIGGERS") == {3: [0]}  # listed after the rotation of block 4
    d = ext.specs["DELAYS"]
    assert (int(d.columns["num"][0]), d.columns["offset_s"][0], d.columns["factor"][0], d.columns["hint"][0]) == (
        0,
        pytest.approx(-1e-3),
        2.0,
        "TE",
    )
    assert ext_rows(seq_151, "DELAYS") == {4: [0]}
    shim = ext.specs["RF_SHIMS"].columns["magnitude_phase"][0]
    np.testing.assert_allclose(shim, [[1, 0], [0.5, math.pi / 2]])
    assert ext_rows(seq_151, "RF_SHIMS") == {1: [0]}


def test_required_extensions(seq_151: Sequence) -> None:
    assert seq_151.definitions["RequiredExtensions"] == "ROTATIONS RF_SHIMS"
    for known in ("TRIGGERS", "LABELSET LABELINC", "DELAYS"):
        text = FILE_151.replace("RequiredExtensions ROTATIONS RF_SHIMS", f"RequiredExtensions {known}")
        assert len(parse(text.encode(), path="ok.seq").blocks) == 6
    text = FILE_151.replace("RequiredExtensions ROTATIONS RF_SHIMS", "RequiredExtensions ROTATIONS GRADIENT_WARP")
    with pytest.raises(SequenceFormatError) as info:
        parse(text.encode(), path="req.seq")
    assert "GRADIENT_WARP" in str(info.value)
    assert info.value.line == text.splitlines().index("RequiredExtensions ROTATIONS GRADIENT_WARP") + 1
    # An extension that is present but not required, and unknown to the reader, is kept and ignored.
    text = FILE_151.replace("[SHAPES]", "extension GRADIENT_WARP 9\n1 0.5 0.25\n\n[SHAPES]")
    seq = parse(text.encode(), path="extra.seq")
    assert seq.extensions.specs["GRADIENT_WARP"].columns["text"].tolist() == ["1 0.5 0.25"]


def test_windows_line_ends_and_byte_order_mark() -> None:
    data = signed(FILE_151.encode())
    crlf = data.replace(b"\n", b"\r\n")
    for variant in (crlf, b"\xef\xbb\xbf" + data, b"\xef\xbb\xbf" + crlf):
        seq = parse(variant, path="variant.seq")
        np.testing.assert_allclose(seq.block_duration_s, [0, 1.2e-3, 0.4e-3, 3.5e-3, 5e-3, 0.1e-3], atol=1e-12)
        assert labels(seq, "LABELSET") == {0: [("OFF", 1)]}
        assert seq.extensions.specs["DELAYS"].columns["hint"].tolist() == ["TE"]


RASTER_KEYS = ("GradientRasterTime", "RadiofrequencyRasterTime", "AdcRasterTime", "BlockDurationRaster")


def _without(text: str, keys: tuple[str, ...]) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if line.split(" ", 1)[0] not in keys)


@pytest.mark.parametrize("text", [FILE_14, FILE_151], ids=["1.4", "1.5.1"])
@pytest.mark.parametrize("key", RASTER_KEYS)
def test_format_14_and_later_require_every_raster_definition(tmp_path: Path, text: str, key: str) -> None:
    """The specification requires the four raster definitions from 1.4 on: a missing one is an error naming
    the file, the [DEFINITIONS] line and the key, never a silent default."""
    path = tmp_path / "norasters.seq"
    path.write_text(_without(text, (key,)))
    with pytest.raises(SequenceFormatError, match=key) as info:
        read(path)
    assert info.value.path == str(path)
    assert info.value.line == path.read_text().splitlines().index("[DEFINITIONS]") + 1
    assert all(other not in info.value.message for other in RASTER_KEYS if other != key)


def test_missing_raster_definitions_are_all_named(tmp_path: Path) -> None:
    path = tmp_path / "none.seq"
    path.write_text(_without(FILE_14, RASTER_KEYS))
    with pytest.raises(SequenceFormatError) as info:
        read(path)
    assert all(key in info.value.message for key in RASTER_KEYS)
    assert str(path) in str(info.value)


def test_format_13_keeps_the_default_rasters(tmp_path: Path) -> None:
    path = tmp_path / "v13.seq"
    path.write_text(_without(FILE_13, RASTER_KEYS))
    seq = read(path)
    assert (seq.rasters.gradient_s, seq.rasters.rf_s, seq.rasters.adc_s, seq.rasters.block_duration_s) == (
        1e-5, 1e-6, 1e-7, 1e-5)
