"""Malformed Pulseq files: one clear SequenceFormatError naming the file, the line and what is wrong.

Every case asserts the line the error points at (the offending line of the malformed text). A subset runs
through ``scanctl check`` in a subprocess: exit 2 and exactly one line on stderr, never a traceback. The
20 MB line is read in a subprocess whose peak memory is measured. Hypothesis corrupts the MATLAB
reference files: the reader must then succeed or raise SequenceFormatError, nothing else, and quickly.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanctl.errors import SequenceFormatError, SignatureError
from scanctl.sequence.pulseq_read import MAX_TOTAL_SHAPE_SAMPLES, parse, read
from tests.test_pulseq_read import FILE_13, FILE_14, FILE_151

DATA = Path(__file__).parent / "data" / "pulseq-matlab"
REFERENCE_FILES = sorted(DATA.glob("*.seq"))
NAME = "bad.seq"


def _unsigned(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: data.rfind(b"\n[SIGNATURE]") + 1]


#: A small 1.5.0 file (blocks, RF, trapezoids, ADC, shapes), without its signature so edits stay readable.
BASE = _unsigned(DATA / "tests_expected_output_seq2.seq")
#: A 1.5.1 file with arbitrary gradients, triggers, labels and soft delays.
EPI = _unsigned(DATA / "tests_legacy_approved_epi_rs.seq")
#: A hand-written 1.5.1 file with rotations and RF shims, and hand-written 1.3 and 1.4 files.
FULL = FILE_151.encode()
V13 = FILE_13.encode()
V14 = FILE_14.encode()


def sub(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with the first ``old`` replaced (which must be there)."""
    assert old in data, old
    return data.replace(old, new, 1)


def line_of(data: bytes, marker: bytes) -> int:
    """1-based line of the first occurrence of ``marker`` (after the newlines it starts with)."""
    return data.count(b"\n", 0, data.index(marker)) + 1 + (len(marker) - len(marker.lstrip(b"\n")))


def parse_error(data: bytes, name: str = NAME, **kw: object) -> SequenceFormatError:
    with pytest.raises(SequenceFormatError) as info:
        parse(data, path=name, **kw)
    err = info.value
    assert err.path == name
    assert "\n" not in str(err) and "\r" not in str(err)
    assert str(err).startswith(name + (f":{err.line}: " if err.line is not None else ": "))
    return err


# ----------------------------------------------------------------------------------------------------------
# The catalogue: (id, malformed bytes, marker of the offending line or None for a whole-file error, message)
# ----------------------------------------------------------------------------------------------------------

_TRAP2 = b" 2 -1.69492e+06 240  350 240   0"
_BLOCK6 = b"6 1000   0   4   0   0  1  0"
_RF1 = b"1          250 1 2 3 500 0 0 0 0 0 u"
_ADC1 = b"1 100 100000 0 0 0 0 0 0"
_SHAPE3 = b"shape_id 3\nnum_samples 2\n0\n1000\n"


