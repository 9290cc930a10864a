"""Vectorised reading of line-based text tables (the Pulseq file's sections).

The whole file is held as one ``bytes`` object. Sections are located with one regular-expression
scan; each table section is tokenised with numpy over its bytes and converted with one
``numpy.fromstring`` call, so a 256,000-line section costs a handful of array passes, not 256,000
Python iterations. Only when the fast path finds something wrong does a slow, line-by-line pass
run, to name the offending line.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.errors import SequenceFormatError

_HEADER = re.compile(rb"\n[ \t]*(?=\[|extension[ \t])")
_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 11, 12, 13, 32]] = True
_HASH = ord("#")
_CHUNK_BYTES = 1 << 18
_PARALLEL_BYTES = 1 << 20


@dataclass(frozen=True)
class Section:
    """One section of a text file: its header text, the header's line and the body's byte range."""

    header: str
    line: int  # 1-based line of the header
    start: int  # byte offset of the body (just after the header line)
    end: int  # byte offset one past the body


@dataclass(frozen=True)
class Table:
    """The rows of one table section.

    ``values`` is ``(rows, numeric_columns)``; ``words`` holds, per word column, one ``str`` per row;
    ``lines`` the 1-based file line of each row.
    """

    values: npt.NDArray[Any]  # float64, or int64 for integer tables
    words: list[list[str]]
    lines: npt.NDArray[np.int64]


class TextFile:
    """A text file held in memory, with line numbers for error messages.

    The tokenizer treats every byte <= 32 as whitespace: the caller must have refused files with control
    bytes other than tab, newline, vertical tab, form feed and carriage return (the Pulseq reader screens
    the whole file before anything else).
    """

    def __init__(self, data: bytes, path: str | os.PathLike[str] | None) -> None:
        self.data = data
        self.path = path

    def error(self, offset_or_line: int | None, message: str, *, is_line: bool = False) -> SequenceFormatError:
        """Build the error for ``message`` at a byte offset (or a 1-based line with ``is_line``)."""
        if offset_or_line is None:
            return SequenceFormatError(self.path, None, message)
        line = offset_or_line if is_line else self.line_of(offset_or_line)
        return SequenceFormatError(self.path, line, message)

    def line_of(self, offset: int) -> int:
        """1-based line number of a byte offset."""
        return self.data.count(b"\n", 0, offset) + 1

    def sections(self) -> list[Section]:
        """Split the file at ``[NAME]`` and ``extension NAME ID`` header lines.

        Text before the first header must be comments or blank.
        """
        data = self.data
        starts = _header_starts(data)
        if data.lstrip(b" \t").startswith((b"[", b"extension ")):
            starts.insert(0, len(data) - len(data.lstrip(b" \t")))
        else:
            pre_end = starts[0] if starts else len(data)
            self._require_blank(0, pre_end, "text before the first section")
        sections: list[Section] = []
        line = self.line_of(starts[0]) if starts else 1
        for i, head_start in enumerate(starts):
            eol = data.find(b"\n", head_start)
            head_end = len(data) if eol < 0 else eol
            body_start = head_end if eol < 0 else eol + 1
            body_end = starts[i + 1] if i + 1 < len(starts) else len(data)
            raw = data[head_start:head_end]
            if len(raw) > 200:
                raise self.error(line, f"section header line is {len(raw)} bytes long", is_line=True)
            header = raw.decode("ascii", errors="replace").strip()
            sections.append(Section(header, line, body_start, body_end))
            line += data.count(b"\n", head_start, body_end)
        return sections

    def _require_blank(self, start: int, end: int, what: str) -> None:
        for offset, raw in _lines(self.data, start, end):
            text = raw.strip()
            if text and not text.startswith(b"#"):
                raise self.error(offset, f"{what}: unexpected {_show(text)}")

    def table(
        self,
        section: Section,
        columns: int | tuple[int, ...],
        *,
        word_columns: tuple[int, ...] = (),
        integer: bool = False,
    ) -> Table:
        """Parse a table section: every non-comment, non-blank line is one row.

        ``columns`` is the number of fields per row (or the allowed numbers: all rows must then have the
        same one); ``word_columns`` are fields kept as text. ``integer`` parses the numbers as int64.
        Raises :class:`SequenceFormatError` naming the line for a wrong field count, a non-numeric or
        non-finite value.
        """
        allowed = (columns,) if isinstance(columns, int) else columns
        raw = np.frombuffer(self.data, dtype=np.uint8, count=section.end - section.start, offset=section.start)
        line_starts, counts, first_tok_at = self._line_tokens(section, raw)
        n_lines = line_starts.size
        if n_lines == 0 or not (counts > 0).any() or not (raw[first_tok_at[counts > 0]] != _HASH).any():
            # no rows, only blank or comment lines (numpy reads whitespace alone as [-1.])
            empty = np.zeros((0, allowed[0] - len(word_columns)), dtype=np.int64 if integer else np.float64)
            return Table(empty, [[] for _ in word_columns], np.zeros(0, np.int64))
        has_tok = counts > 0
        comment = has_tok & (raw[first_tok_at] == _HASH)
        data_lines = np.flatnonzero(has_tok & ~comment)
        line_numbers = section.line + 1 + data_lines
        rows = data_lines.size
        ncols = allowed[0]
        if rows:
            row_counts = counts[data_lines]
            ncols = int(row_counts[0])
            bad = np.flatnonzero(row_counts != ncols) if ncols in allowed else np.array([0])
            if bad.size:
                i = int(bad[0])
                expected = " or ".join(str(c) for c in allowed)
                raise self.error(
                    int(line_numbers[i]),
                    f"[{_section_name(section)}] row has {int(row_counts[i])} fields, expected {expected}",
                    is_line=True,
                )
        # Blank out comment lines and word columns, then convert every number in one call. Comment lines
        # before the first row or after the last (a writer's notes on the next section) are left out instead:
        # no copy of the section.
        blank_starts: list[npt.NDArray[np.int64]] = []
        blank_ends: list[npt.NDArray[np.int64]] = []
        line_ends = np.concatenate((line_starts[1:], [raw.size]))
        lo, hi = (int(line_starts[data_lines[0]]), int(line_ends[data_lines[-1]])) if rows else (0, raw.size)
        comment_lines = np.flatnonzero(comment[data_lines[0]:data_lines[-1]]) + data_lines[0] if rows else []
        if len(comment_lines):
            blank_starts.append(line_starts[comment_lines])
            blank_ends.append(line_ends[comment_lines])
        words: list[list[str]] = []
        if word_columns and rows:
            ws = raw <= 32
            tok_start_mask = ~ws
            tok_start_mask[1:] &= ws[:-1]
            tok_starts = np.flatnonzero(tok_start_mask)
            tok_ends = _token_ends(ws)
            first_tok = np.searchsorted(tok_starts, line_starts)
            for col in word_columns:
                idx = first_tok[data_lines] + col
                s, e = tok_starts[idx], tok_ends[idx]
                words.append([self.data[section.start + a : section.start + b].decode("ascii", "replace")
                              for a, b in zip(s.tolist(), e.tolist(), strict=True)])
                blank_starts.append(s)
                blank_ends.append(e)
        elif word_columns:
            words = [[] for _ in word_columns]
        if blank_starts:
            clean = raw[lo:hi].copy()
            _blank(clean, np.concatenate(blank_starts) - lo, np.concatenate(blank_ends) - lo)
            text, start, end = clean.tobytes(), 0, hi - lo
        else:
            text, start, end = self.data, section.start + lo, section.start + hi
        n_numeric = ncols - len(word_columns)
        dtype = np.int64 if integer else np.float64
        try:
            values = _parse_numbers(text, start, end, dtype)
        except ValueError:
            values = np.zeros(0, dtype=dtype)
        if values.size != rows * n_numeric:
            self._raise_first_bad_number(section, line_numbers, word_columns, integer)
        values = values.reshape(rows, n_numeric)
        if not integer and not np.isfinite(values).all():
            r = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
            raise self.error(
                int(line_numbers[r]), f"[{_section_name(section)}] value is not finite", is_line=True
            )
        return Table(values, words, line_numbers.astype(np.int64))

    def _raise_first_bad_number(
        self, section: Section, line_numbers: npt.NDArray[np.int64], word_columns: tuple[int, ...], integer: bool
    ) -> None:
        """Slow path: find the first field that is not a number and name it."""
        all_lines = self.data[section.start : section.end].split(b"\n")
        for line_no in line_numbers.tolist():
            fields = all_lines[line_no - section.line - 1].split()
            for i, field in enumerate(fields):
                if i in word_columns:
                    continue
                try:
                    int(field) if integer else float(field)
                except ValueError:
                    kind = "an integer" if integer else "a number"
                    raise self.error(
                        line_no,
                        f"[{_section_name(section)}] field {i + 1} is not {kind}: {_show(field)}",
                        is_line=True,
                    ) from None
        raise self.error(section.line, f"[{_section_name(section)}] cannot be parsed", is_line=True)

    def _line_tokens(
        self, section: Section, raw: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Per line of ``raw``: its start offset, its number of whitespace-separated tokens and the offset
        of its first token (the line start when it has none).

        Works through the bytes in cache-sized chunks cut at line ends, so the temporary masks stay small.
        """
        starts: list[npt.NDArray[np.int64]] = []
        counts: list[npt.NDArray[np.int64]] = []
        firsts: list[npt.NDArray[np.int64]] = []
        a = 0
        while a < raw.size:
            b = min(a + _CHUNK_BYTES, raw.size)
            if b < raw.size:
                nl = self.data.rfind(b"\n", section.start + a, section.start + b)
                b = raw.size if nl < 0 else nl - section.start + 1
            sub = raw[a:b]
            ws = sub <= 32  # space and the whitespace controls (the only control bytes a TextFile holds)
            tok = ~ws
            tok[1:] &= ws[:-1]
            tok_starts = np.flatnonzero(tok)
            line_starts = np.flatnonzero(sub == 10) + 1
            line_starts = np.concatenate(([0], line_starts[line_starts < sub.size]))
            first = np.searchsorted(tok_starts, line_starts)
            n_tok = np.diff(first, append=tok_starts.size)
            first_at = (np.where(n_tok > 0, tok_starts[np.minimum(first, tok_starts.size - 1)], line_starts)
                        if tok_starts.size else line_starts)  # a chunk of blank lines has no token
            starts.append(line_starts + a)
            counts.append(n_tok)
            firsts.append(first_at + a)
            a = b
        if not starts:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        return np.concatenate(starts), np.concatenate(counts), np.concatenate(firsts)

    def body_lines_raw(self, section: Section) -> list[tuple[int, bytes]]:
        """The non-blank, non-comment lines of a section as ``(line number, stripped bytes)``."""
        out: list[tuple[int, bytes]] = []
        line_no = section.line
        for raw in self.data[section.start : section.end].split(b"\n"):
            line_no += 1
            text = raw.strip()
            if text and not text.startswith(b"#"):
                out.append((line_no, text))
        return out

    def body_lines(self, section: Section) -> list[tuple[int, str]]:
        """The non-blank, non-comment lines of a short section as ``(line number, stripped text)``."""
        out: list[tuple[int, str]] = []
        line_no = section.line
        for raw in self.data[section.start : section.end].split(b"\n"):
            line_no += 1
            text = raw.strip()
            if not text or text.startswith(b"#"):
                continue
            if len(text) > 100_000:
                raise self.error(line_no, f"line is {len(text)} bytes long", is_line=True)
            try:
                out.append((line_no, text.decode("ascii")))
            except UnicodeDecodeError:
                raise self.error(line_no, f"line is not ASCII text: {_show(text)}", is_line=True) from None
        return out


