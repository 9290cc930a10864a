"""What the Pulseq reader's section readers share: the converted tables of one file and the checks on their
columns (ids, shape references, integers, signs), each failing with a
:class:`~scanctl.errors.SequenceFormatError` that names the file and the line.
"""

from __future__ import annotations

import numpy as np

from scanctl.errors import SequenceFormatError
from scanctl.sequence._text import Section, Table, TextFile
from scanctl.sequence.model import IntArray

# Field counts (with the id) per format: (minor >= 5, minor == 4, minor <= 3)
RF_FIELDS = {5: 12, 4: 8, 3: 7}
GRAD_FIELDS = {5: 7, 4: 5, 3: 4}
ADC_FIELDS = {5: 9, 4: 6, 3: 6}
_INT64 = np.iinfo(np.int64)


class TableReader:
    """One file's text, its format minor version and its table sections, converted once each."""

    def __init__(self, text: TextFile) -> None:
        self.text = text
        self.minor = 5
        self._tables: dict[int, Table] = {}  # converted table sections by their body's offset
        self.shape_lengths: IntArray = np.zeros(0, np.int64)  # samples per shape row, once [SHAPES] is read

    def fail(self, line: int | None, message: str) -> SequenceFormatError:
        return self.text.error(line, message, is_line=True)

    # -- event tables -------------------------------------------------------------------------------
    def convert_tables(self, sections: list[Section]) -> None:
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
            n = RF_FIELDS[self.minor]
            return n, {"word_columns": (n - 1,) if self.minor >= 5 else ()}
        if h == "[GRADIENTS]":
            return GRAD_FIELDS[self.minor], {}
        if h == "[TRAP]":
            return 6, {}
        if h == "[ADC]":
            return ADC_FIELDS[self.minor], {}
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
        ids = as_int(col)
        bad = np.flatnonzero((ids != col) | (ids < 1))
        if bad.size:
            r = int(bad[0])
            raise self.fail(int(table.lines[r]), f"{section} id must be a positive integer, got {col[r]:g}")
        self._require_unique(ids, section, "event", table.lines)
        return ids

    def _shape_ref(self, table: Table, col: int, shape_rows: IdIndex, section: str, what: str,
                   zero: int | None = None) -> IntArray:
        """Map a column of shape ids to shape rows (``zero``: the value for id 0, else 0 is an error)."""
        raw = table.values[:, col]
        ids = as_int(raw)
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
        ints = as_int(values)
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


    def _definition_line(self, sec: Section | None, key: str) -> int | None:
        if sec is None:
            return None
        for line, text in self.text.body_lines(sec):
            if text.split(" ", 1)[0] == key:
                return line
        return sec.line


class IdIndex:
    """Map file ids to table rows, vectorised (-1 where the id is not in the table)."""

    def __init__(self, ids: IntArray) -> None:
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]
        # Ids are usually dense (1..n): then a lookup table answers with one gather.
        self.lut: IntArray | None = None
        if self.sorted.size and self.sorted[0] >= 1 and self.sorted[-1] <= max(16 * self.sorted.size, 1 << 16):
            self.lut = np.full(int(self.sorted[-1]) + 2, -1, dtype=np.int64)
            self.lut[self.sorted] = self.order

    def rows(self, refs: np.ndarray) -> IntArray:
        refs = np.asarray(refs).astype(np.int64, copy=False)
        if self.lut is not None:
            # Out-of-range references clip onto the first entry or the last, both -1 (ids start at 1; the last
            # entry is one past the largest id): one gather, no mask.
            return self.lut.take(refs, mode="clip")
        if self.sorted.size == 0:
            return np.full(refs.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(self.sorted, refs), 0, self.sorted.size - 1)
        found = self.sorted[pos] == refs
        return np.where(found, self.order[pos], -1).astype(np.int64)



def as_int(values: np.ndarray) -> IntArray:
    """Float column to int64 without an invalid cast for huge values (they stay unequal to the floats)."""
    return np.clip(values, -(2.0**62), 2.0**62).astype(np.int64)



def shown(text: bytes, start: int = 0, end: int | None = None, limit: int = 40) -> str:
    """A short, printable rendering of the file text from ``start`` (to the line end) for a message."""
    stop = len(text) if end is None else end
    eol = text.find(b"\n", start, stop)
    stop = stop if eol < 0 else eol
    shown = text[start : min(stop, start + limit)].strip().decode("ascii", errors="replace")
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return repr(shown + ("…" if stop - start > limit else ""))

