"""The Pulseq reader's [BLOCKS] table (references resolved to event rows) and the format 1.3 [DELAYS] table."""

from __future__ import annotations

import numpy as np

from scanctl.sequence._text import Section
from scanctl.sequence.model import ADCEvents, Blocks, Extensions, GradEvents, IntArray, RFEvents
from scanctl.sequence.pulseq_tables import IdIndex, TableReader

#: Largest sum of block durations, in block-duration raster ticks (2**53: float64 stays exact).
MAX_TOTAL_TICKS = 2**53


class BlocksReader(TableReader):
    _block_lines: IntArray  # the file line of each block row, in block order (set by _blocks)
    _block_ids: IntArray

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

        grad_index = IdIndex(grad.id)
        found: dict[int, IntArray] = {}
        first: tuple[int, str] | None = None  # the earliest line with a reference to nothing
        for col, index, what in ((2, IdIndex(rf.id), "RF event"), (3, grad_index, "gradient (x)"),
                                 (4, grad_index, "gradient (y)"), (5, grad_index, "gradient (z)"),
                                 (6, IdIndex(adc.id), "ADC event"), (7, IdIndex(ext.id), "extension list")):
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
        r = IdIndex(ids).rows(delay_ids)
        if ((r < 0) & (delay_ids != 0)).any():
            k = int(np.flatnonzero((r < 0) & (delay_ids != 0))[0])
            raise self.fail(int(self._block_lines[k]), f"block {int(self._block_ids[k])} refers to delay "
                                                      f"{delay_ids[k]}, which is not defined")
        out = np.zeros(delay_ids.size)
        out[r >= 0] = t.values[r[r >= 0], 1] * 1e-6
        return out

