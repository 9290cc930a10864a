"""Read Pulseq files (format 1.3.x, 1.4.x, 1.5.0, 1.5.1) into the columnar :class:`Sequence`.

Every problem with the file is a :class:`~scanctl.errors.SequenceFormatError` naming the file, the
line and what is wrong. The file's own raster definitions are used; the MD5 signature is verified
unless the caller asks not to.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.config.files import read_bounded
from scanctl.errors import SequenceFormatError, SignatureError
from scanctl.sequence import shapes as shape_codec
from scanctl.sequence._text import Section, Table, TextFile
from scanctl.sequence.model import (
    TIME_DEFAULT,
    TIME_OVERSAMPLED,
    ADCEvents,
    Blocks,
    Extensions,
    ExtensionSpec,
    GradEvents,
    IntArray,
    Rasters,
    RFEvents,
    Sequence,
    Shapes,
)

log = logging.getLogger(__name__)

#: Largest file accepted (bytes). Larger files are refused before they are read.
MAX_FILE_BYTES = 2 * 1024**3
#: Largest shape, largest total of all shapes (decompressed), and largest ADC window, in samples. The
#: shapes are held as float64: the total bounds the reader's memory whatever the compression claims.
MAX_SHAPE_SAMPLES = 10_000_000
MAX_TOTAL_SHAPE_SAMPLES = 20_000_000
MAX_ADC_SAMPLES = 10_000_000
#: Largest sum of block durations, in block-duration raster ticks (2**53: float64 stays exact).
MAX_TOTAL_TICKS = 2**53

KNOWN_EXTENSIONS = ("TRIGGERS", "LABELSET", "LABELINC", "DELAYS", "ROTATIONS", "RF_SHIMS")
SUPPORTED = ((1, 3), (1, 4), (1, 5))
_SIGNATURE = b"\n[SIGNATURE]"
_TABLE_SECTIONS = ("[BLOCKS]", "[RF]", "[GRADIENTS]", "[TRAP]", "[ADC]", "[DELAYS]", "[EXTENSIONS]")
# Field counts (with the id) per format: (minor >= 5, minor == 4, minor <= 3)
_RF_FIELDS = {5: 12, 4: 8, 3: 7}
_GRAD_FIELDS = {5: 7, 4: 5, 3: 4}
_ADC_FIELDS = {5: 9, 4: 6, 3: 6}
_UTF8_BOM = b"\xef\xbb\xbf"
_INT64 = np.iinfo(np.int64)
# A [SHAPES] header line; the start of a line holding something other than blanks or a comment; a number.
_SHAPE_HEAD = re.compile(rb"^[ \t]*shape_id(?![^ \t\r\n])", re.M)
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")  # control bytes other than \t \n \v \f \r
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 32), 127])
_NON_BLANK = re.compile(rb"^[ \t\r\f\v]*[^\s#]", re.M)
_NUMBER = re.compile(rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf|infinity|nan)", re.I)


def read(path: str | os.PathLike[str], *, verify_signature: bool = True) -> Sequence:
    """Read a Pulseq file.

    Raises :class:`SequenceFormatError` (or its subclass :class:`SignatureError` when the MD5 signature
    does not match and ``verify_signature`` is true).
    """
    path = Path(path)
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except ValueError as exc:  # a FIFO, a device, a directory, or too large
        raise SequenceFormatError(path, None, f"cannot read file: it {exc}") from None
    except OSError as exc:
        raise SequenceFormatError(path, None, f"cannot read file: {exc.strerror or exc}") from exc
    return parse(data, path=path, verify_signature=verify_signature)


def parse(data: bytes, *, path: str | os.PathLike[str] | None = None, verify_signature: bool = True) -> Sequence:
    """Parse the bytes of a Pulseq file (see :func:`read`).

    A UTF-8 byte-order mark (added by some Windows editors) is skipped: it is not part of the signed text.
    """
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    return _Reader(TextFile(data, path), verify_signature).run()


class _Reader:
    def __init__(self, text: TextFile, verify_signature: bool) -> None:
        self.text = text
        self.verify_signature = verify_signature
        self.minor = 5
        self._tables: dict[int, Table] = {}  # converted table sections by their body's offset

    def fail(self, line: int | None, message: str) -> SequenceFormatError:
        return self.text.error(line, message, is_line=True)

    # -- top level ----------------------------------------------------------------------------------
    def run(self) -> Sequence:
        data = self.text.data
        if not data or data.isspace():
            raise self.fail(None, "file is empty")
        self._digest = _Digest(data) if self.verify_signature else None  # hashed while the tables are read
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise self.fail(1, "file is UTF-16 text: Pulseq files are ASCII (save it as ASCII or UTF-8)")
        control = _first_control_byte(data)
        if control is not None:
            raise self.text.error(control.start(), f"binary data (byte {data[control.start()]:#04x}): "
                                                   "not a Pulseq text file")
        sections = self.text.sections()
        if not sections:
            raise self.fail(None, "no sections found: not a Pulseq file")
        by_name: dict[str, Section] = {}
        for sec in sections:
            if sec.header in by_name:
                first = by_name[sec.header].line
                raise self.fail(sec.line, f"section {sec.header} appears twice (first at line {first})")
            by_name[sec.header] = sec
            known = sec.header in _TABLE_SECTIONS or sec.header.startswith("extension")
            if not known and sec.header not in ("[VERSION]", "[DEFINITIONS]", "[SHAPES]", "[SIGNATURE]"):
                raise self.fail(sec.line, f"unknown section {sec.header[:40]}")
        if "[SIGNATURE]" in by_name and sections[-1].header != "[SIGNATURE]" and self.verify_signature:
            raise SignatureError(self.text.path, sections[-1].line,
                                 f"section {sections[-1].header[:40]} follows [SIGNATURE]: it is not covered by the "
                                 "signature (--ignore-signature reads it anyway)")
        if "[VERSION]" not in by_name:
            raise self.fail(None, "no [VERSION] section")
        version = self._version(by_name["[VERSION]"])
        self.minor = min(max(version[1], 3), 5)
        if "[BLOCKS]" not in by_name:  # before the definitions: a file cut short says so, not what it lacks
            raise self.fail(None, "no [BLOCKS] section")
        self.defs_section = by_name.get("[DEFINITIONS]")
        definitions = self._definitions(self.defs_section)
        rasters = self._rasters(definitions, by_name.get("[DEFINITIONS]"))
        signature = self._signature(by_name.get("[SIGNATURE]"))
        self._convert_tables(sections)

        shapes = self._shapes(by_name.get("[SHAPES]"))
        shape_rows = _IdIndex(shapes.id)
        self.shape_lengths = np.diff(shapes.offsets)
        rf = self._rf(by_name.get("[RF]"), shape_rows)
        grad = self._grad(by_name.get("[GRADIENTS]"), by_name.get("[TRAP]"), shape_rows)
        adc = self._adc(by_name.get("[ADC]"), shape_rows)
        ext_specs = [s for s in sections if s.header.startswith("extension")]
        extensions = self._extensions(by_name.get("[EXTENSIONS]"), ext_specs, definitions)
        delays = by_name.get("[DELAYS]")
        if delays is not None and self.minor >= 4:
            raise self.fail(delays.line, "[DELAYS] is not allowed in format 1.4 and later")
        blocks, delay_rows = self._blocks(by_name["[BLOCKS]"], rf, grad, adc, extensions)

        seq = Sequence(
            version=version,
            definitions=definitions,
            rasters=rasters,
            blocks=blocks,
            rf=rf,
            grad=grad,
            adc=adc,
            shapes=shapes,
            extensions=extensions,
            signature=signature,
        )
        if self.minor < 5:
            from scanctl.sequence.legacy import DurationRangeError, upgrade

            try:
                seq = upgrade(seq, delays=self._legacy_delays(delays, delay_rows))
            except DurationRangeError as exc:
                raise self.fail(int(self._block_lines[exc.block]), str(exc)) from None
            self._require_total_ticks(seq.blocks.duration_ticks, self._block_lines, seq.blocks.id)
        return seq

    # -- small sections -----------------------------------------------------------------------------
    def _version(self, sec: Section) -> tuple[int, int, int]:
        fields: dict[str, int] = {}
        for line, text in self.text.body_lines(sec):
            parts = text.split()
            if len(parts) != 2 or parts[0] not in ("major", "minor", "revision"):
                raise self.fail(line, f"[VERSION] expects 'major N', 'minor N' or 'revision N', got {text[:40]!r}")
            digits = parts[1]
            if parts[0] == "revision":  # e.g. "1post1" or "0.dev3": the leading digits are the revision
                digits = digits[: len(digits) - len(digits.lstrip("0123456789"))] or digits
            if not digits.isdigit() or len(digits) > 9:
                raise self.fail(line, f"[VERSION] {parts[0]} is not an integer: {parts[1][:20]!r}")
            fields[parts[0]] = int(digits)
        if "major" not in fields or "minor" not in fields:
            raise self.fail(sec.line, "[VERSION] needs both 'major' and 'minor'")
        version = (fields["major"], fields["minor"], fields.get("revision", 0))
        if version[0] != 1:
            raise self.fail(sec.line, f"unsupported major version {version[0]} (this reader supports 1.x)")
        if (version[0], version[1]) not in SUPPORTED:
            raise self.fail(
                sec.line, f"unsupported format version {version[0]}.{version[1]}.{version[2]} (supported: 1.3 to 1.5)"
            )
        return version

    def _definitions(self, sec: Section | None) -> dict[str, str]:
        defs: dict[str, str] = {}
        if sec is None:
            return defs
        for line, text in self.text.body_lines(sec):
            key, _, value = text.replace("\t", " ").partition(" ")
            if key in defs:
                raise self.fail(line, f"definition {key!r} appears twice")
            defs[key] = value.strip()
        return defs

    def _rasters(self, defs: dict[str, str], sec: Section | None) -> Rasters:
        names = {
            "gradient_s": "GradientRasterTime",
            "rf_s": "RadiofrequencyRasterTime",
            "adc_s": "AdcRasterTime",
            "block_duration_s": "BlockDurationRaster",
        }
        missing = [key for key in names.values() if key not in defs]
        if missing and self.minor >= 4:  # from 1.4 on the spec requires every raster; 1.3 files keep defaults
            raise self.fail(None if sec is None else sec.line,
                            f"format 1.{self.minor} requires the definition{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} in [DEFINITIONS] (missing)")
        values: dict[str, float] = {}
        for attr, key in names.items():
            if key not in defs:
                continue
            try:
                value = float(defs[key])
            except ValueError:
                value = float("nan")
            if not (np.isfinite(value) and 1e-10 <= value <= 1.0):
                line = self._definition_line(sec, key)
                raise self.fail(line, f"definition {key} must be a time between 1e-10 and 1 s, got {defs[key][:30]!r}")
            values[attr] = value
        return Rasters(**values)

    def _definition_line(self, sec: Section | None, key: str) -> int | None:
        if sec is None:
            return None
        for line, text in self.text.body_lines(sec):
            if text.split(" ", 1)[0] == key:
                return line
        return sec.line

    def _signature(self, sec: Section | None) -> str | None:
        if sec is None:
            return None
        fields = {parts[0]: parts[1] if len(parts) > 1 else ""
                  for parts in (t.split(None, 1) for _, t in self.text.body_lines(sec))}
        kind, value = fields.get("Type", "").strip(), fields.get("Hash", "").strip()
        if kind.lower() != "md5":
            raise self.fail(sec.line, f"[SIGNATURE] type {kind!r} is not supported (md5 is)")
        if len(value) != 32 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise self.fail(sec.line, f"[SIGNATURE] hash {value[:40]!r} is not an MD5 hex digest")
        if self.verify_signature:
            data = self.text.data
            cut = data.rfind(_SIGNATURE)
            if cut < 0:  # "[SIGNATURE]" is the first line: nothing was signed
                cut = 0
            digest = self._digest if self._digest is not None else _Digest(data)
            actual = digest.result()
            if actual != value.lower() and data.find(b"\r\n", 0, cut) >= 0:
                # pypulseq on Windows writes CRLF line ends but hashes the text as read back (LF line ends);
                # the "\r\n" before [SIGNATURE] belongs to the signature.
                signed = data[:cut]
                unix = signed[:-1] if signed.endswith(b"\r") else signed
                if hashlib.md5(unix.replace(b"\r\n", b"\n")).hexdigest() == value.lower():
                    actual = value.lower()
            if actual != value.lower():
                raise SignatureError(
                    self.text.path,
                    sec.line,
                    f"signature mismatch: file says {value.lower()}, content hashes to {actual} "
                    "(the file was changed after it was signed; --ignore-signature reads it anyway)",
                )
        return value.lower()

    # -- shapes -------------------------------------------------------------------------------------
    def _shapes(self, sec: Section | None) -> Shapes:
        """[SHAPES]: ``shape_id N`` and ``num_samples M`` lines, each pair followed by the stored values.

        The header lines are found with one regular-expression scan and each shape's values are converted
        with one ``numpy.fromstring`` call, so a shape of millions of samples costs no Python loop. The
        decompressed samples are bounded before anything is expanded (a few bytes of run-length code can
        claim millions of samples).
        """
        if sec is None:
            return Shapes(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0))
        data = self.text.data
        heads = [m.start() for m in _SHAPE_HEAD.finditer(data, sec.start, sec.end)]
        first = heads[0] if heads else sec.end
        stray = _NON_BLANK.search(data, sec.start, first)
        if stray is not None:
            pos = stray.start()
            raise self.text.error(pos, f"[SHAPES] expected 'shape_id N', got {_shown(data, pos, first)}")
        line = sec.line + 1 + data.count(b"\n", sec.start, first)  # not from the file's start: it is long
        entries: list[tuple[int, int, int, int, int, int]] = []  # id, line, num line, num, values start, end
        seen: dict[int, int] = {}
        total = 0
        for k, head in enumerate(heads):
            if k:
                line += data.count(b"\n", heads[k - 1], head)
            end = heads[k + 1] if k + 1 < len(heads) else sec.end
            eol = data.find(b"\n", head, end)
            head_end = end if eol < 0 else eol
            shape_id = self._header_int(line, data[head:head_end].strip(), b"shape_id", 1, 2**62)
            if shape_id in seen:
                raise self.fail(line, f"[SHAPES] shape id {shape_id} is defined twice (first at line {seen[shape_id]})")
            seen[shape_id] = line
            nxt = _NON_BLANK.search(data, min(head_end + 1, end), end)
            if nxt is None:
                raise self.fail(line, f"shape {shape_id} has no 'num_samples' line")
            num_line = line + data.count(b"\n", head, nxt.start())
            eol = data.find(b"\n", nxt.start(), end)
            num_end = end if eol < 0 else eol
            text = data[nxt.start() : num_end].strip()
            if not text.startswith(b"num_samples"):
                raise self.fail(num_line, f"expected 'num_samples N' after 'shape_id {shape_id}', got {_shown(text)}")
            num = self._header_int(num_line, text, b"num_samples", 1, MAX_SHAPE_SAMPLES)
            total += num
            if total > MAX_TOTAL_SHAPE_SAMPLES:
                raise self.fail(num_line, f"the shapes hold more than {MAX_TOTAL_SHAPE_SAMPLES} samples in total")
            entries.append((shape_id, line, num_line, num, min(num_end + 1, end), end))
        offsets = np.zeros(len(entries) + 1, np.int64)
        offsets[1:] = np.cumsum([e[3] for e in entries])
        samples = np.empty(total)
        for row, (shape_id, line, num_line, num, start, end) in enumerate(entries):
            if end - start > 64 * num + 4096:  # far more text than num values need: count before converting
                raw = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
                ws = raw <= 32
                tokens = int(np.count_nonzero(ws[:-1] & ~ws[1:])) + int(not ws[0])
                if tokens > num:
                    raise self.fail(line, f"shape {shape_id}: {tokens} stored values for {num} samples")
            packed = self._shape_values(shape_id, num_line, start, end)
            if packed.size == 0:
                raise self.fail(line, f"shape {shape_id} has no samples")
            if packed.size > num and self.minor >= 4:  # 1.4 stores a shape uncompressed when that is shorter
                raise self.fail(line, f"shape {shape_id}: {packed.size} stored values for {num} samples")
            try:
                decode = shape_codec.decompress if self.minor >= 4 else _decompress_legacy
                samples[offsets[row] : offsets[row + 1]] = decode(packed, num)
            except shape_codec.ShapeError as exc:
                raise self.fail(line, f"shape {shape_id}: {exc}") from None
        return Shapes(np.array([e[0] for e in entries], dtype=np.int64), offsets, samples)

    def _shape_values(self, shape_id: int, num_line: int, start: int, end: int) -> np.ndarray:
        """The stored values of one shape (the lines from ``start`` to ``end``; ``num_line`` precedes them)."""
        data = self.text.data
        if _NON_BLANK.search(data, start, end) is None:
            return np.zeros(0)
        try:
            values = np.fromstring(data[start:end], dtype=np.float64, sep=" ")
        except ValueError:
            values = None
        if values is not None and np.isfinite(values).all():
            return values
        # Slow path (comment lines among the values, or a bad value): go line by line to name the line.
        out: list[float] = []
        line_no = num_line
        for raw in data[start:end].split(b"\n"):
            line_no += 1
            text = raw.strip()
            if not text or text.startswith(b"#"):
                continue
            for token in text.split():
                if _NUMBER.fullmatch(token) is None:
                    raise self.fail(line_no, f"shape {shape_id}: value {_shown(token)} is not a number")
                value = float(token)
                if not np.isfinite(value):
                    raise self.fail(line_no, f"shape {shape_id}: value {_shown(token)} is not finite")
                out.append(value)
        return np.array(out, dtype=np.float64)

    def _header_int(self, line: int, raw: bytes, word: bytes, low: int, high: int) -> int:
        parts = raw.split()
        if len(parts) != 2 or parts[0] != word or not parts[1].isdigit():
            raise self.fail(line, f"expected '{word.decode()} N', got {_shown(raw)}")
        if len(parts[1]) > 30:  # int() would refuse (or take long over) a number this long
            raise self.fail(line, f"{word.decode()} {_shown(parts[1])} is out of range ({low} to {high})")
        value = int(parts[1])
        if not low <= value <= high:
            raise self.fail(line, f"{word.decode()} {value} is out of range ({low} to {high})")
        return value

    # -- event tables -------------------------------------------------------------------------------
    def _convert_tables(self, sections: list[Section]) -> None:
        """Convert every table section in file order before any reference is resolved, so that a broken line
        (where a file was cut, say) is what gets reported, not a reference the broken part would have defined.
        """
        for sec in sections:
            layout = self._layout(sec)
            if layout is not None:
                self._table(sec, layout[0], **layout[1])

    def _layout(self, sec: Section) -> tuple[int | tuple[int, ...], dict[str, object]] | None:
        """The field count(s) and options of a table section (as the section's reader asks for them)."""
        h = sec.header
        if h == "[BLOCKS]":
            return ((8, 7) if self.minor <= 3 else 8), {"integer": True}
        if h == "[RF]":
            n = _RF_FIELDS[self.minor]
            return n, {"word_columns": (n - 1,) if self.minor >= 5 else ()}
        if h == "[GRADIENTS]":
            return _GRAD_FIELDS[self.minor], {}
        if h == "[TRAP]":
            return 6, {}
        if h == "[ADC]":
            return _ADC_FIELDS[self.minor], {}
        if h == "[EXTENSIONS]":
            return 4, {"integer": True}
        name = h.split()[1] if h.startswith("extension") and len(h.split()) == 3 else ""
        if name in ("TRIGGERS", "ROTATIONS"):
            return 5, {}
        if name in ("LABELSET", "LABELINC"):
            return 3, {"word_columns": (2,)}
        if name == "DELAYS":
            return 5, {"word_columns": (4,)}
        return None

    def _table(self, sec: Section, columns: int | tuple[int, ...], **kw: object) -> Table:
        cached = self._tables.get(sec.start)
        if cached is not None:
            return cached
        table = self.text.table(sec, columns, **kw)  # type: ignore[arg-type]
        if kw.get("integer") and table.values.size:
            # numpy's conversion saturates numbers beyond int64 instead of failing
            bad = np.flatnonzero((table.values == _INT64.max) | (table.values == _INT64.min))
            if bad.size:
                row = int(bad[0]) // table.values.shape[1]
                raise self.fail(int(table.lines[row]), f"{sec.header} integer out of range (more than 18 digits)")
        self._tables[sec.start] = table
        return table

    def _require_unique(self, ids: IntArray, section: str, what: str, lines: IntArray | None) -> None:
        if ids.size < 2:
            return
        order = np.argsort(ids, kind="stable")
        dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
        if dup.size:
            row = int(order[dup[0] + 1])
            line = None if lines is None else int(lines[row])
            raise self.fail(line, f"{section} {what} id {int(ids[row])} is defined twice")

    def _ids(self, table: Table, section: str) -> IntArray:
        col = table.values[:, 0]
        ids = _as_int(col)
        bad = np.flatnonzero((ids != col) | (ids < 1))
        if bad.size:
            r = int(bad[0])
            raise self.fail(int(table.lines[r]), f"{section} id must be a positive integer, got {col[r]:g}")
        self._require_unique(ids, section, "event", table.lines)
        return ids

    def _shape_ref(self, table: Table, col: int, shape_rows: _IdIndex, section: str, what: str,
                   zero: int | None = None) -> IntArray:
        """Map a column of shape ids to shape rows (``zero``: the value for id 0, else 0 is an error)."""
        raw = table.values[:, col]
        ids = _as_int(raw)
        rows = shape_rows.rows(ids)
        missing = rows < 0
        if zero is not None:
            rows[ids == 0] = zero
            missing &= ids != 0
        missing |= ids != raw
        if missing.any():
            r = int(np.flatnonzero(missing)[0])
            raise self.fail(int(table.lines[r]), f"{section} {what} refers to shape {raw[r]:g}, which is not defined")
        return rows

    def _require_same_length(self, table: Table, main: IntArray, other: IntArray, section: str, what: str) -> None:
        """``other`` shape rows (where >= 0) must have as many samples as the ``main`` shape rows."""
        lengths = self.shape_lengths
        has = other >= 0
        bad = np.flatnonzero(has & (lengths[np.where(has, other, 0)] != lengths[main]))
        if bad.size:
            r = int(bad[0])
            raise self.fail(int(table.lines[r]), f"{section} {what} has {lengths[other[r]]} samples, "
                                                 f"the amplitude shape {lengths[main[r]]}")

    def _int_column(self, table: Table, col: int, section: str, what: str, low: int | None) -> IntArray:
        """A column that must hold integers (``>= low`` unless ``low`` is None)."""
        values = table.values[:, col]
        ints = _as_int(values)
        bad = np.flatnonzero((ints != values) | ((ints < low) if low is not None else False))
        if bad.size:
            r = int(bad[0])
            kind = "an integer" if low is None else f"an integer >= {low}"
            raise self.fail(int(table.lines[r]), f"{section} {what} must be {kind}, got {values[r]:g}")
        return ints

    def _nonnegative(self, table: Table, col: int, section: str, what: str) -> None:
        bad = np.flatnonzero(table.values[:, col] < 0)
        if bad.size:
            r = int(bad[0])
            raise self.fail(int(table.lines[r]), f"{section} {what} is negative: {table.values[r, col]:g}")

    def _rf(self, sec: Section | None, shape_rows: _IdIndex) -> RFEvents:
        ncol = _RF_FIELDS[self.minor]
        if sec is None:
            t = Table(np.zeros((0, ncol)), [[]], np.zeros(0, np.int64))
        else:
            t = self._table(sec, ncol, word_columns=(ncol - 1,) if self.minor >= 5 else ())
        v = t.values
        n = v.shape[0]
        ids = self._ids(t, "[RF]")
        z = np.zeros(n)
        mag = self._shape_ref(t, 2, shape_rows, "[RF]", "magnitude")
        phase = self._shape_ref(t, 3, shape_rows, "[RF]", "phase", zero=-1)
        if self.minor >= 5:
            time = self._shape_ref(t, 4, shape_rows, "[RF]", "time shape", zero=TIME_DEFAULT)
            center, delay = v[:, 5] * 1e-6, v[:, 6] * 1e-6
            fppm, pppm, freq, ph = v[:, 7], v[:, 8], v[:, 9], v[:, 10]
            uses = t.words[0]
            use = np.frombuffer("".join(u[:1] for u in uses).encode("ascii", "replace"), dtype=np.uint8).copy()
            bad = [i for i, u in enumerate(uses) if len(u) != 1 or u not in "erispou"]
            if bad:
                raise self.fail(int(t.lines[bad[0]]), f"[RF] use {uses[bad[0]][:20]!r} is not one of e r i s p o u")
            self._nonnegative(t, 6, "[RF]", "delay")
        else:
            time = (self._shape_ref(t, 4, shape_rows, "[RF]", "time shape", zero=TIME_DEFAULT)
                    if self.minor == 4 else np.full(n, TIME_DEFAULT, np.int64))
            c = 5 if self.minor == 4 else 4
            center, delay = z.copy(), v[:, c] * 1e-6
            fppm, pppm, freq, ph = z.copy(), z.copy(), v[:, c + 1], v[:, c + 2]
            use = np.full(n, ord("u"), dtype=np.uint8)
            self._nonnegative(t, c, "[RF]", "delay")
        self._nonnegative(t, 1, "[RF]", "amplitude")  # the peak of the magnitude: the phase shape gives the sign
        self._require_same_length(t, mag, phase, "[RF]", "phase shape")
        self._require_same_length(t, mag, time, "[RF]", "time shape")
        return RFEvents(ids, v[:, 1].copy(), mag, phase, time, center, delay, fppm, pppm, freq, ph, use)

    def _grad(self, arb: Section | None, trap: Section | None, shape_rows: _IdIndex) -> GradEvents:
        parts: list[GradEvents] = []
        lines: list[IntArray] = []
        if arb is not None:
            t = self._table(arb, _GRAD_FIELDS[self.minor])
            v, n = t.values, t.values.shape[0]
            nan = np.full(n, np.nan)
            z = np.zeros(n)
            if self.minor >= 5:
                first, last, sc, tc, dc = v[:, 2], v[:, 3], 4, 5, 6
            else:
                first, last, sc, tc, dc = nan, nan.copy(), 2, 3, (4 if self.minor == 4 else 3)
            shape = self._shape_ref(t, sc, shape_rows, "[GRADIENTS]", "amplitude shape")
            if self.minor >= 4:
                time_ids = v[:, tc]
                time = self._shape_ref(t, tc, shape_rows, "[GRADIENTS]", "time shape", zero=TIME_DEFAULT) if (
                    (time_ids >= 0).all()) else self._grad_time(t, tc, shape_rows)
            else:
                time = np.full(n, TIME_DEFAULT, np.int64)
            self._nonnegative(t, dc, "[GRADIENTS]", "delay")
            self._require_same_length(t, shape, time, "[GRADIENTS]", "time shape")
            parts.append(GradEvents(self._ids(t, "[GRADIENTS]"), np.zeros(n, bool), v[:, 1].copy(), z, z, z,
                                    v[:, dc] * 1e-6, first, last, shape, time))
            lines.append(t.lines)
        if trap is not None:
            t = self._table(trap, 6)
            v, n = t.values, t.values.shape[0]
            for col, what in ((2, "rise time"), (3, "flat time"), (4, "fall time"), (5, "delay")):
                self._nonnegative(t, col, "[TRAP]", what)
            z = np.zeros(n)
            parts.append(GradEvents(self._ids(t, "[TRAP]"), np.ones(n, bool), v[:, 1].copy(), v[:, 2] * 1e-6,
                                    v[:, 3] * 1e-6, v[:, 4] * 1e-6, v[:, 5] * 1e-6, z, z,
                                    np.full(n, -1, np.int64), np.full(n, TIME_DEFAULT, np.int64)))
            lines.append(t.lines)
        if not parts:
            e, ei = np.zeros(0), np.zeros(0, np.int64)
            return GradEvents(ei, np.zeros(0, bool), e, e, e, e, e, e, e, ei, ei)
        merged = GradEvents(*(np.concatenate([getattr(p, f) for p in parts]) for f in GradEvents.__dataclass_fields__))
        self._require_unique(merged.id, "[GRADIENTS]/[TRAP]", "gradient", np.concatenate(lines))
        return merged

    def _grad_time(self, t: Table, col: int, shape_rows: _IdIndex) -> IntArray:
        """Time shape column that may hold -1 (oversampled on the half raster)."""
        ids = t.values[:, col]
        over = ids == -1
        bad = np.flatnonzero(ids < -1)
        if bad.size:
            raise self.fail(int(t.lines[bad[0]]), f"[GRADIENTS] time shape id {ids[bad[0]]:g} is invalid")
        shifted = Table(np.where(over, 0, ids)[:, None], [], t.lines)
        time = self._shape_ref(shifted, 0, shape_rows, "[GRADIENTS]", "time shape", zero=TIME_DEFAULT)
        time[over] = TIME_OVERSAMPLED
        return time

    def _adc(self, sec: Section | None, shape_rows: _IdIndex) -> ADCEvents:
        ncol = _ADC_FIELDS[self.minor]
        t = Table(np.zeros((0, ncol)), [], np.zeros(0, np.int64)) if sec is None else self._table(sec, ncol)
        v, n = t.values, t.values.shape[0]
        ids = self._ids(t, "[ADC]")
        num = _as_int(v[:, 1])
        bad = np.flatnonzero((num != v[:, 1]) | (num < 1) | (num > MAX_ADC_SAMPLES))
        if bad.size:
            r = int(bad[0])
            raise self.fail(int(t.lines[r]),
                            f"[ADC] number of samples {v[r, 1]:g} is not an integer in 1..{MAX_ADC_SAMPLES}")
        bad = np.flatnonzero(v[:, 2] <= 0)
        if bad.size:
            raise self.fail(int(t.lines[bad[0]]), f"[ADC] dwell time {v[bad[0], 2]:g} ns is not positive")
        self._nonnegative(t, 3, "[ADC]", "delay")
        z = np.zeros(n)
        if self.minor >= 5:
            phase_shape = self._shape_ref(t, 8, shape_rows, "[ADC]", "phase shape", zero=-1)
            return ADCEvents(ids, num, v[:, 2] * 1e-9, v[:, 3] * 1e-6, v[:, 4], v[:, 5], v[:, 6], v[:, 7], phase_shape)
        return ADCEvents(ids, num, v[:, 2] * 1e-9, v[:, 3] * 1e-6, z, z.copy(), v[:, 4], v[:, 5],
                         np.full(n, -1, np.int64))

    # -- extensions ---------------------------------------------------------------------------------
    def _extensions(self, sec: Section | None, spec_secs: list[Section], defs: dict[str, str]) -> Extensions:
        required = defs.get("RequiredExtensions", "").split()
        unknown = [name for name in required if name not in KNOWN_EXTENSIONS]
        if unknown:
            raise self.fail(self._definition_line(self.defs_section, "RequiredExtensions"),
                            f"required extension {unknown[0]} is not supported "
                            f"(supported: {', '.join(KNOWN_EXTENSIONS)})")
        specs: dict[str, _Spec] = {}
        type_names: dict[int, str] = {}
        for s in spec_secs:
            parts = s.header.split()
            if len(parts) != 3 or not parts[2].isdigit() or len(parts[2]) > 18:
                raise self.fail(s.line, f"extension header must be 'extension NAME ID', got {s.header[:40]!r}")
            name, type_id = parts[1], int(parts[2])
            if type_id in type_names:
                raise self.fail(s.line, f"extension type id {type_id} used by both {type_names[type_id]} and {name}")
            if name in specs:
                raise self.fail(s.line, f"extension {name} is specified twice (type ids {specs[name].spec.type_id} "
                                        f"and {type_id})")
            type_names[type_id] = name
            specs[name] = self._extension_spec(s, name, type_id)
        if sec is None:
            return Extensions(*(np.zeros(0, np.int64),) * 4, {k: s.spec for k, s in specs.items()})
        t = self._table(sec, 4, integer=True)
        v = t.values
        ids = v[:, 0]
        bad = np.flatnonzero(ids < 1)
        if bad.size:
            raise self.fail(int(t.lines[bad[0]]), "[EXTENSIONS] id must be a positive integer")
        self._require_unique(ids, "[EXTENSIONS]", "list entry", t.lines)
        index = _IdIndex(ids)
        nxt = index.rows(v[:, 3])
        bad = np.flatnonzero((nxt < 0) & (v[:, 3] != 0))
        if bad.size:
            r = int(bad[0])
            raise self.fail(int(t.lines[r]), f"[EXTENSIONS] next id {v[r, 3]} is not defined")
        id_to_name: dict[int, str] = dict(type_names.items())
        for r in range(v.shape[0]):  # a few rows: lists are shared between blocks
            tid, ref = int(v[r, 1]), int(v[r, 2])
            if tid not in id_to_name:
                raise self.fail(int(t.lines[r]), f"[EXTENSIONS] type {tid} has no 'extension NAME {tid}' section")
            name = id_to_name[tid]
            if ref not in specs[name].row_of:
                raise self.fail(int(t.lines[r]), f"[EXTENSIONS] {name} entry {ref} is not defined")
        self._require_acyclic(nxt, t.lines)
        return Extensions(ids, v[:, 1].copy(), v[:, 2].copy(), nxt, {k: s.spec for k, s in specs.items()})

    def _require_acyclic(self, nxt: IntArray, lines: IntArray) -> None:
        state = np.zeros(nxt.size, np.int8)  # 0 new, 1 on path, 2 done
        for start in range(nxt.size):
            path = []
            row = start
            while row >= 0 and state[row] == 0:
                state[row] = 1
                path.append(row)
                row = int(nxt[row])
            if row >= 0 and state[row] == 1:
                raise self.fail(int(lines[row]), "[EXTENSIONS] list loops back on itself")
            state[path] = 2

    def _extension_spec(self, sec: Section, name: str, type_id: int) -> _Spec:
        what = f"[extension {name}]"
        if name == "TRIGGERS":
            t = self._table(sec, 5)
            cols: dict[str, npt.NDArray[Any]] = {"type": self._int_column(t, 1, what, "type", 0),
                    "channel": self._int_column(t, 2, what, "channel", 0),
                    "delay_s": t.values[:, 3] * 1e-6, "duration_s": t.values[:, 4] * 1e-6}
            self._nonnegative(t, 3, what, "delay")
            self._nonnegative(t, 4, what, "duration")
        elif name in ("LABELSET", "LABELINC"):
            t = self._table(sec, 3, word_columns=(2,))
            labels = t.words[0]
            odd = [i for i, s in enumerate(labels)
                   if not (s[:1].isalpha() and s.replace("_", "").isalnum() and s.isascii() and s.upper() == s)]
            if odd:
                raise self.fail(int(t.lines[odd[0]]), f"{what} label {labels[odd[0]][:20]!r} is not a label name")
            cols = {"value": self._int_column(t, 1, what, "value", None), "label": np.array(labels, dtype=object)}
        elif name == "DELAYS":
            t = self._table(sec, 5, word_columns=(4,))
            bad = np.flatnonzero(t.values[:, 3] == 0)
            if bad.size:
                raise self.fail(int(t.lines[bad[0]]), f"{what} factor is 0 (the delay is the value divided by it)")
            cols = {"num": self._int_column(t, 1, what, "num", 0), "offset_s": t.values[:, 2] * 1e-6,
                    "factor": t.values[:, 3].copy(), "hint": np.array(t.words[0], dtype=object)}
        elif name == "ROTATIONS":
            t = self._table(sec, 5)
            cols = self._rotations(t)
        elif name == "RF_SHIMS":
            cols, t = self._rf_shims(sec)
        else:  # an extension this reader does not interpret: kept as text (refused above if required)
            rows = self.text.body_lines(sec)
            row_ids = []
            for line, text in rows:
                head = text.split(None, 1)[0]
                if not head.isdigit() or len(head) > 18:
                    raise self.fail(line, f"{what} row must start with an id")
                row_ids.append(int(head))
            t = Table(np.array(row_ids, dtype=np.float64)[:, None], [], np.array([ln for ln, _ in rows], np.int64))
            cols = {"text": np.array([text for _, text in rows], dtype=object)}
        ids = self._ids(t, what)
        spec = ExtensionSpec(name, type_id, ids, cols)
        return _Spec(spec, {int(i): r for r, i in enumerate(ids.tolist())})

    def _rotations(self, t: Table) -> dict[str, np.ndarray]:
        """1.5.1 rotations: a unit quaternion ``w x y z`` per row (rotates logical into physical gradients)."""
        q = t.values[:, 1:5]
        norm = np.linalg.norm(q, axis=1)
        bad = np.flatnonzero(np.abs(norm - 1) > 1e-3)
        if bad.size:
            raise self.fail(int(t.lines[bad[0]]), f"[extension ROTATIONS] quaternion norm {norm[bad[0]]:g} is not 1")
        return {"quaternion": q.copy(), "matrix": _quaternion_to_matrix(q / norm[:, None])}

    def _rf_shims(self, sec: Section) -> tuple[dict[str, np.ndarray], Table]:
        """1.5.1 RF shims: ``id num_chan mag1 phase1 mag2 phase2 ...`` (rows may differ in length)."""
        rows = self.text.body_lines(sec)
        ids, lines = [], []
        coils = np.empty(len(rows), dtype=object)  # one (num_chan, 2) array per row
        for k, (line, text) in enumerate(rows):
            parts = text.split()
            if any(_NUMBER.fullmatch(p.encode()) is None for p in parts):
                raise self.fail(line, "[extension RF_SHIMS] fields must be numbers")
            nums = np.array([float(p) for p in parts])
            if not np.isfinite(nums).all():
                raise self.fail(line, "[extension RF_SHIMS] value is not finite")
            if nums.size < 4 or nums[1] < 1 or nums[1] != int(nums[1]) or nums.size != 2 + 2 * int(nums[1]):
                raise self.fail(line, "[extension RF_SHIMS] row must be 'id num_chan mag1 phase1 ...' "
                                      "with num_chan >= 1 magnitude/phase pairs")
            ids.append(nums[0])
            coils[k] = nums[2:].reshape(-1, 2)
            if (coils[k][:, 0] < 0).any():
                raise self.fail(line, "[extension RF_SHIMS] magnitude is negative")
            lines.append(line)
        t = Table(np.array(ids, dtype=np.float64)[:, None], [], np.array(lines, np.int64))
        return {"magnitude_phase": coils}, t

    # -- blocks -------------------------------------------------------------------------------------
    def _blocks(self, sec: Section, rf: RFEvents, grad: GradEvents, adc: ADCEvents,
                ext: Extensions) -> tuple[Blocks, IntArray]:
        t = self._table(sec, (8, 7) if self.minor <= 3 else 8, integer=True)
        v = t.values
        if v.shape[1] == 7:  # format <= 1.2.1: no extension column
            v = np.concatenate((v, np.zeros((v.shape[0], 1), np.int64)), axis=1)
        if v.shape[0] == 0:
            raise self.fail(sec.line, "[BLOCKS] has no blocks")
        ids = v[:, 0]
        order = np.argsort(ids, kind="stable")
        if not (order == np.arange(order.size)).all():
            v, lines = v[order], t.lines[order]
        else:
            lines = t.lines
        ids = v[:, 0]
        if (ids < 1).any():
            r = int(np.flatnonzero(ids < 1)[0])
            raise self.fail(int(lines[r]), f"[BLOCKS] block id must be a positive integer, got {ids[r]}")
        dup = np.flatnonzero(ids[1:] == ids[:-1])
        if dup.size:
            raise self.fail(int(lines[dup[0] + 1]), f"[BLOCKS] block id {ids[dup[0] + 1]} is defined twice")
        neg = np.flatnonzero(v[:, 1:] < 0)
        if neg.size:
            r, c = divmod(int(neg[0]), 7)
            field = ("duration", "RF", "GX", "GY", "GZ", "ADC", "EXT")[c]
            raise self.fail(int(lines[r]), f"[BLOCKS] {field} is negative: {v[r, c + 1]}")
        self._block_lines, self._block_ids = lines, ids
        if self.minor >= 4:
            self._require_total_ticks(v[:, 1], lines, ids)

        grad_index = _IdIndex(grad.id)
        found: dict[int, IntArray] = {}
        first: tuple[int, str] | None = None  # the earliest line with a reference to nothing
        for col, index, what in ((2, _IdIndex(rf.id), "RF event"), (3, grad_index, "gradient (x)"),
                                 (4, grad_index, "gradient (y)"), (5, grad_index, "gradient (z)"),
                                 (6, _IdIndex(adc.id), "ADC event"), (7, _IdIndex(ext.id), "extension list")):
            refs = v[:, col]
            found[col] = index.rows(refs)
            missing = np.flatnonzero((found[col] < 0) & (refs != 0))
            if missing.size:
                k = int(missing[np.argmin(lines[missing])])
                if first is None or lines[k] < first[0]:
                    first = (int(lines[k]), f"block {ids[k]} refers to {what} {refs[k]}, which is not defined")
        if first is not None:
            raise self.fail(*first)
        blocks = Blocks(
            id=ids.copy(),
            duration_ticks=v[:, 1].copy() if self.minor >= 4 else np.zeros(ids.size, np.int64),
            rf=found[2],
            grad=np.stack([found[3], found[4], found[5]], axis=1),
            adc=found[6],
            ext=found[7],
        )
        return blocks, v[:, 1].copy()

    def _require_total_ticks(self, ticks: IntArray, lines: IntArray, ids: IntArray) -> None:
        """Start times are sums of ticks: keep them exact (and far from int64 overflow)."""
        over = np.flatnonzero(np.cumsum(ticks, dtype=np.float64) > MAX_TOTAL_TICKS)
        if over.size:
            r = int(over[0])
            raise self.fail(int(lines[r]), f"[BLOCKS] block durations add up to more than {MAX_TOTAL_TICKS} "
                                           f"ticks by block {ids[r]} (duration {ticks[r]})")

    def _legacy_delays(self, sec: Section | None, delay_ids: IntArray) -> np.ndarray:
        """Format 1.3: the delay of each block from the [DELAYS] table (seconds)."""
        if self.minor >= 4:
            return np.zeros(0)
        if sec is None:
            if (delay_ids != 0).any():
                raise self.fail(None, "[BLOCKS] refers to delays but there is no [DELAYS] section")
            return np.zeros(delay_ids.size)
        t = self._table(sec, 2)
        ids = self._ids(t, "[DELAYS]")
        self._nonnegative(t, 1, "[DELAYS]", "delay")
        r = _IdIndex(ids).rows(delay_ids)
        if ((r < 0) & (delay_ids != 0)).any():
            k = int(np.flatnonzero((r < 0) & (delay_ids != 0))[0])
            raise self.fail(int(self._block_lines[k]), f"block {int(self._block_ids[k])} refers to delay "
                                                      f"{delay_ids[k]}, which is not defined")
        out = np.zeros(delay_ids.size)
        out[r >= 0] = t.values[r[r >= 0], 1] * 1e-6
        return out


class _Digest:
    """The MD5 hex digest of a file's signed part (all before the last ``\n[SIGNATURE]``), computed on a
    thread while the file is parsed (hashlib releases the GIL); :meth:`result` waits for it."""

    def __init__(self, data: bytes) -> None:
        cut = max(data.rfind(_SIGNATURE), 0)
        self._value = ""
        self._thread = threading.Thread(target=self._hash, args=(memoryview(data)[:cut],), daemon=True)
        self._thread.start()

    def _hash(self, signed: memoryview) -> None:
        self._value = hashlib.md5(signed).hexdigest()

    def result(self) -> str:
        self._thread.join()
        return self._value


class _Spec:
    def __init__(self, spec: ExtensionSpec, row_of: dict[int, int]) -> None:
        self.spec = spec
        self.row_of = row_of


class _IdIndex:
    """Map file ids to table rows, vectorised (-1 where the id is not in the table)."""

    def __init__(self, ids: IntArray) -> None:
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]
        # Ids are usually dense (1..n): then a lookup table answers with one gather.
        self.lut: IntArray | None = None
        if self.sorted.size and self.sorted[0] >= 0 and self.sorted[-1] <= max(16 * self.sorted.size, 1 << 16):
            self.lut = np.full(int(self.sorted[-1]) + 2, -1, dtype=np.int64)
            self.lut[self.sorted] = self.order

    def rows(self, refs: np.ndarray) -> IntArray:
        refs = np.asarray(refs).astype(np.int64, copy=False)
        if self.lut is not None:
            last = self.lut.size - 1  # always -1
            return self.lut[np.where((refs >= 0) & (refs < last), refs, last)]
        if self.sorted.size == 0:
            return np.full(refs.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(self.sorted, refs), 0, self.sorted.size - 1)
        found = self.sorted[pos] == refs
        return np.where(found, self.order[pos], -1).astype(np.int64)