def _cases() -> list[tuple[str, bytes, bytes | None, str]]:
    b = BASE
    cases: list[tuple[str, bytes, bytes | None, str]] = [
        # truncated
        ("cut-mid-line", b[: b.index(_TRAP2) + 8], b" 2 -1.69", r"\[TRAP\] row has 2 fields, expected 6"),
        ("cut-mid-blocks", b[: b.index(b"4 100   2")], b"1 100   1", r"block 1 refers to RF event 1, which is not"),
        ("cut-mid-shape", b[: b.index(_SHAPE3) + len(_SHAPE3) - 5], b"shape_id 3", r"shape 3: .*1 samples.* 2"),
        ("cut-mid-header", b[: b.index(b"[TRAP]") + 4], b"[TRA", r"unknown section \[TRA"),
        ("cut-mid-num-samples", b[: b.index(b"num_samples 2") + 8], b"num_samp", r"expected 'num_samples N'"),
        ("cut-after-version", b[: b.index(b"[DEFINITIONS]")], None, r"no \[BLOCKS\] section"),
        # empty and binary
        ("empty", b"", None, r"file is empty"),
        ("blank-100k-lines", b"\n" * 100_000, None, r"file is empty"),
        ("spaces-and-tabs", b" \t \r\n" * 1000, None, r"file is empty"),
        ("nul-byte", sub(b, b"3  83", b"3  8\x003"), b"3  8\x00", r"binary data \(byte 0x00\)"),
        ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), b"\x1a", r"binary data \(byte 0x1a\)"),
        ("utf-16", b"\xff\xfe" + b.decode().encode("utf-16-le"), b"\xff\xfe", r"UTF-16"),
        ("latin-1-in-table", sub(b, b"1 100   1", b"1 1\xe900   1"), b"1 1\xe9", r"field 2 is not an integer"),
        # wrong field count
        ("block-7-fields", sub(b, _BLOCK6, _BLOCK6[:-3]), _BLOCK6[:-3], r"\[BLOCKS\] row has 7 fields, expected 8"),
        ("block-9-fields", sub(b, _BLOCK6, _BLOCK6 + b" 0"), _BLOCK6, r"row has 9 fields, expected 8"),
        ("rf-11-fields", sub(b, _RF1, _RF1[:-2]), _RF1[:-2], r"\[RF\] row has 11 fields, expected 12"),
        ("adc-10-fields", sub(b, _ADC1, _ADC1 + b" 0"), _ADC1, r"\[ADC\] row has 10 fields, expected 9"),
        ("version-line", sub(b, b"minor 5", b"minor 5 0"), b"minor 5 0", r"\[VERSION\] expects"),
        # not a number
        (
            "letter-o-for-zero",
            sub(b, _TRAP2, _TRAP2.replace(b"240  350", b"24O  350")),
            b"24O",
            r"\[TRAP\] field 3 is not a number: '24O'",
        ),
        ("fraction-in-blocks", sub(b, _BLOCK6, b"6 1000.5 0 4 0 0 1 0"), b"6 1000.5", r"field 2 is not an integer"),
        ("hex-in-shape", sub(b, _SHAPE3, _SHAPE3.replace(b"1000", b"0x3e8")), b"0x3e8", r"shape 3: value '0x3e8'"),
        ("word-in-shape", sub(b, _SHAPE3, _SHAPE3.replace(b"\n0\n", b"\nzero\n")), b"zero", r"is not a number"),
        (
            "raster-with-unit",
            sub(b, b"GradientRasterTime 1e-05", b"GradientRasterTime 10us"),
            b"GradientRasterTime",
            r"GradientRasterTime must be a time",
        ),
        ("version-word", sub(b, b"minor 5", b"minor five"), b"minor five", r"minor is not an integer"),
        ("rf-use-word", sub(b, _RF1, _RF1[:-1] + b"excitation"), _RF1[:-1], r"use 'excitation' is not one of"),
        # NaN and infinity
        ("nan-rf-amplitude", sub(b, _RF1, _RF1.replace(b"250", b"nan")), b"1          nan", r"\[RF\] value is not fin"),
        ("inf-trap-flat", sub(b, _TRAP2, _TRAP2.replace(b"350", b"inf")), b" 2 -1.69492e+06 240  inf", r"not finite"),
        ("overflow-trap", sub(b, _TRAP2, _TRAP2.replace(b"350", b"1e999")), b"1e999", r"not finite"),
        ("nan-shape", sub(b, _SHAPE3, _SHAPE3.replace(b"1000", b"NaN")), b"NaN", r"shape 3: value 'NaN' is not finite"),
        ("-inf-adc-freq", sub(b, _ADC1, b"1 100 100000 0 0 0 -inf 0 0"), b"-inf", r"\[ADC\] value is not finite"),
        (
            "nan-raster",
            sub(b, b"BlockDurationRaster 1e-05", b"BlockDurationRaster nan"),
            b"BlockDurationRaster",
            r"BlockDurationRaster must be a time",
        ),
        ("nan-in-blocks", sub(b, _BLOCK6, b"6 nan 0 4 0 0 1 0"), b"6 nan", r"field 2 is not an integer: 'nan'"),
        # negative where not allowed
        ("negative-block-duration", sub(b, _BLOCK6, b"6 -1000 0 4 0 0 1 0"), b"6 -1000", r"duration is negative"),
        (
            "negative-rise",
            sub(b, _TRAP2, _TRAP2.replace(b"240  350", b"-240  350")),
            b" 2 -1.69492e+06 -240",
            r"\[TRAP\] rise time is negative: -240",
        ),
        ("negative-dwell", sub(b, _ADC1, b"1 100 -100000 0 0 0 0 0 0"), b"1 100 -100000", r"dwell time .*positive"),
        ("negative-adc-samples", sub(b, _ADC1, b"1 -100 100000 0 0 0 0 0 0"), b"1 -100", r"number of samples -100"),
        ("negative-rf-delay", sub(b, _RF1, _RF1.replace(b"500 0 0", b"500 -10 0")), b"500 -10", r"delay is negative"),
        ("negative-rf-amplitude", sub(b, _RF1, _RF1.replace(b"250", b"-250")), b"-250", r"amplitude is negative"),
        (
            "negative-num-samples",
            sub(b, b"num_samples 2\n0\n1000", b"num_samples -2\n0\n1000"),
            b"num_samples -2",
            r"expected 'num_samples N'",
        ),
        (
            "negative-trigger",
            sub(EPI, b"1 1 1 0 100\n", b"1 1 1 0 -100\n"),
            b"1 1 1 0 -100",
            r"\[extension TRIGGERS\] duration is negative",
        ),
        ("zero-soft-delay-factor", sub(EPI, b"1 0 -35010 1 TE", b"1 0 -35010 0 TE"), b"-35010 0 TE", r"factor is 0"),
        (
            "negative-rf-shim-magnitude",
            sub(FULL, b"1 2 1 0 0.5", b"1 2 1 0 -0.5"),
            b"1 2 1 0 -0.5",
            r"RF_SHIMS\] magnitude is negative",
        ),
        # references to what is not there
        ("missing-rf", sub(b, b"4 100   2", b"4 100   9"), b"4 100   9", r"block 4 refers to RF event 9, which is not"),
        ("missing-gradient", sub(b, _BLOCK6, b"6 1000 0 0 0 99 1 0"), b"6 1000 0 0 0 99", r"gradient \(z\) 99"),
        ("missing-adc", sub(b, _BLOCK6, b"6 1000 0 4 0 0 2 0"), b"6 1000 0 4 0 0 2", r"ADC event 2, which is not"),
        (
            "missing-extension-list",
            sub(b, _BLOCK6, b"6 1000 0 4 0 0 1 5"),
            b"6 1000 0 4 0 0 1 5",
            r"extension list 5, which is not defined",
        ),
        ("missing-rf-shape", sub(b, _RF1, _RF1.replace(b"250 1 2 3", b"250 7 2 3")), b"250 7", r"magnitude .*shape 7"),
        (
            "missing-time-shape",
            sub(b, _RF1, _RF1.replace(b"250 1 2 3", b"250 1 2 8")),
            b"250 1 2 8",
            r"time shape refers to shape 8",
        ),
        (
            "missing-adc-phase-shape",
            sub(b, _ADC1, b"1 100 100000 0 0 0 0 0 9"),
            b"100000 0 0 0 0 0 9",
            r"\[ADC\] phase shape refers to shape 9",
        ),
        (
            "missing-gradient-shape",
            sub(
                EPI,
                b"8      -151515            0      -151515 6 7 610",
                b"8      -151515            0      -151515 66 7 610",
            ),
            b" 66 7 610",
            r"\[GRADIENTS\] amplitude shape refers to shape 66",
        ),
        (
            "missing-extension-entry",
            sub(EPI, b"[EXTENSIONS]\n1 1 1 0", b"[EXTENSIONS]\n1 1 99 0"),
            b"1 1 99 0",
            r"LABELSET entry 99 is not defined",
        ),
        (
            "missing-extension-next",
            sub(EPI, b"[EXTENSIONS]\n1 1 1 0", b"[EXTENSIONS]\n1 1 1 77"),
            b"1 1 1 77",
            r"next id 77 is not defined",
        ),
        (
            "missing-extension-spec",
            sub(EPI, b"\n2 3 1 0", b"\n2 9 1 0"),
            b"\n2 9 1 0",
            r"type 9 has no 'extension NAME 9'",
        ),
        (
            "extension-list-loop",
            sub(EPI, b"[EXTENSIONS]\n1 1 1 0", b"[EXTENSIONS]\n1 1 1 1"),
            b"1 1 1 1\n",
            r"loops back on itself",
        ),
        (
            "shape-length-mismatch",
            sub(b, _RF1, _RF1.replace(b"250 1 2 3", b"250 1 2 0")).replace(
                b"shape_id 1\nnum_samples 2\n1\n1\n", b"shape_id 1\nnum_samples 3\n1\n0\n1\n", 1
            ),
            b"1          250 1 2 0",
            r"phase shape has 2 samples, the amplitude shape 3",
        ),
        # duplicate ids and sections
        ("duplicate-rf", sub(b, b"2          500", b"1          500"), b"1          500", r"\[RF\] event id 1 .*twice"),
        (
            "duplicate-trap",
            sub(b, _TRAP2, _TRAP2.replace(b" 2 -1", b" 1 -1")),
            b" 1 -1.69492e+06 240",
            r"\[TRAP\] event id 1 is defined twice",
        ),
        (
            "duplicate-trap-and-gradient",
            sub(EPI, b" 1  1.35135e+06", b" 8  1.35135e+06"),
            b" 8  1.35135e+06",
            r"\[GRADIENTS\]/\[TRAP\] gradient id 8 is defined twice",
        ),
        ("duplicate-block", sub(b, b"5  54", b"3  54"), b"3  54", r"block id 3 is defined twice"),
        (
            "duplicate-shape",
            sub(b, b"shape_id 2", b"shape_id 1"),
            b"shape_id 1\nnum_samples 2\n0",
            r"shape id 1 is defined twice \(first at line 51\)",
        ),
        ("duplicate-label-id", sub(EPI, b"2 1 NAV", b"1 1 NAV"), b"1 1 NAV", r"LABELSET\] event id 1 .*twice"),
        (
            "duplicate-extension-list-id",
            sub(EPI, b"\n2 3 1 0", b"\n1 3 1 0"),
            b"\n1 3 1 0",
            r"\[EXTENSIONS\] list entry id 1 is defined twice",
        ),
        (
            "duplicate-section",
            b + b"\n[RF]\n3 100 1 2 3 500 0 0 0 0 0 e\n",
            b"[RF]\n3 100",
            r"section \[RF\] appears twice \(first at line 29\)",
        ),
        (
            "duplicate-extension-name",
            sub(EPI, b"# Sequence Shapes", b"extension DELAYS 7\n1 0 1 1 TE\n\n# Seq"),
            b"extension DELAYS 7",
            r"extension DELAYS is specified twice",
        ),
        (
            "duplicate-definition",
            sub(b, b"AdcRasterTime 1e-07", b"AdcRasterTime 1e-07\nAdcRasterTime 2e-07"),
            b"AdcRasterTime 2e-07",
            r"definition 'AdcRasterTime' appears twice",
        ),
        # unknown or misplaced sections, text outside sections
        ("unknown-section", sub(b, b"[TRAP]", b"[TRAPS]"), b"[TRAPS]", r"unknown section \[TRAPS\]"),
        ("lower-case-section", sub(b, b"[BLOCKS]", b"[blocks]"), b"[blocks]", r"unknown section \[blocks\]"),
        ("text-before-first-section", b"Pulseq!\n" + b, b"Pulseq!", r"text before the first section"),
        ("delays-in-15", sub(b, b"[ADC]", b"[DELAYS]\n1 100\n\n[ADC]"), b"[DELAYS]", r"not allowed in format 1\.4"),
        ("stray-text-in-shapes", sub(b, b"[SHAPES]\n", b"[SHAPES]\nhello\n"), b"hello", r"expected 'shape_id N'"),
        # versions
        (
            "version-2.0",
            sub(sub(b, b"major 1", b"major 2"), b"minor 5", b"minor 0"),
            b"[VERSION]",
            r"unsupported major version 2",
        ),
        (
            "version-0.9",
            sub(sub(b, b"major 1", b"major 0"), b"minor 5", b"minor 9"),
            b"[VERSION]",
            r"unsupported major version 0",
        ),
        ("version-1.6", sub(b, b"minor 5", b"minor 6"), b"[VERSION]", r"unsupported format version 1\.6\.0"),
        ("version-1.2", sub(b, b"minor 5", b"minor 2"), b"[VERSION]", r"unsupported format version 1\.2\.0"),
        ("no-version", sub(b, b"[VERSION]\nmajor 1\nminor 5\nrevision 0\n", b""), None, r"no \[VERSION\] section"),
        (
            "required-extension",
            sub(b, b"[DEFINITIONS]\n", b"[DEFINITIONS]\nRequiredExtensions WARP\n"),
            b"RequiredExtensions",
            r"required extension WARP is not supported",
        ),
        # absurd sizes
        (
            "shape-1e12-samples",
            sub(b, b"num_samples 2\n0\n1000", b"num_samples 1000000000000\n0\n1000"),
            b"num_samples 1000000000000",
            r"num_samples 1000000000000 is out of range",
        ),
        (
            "shape-id-30-digits",
            sub(b, b"shape_id 3", b"shape_id " + b"9" * 30),
            b"shape_id 999",
            r"shape_id 999999999999999999999999999999 is out of range",
        ),
        (
            "shape-id-5000-digits",
            sub(b, b"shape_id 3", b"shape_id " + b"9" * 5000),
            b"shape_id 999",
            r"shape_id '9999.*' is out of range",
        ),
        (
            "run-length-1e12",
            sub(b, _SHAPE3, b"shape_id 3\nnum_samples 10\n0\n0\n1000000000000\n"),
            b"shape_id 3",
            r"shape 3: invalid repeat count 1e\+12",
        ),
        (
            "adc-1e12-samples",
            sub(b, _ADC1, b"1 1000000000000 100000 0 0 0 0 0 0"),
            b"1 1000000000000",
            r"number of samples 1e\+12 is not an integer in 1\.\.10000000",
        ),
        (
            "block-id-30-digits",
            sub(b, _BLOCK6, b"9" * 30 + b" 1000 0 4 0 0 1 0"),
            b"999999",
            r"\[BLOCKS\] integer out of range",
        ),
        ("rf-id-25-digits", sub(b, b"4 100   2", b"4 100   " + b"7" * 25), b"4 100   777", r"integer out of range"),
        (
            "block-duration-1e18",
            sub(b, _BLOCK6, b"6 1000000000000000000 0 4 0 0 1 0\n7 1000 0 0 0 0 0 0"),
            b"6 1000000000000000000",
            r"block durations add up to more than 9007199254740992 ticks by block 6",
        ),
        ("version-5000-digits", sub(b, b"minor 5", b"minor " + b"5" * 5000), b"minor 555", r"minor is not an integer"),
        (
            "extension-type-30-digits",
            sub(EPI, b"extension DELAYS 2", b"extension DELAYS " + b"2" * 30),
            b"extension DELAYS 222",
            r"extension header must be 'extension NAME ID'",
        ),
        (
            "unknown-extension-id-5000-digits",
            sub(FULL, b"[SHAPES]", b"extension WARP 9\n" + b"1" * 5000 + b"\n\n[SHAPES]"),
            b"1111111111",
            r"row must start with an id",
        ),
        (
            "header-line-20kb",
            sub(b, b"[TRAP]", b"[TRAP" + b"P" * 20_000 + b"]"),
            b"[TRAPPP",
            r"section header line is 20006 bytes long",
        ),
        # formats 1.3 and 1.4
        (
            "v13-missing-delay",
            sub(V13, b"4 2 0 0 0 0 0 0", b"4 3 0 0 0 0 0 0"),
            b"4 3 0 0 0 0 0 0",
            r"block 4 refers to delay 3, which is not defined",
        ),
        (
            "v13-delay-1e300-us",
            sub(V13, b"2 10000\n", b"2 1e300\n"),
            b"4 2 0 0 0 0 0 0",
            r"block 4 would last 1e\+294 s",
        ),
        ("v13-negative-delay", sub(V13, b"2 10000\n", b"2 -10000\n"), b"2 -10000", r"\[DELAYS\] delay is negative"),
        ("v13-block-6-fields", sub(V13, b"4 2 0 0 0 0 0 0", b"4 2 0 0 0 0"), b"4 2 0 0 0 0", r"expected 8 or 7"),
        ("v13-rf-8-fields", sub(V13, b"1 250 1 2 100 0 0", b"1 250 1 2 0 100 0 0"), b"1 250 1 2 0", r"expected 7"),
        ("v14-rf-12-fields", sub(V14, b"1 250 1 2 0 100 0 0", _RF1), _RF1, r"\[RF\] row has 12 fields, expected 8"),
        ("v14-delays-section", V14 + b"[DELAYS]\n1 100\n", b"[DELAYS]", r"\[DELAYS\] is not allowed in format 1\.4"),
        (
            "v14-time-shape-length",
            sub(V14, b"4 100000 3 4 0", b"4 100000 3 1 0"),
            b"4 100000 3 1 0",
            r"\[GRADIENTS\] time shape has 1000 samples, the amplitude shape 3",
        ),
        # extension contents
        ("label-lower-case", sub(EPI, b"1 0 SLC", b"1 0 slc"), b"1 0 slc", r"label 'slc' is not a label name"),
        ("label-value-fraction", sub(EPI, b"1 0 SLC", b"1 0.5 SLC"), b"1 0.5 SLC", r"value must be an integer"),
        (
            "trigger-type-fraction",
            sub(EPI, b"1 1 1 0 100\n", b"1 1.5 1 0 100\n"),
            b"1 1.5 1 0 100",
            r"TRIGGERS\] type must be an integer",
        ),
        (
            "rotation-not-unit",
            sub(FULL, b"2 0.5 0.5 0.5 0.5", b"2 0.5 0.5 0.5 0.9"),
            b"2 0.5 0.5 0.5 0.9",
            r"quaternion norm .* is not 1",
        ),
        ("rf-shim-channels", sub(FULL, b"1 2 1 0 0.5", b"1 3 1 0 0.5"), b"1 3 1 0 0.5", r"RF_SHIMS\] row must be"),
        ("rf-shim-nan", sub(FULL, b"1 2 1 0 0.5", b"1 nan 1 0 0.5"), b"1 nan 1 0 0.5", r"RF_SHIMS\] value is not"),
        ("rf-shim-word", sub(FULL, b"1 2 1 0 0.5", b"1 2 1 0 half"), b"1 2 1 0 half", r"fields must be numbers"),
        (
            "signature-not-md5",
            BASE + b"\n[SIGNATURE]\nType sha256\nHash 00\n",
            b"[SIGNATURE]",
            r"type 'sha256' is not supported",
        ),
        (
            "signature-short-hash",
            BASE + b"\n[SIGNATURE]\nType md5\nHash 0123abc\n",
            b"[SIGNATURE]",
            r"hash '0123abc' is not an MD5 hex digest",
        ),
    ]
    return cases


