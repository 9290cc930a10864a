"""Check a sequence against its own rasters and a scanner's limits, vectorised over whole columns.

Covers what pypulseq's ``check_timing`` checks (rasters, dead and ringdown times, block durations,
soft delays) against the file's own rasters, and what it does not: the sequence's rasters against
the scanner's, per-axis gradient amplitude and slew, gradient continuity across block boundaries,
and events that run past the end of their block. Every violation names its kind, the block, the
time, the value and the limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scanctl.config.profile import AXES, SystemProfile
from scanctl.sequence.model import FloatArray, IntArray, Sequence
from scanctl.sequence.timing import block_event_ends
from scanctl.sequence.waveforms import event_extremes, physical_gradients

#: At most this many violations of one kind are listed; ``violation_counts`` has the totals.
MAX_LISTED_PER_KIND = 100
_EPS_S = 1e-9  # timing tolerance, as the reference implementation
_RASTER_TOL = 1e-6  # relative misalignment allowed against a raster


@dataclass(frozen=True)
class Violation:
    """One broken rule. ``block`` is the file's block id (None for whole-sequence rules). ``margin`` (the
    limit minus the value, in the limit's unit: negative when broken) is given by the safety prediction's
    violations and then appears in the JSON."""

    kind: str
    block: int | None
    time_s: float
    value: float
    limit: float
    message: str
    margin: float | None = None


@dataclass
class CheckReport:
    """The outcome of :func:`check`; ``to_json`` gives the documented ``scanctl check --json`` object."""

    format_version: str
    blocks: int
    duration_s: float
    rf_events: int
    adc_events: int
    adc_samples: int
    max_gradient_hz_per_m: dict[str, float]
    max_slew_hz_per_m_per_s: dict[str, float]
    violations: list[Violation] = field(default_factory=list)
    violation_counts: dict[str, int] = field(default_factory=dict)
    rasters_s: dict[str, float] = field(default_factory=dict)
    profile: str = ""

    @property
    def ok(self) -> bool:
        return not self.violation_counts

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "violations"}
        out["ok"] = self.ok
        out["violations"] = [{k: x for k, x in asdict(v).items() if k != "margin" or x is not None}
                             for v in self.violations]
        return out


class _Collector:
    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.violations: list[Violation] = []
        self.counts: dict[str, int] = {}

    def add(self, kind: str, blocks: IntArray, times: FloatArray, values: FloatArray, limit: float | FloatArray,
            message: str) -> None:
        """Record violations at block *indices* ``blocks``; ``message`` is formatted per violation
        with ``block``, ``time_ms``, ``value`` and ``limit``."""
        n = int(np.size(blocks))
        if n == 0:
            return
        self.counts[kind] = self.counts.get(kind, 0) + n
        room = MAX_LISTED_PER_KIND - sum(1 for v in self.violations if v.kind == kind)
        limits = np.broadcast_to(np.asarray(limit, dtype=np.float64), (n,))
        ids = self.seq.blocks.id
        for i in range(min(n, max(room, 0))):
            b = int(blocks[i])
            block_id = int(ids[b]) if b >= 0 else None
            value, lim, t = float(values[i]), float(limits[i]), float(times[i])
            text = message.format(block=block_id, time_ms=t * 1e3, value=value, limit=lim)
            self.violations.append(Violation(kind, block_id, t, value, lim, text))


def check(seq: Sequence, profile: SystemProfile) -> CheckReport:
    """Check ``seq`` against ``profile``; never raises for a readable sequence."""
    c = _Collector(seq)
    _check_finite(c)
    _check_rasters_against_profile(c, profile)
    _check_event_rasters(c)
    _check_dead_times_and_block_ends(c, profile)
    _check_soft_delays(c)
    peak_g, peak_s = _check_gradients(c, profile)
    _check_continuity(c)
    v = seq.version
    return CheckReport(
        format_version=f"{v[0]}.{v[1]}.{v[2]}",
        blocks=len(seq.blocks),
        duration_s=seq.duration_s,
        rf_events=int((seq.blocks.rf >= 0).sum()),
        adc_events=int((seq.blocks.adc >= 0).sum()),
        adc_samples=int(seq.adc.num_samples[seq.blocks.adc[seq.blocks.adc >= 0]].sum()),
        max_gradient_hz_per_m=peak_g,
        max_slew_hz_per_m_per_s=peak_s,
        violations=c.violations,
        violation_counts=c.counts,
        rasters_s={
            "gradient": seq.rasters.gradient_s,
            "rf": seq.rasters.rf_s,
            "adc": seq.rasters.adc_s,
            "block_duration": seq.rasters.block_duration_s,
        },
        profile=profile.name,
    )


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, ascending: ``np.unique`` without its first-call import of ``numpy.ma`` (about 10 ms
    of every ``scanctl check``)."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if ordered.size else ordered


def _misaligned(values: FloatArray, raster: float) -> np.ndarray:
    q = values / raster
    return ~(np.abs(q - np.round(q)) < _RASTER_TOL)  # a NaN is misaligned: every comparison here fails closed


def _first_blocks(column: IntArray, bad_rows: IntArray) -> IntArray:
    """For each event row in ``bad_rows``, the first block index whose ``column`` refers to it (-1 if none)."""
    out = np.full(bad_rows.size, -1, dtype=np.int64)
    if bad_rows.size == 0:
        return out
    blocks = np.flatnonzero(np.isin(column, bad_rows))
    rows, first = np.unique(column[blocks], return_index=True)
    out[np.searchsorted(bad_rows, rows)] = blocks[first]
    return out


def _first_played(columns: tuple[IntArray, ...], rows: IntArray) -> IntArray:
    """For each event row in ``rows``, the first block index at which any of ``columns`` (the block table's
    columns that refer to the event table) plays it; -1 for an event no block plays."""
    never = np.iinfo(np.int64).max
    firsts = np.stack([_first_blocks(col, rows) for col in columns])
    first = np.where(firsts >= 0, firsts, never).min(axis=0)
    return np.where(first < never, first, -1)


def _check_finite(c: _Collector) -> None:
    """Fail closed: every number an event plays must be finite — its own columns and the samples of its
    shapes — and every block duration. A non-finite one is a ``non_finite`` violation naming the event table
    and column, at the first block that plays the event. The reader refuses such files; this catches a
    sequence made in code."""
    seq = c.seq
    b = seq.blocks
    samples = seq.shapes.samples
    bad_shapes = np.unique(np.searchsorted(seq.shapes.offsets, np.flatnonzero(~np.isfinite(samples)), side="right") - 1)
    tables = (("RF", seq.rf, (b.rf,)), ("gradient", seq.grad, tuple(b.grad.T)), ("ADC", seq.adc, (b.adc,)))
    for label, table, columns in tables:
        for name, values in vars(table).items():
            if not isinstance(values, np.ndarray):
                continue
            if values.dtype.kind == "f":
                bad, what = ~np.isfinite(values), name
            elif name.endswith("shape") and bad_shapes.size:
                bad, what = np.isin(values, bad_shapes), f"{name} (a sample)"
            else:
                continue
            rows = np.flatnonzero(bad)
            if rows.size == 0:
                continue
            first = _first_played(columns, rows)
            played = first >= 0  # an event no block plays cannot harm
            blocks = first[played]
            value = values[rows[played]] if values.dtype.kind == "f" else np.full(blocks.size, np.nan)
            c.add("non_finite", blocks, seq.block_start_s[blocks], value, np.nan,
                  f"block {{block}}: {label} event {what} is not finite ({{value}})")
    dur = seq.block_duration_s
    bad = np.flatnonzero(~np.isfinite(dur))
    c.add("non_finite", bad, np.zeros(bad.size), dur[bad], np.nan, "block {block}: duration {value} s is not finite")


def _check_rasters_against_profile(c: _Collector, profile: SystemProfile) -> None:
    r, t = c.seq.rasters, profile.timing
    pairs = (
        ("gradient", r.gradient_s, t.gradient_raster_s),
        ("RF", r.rf_s, t.rf_raster_s),
        ("ADC", r.adc_s, t.adc_raster_s),
        ("block duration", r.block_duration_s, t.block_duration_raster_s),
    )
    for name, mine, scanner in pairs:
        if scanner > 0 and _misaligned(np.array([mine]), scanner)[0] or not mine >= scanner * (1 - _RASTER_TOL):
            c.add("raster", np.array([-1]), np.array([0.0]), np.array([mine]), scanner,
                  f"sequence {name} raster {{value:.9g}} s is not a whole multiple of the scanner's {{limit:.9g}} s")


def _check_event_rasters(c: _Collector) -> None:
    """Event delays, dwell times and trapezoid times on the file's rasters; each misaligned event is
    reported once, at the first block that plays it."""
    seq = c.seq
    r, g, b = seq.rasters, seq.grad, seq.blocks
    items = (
        ("RF delay", seq.rf.delay_s, r.rf_s, "RF raster", (b.rf,), None),
        ("ADC delay", seq.adc.delay_s, r.rf_s, "RF raster", (b.adc,), None),
        ("ADC dwell", seq.adc.dwell_s, r.adc_s, "ADC raster", (b.adc,), None),
        ("gradient delay", g.delay_s, r.gradient_s, "gradient raster", tuple(b.grad.T), None),
        ("trapezoid rise time", g.rise_s, r.gradient_s, "gradient raster", tuple(b.grad.T), g.is_trap),
        ("trapezoid flat time", g.flat_s, r.gradient_s, "gradient raster", tuple(b.grad.T), g.is_trap),
        ("trapezoid fall time", g.fall_s, r.gradient_s, "gradient raster", tuple(b.grad.T), g.is_trap),
    )
    for what, values, raster, raster_name, columns, only in items:
        bad = _misaligned(values, raster)
        if only is not None:
            bad &= only
        rows = np.flatnonzero(bad)
        if rows.size == 0:
            continue
        first = _first_played(columns, rows)
        played = first >= 0
        rows, blocks = rows[played], first[played]
        order = np.argsort(blocks, kind="stable")
        rows, blocks = rows[order], blocks[order]
        c.add("raster", blocks, seq.block_start_s[blocks], values[rows], raster,
              f"block {{block}}: {what} {{value:.9g}} s does not align to the {raster_name} {{limit:.9g}} s")


def _check_dead_times_and_block_ends(c: _Collector, profile: SystemProfile) -> None:
    seq, t = c.seq, profile.timing
    dur = seq.block_duration_s
    start = seq.block_start_s[:-1]
    ends = block_event_ends(seq)
    b = seq.blocks
    for name, label in (("rf", "RF pulse"), ("gx", "x gradient"), ("gy", "y gradient"), ("gz", "z gradient"),
                        ("adc", "ADC window")):
        over = np.flatnonzero(~(ends[name] <= dur + _EPS_S))
        c.add("event_beyond_block", over, start[over], ends[name][over], dur[over],
              f"block {{block}}: {label} ends at {{value:.9g}} s, after the block's duration {{limit:.9g}} s")
    has_rf = np.flatnonzero(b.rf >= 0)
    rf_delay = seq.rf.delay_s[b.rf[has_rf]]
    bad = has_rf[~(rf_delay >= t.rf_dead_time_s - _EPS_S)]
    c.add("rf_dead_time", bad, start[bad], seq.rf.delay_s[b.rf[bad]], t.rf_dead_time_s,
          "block {block}: RF delay {value:.9g} s is shorter than the RF dead time {limit:.9g} s")
    rf_end = ends["rf"][has_rf] + t.rf_ringdown_time_s
    bad = has_rf[(rf_end > dur[has_rf] + _EPS_S) & (ends["rf"][has_rf] <= dur[has_rf] + _EPS_S)]
    c.add("rf_ringdown_time", bad, start[bad], ends["rf"][bad] + t.rf_ringdown_time_s, dur[bad],
          "block {block}: RF pulse plus ringdown ends at {value:.9g} s, after the block's duration {limit:.9g} s")
    has_adc = np.flatnonzero(b.adc >= 0)
    adc_delay = seq.adc.delay_s[b.adc[has_adc]]
    bad = has_adc[~(adc_delay >= t.adc_dead_time_s - _EPS_S)]
    c.add("adc_dead_time", bad, start[bad], seq.adc.delay_s[b.adc[bad]], t.adc_dead_time_s,
          "block {block}: ADC delay {value:.9g} s is shorter than the ADC dead time {limit:.9g} s")
    adc_end = ends["adc"][has_adc] + t.adc_dead_time_s
    bad = has_adc[(adc_end > dur[has_adc] + _EPS_S) & (ends["adc"][has_adc] <= dur[has_adc] + _EPS_S)]
    c.add("adc_dead_time", bad, start[bad], ends["adc"][bad] + t.adc_dead_time_s, dur[bad],
          "block {block}: ADC window plus dead time ends at {value:.9g} s, after the block's duration {limit:.9g} s")


def _check_soft_delays(c: _Collector) -> None:
    seq = c.seq
    spec = seq.extensions.specs.get("DELAYS")
    if spec is None:
        return
    which, rows = seq.extensions.entries(seq.blocks.ext, "DELAYS")
    blocks = which
    factor = spec.columns["factor"][rows].astype(np.float64)
    offset = spec.columns["offset_s"][rows].astype(np.float64)
    num = spec.columns["num"][rows].astype(np.int64)
    start = seq.block_start_s[blocks]
    zero = np.flatnonzero(factor == 0)
    c.add("soft_delay", blocks[zero], start[zero], factor[zero], 0.0,
          "block {block}: soft delay factor is {value:g}: the duration cannot be derived from a value")
    default = (seq.block_duration_s[blocks] - offset) * factor
    for n in _distinct(num).tolist():
        sel = np.flatnonzero(num == n)
        ref = default[sel[0]]
        bad = sel[~(np.abs(default[sel] - ref) <= 1e-7)]
        c.add("soft_delay", blocks[bad], start[bad], default[bad], np.full(bad.size, ref),
              "block {block}: soft delay default {value:.9g} s is inconsistent with the earlier {limit:.9g} s "
              f"for delay number {n}")


def _check_gradients(c: _Collector, profile: SystemProfile) -> tuple[dict[str, float], dict[str, float]]:
    """Per-axis amplitude and slew against the profile; returns the per-axis peaks."""
    seq = c.seq
    ex = event_extremes(seq)
    max_g = profile.max_gradient_hz_per_m()
    max_s = profile.max_slew_hz_per_m_per_s()
    start = seq.block_start_s[:-1]
    grad_rows = physical_gradients(seq).rows
    peak_g: dict[str, float] = {}
    peak_s: dict[str, float] = {}
    for axis, name in enumerate(AXES):
        rows = grad_rows[:, axis]
        has = rows >= 0
        safe = np.where(has, rows, 0)
        used = np.bincount(rows[has], minlength=ex.max_gradient.size) > 0
        peak_g[name] = float(ex.max_gradient[used].max(initial=0.0))
        peak_s[name] = float(ex.max_slew[used].max(initial=0.0))
        for kind, peaks, times, limit, tol, message in (
            ("gradient_amplitude", ex.max_gradient, ex.max_gradient_t_s, max_g[axis], 1e-9,
             f"block {{block}}: {name} gradient {{value:.6g}} Hz/m exceeds the limit {{limit:.6g}} Hz/m"),
            ("slew_rate", ex.max_slew, ex.max_slew_t_s, max_s[axis], 1e-6,
             f"block {{block}}: {name} slew rate {{value:.6g}} Hz/m/s exceeds the limit {{limit:.6g}} Hz/m/s"),
        ):
            bad_row = used & ~(peaks <= limit * (1 + tol))
            if not bad_row.any():
                continue
            blocks = np.flatnonzero(has & bad_row[safe])
            c.add(kind, blocks, start[blocks] + times[rows[blocks]], peaks[rows[blocks]], limit, message)
    return peak_g, peak_s


def _check_continuity(c: _Collector) -> None:
    """Gradients must be continuous: across block boundaries, at event edges and within events."""
    seq = c.seq
    phys = physical_gradients(seq)
    offsets, t_rel, g_rel = phys.offsets, phys.t_s, phys.g_hz_per_m
    if t_rel.size == 0:
        return
    tol = 1e-5 * max(float(np.abs(g_rel).max()), 1.0) if g_rel.size else 1.0
    tol = max(tol, 1.0)
    # Within events: two breakpoints at the same time with different values are a step.
    steps = np.flatnonzero((np.diff(t_rel) <= 1e-12) & ~(np.abs(np.diff(g_rel)) <= tol))
    same_event = np.searchsorted(offsets, steps, side="right") == np.searchsorted(offsets, steps + 1, side="right")
    step_rows = _distinct(np.searchsorted(offsets, steps[same_event], side="right") - 1)
    nonempty = offsets[1:] > offsets[:-1]
    first_i = np.minimum(offsets[:-1], g_rel.size - 1)
    last_i = np.maximum(offsets[1:] - 1, 0)
    # Per event row, padded with one "no event" row at index -1 (what a block without an event refers to).
    first_val = np.append(np.where(nonempty, g_rel[first_i], 0.0), 0.0)
    last_val = np.append(np.where(nonempty, g_rel[last_i], 0.0), 0.0)
    first_t = np.append(np.where(nonempty, t_rel[first_i], 0.0), 0.0)
    last_t = np.append(np.where(nonempty, t_rel[last_i], np.inf), np.inf)
    begin_val = np.where(first_t <= 1e-12, first_val, 0.0)
    late_row = (first_t > 1e-12) & ~(np.abs(first_val) <= tol)
    dur = seq.block_duration_s
    start = seq.block_start_s[:-1]
    # Only blocks that take time or play a gradient take part in boundaries (label-only blocks do not).
    active = np.flatnonzero((dur > 0) | (phys.rows >= 0).any(axis=1))
    for axis in range(3):
        name = AXES[axis]
        rows = phys.rows[:, axis]
        for r in step_rows.tolist():
            blocks = np.flatnonzero(rows == r)
            c.add("gradient_continuity", blocks, start[blocks], np.full(blocks.size, np.nan), 0.0,
                  f"block {{block}}: {name} gradient steps within its event (infinite slew)")
        ends_at = last_t[rows]  # inf where the block has no event on this axis
        reaches_end = ends_at >= dur - 1e-12
        end_val = np.where(reaches_end, last_val[rows], 0.0)
        # An event that starts late or ends early must do so at zero.
        late = np.flatnonzero(late_row[rows])
        c.add("gradient_continuity", late, start[late] + first_t[rows[late]], first_val[rows[late]], 0.0,
              f"block {{block}}: {name} gradient starts at {{value:.6g}} Hz/m after a delay (must start at 0)")
        early = np.flatnonzero(~reaches_end & ~(np.abs(last_val[rows]) <= tol))
        c.add("gradient_continuity", early, start[early] + last_t[rows[early]], last_val[rows[early]], 0.0,
              f"block {{block}}: {name} gradient ends at {{value:.6g}} Hz/m before the block ends (must end at 0)")
        begin = begin_val[rows]
        left = np.concatenate(([0.0], end_val[active]))
        right = np.concatenate((begin[active], [0.0]))
        jump = np.flatnonzero(~(np.abs(right - left) <= tol))
        blocks = np.where(jump < active.size, active[np.minimum(jump, active.size - 1)], active[-1])
        times = np.where(jump < active.size, start[blocks], seq.duration_s)
        c.add("gradient_continuity", blocks, times, right[jump] - left[jump], tol,
              f"block {{block}}: {name} gradient jumps by {{value:.6g}} Hz/m at {{time_ms:.6f}} ms "
              "(block boundary; sequence start and end are at 0)")