def _header_starts(data: bytes) -> list[int]:
    """Offsets of the ``[`` or ``extension`` that opens each header line after the first line."""
    starts = []
    seen = 0
    for word in (b"[", b"extension"):
        i = data.find(word)
        while i >= 0:
            seen += 1
            if seen > 10_000:  # not a normal file: let the regex engine scan (no pass to count them first)
                return [m.end() for m in _HEADER.finditer(data)]
            line_start = data.rfind(b"\n", 0, i) + 1
            at_line_start = line_start > 0 and not data[line_start:i].strip(b" \t")
            if at_line_start and (word == b"[" or data[i + 9 : i + 10] in (b" ", b"\t")):
                starts.append(i)
            i = data.find(word, i + 1)
    return sorted(starts)


def _parse_numbers(text: bytes, start: int, end: int, dtype: type[np.int64] | type[np.float64]) -> npt.NDArray[Any]:
    """All whitespace-separated numbers in ``text[start:end]``; big texts are cut at line ends and converted
    on several threads (numpy's conversion releases the GIL), each piece sliced from ``text`` once. Raises
    ValueError on a non-number."""
    parts = _cpu_count() if end - start >= _PARALLEL_BYTES else 1
    cuts = [start]
    for k in range(1, parts):
        nl = text.find(b"\n", max(start + (end - start) * k // parts, cuts[-1]), end)
        if nl < 0:
            break
        cuts.append(nl + 1)
    cuts.append(end)
    if len(cuts) == 2:
        return np.fromstring(text[start:end], dtype=dtype, sep=" ")
    arrays: list[Any] = [None] * (len(cuts) - 1)

    def convert(i: int) -> None:
        try:
            arrays[i] = np.fromstring(text[cuts[i]:cuts[i + 1]], dtype=dtype, sep=" ")
        except ValueError as exc:
            arrays[i] = exc

    workers = [threading.Thread(target=convert, args=(i,)) for i in range(1, len(arrays))]
    for w in workers:
        w.start()
    convert(0)
    for w in workers:
        w.join()
    failed = [a for a in arrays if isinstance(a, ValueError)]
    if failed:
        raise failed[0]
    return np.concatenate(arrays)


def _cpu_count() -> int:
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # not on Linux
        return max(1, min(os.cpu_count() or 1, 8))


def _token_ends(ws: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    end_mask = ~ws
    end_mask[:-1] &= ws[1:]
    return np.flatnonzero(end_mask) + 1


def _blank(buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]) -> None:
    """Overwrite ``buf[starts[i]:ends[i]]`` with spaces (the ranges do not overlap)."""
    if starts.size < 4096:  # a few comment lines: slice assignment beats a pass over the buffer
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            buf[a:b] = 32
        return
    lengths = ends - starts
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    first = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    buf[first + np.arange(first.size)] = 32


def _lines(data: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    out = []
    offset = start
    for raw in data[start:end].split(b"\n"):
        out.append((offset, raw))
        offset += len(raw) + 1
    return out


def _section_name(section: Section) -> str:
    return section.header.strip("[]")


def _show(text: bytes, limit: int = 40) -> str:
    """A short, printable rendering of file content for an error message."""
    shown = text[:limit].decode("ascii", errors="replace")
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return repr(shown + ("…" if len(text) > limit else ""))