def _first_control_byte(data: bytes) -> re.Match[bytes] | None:
    """Where the first control byte other than whitespace is (``bytes.translate`` screens 1 MB pieces
    several times faster than the regular expression, which then only runs on a piece that has one; pieces
    this small reuse the same memory, where whole-file copies would each be fresh pages to fault in)."""
    step = 1 << 20
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        if len(piece.translate(None, _CONTROL_BYTES)) != len(piece):
            return _CONTROL.search(data, start, start + step)
    return None


def _as_int(values: np.ndarray) -> IntArray:
    """Float column to int64 without an invalid cast for huge values (they stay unequal to the floats)."""
    return np.clip(values, -(2.0**62), 2.0**62).astype(np.int64)


def _decompress_legacy(packed: np.ndarray, num: int) -> np.ndarray:
    """Decode a format 1.3 shape: always stored compressed, even when that is as long as (or longer than) the
    waveform, where 1.4 and later store it uncompressed.

    ``shape_codec.decompress`` takes a stored length equal to ``num`` for an uncompressed shape; a run of
    ``k + 2`` zeros put in front (stored as ``0 0 k``) makes the stored length shorter than the decoded one
    so that the run-length decoding always runs, and is dropped again.
    """
    k = packed.size + 1
    try:
        full = shape_codec.decompress(np.concatenate(([0.0, 0.0, float(k)], packed)), num + k + 2)
    except shape_codec.ShapeError:
        raise shape_codec.ShapeError(f"{packed.size} stored values do not decode to {num} samples") from None
    return full[k + 2 :]


def _shown(text: bytes, start: int = 0, end: int | None = None, limit: int = 40) -> str:
    """A short, printable rendering of the file text from ``start`` (to the line end) for a message."""
    stop = len(text) if end is None else end
    eol = text.find(b"\n", start, stop)
    stop = stop if eol < 0 else eol
    shown = text[start : min(stop, start + limit)].strip().decode("ascii", errors="replace")
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return repr(shown + ("…" if stop - start > limit else ""))


def _quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    m = np.empty((q.shape[0], 3, 3))
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 0, 1] = 2 * (x * y - z * w)
    m[:, 0, 2] = 2 * (x * z + y * w)
    m[:, 1, 0] = 2 * (x * y + z * w)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 1, 2] = 2 * (y * z - x * w)
    m[:, 2, 0] = 2 * (x * z - y * w)
    m[:, 2, 1] = 2 * (y * z + x * w)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return m
