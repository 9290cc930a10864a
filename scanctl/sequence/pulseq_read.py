"""Read Pulseq files (format 1.3.x, 1.4.x, 1.5.0, 1.5.1) into the columnar :class:`Sequence`.

Every problem with the file is a :class:`~scanctl.errors.SequenceFormatError` naming the file, the
line and what is wrong. The file's own raster definitions are used; the MD5 signature is verified
unless the caller asks not to.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

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
#: Largest shape, and largest ADC window, in samples.
MAX_SHAPE_SAMPLES = 50_000_000
MAX_ADC_SAMPLES = 10_000_000

KNOWN_EXTENSIONS = ("TRIGGERS", "LABELSET", "LABELINC", "DELAYS", "ROTATIONS", "RF_SHIMS")
SUPPORTED = ((1, 3), (1, 4), (1, 5))
_SIGNATURE = b"\n[SIGNATURE]"
_TABLE_SECTIONS = ("[BLOCKS]", "[RF]", "[GRADIENTS]", "[TRAP]", "[ADC]", "[DELAYS]", "[EXTENSIONS]")
# Field counts (with the id) per format: (minor >= 5, minor == 4, minor <= 3)
_RF_FIELDS = {5: 12, 4: 8, 3: 7}
_GRAD_FIELDS = {5: 7, 4: 5, 3: 4}
_ADC_FIELDS = {5: 9, 4: 6, 3: 6}


def read(path: str | os.PathLike[str], *, verify_signature: bool = True) -> Sequence:
    """Read a Pulseq file.

    Raises :class:`SequenceFormatError` (or its subclass :class:`SignatureError` when the MD5 signature
    does not match and ``verify_signature`` is true).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SequenceFormatError(path, None, f"file is {size} bytes, more than the {MAX_FILE_BYTES} accepted")
        data = path.read_bytes()
    except OSError as exc:
        raise SequenceFormatError(path, None, f"cannot read file: {exc.strerror or exc}") from exc
    return parse(data, path=path, verify_signature=verify_signature)


def parse(data: bytes, *, path: str | os.PathLike[str] | None = None, verify_signature: bool = True) -> Sequence:
    """Parse the bytes of a Pulseq file (see :func:`read`)."""
    return _Reader(TextFile(data, path), verify_signature).run()