CASES = _cases()


def test_case_ids_are_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) > 90


@pytest.mark.parametrize(("data", "marker", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_file_names_file_line_and_problem(data: bytes, marker: bytes | None, match: str) -> None:
    start = time.perf_counter()
    err = parse_error(data)
    assert time.perf_counter() - start < 2.0
    if marker is None:
        assert err.line is None
    else:
        assert err.line == line_of(data, marker), str(err)
    assert re.search(match, err.message), str(err)


def test_random_bytes() -> None:
    rng = random.Random(20240611)
    for size in (1, 7, 100, 4096, 65536):
        data = rng.randbytes(size)
        err = parse_error(data)
        assert err.line is None or 1 <= err.line <= data.count(b"\n") + 1


def test_nul_bytes_only() -> None:
    err = parse_error(b"\x00" * 1000)
    assert err.line == 1 and "binary data" in err.message


# ----------------------------------------------------------------------------------------------------------
# What looks odd but is a valid file
# ----------------------------------------------------------------------------------------------------------


def test_windows_written_pypulseq_file_is_accepted(tmp_path: Path) -> None:
    """pypulseq on Windows: CRLF line ends, the MD5 of the text as read back with LF line ends."""
    import warnings

    from tests import pulseq_factory as factory

    path = tmp_path / "gre.seq"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factory.gre(n=4).write(str(path))
    unix = read(path)
    windows = tmp_path / "gre_windows.seq"
    windows.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    seq = read(windows)  # signature verified
    assert seq.signature == unix.signature is not None
    assert len(seq.blocks) == len(unix.blocks)
    np.testing.assert_array_equal(seq.block_duration_s, unix.block_duration_s)
    np.testing.assert_array_equal(seq.shapes.samples, unix.shapes.samples)
    # Line numbers of errors in a CRLF file are the same as in the LF file.
    bad = sub(BASE, _BLOCK6, b"6 1000 0 4 0 0 9 0").replace(b"\n", b"\r\n")
    assert parse_error(bad).line == line_of(BASE, _BLOCK6)


def test_utf8_byte_order_mark_is_accepted() -> None:
    signed = (DATA / "tests_expected_output_seq1.seq").read_bytes()
    seq = parse(b"\xef\xbb\xbf" + signed, path="bom.seq")
    assert seq.signature is not None and len(seq.blocks) == 7
    assert parse_error(b"\xef\xbb\xbf" + sub(BASE, b"3  83", b"3  -83")).line == line_of(BASE, b"3  83")


def test_blank_lines_do_not_shift_line_numbers() -> None:
    padded = sub(BASE, b"[BLOCKS]\n", b"[BLOCKS]\n" + b"\n" * 100_000)
    assert len(parse(padded, path="padded.seq").blocks) == 6
    bad = sub(padded, _BLOCK6, b"6 1000 0 4 0 0 1 x")
    assert parse_error(bad).line == line_of(bad, b"6 1000 0 4 0 0 1 x") > 100_000


def test_empty_table_sections_and_comments_are_accepted() -> None:
    data = sub(BASE, b"# Sequence Shapes", b"[GRADIENTS]\n# none here\n\n[EXTENSIONS]\n\n# Sequence Shapes")
    seq = parse(data, path="empty-sections.seq")
    assert seq.grad.id.size == 4 and seq.extensions.id.size == 0
    # Sections whose body is nothing but blank lines (numpy reads whitespace alone as the number -1).
    for body in (b"", b"\n", b"  \n\t\n", b"\r\n" * 1000):
        data = sub(BASE, b"[TRAP]", b"[GRADIENTS]\n" + body + b"[EXTENSIONS]\n" + body + b"[TRAP]")
        seq = parse(data, path="blank-sections.seq")
        assert seq.grad.id.size == 4 and seq.extensions.id.size == 0


def test_huge_sparse_ids_are_accepted_quickly() -> None:
    """Ids need not be dense: a block numbered 10^9 and events numbered 10^15 are fine."""
    data = sub(BASE, _BLOCK6, b"1000000000 1000 0 4 0 0 1 0")
    data = sub(sub(data, b"4 100   2", b"4 100   1000000000000000"), b"2          500", b"1000000000000000 500")
    start = time.perf_counter()
    seq = parse(data, path="sparse.seq")
    assert time.perf_counter() - start < 1.0
    assert seq.blocks.id.tolist() == [1, 2, 3, 4, 5, 1_000_000_000]
    assert seq.rf.id[seq.blocks.rf[3]] == 1_000_000_000_000_000


def test_decompressed_shapes_are_bounded() -> None:
    """Three shapes of a few bytes each that claim 9 million samples: refused before any is expanded."""
    claim = 9_000_000
    assert 2 * claim <= MAX_TOTAL_SHAPE_SAMPLES < 3 * claim
    shapes = b"".join(b"shape_id %d\nnum_samples %d\n0\n0\n%d\n\n" % (k, claim, claim - 2) for k in (4, 5, 6))
    data = BASE + b"\n" + shapes
    start = time.perf_counter()
    err = parse_error(data)
    assert time.perf_counter() - start < 1.0
    assert err.line == data.count(b"\n", 0, data.index(b"shape_id 6")) + 2
    assert "in total" in err.message


# ----------------------------------------------------------------------------------------------------------
# The 20 MB line: fails within seconds, with bounded memory (measured in a fresh process)
# ----------------------------------------------------------------------------------------------------------

_MEASURE = r"""
import json, resource, sys, time
start = time.perf_counter()
from scanctl.cli import main
sys.stdout = sys.stderr = open("/dev/null", "w")
t0 = time.perf_counter()
code = main(["check", sys.argv[1]])
elapsed = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # ru_maxrss of an exec'd child starts at the parent's size on Linux; VmHWM is this process's own
    with open("/proc/self/status") as fh:
        peak_kb = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
except OSError:
    pass
sys.__stdout__.write(json.dumps({"code": code, "seconds": elapsed, "peak_mb": peak_kb / 1024}))
"""

_LONG_LINES: dict[str, Callable[[], tuple[bytes, bytes]]] = {
    # name: () -> (file, marker of the offending line)
    "blocks-10M-fields": lambda: (sub(BASE, _BLOCK6, b"1 " * 10_000_000), b"1 1 1 1"),
    "trap-20M-digit-number": lambda: (
        sub(BASE, _TRAP2, b" 2 -1.69492e+06 240 " + b"3" * 20_000_000 + b" 240 0"),
        b" 2 -1.69492e+06 240 333",
    ),
    "shape-10M-values-on-one-line": lambda: (
        sub(BASE, _SHAPE3, b"shape_id 3\nnum_samples 2\n" + b"0 " * 10_000_000),
        b"shape_id 3",
    ),
    "junk-before-sections": lambda: (b"x" * 20_000_000 + b"\n" + BASE, b"xxxx"),
}


@pytest.mark.parametrize("name", sorted(_LONG_LINES))
def test_20mb_line_fails_fast_with_bounded_memory(tmp_path: Path, name: str) -> None:
    data, marker = _LONG_LINES[name]()
    assert len(data) > 20_000_000
    path = tmp_path / f"{name}.seq"
    path.write_bytes(data)
    res = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    figures = json.loads(res.stdout)
    assert figures["code"] == 2
    assert figures["seconds"] < 3.0, figures
    assert figures["peak_mb"] < 300, figures
    # The same through the command line: one line naming the file and the line.
    err = parse_error(data, name=str(path))
    assert err.line == line_of(data, marker)


# ----------------------------------------------------------------------------------------------------------
# Through `scanctl check`: exit 2, exactly one line on stderr
# ----------------------------------------------------------------------------------------------------------

_CLI_CASES = [
    "cut-mid-line",
    "png",
    "block-7-fields",
    "letter-o-for-zero",
    "nan-rf-amplitude",
    "negative-block-duration",
    "missing-adc",
    "missing-extension-entry",
    "duplicate-rf",
    "unknown-section",
    "version-2.0",
    "shape-1e12-samples",
    "block-id-30-digits",
    "shape-id-5000-digits",
]


def test_cli_check_reports_one_line(tmp_path: Path) -> None:
    by_id = {c[0]: c for c in CASES}
    procs = []
    for case in _CLI_CASES:
        _, data, marker, match = by_id[case]
        path = tmp_path / f"{case}.seq"
        path.write_bytes(data)
        cmd = [sys.executable, "-m", "scanctl.cli", "check", str(path)]
        procs.append(
            (
                case,
                path,
                line_of(data, marker),
                match,
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            )
        )
    for case, path, line, match, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (case, err)
        assert out == "", case
        lines = err.splitlines()
        assert len(lines) == 1, (case, err)
        assert "Traceback" not in err
        assert f"{path}:{line}: " in lines[0], (case, lines[0])
        assert re.search(match, lines[0]), (case, lines[0])


def test_cli_empty_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.seq"
    empty.write_bytes(b"")
    for path, what in ((empty, "file is empty"), (tmp_path / "absent.seq", "cannot read file")):
        res = subprocess.run(
            [sys.executable, "-m", "scanctl.cli", "check", str(path), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.count("\n") == 1 and str(path) in res.stderr and what in res.stderr


# ----------------------------------------------------------------------------------------------------------
# Hypothesis: corruptions of the real reference files
# ----------------------------------------------------------------------------------------------------------

_FILES = {p.stem: p.read_bytes() for p in REFERENCE_FILES}
_JUNK = [
    b"",
    b"x",
    b"nan",
    b"inf",
    b"-1",
    b"0",
    b"1.5",
    b"-0",
    b"1e999",
    b"9" * 25,
    b"#",
    b"[",
    b"[BLOCKS]",
    b"]",
    b"\t",
    b"\r",
    b"shape_id",
    b"num_samples",
    b"extension",
    b"\xff",
    b"e",
    b"0x10",
    b"1 2",
    b"-",
    b"+",
    b".",
    b"1e-400",
]
_TOKEN = re.compile(rb"[^\s]+")


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[bytes, bool]:
    data = draw(st.sampled_from(sorted(_FILES)))
    data = _FILES[data]
    for _ in range(draw(st.integers(1, 3))):
        lines = data.split(b"\n")
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "flip", "insert", "remove", "truncate", "token"]))
        if kind in ("delete", "duplicate", "swap") and len(lines) > 1:
            i = draw(st.integers(0, len(lines) - 1))
            if kind == "delete":
                del lines[i]
            elif kind == "duplicate":
                lines.insert(i, lines[i])
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif kind in ("flip", "insert", "remove") and data:
            i = draw(st.integers(0, len(data) - 1))
            byte = draw(st.integers(0, 255))
            if kind == "flip":
                data = data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1 :]
            elif kind == "insert":
                data = data[:i] + bytes([byte]) + data[i:]
            else:
                data = data[:i] + data[i + 1 :]
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "token":
            tokens = list(_TOKEN.finditer(data))
            if tokens:
                m = tokens[draw(st.integers(0, len(tokens) - 1))]
                junk = draw(st.one_of(st.sampled_from(_JUNK), st.binary(max_size=8)))
                data = data[: m.start()] + junk + data[m.end() :]
    return data, draw(st.booleans())


