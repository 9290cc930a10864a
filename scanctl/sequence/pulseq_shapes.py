"""The Pulseq reader's [SHAPES] section: compressed shapes, bounded before they are expanded."""

from __future__ import annotations

import re

import numpy as np

from scanctl.sequence import shapes as shape_codec
from scanctl.sequence._text import Section
from scanctl.sequence.model import Shapes
from scanctl.sequence.pulseq_tables import TableReader, shown

#: Largest shape, largest total of all shapes (decompressed), in samples. The shapes are held as float64:
#: the total bounds the reader's memory whatever the compression claims.
MAX_SHAPE_SAMPLES = 10_000_000
MAX_TOTAL_SHAPE_SAMPLES = 20_000_000
# A [SHAPES] header line; the start of a line holding something other than blanks or a comment; a number.
_SHAPE_HEAD = re.compile(rb"^[ \t]*shape_id(?![^ \t\r\n])", re.M)
NON_BLANK = re.compile(rb"^[ \t\r\f\v]*[^\s#]", re.M)
NUMBER = re.compile(rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf|infinity|nan)", re.I)


class ShapesReader(TableReader):
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
        stray = NON_BLANK.search(data, sec.start, first)
        if stray is not None:
            pos = stray.start()
            raise self.text.error(pos, f"[SHAPES] expected 'shape_id N', got {shown(data, pos, first)}")
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
            nxt = NON_BLANK.search(data, min(head_end + 1, end), end)
            if nxt is None:
                raise self.fail(line, f"shape {shape_id} has no 'num_samples' line")
            num_line = line + data.count(b"\n", head, nxt.start())
            eol = data.find(b"\n", nxt.start(), end)
            num_end = end if eol < 0 else eol
            text = data[nxt.start() : num_end].strip()
            if not text.startswith(b"num_samples"):
                raise self.fail(num_line, f"expected 'num_samples N' after 'shape_id {shape_id}', got {shown(text)}")
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
        if NON_BLANK.search(data, start, end) is None:
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
                if NUMBER.fullmatch(token) is None:
                    raise self.fail(line_no, f"shape {shape_id}: value {shown(token)} is not a number")
                value = float(token)
                if not np.isfinite(value):
                    raise self.fail(line_no, f"shape {shape_id}: value {shown(token)} is not finite")
                out.append(value)
        return np.array(out, dtype=np.float64)

    def _header_int(self, line: int, raw: bytes, word: bytes, low: int, high: int) -> int:
        parts = raw.split()
        if len(parts) != 2 or parts[0] != word or not parts[1].isdigit():
            raise self.fail(line, f"expected '{word.decode()} N', got {shown(raw)}")
        if len(parts[1]) > 30:  # int() would refuse (or take long over) a number this long
            raise self.fail(line, f"{word.decode()} {shown(parts[1])} is out of range ({low} to {high})")
        value = int(parts[1])
        if not low <= value <= high:
            raise self.fail(line, f"{word.decode()} {value} is out of range ({low} to {high})")
        return value


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

