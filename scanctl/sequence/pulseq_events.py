"""The Pulseq reader's event tables: [RF], [GRADIENTS] with [TRAP], and [ADC]."""

from __future__ import annotations

import numpy as np

from scanctl.sequence._text import Section, Table
from scanctl.sequence.model import TIME_DEFAULT, TIME_OVERSAMPLED, ADCEvents, GradEvents, IntArray, RFEvents
from scanctl.sequence.pulseq_tables import ADC_FIELDS, GRAD_FIELDS, RF_FIELDS, IdIndex, TableReader, as_int

#: Largest ADC window, in samples.
MAX_ADC_SAMPLES = 10_000_000


class EventsReader(TableReader):
    def _rf(self, sec: Section | None, shape_rows: IdIndex) -> RFEvents:
        ncol = RF_FIELDS[self.minor]
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

    def _grad(self, arb: Section | None, trap: Section | None, shape_rows: IdIndex) -> GradEvents:
        parts: list[GradEvents] = []
        lines: list[IntArray] = []
        if arb is not None:
            t = self._table(arb, GRAD_FIELDS[self.minor])
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

    def _grad_time(self, t: Table, col: int, shape_rows: IdIndex) -> IntArray:
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

    def _adc(self, sec: Section | None, shape_rows: IdIndex) -> ADCEvents:
        ncol = ADC_FIELDS[self.minor]
        t = Table(np.zeros((0, ncol)), [], np.zeros(0, np.int64)) if sec is None else self._table(sec, ncol)
        v, n = t.values, t.values.shape[0]
        ids = self._ids(t, "[ADC]")
        num = as_int(v[:, 1])
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

