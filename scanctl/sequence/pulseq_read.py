"""Read Pulseq files (format 1.3.x, 1.4.x, 1.5.0, 1.5.1) into the columnar :class:`Sequence`.

Every problem with the file is a :class:`~scanctl.errors.SequenceFormatError` naming the file, the
line and what is wrong. The file's own raster definitions are used; the MD5 signature is verified
unless the caller asks not to.

This module reads the file's structure and its small sections ([VERSION], [DEFINITIONS], [SIGNATURE]);
each big section has its own reader beside it: ``pulseq_shapes`` ([SHAPES]), ``pulseq_events`` ([RF],
[GRADIENTS], [TRAP], [ADC]), ``pulseq_extensions`` and ``pulseq_blocks`` ([BLOCKS], 1.3's [DELAYS]), on
what ``pulseq_tables`` gives them (the converted tables and the checks on their columns).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np

from scanctl.config.files import read_bounded
from scanctl.errors import SequenceFormatError, SignatureError
from scanctl.sequence._text import Section, TextFile
from scanctl.sequence.model import Rasters, Sequence
from scanctl.sequence.pulseq_blocks import MAX_TOTAL_TICKS, BlocksReader
from scanctl.sequence.pulseq_events import MAX_ADC_SAMPLES, EventsReader
from scanctl.sequence.pulseq_extensions import KNOWN_EXTENSIONS, ExtensionsReader
from scanctl.sequence.pulseq_shapes import MAX_SHAPE_SAMPLES, MAX_TOTAL_SHAPE_SAMPLES, ShapesReader
from scanctl.sequence.pulseq_tables import IdIndex

__all__ = ["KNOWN_EXTENSIONS", "MAX_ADC_SAMPLES", "MAX_FILE_BYTES", "MAX_SHAPE_SAMPLES", "MAX_TOTAL_SHAPE_SAMPLES",
           "MAX_TOTAL_TICKS", "SUPPORTED", "parse", "read"]

log = logging.getLogger(__name__)

#: Largest file accepted (bytes). Larger files are refused before they are read.
MAX_FILE_BYTES = 2 * 1024**3

SUPPORTED = ((1, 3), (1, 4), (1, 5))
_SIGNATURE = b"\n[SIGNATURE]"
_TABLE_SECTIONS = ("[BLOCKS]", "[RF]", "[GRADIENTS]", "[TRAP]", "[ADC]", "[DELAYS]", "[EXTENSIONS]")
_UTF8_BOM = b"\xef\xbb\xbf"
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")  # control bytes other than \t \n \v \f \r
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 32), 127])


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



class _Reader(ShapesReader, EventsReader, ExtensionsReader, BlocksReader):
    def __init__(self, text: TextFile, verify_signature: bool) -> None:
        super().__init__(text)
        self.verify_signature = verify_signature

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
        self.convert_tables(sections)

        shapes = self._shapes(by_name.get("[SHAPES]"))
        shape_rows = IdIndex(shapes.id)
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

