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

from scanctl.profile import AXES, SystemProfile
from scanctl.sequence.model import FloatArray, IntArray, Sequence
from scanctl.sequence.timing import block_event_ends
from scanctl.sequence.waveforms import AxisWaveform, axis_extremes, axis_waveform, event_breakpoints

#: At most this many violations of one kind are listed; ``violation_counts`` has the totals.
MAX_LISTED_PER_KIND = 100
_EPS_S = 1e-9  # timing tolerance, as the reference implementation
_RASTER_TOL = 1e-6  # relative misalignment allowed against a raster


@dataclass(frozen=True)
class Violation:
    """One broken rule. ``block`` is the file's block id (None for whole-sequence rules)."""

    kind: str
    block: int | None
    time_s: float
    value: float
    limit: float
    message: str


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
        out["violations"] = [asdict(v) for v in self.violations]
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
    _check_rasters_against_profile(c, profile)
    _check_event_rasters(c)
    _check_dead_times_and_block_ends(c, profile)
    _check_soft_delays(c)
    waves = [axis_waveform(seq, a) for a in range(3)]
    _check_gradients(c, waves, profile)
    _check_continuity(c)

    extremes = [axis_extremes(w) for w in waves]
    v = seq.version
    return CheckReport(
        format_version=f"{v[0]}.{v[1]}.{v[2]}",
        blocks=len(seq.blocks),
        duration_s=seq.duration_s,
        rf_events=int((seq.blocks.rf >= 0).sum()),
        adc_events=int((seq.blocks.adc >= 0).sum()),
        adc_samples=int(seq.adc.num_samples[seq.blocks.adc[seq.blocks.adc >= 0]].sum()),
        max_gradient_hz_per_m={a: e.max_gradient for a, e in zip(AXES, extremes, strict=True)},
        max_slew_hz_per_m_per_s={a: e.max_slew for a, e in zip(AXES, extremes, strict=True)},
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


def _misaligned(values: FloatArray, raster: float) -> np.ndarray:
    q = values / raster
    return np.abs(q - np.round(q)) >= _RASTER_TOL


def _first_use(seq: Sequence, column: IntArray, n_events: int) -> IntArray:
    """Index of the first block that plays each event row (-1 if none)."""
    first = np.full(n_events, -1, dtype=np.int64)
    blocks = np.flatnonzero(column >= 0)
    rows, idx = np.unique(column[blocks], return_index=True)
    first[rows] = blocks[idx]
    return first


def _check_rasters_against_profile(c: _Collector, profile: SystemProfile) -> None:
    r, t = c.seq.rasters, profile.timing
    pairs = (
        ("gradient", r.gradient_s, t.gradient_raster_s),
        ("RF", r.rf_s, t.rf_raster_s),
        ("ADC", r.adc_s, t.adc_raster_s),
        ("block duration", r.block_duration_s, t.block_duration_raster_s),
    )
    for name, mine, scanner in pairs:
        if scanner > 0 and _misaligned(np.array([mine]), scanner)[0] or mine < scanner * (1 - _RASTER_TOL):
            c.add("raster", np.array([-1]), np.array([0.0]), np.array([mine]), scanner,
                  f"sequence {name} raster {{value:.9g}} s is not a whole multiple of the scanner's {{limit:.9g}} s")


def _check_event_rasters(c: _Collector) -> None:
    seq = c.seq
    r = seq.rasters
    rf_first = _first_use(seq, seq.blocks.rf, seq.rf.id.size)
    adc_first = _first_use(seq, seq.blocks.adc, seq.adc.id.size)
    grad_first = np.full(seq.grad.id.size, -1, dtype=np.int64)
    for axis in range(3):
        f = _first_use(seq, seq.blocks.grad[:, axis], seq.grad.id.size)
        grad_first = np.where((grad_first < 0) | ((f >= 0) & (f < grad_first)), f, grad_first)
    g = seq.grad
    items = (
        ("RF delay", seq.rf.delay_s, r.rf_s, "RF raster", rf_first, None),
        ("ADC delay", seq.adc.delay_s, r.rf_s, "RF raster", adc_first, None),
        ("ADC dwell", seq.adc.dwell_s, r.adc_s, "ADC raster", adc_first, None),
        ("gradient delay", g.delay_s, r.gradient_s, "gradient raster", grad_first, None),
        ("trapezoid rise time", g.rise_s, r.gradient_s, "gradient raster", grad_first, g.is_trap),
        ("trapezoid flat time", g.flat_s, r.gradient_s, "gradient raster", grad_first, g.is_trap),
        ("trapezoid fall time", g.fall_s, r.gradient_s, "gradient raster", grad_first, g.is_trap),
    )
    for what, values, raster, raster_name, first, only in items:
        bad = _misaligned(values, raster) & (first >= 0)
        if only is not None:
            bad &= only
        rows = np.flatnonzero(bad)
        blocks = first[rows]
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
        over = np.flatnonzero(ends[name] > dur + _EPS_S)
        c.add("event_beyond_block", over, start[over], ends[name][over], dur[over],
              f"block {{block}}: {label} ends at {{value:.9g}} s, after the block's duration {{limit:.9g}} s")
    has_rf = np.flatnonzero(b.rf >= 0)
    rf_delay = seq.rf.delay_s[b.rf[has_rf]]
    bad = has_rf[rf_delay < t.rf_dead_time_s - _EPS_S]
    c.add("rf_dead_time", bad, start[bad], seq.rf.delay_s[b.rf[bad]], t.rf_dead_time_s,
          "block {block}: RF delay {value:.9g} s is shorter than the RF dead time {limit:.9g} s")
    rf_end = ends["rf"][has_rf] + t.rf_ringdown_time_s
    bad = has_rf[(rf_end > dur[has_rf] + _EPS_S) & (ends["rf"][has_rf] <= dur[has_rf] + _EPS_S)]
    c.add("rf_ringdown_time", bad, start[bad], ends["rf"][bad] + t.rf_ringdown_time_s, dur[bad],
          "block {block}: RF pulse plus ringdown ends at {value:.9g} s, after the block's duration {limit:.9g} s")
    has_adc = np.flatnonzero(b.adc >= 0)
    adc_delay = seq.adc.delay_s[b.adc[has_adc]]
    bad = has_adc[adc_delay < t.adc_dead_time_s - _EPS_S]
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
    for n in np.unique(num).tolist():
        sel = np.flatnonzero(num == n)
        ref = default[sel[0]]
        bad = sel[np.abs(default[sel] - ref) > 1e-7]
        c.add("soft_delay", blocks[bad], start[bad], default[bad], np.full(bad.size, ref),
              "block {block}: soft delay default {value:.9g} s is inconsistent with the earlier {limit:.9g} s "
              f"for delay number {n}")


def _check_gradients(c: _Collector, waves: list[AxisWaveform], profile: SystemProfile) -> None:
    max_g = profile.max_gradient_hz_per_m()
    max_s = profile.max_slew_hz_per_m_per_s()
    for axis, w in enumerate(waves):
        name = AXES[axis]
        ag = np.abs(w.g_hz_per_m)
        over = np.flatnonzero(ag > max_g[axis] * (1 + 1e-9))
        blocks, first = np.unique(w.block[over], return_index=True)
        pts = over[first]
        c.add("gradient_amplitude", blocks, w.t_s[pts], ag[pts], max_g[axis],
              f"block {{block}}: {name} gradient {{value:.6g}} Hz/m exceeds the limit {{limit:.6g}} Hz/m")
        if w.t_s.size < 2:
            continue
        dt = np.diff(w.t_s)
        dg = np.diff(w.g_hz_per_m)
        seg = dt > 1e-12
        slew = np.zeros(dt.size)
        slew[seg] = np.abs(dg[seg]) / dt[seg]
        over = np.flatnonzero(slew > max_s[axis] * (1 + 1e-6))
        blocks, first = np.unique(w.block[over + 1], return_index=True)
        pts = over[first]
        c.add("slew_rate", blocks, w.t_s[pts], slew[pts], max_s[axis],
              f"block {{block}}: {name} slew rate {{value:.6g}} Hz/m/s exceeds the limit {{limit:.6g}} Hz/m/s")


def _check_continuity(c: _Collector) -> None:
    """Gradients must be continuous: across block boundaries, at event edges and within events."""
    seq = c.seq
    offsets, t_rel, g_rel = event_breakpoints(seq)
    if t_rel.size == 0:
        return
    tol = 1e-5 * max(float(np.abs(g_rel).max()), 1.0) if g_rel.size else 1.0
    tol = max(tol, 1.0)
    # Within events: two breakpoints at the same time with different values are a step.
    steps = np.flatnonzero((np.diff(t_rel) <= 1e-12) & (np.abs(np.diff(g_rel)) > tol))
    same_event = np.searchsorted(offsets, steps, side="right") == np.searchsorted(offsets, steps + 1, side="right")
    step_rows = np.unique(np.searchsorted(offsets, steps[same_event], side="right") - 1)
    first_val = np.where(offsets[1:] > offsets[:-1], g_rel[np.minimum(offsets[:-1], g_rel.size - 1)], 0.0)
    last_val = np.where(offsets[1:] > offsets[:-1], g_rel[np.maximum(offsets[1:] - 1, 0)], 0.0)
    first_t = np.where(offsets[1:] > offsets[:-1], t_rel[np.minimum(offsets[:-1], t_rel.size - 1)], 0.0)
    last_t = np.where(offsets[1:] > offsets[:-1], t_rel[np.maximum(offsets[1:] - 1, 0)], 0.0)
    dur = seq.block_duration_s
    start = seq.block_start_s[:-1]
    # Only blocks that take time or play a gradient take part in boundaries (label-only blocks do not).
    active = np.flatnonzero((dur > 0) | (seq.blocks.grad >= 0).any(axis=1))
    for axis in range(3):
        name = AXES[axis]
        rows = seq.blocks.grad[:, axis]
        for r in step_rows.tolist():
            blocks = np.flatnonzero(rows == r)
            c.add("gradient_continuity", blocks, start[blocks], np.full(blocks.size, np.nan), 0.0,
                  f"block {{block}}: {name} gradient steps within its event (infinite slew)")
        has = rows >= 0
        safe = np.where(has, rows, 0)
        begin_val = np.where(has & (first_t[safe] <= 1e-12), first_val[safe], 0.0)
        end_val = np.where(has & (last_t[safe] >= dur - 1e-12), last_val[safe], 0.0)
        # An event that starts late or ends early must do so at zero.
        late = np.flatnonzero(has & (first_t[safe] > 1e-12) & (np.abs(first_val[safe]) > tol))
        c.add("gradient_continuity", late, start[late] + first_t[safe[late]], first_val[safe[late]], 0.0,
              f"block {{block}}: {name} gradient starts at {{value:.6g}} Hz/m after a delay (must start at 0)")
        early = np.flatnonzero(has & (last_t[safe] < dur - 1e-12) & (np.abs(last_val[safe]) > tol))
        c.add("gradient_continuity", early, start[early] + last_t[safe[early]], last_val[safe[early]], 0.0,
              f"block {{block}}: {name} gradient ends at {{value:.6g}} Hz/m before the block ends (must end at 0)")
        left = np.concatenate(([0.0], end_val[active]))
        right = np.concatenate((begin_val[active], [0.0]))
        jump = np.flatnonzero(np.abs(right - left) > tol)
        blocks = np.where(jump < active.size, active[np.minimum(jump, active.size - 1)], active[-1])
        times = np.where(jump < active.size, start[blocks], seq.duration_s)
        c.add("gradient_continuity", blocks, times, right[jump] - left[jump], tol,
              f"block {{block}}: {name} gradient jumps by {{value:.6g}} Hz/m at {{time_ms:.6f}} ms "
              "(block boundary; sequence start and end are at 0)")