def _parse_or_format_error(data: bytes, verify: bool) -> None:
    start = time.perf_counter()
    try:
        seq = parse(data, path="fuzz.seq", verify_signature=verify)
    except SequenceFormatError as err:
        assert err.path == "fuzz.seq"
        assert "\n" not in str(err) and err.message
        assert err.line is None or 1 <= err.line <= data.count(b"\n") + 1, (err.line, str(err))
        if verify and isinstance(err, SignatureError):
            assert "signature" in err.message or "[SIGNATURE]" in err.message
    else:
        n = len(seq.blocks)
        assert n > 0 and seq.blocks.rf.size == n and seq.blocks.grad.shape == (n, 3)
        assert np.isfinite(seq.duration_s) and seq.duration_s >= 0
        assert (seq.blocks.rf < seq.rf.id.size).all() and (seq.blocks.adc < seq.adc.id.size).all()
        assert (seq.blocks.grad < seq.grad.id.size).all()
    assert time.perf_counter() - start < 2.0


_FUZZ = settings(max_examples=1000, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@_FUZZ
@given(corrupted())
def test_corrupted_reference_files_fail_cleanly(case: tuple[bytes, bool]) -> None:
    data, verify = case
    _parse_or_format_error(data, verify)


@settings(max_examples=200, deadline=2000, derandomize=True)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_fail_cleanly(data: bytes) -> None:
    _parse_or_format_error(data, False)


@settings(max_examples=150, deadline=2000, derandomize=True)
@given(st.data())
def test_corrupted_unsigned_files_fail_cleanly(data: st.DataObject) -> None:
    """Without a signature nothing stops the corruption at the signature check: the reader sees it all."""
    text = _unsigned(DATA / data.draw(st.sampled_from([p.name for p in REFERENCE_FILES])))
    lines = text.split(b"\n")
    i = data.draw(st.integers(0, len(lines) - 1))
    tokens = lines[i].split()
    if tokens:
        k = data.draw(st.integers(0, len(tokens) - 1))
        tokens[k] = data.draw(st.sampled_from(_JUNK))
        lines[i] = b" ".join(tokens)
    else:
        lines[i] = data.draw(st.sampled_from(_JUNK))
    _parse_or_format_error(b"\n".join(lines), True)


# ----------------------------------------------------------------------------------------------------------
# Bad geometry (issue 16) end to end: ``scanctl run`` in a subprocess, exit 2, one line naming the key or
# block. (Each is also checked in process: tests/test_geometry_builders.py, tests/test_rawdata_geometry.py.)

_GEOMETRY_PROTOCOL = """\
[protocol]
name = "bad_geometry"
[sequence]
type = "gre_2d"
matrix = {matrix}
{extra}
[geometry]
{geometry}
[patient]
weight_kg = 70.0
"""


def _run_cli(path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scanctl", "run", str(path), "--out", str(out)],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(("matrix", "extra", "geometry", "names"), [
    ("[32, 32]", "", "position_mm = [0.0, 0.0, 200.0]", ("geometry.position_mm", "outside the gradient")),
    ("[32, 32]", "", "slices = 3\nslice_gap_mm = -1.0", ("geometry.slice_gap_mm", "overlap")),
    ("[512, 32]", "fov_m = 0.05", "", ("sequence.matrix[0]", "the largest for this FOV is")),
], ids=["outside-gradient-fov", "slices-overlap", "matrix-not-encodable"])
def test_bad_protocol_geometry_through_scanctl_run(tmp_path: Path, matrix: str, extra: str, geometry: str,
                                                   names: tuple[str, str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_GEOMETRY_PROTOCOL.format(matrix=matrix, extra=extra, geometry=geometry))
    done = _run_cli(path, tmp_path / "out")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(name in lines[0] for name in names), lines[0]
    assert not (tmp_path / "out" / "raw.h5").exists()  # refused before anything was played


def test_pypulseq_epi_with_a_contradicting_fov_through_scanctl_run(tmp_path: Path) -> None:
    """pypulseq's write_epi.py (as tests/pypulseq_examples.py builds it) with a FOV definition its phase steps
    contradict."""
    from tests import pypulseq_examples as examples

    seq = examples.epi(32)
    seq.set_definition("FOV", [0.22, 0.15, 0.003])  # the script encodes 220 mm along y, not 150
    path = tmp_path / "epi_bad_fov.seq"
    seq.write(str(path))
    done = _run_cli(path, tmp_path / "out")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "FOV definition (150 mm along y) contradicts" in lines[0], lines[0]