class _Reader:
    def __init__(self, text: TextFile, verify_signature: bool) -> None:
        self.text = text
        self.verify_signature = verify_signature
        self.minor = 5

    def fail(self, line: int | None, message: str) -> SequenceFormatError:
        return self.text.error(line, message, is_line=True)

    # -- top level ----------------------------------------------------------------------------------
    def run(self) -> Sequence:
        data = self.text.data
        if not data.strip():
            raise self.fail(None, "file is empty")
        nul = data.find(b"\x00")
        if nul >= 0:
            raise self.text.error(nul, "binary data (NUL byte): not a Pulseq text file")
        sections = self.text.sections()
        if not sections:
            raise self.fail(None, "no sections found: not a Pulseq file")
        by_name: dict[str, Section] = {}
        for sec in sections:
            if sec.header in by_name:
                raise self.fail(sec.line, f"section {sec.header} appears twice (first at line {by_name[sec.header].line})")
            by_name[sec.header] = sec
        if "[VERSION]" not in by_name:
            raise self.fail(None, "no [VERSION] section")
        version = self._version(by_name["[VERSION]"])
        self.minor = min(max(version[1], 3), 5)
        definitions = self._definitions(by_name.get("[DEFINITIONS]"))
        rasters = self._rasters(definitions, by_name.get("[DEFINITIONS]"))
        signature = self._signature(by_name.get("[SIGNATURE]"))

        shapes = self._shapes(by_name.get("[SHAPES]"))
        shape_rows = _IdIndex(shapes.id)
        rf = self._rf(by_name.get("[RF]"), shape_rows)
        grad = self._grad(by_name.get("[GRADIENTS]"), by_name.get("[TRAP]"), shape_rows)
        adc = self._adc(by_name.get("[ADC]"), shape_rows)
        ext_specs = [s for s in sections if s.header.startswith("extension")]
        extensions = self._extensions(by_name.get("[EXTENSIONS]"), ext_specs, definitions)
        for sec in sections:
            known = sec.header in _TABLE_SECTIONS or sec.header.startswith("extension")
            if not known and sec.header not in ("[VERSION]", "[DEFINITIONS]", "[SHAPES]", "[SIGNATURE]"):
                raise self.fail(sec.line, f"unknown section {sec.header}")
        if "[BLOCKS]" not in by_name:
            raise self.fail(None, "no [BLOCKS] section")
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
            from scanctl.sequence.legacy import upgrade

            seq = upgrade(seq, delays=self._legacy_delays(delays, delay_rows))
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
            if not digits.isdigit():
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
            key, _, value = text.partition(" ")
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
        values: dict[str, float] = {}
        for attr, key in names.items():
            if key not in defs:
                if self.minor >= 4:
                    log.info("%s: no %s definition, using the default", self.text.path, key)
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
        fields = dict(t.split(None, 1) if " " in t else (t, "") for _, t in self.text.body_lines(sec))
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
            actual = hashlib.md5(data[:cut]).hexdigest()
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
        ids: list[int] = []
        arrays: list[np.ndarray] = []
        if sec is not None:
            lines = self.text.body_lines_raw(sec)
            state_id: int | None = None
            state_line = 0
            num_samples = 0
            values: list[bytes] = []
            expect_num = False

            def finish() -> None:
                if state_id is None:
                    return
                if not values:
                    raise self.fail(state_line, f"shape {state_id} has no samples")
                if len(values) > num_samples:
                    raise self.fail(state_line, f"shape {state_id}: {len(values)} stored values for {num_samples} samples")
                try:
                    packed = np.array(values, dtype=np.float64) if len(values) < 64 else _floats(b" ".join(values))
                except ValueError:
                    bad = next(v for v in values if not _is_float(v))
                    raise self.fail(state_line, f"shape {state_id}: value {bad[:30]!r} is not a number") from None
                if not np.isfinite(packed).all():
                    raise self.fail(state_line, f"shape {state_id}: value is not finite")
                try:
                    arrays.append(shape_codec.decompress(packed, num_samples))
                except shape_codec.ShapeError as exc:
                    raise self.fail(state_line, f"shape {state_id}: {exc}") from None
                ids.append(state_id)

            for line, raw in lines:
                if raw.startswith(b"shape_id"):
                    finish()
                    state_id = self._header_int(line, raw, b"shape_id", 1, 2**62)
                    state_line, values, expect_num = line, [], True
                elif expect_num:
                    if not raw.startswith(b"num_samples"):
                        raise self.fail(line, f"expected 'num_samples N' after 'shape_id {state_id}'")
                    num_samples = self._header_int(line, raw, b"num_samples", 1, MAX_SHAPE_SAMPLES)
                    expect_num = False
                elif state_id is None:
                    raise self.fail(line, f"[SHAPES] expected 'shape_id N', got {raw[:40]!r}")
                else:
                    values.append(raw)
            if expect_num:
                raise self.fail(state_line, f"shape {state_id} has no 'num_samples' line")
            finish()
        id_arr = np.array(ids, dtype=np.int64)
        self._require_unique(id_arr, "[SHAPES]", "shape", None)
        lengths = np.array([a.size for a in arrays], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        samples = np.concatenate(arrays) if arrays else np.zeros(0)
        return Shapes(id_arr, offsets, samples)

    def _header_int(self, line: int, raw: bytes, word: bytes, low: int, high: int) -> int:
        parts = raw.split()
        if len(parts) != 2 or parts[0] != word or not parts[1].isdigit():
            raise self.fail(line, f"expected '{word.decode()} N', got {raw[:40]!r}")
        value = int(parts[1])
        if not low <= value <= high:
            raise self.fail(line, f"{word.decode()} {value} is out of range ({low} to {high})")
        return value

    # -- event tables -------------------------------------------------------------------------------
    def _table(self, sec: Section, columns: int | tuple[int, ...], **kw: object) -> Table:
        return self.text.table(sec, columns, **kw)  # type: ignore[arg-type]

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
        ids = col.astype(np.int64)
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
        ids = raw.astype(np.int64)
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
        num = v[:, 1].astype(np.int64)
        bad = np.flatnonzero((num != v[:, 1]) | (num < 1) | (num > MAX_ADC_SAMPLES))
        if bad.size:
            r = int(bad[0])
            raise self.fail(int(t.lines[r]), f"[ADC] number of samples {v[r, 1]:g} is not an integer in 1..{MAX_ADC_SAMPLES}")
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
            raise self.fail(None, f"required extension {unknown[0]} is not supported "
                                  f"(supported: {', '.join(KNOWN_EXTENSIONS)})")
        specs: dict[str, _Spec] = {}
        type_names: dict[int, str] = {}
        for s in spec_secs:
            parts = s.header.split()
            if len(parts) != 3 or not parts[2].isdigit():
                raise self.fail(s.line, f"extension header must be 'extension NAME ID', got {s.header[:40]!r}")
            name, type_id = parts[1], int(parts[2])
            if type_id in type_names:
                raise self.fail(s.line, f"extension type id {type_id} used by both {type_names[type_id]} and {name}")
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
        id_to_name = {tid: name for tid, name in type_names.items()}
        for r in range(v.shape[0]):  # a few rows: lists are shared between blocks
            tid, ref = int(v[r, 1]), int(v[r, 2])
            name = id_to_name.get(tid)
            if name is None:
                raise self.fail(int(t.lines[r]), f"[EXTENSIONS] type {tid} has no 'extension NAME {tid}' section")
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
            cols = {"type": t.values[:, 1].astype(np.int64), "channel": t.values[:, 2].astype(np.int64),
                    "delay_s": t.values[:, 3] * 1e-6, "duration_s": t.values[:, 4] * 1e-6}
        elif name in ("LABELSET", "LABELINC"):
            t = self._table(sec, 3, word_columns=(2,))
            labels = t.words[0]
            bad = [i for i, s in enumerate(labels) if not (s.replace("_", "").isalnum() and s.upper() == s)]
            if bad:
                raise self.fail(int(t.lines[bad[0]]), f"{what} label {labels[bad[0]][:20]!r} is not a label name")
            cols = {"value": t.values[:, 1].astype(np.int64), "label": np.array(labels, dtype=object)}
        elif name == "DELAYS":
            t = self._table(sec, 5, word_columns=(4,))
            cols = {"num": t.values[:, 1].astype(np.int64), "offset_s": t.values[:, 2] * 1e-6,
                    "factor": t.values[:, 3].copy(), "hint": np.array(t.words[0], dtype=object)}
        elif name == "ROTATIONS":
            t = self._table(sec, 5)
            cols = self._rotations(t)
        elif name == "RF_SHIMS":
            cols, t = self._rf_shims(sec)
        else:  # an extension this reader does not interpret: kept as text (refused above if required)
            rows = self.text.body_lines(sec)
            ids = []
            for line, text in rows:
                head = text.split(None, 1)[0]
                if not head.isdigit():
                    raise self.fail(line, f"{what} row must start with an id")
                ids.append(int(head))
            t = Table(np.array(ids, dtype=np.float64)[:, None], [], np.array([ln for ln, _ in rows], np.int64))
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
        rows = self.text.body_lines(sec)
        ids, coils, lines = [], [], []
        for line, text in rows:
            parts = text.split()
            try:
                nums = [float(p) for p in parts]
            except ValueError:
                raise self.fail(line, "[extension RF_SHIMS] fields must be numbers") from None
            if len(nums) < 2 or nums[1] != int(nums[1]) or len(nums) != 2 + 2 * int(nums[1]):
                raise self.fail(line, "[extension RF_SHIMS] row must be 'id num_chan mag1 phase1 ...'")
            ids.append(nums[0])
            coils.append(np.array(nums[2:]).reshape(-1, 2))
            lines.append(line)
        t = Table(np.array(ids, dtype=np.float64)[:, None], [], np.array(lines, np.int64))
        return {"magnitude_phase": np.array(coils, dtype=object)}, t

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

        def rows(col: int, index: _IdIndex, what: str) -> IntArray:
            refs = v[:, col]
            r = index.rows(refs)
            missing = (r < 0) & (refs != 0)
            if missing.any():
                k = int(np.flatnonzero(missing)[0])
                raise self.fail(int(lines[k]), f"block {ids[k]} refers to {what} {refs[k]}, which is not defined")
            return r

        grad_index = _IdIndex(grad.id)
        grad_rows = np.stack([rows(c, grad_index, f"gradient ({axis})") for c, axis in ((3, "x"), (4, "y"), (5, "z"))],
                             axis=1)
        blocks = Blocks(
            id=ids.copy(),
            duration_ticks=v[:, 1].copy() if self.minor >= 4 else np.zeros(ids.size, np.int64),
            rf=rows(2, _IdIndex(rf.id), "RF event"),
            grad=grad_rows,
            adc=rows(6, _IdIndex(adc.id), "ADC event"),
            ext=rows(7, _IdIndex(ext.id), "extension list"),
        )
        return blocks, v[:, 1].copy()

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
            raise self.fail(None, f"block {k + 1} refers to delay {delay_ids[k]}, which is not defined")
        out = np.zeros(delay_ids.size)
        out[r >= 0] = t.values[r[r >= 0], 1] * 1e-6
        return out


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
        if self.sorted.size and 0 <= self.sorted[0] and self.sorted[-1] <= max(16 * self.sorted.size, 1 << 16):
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


def _floats(text: bytes) -> np.ndarray:
    values = np.fromstring(text, dtype=np.float64, sep=" ")  # type: ignore[call-overload]
    if values.size != len(text.split()):
        raise ValueError("not all numbers")
    return values


def _is_float(text: bytes) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
