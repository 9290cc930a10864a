"""The safety supervisor: watches a running scan and stops it *before* a limit is reached.

The executor feeds it at every safe point of the run loop (each segment, on the scan timebase):

- :meth:`Supervisor.before_load` — before a segment is loaded: would playing it take the SAR windows
  over their limits? (its RF energy from the programmed B1, times the gain the amplifier has shown);
- :meth:`Supervisor.observe` — after each ``sync(t)``, with every subsystem's :class:`Status`: the
  measured SAR on sliding windows (10 s and 6 min, whole body and head, from the forward energy the RF
  system reports), the gradient coil temperature, every heartbeat, the table (still, at the scan
  position, within its travel) and the door/coil interlocks.

Each check looks ahead by ``horizon_s``, the longest time until the next check (one segment): the
supervisor trips when the *worst case* by then would cross a limit — the RF amplifier delivering its
largest average power (``rf.peak_power_w * rf.max_duty_cycle``) for the whole horizon, the coil heating
at full gradient power or at the rate it was last seen rising, whichever is faster, a heartbeat ageing
by the horizon. A trip raises :class:`SupervisorTrip` (a SafetyLimitError) naming the limit, the value
and the threshold; the executor then aborts every subsystem at once and latches FAULT with that message
in the journal.

Patient weight: SAR limits are per kg, so the weight the run was started with is used. Without one
(``patient_weight_kg=None``) the supervisor assumes :data:`ASSUMED_WEIGHT_KG`, a light adult: a lighter
assumed patient makes every SAR limit stricter, so this is conservative for anyone heavier; a child's
weight must be given. The executor notes the assumption in the journal.

Units: s, J, W, W/kg, °C, mm. Everything here is on the scan's timebase (``t_s``); it never sleeps and
never reads a wall clock, so it runs the same on the simulators' virtual clock and on a rig.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from scanctl.config.limits import ASSUMED_WEIGHT_KG, SafetyLimits
from scanctl.errors import SafetyLimitError
from scanctl.hw.interfaces import Status, SubsystemState
from scanctl.hw.program import RFProgram
from scanctl.safety.interlocks import read_inputs

#: How far the table may be from the scan position while scanning (mm): encoder jitter, not motion.
TABLE_TOLERANCE_MM = 0.5
SEQUENCERS = ("gradient", "rf")


class SupervisorTrip(SafetyLimitError):
    """The supervisor stopped the scan: ``limit`` names what (``sar.whole_body.10s``, ``coil_temperature``,
    ``heartbeat.rf``, ``table.moving``, ``interlock.door_open`` ...), ``value`` and ``threshold`` are in
    the limit's unit, ``t_s`` is the scan time of the check."""

    def __init__(self, limit: str, value: float, threshold: float, t_s: float, message: str) -> None:
        super().__init__(f"{message} at {t_s:.3f} s (supervisor)")
        self.limit = limit
        self.value = value
        self.threshold = threshold
        self.t_s = t_s


def rf_energy_j(rf: RFProgram, gamma_hz_per_t: float, watts_per_ut2: float) -> float:
    """The forward RF energy (J) a program transmits: the coil calibration ``watts_per_ut2`` (W per µT²
    of B1) times the integral of B1² over its samples, each lasting one RF raster."""
    return float(rf.b1_squared_integrals().sum()) * (1e6 / gamma_hz_per_t) ** 2 * watts_per_ut2


class EnergyLog:
    """Energy deposited on the scan timebase as consecutive intervals of uniform power, summed over any
    window in O(log n): the running total at each interval's end, bisected (a 6-minute window holds
    thousands of intervals and is asked several times per check)."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._t0: list[float] = []
        self._t1: list[float] = []
        self._cum: list[float] = [0.0]  # energy (J) of every interval before index i (i = 0 .. n)
        self._head = 0  # intervals before this index are older than keep_s and ignored

    def add(self, t0_s: float, t1_s: float, energy_j: float) -> None:
        """Append ``energy_j`` spread uniformly over ``[t0_s, t1_s]``; intervals come in time order."""
        if energy_j > 0.0:
            self._t0.append(t0_s)
            self._t1.append(max(t1_s, t0_s))
            self._cum.append(self._cum[-1] + energy_j)
        self._head = bisect.bisect_left(self._t1, t1_s - self.keep_s, self._head)
        if self._head > 4096 and self._head * 2 > len(self._t1):
            del self._t0[:self._head], self._t1[:self._head], self._cum[:self._head]
            self._head = 0

    def energy_in(self, start_s: float, end_s: float) -> float:
        """Energy (J) deposited within ``[start_s, end_s]``, pro rata for intervals that straddle it."""
        if end_s < start_s:
            return 0.0
        return max(0.0, self._before(end_s, inclusive=True) - self._before(start_s, inclusive=False))

    def _before(self, t: float, *, inclusive: bool) -> float:
        """Energy deposited up to ``t`` counted from the first kept interval; an instantaneous deposit at
        exactly ``t`` counts when ``inclusive``."""
        find = bisect.bisect_right if inclusive else bisect.bisect_left
        i = find(self._t1, t, self._head)  # intervals [head, i) end by t: counted whole
        total = self._cum[i] - self._cum[self._head]
        if i < len(self._t1) and self._t1[i] > self._t0[i] and t > self._t0[i]:
            fraction = min(1.0, (t - self._t0[i]) / (self._t1[i] - self._t0[i]))
            total += (self._cum[i + 1] - self._cum[i]) * fraction
        return total


@dataclass(frozen=True)
class SarLimit:
    """One SAR limit as energy: ``name`` (``sar.whole_body.10s``), ``label`` (``whole-body SAR (10 s
    window)``), the window (s), the SAR limit (W/kg) and the J of forward energy per W/kg over the window
    (``joules_per_w_per_kg``)."""

    name: str
    label: str
    window_s: float
    limit_w_per_kg: float
    joules_per_w_per_kg: float

    def sar(self, energy_j: float) -> float:
        return energy_j / self.joules_per_w_per_kg

    def budget_j(self) -> float:
        return self.limit_w_per_kg * self.joules_per_w_per_kg


class Supervisor:
    """Watches one run. ``limits`` is the profile's :class:`~scanctl.config.limits.SafetyLimits`; ``mode``
    one of ``limits.MODES`` (``normal``, ``first_level``); ``scan_position_mm`` where the table must stay.

    Raises SafetyLimitError at construction for an unknown mode or a weight that is not positive.
    """

    def __init__(self, limits: SafetyLimits, *, gamma_hz_per_t: float, patient_weight_kg: float | None = None,
                 mode: str = "normal", scan_position_mm: float = 0.0, horizon_s: float = 0.5,
                 coil_rate_k_per_s: float = 0.0) -> None:
        sar = limits.sar
        if mode not in sar.whole_body_w_per_kg or mode not in sar.head_w_per_kg:
            raise SafetyLimitError(f"unknown operating mode {mode!r} (known: {', '.join(sar.whole_body_w_per_kg)})")
        if patient_weight_kg is not None and not (math.isfinite(patient_weight_kg) and patient_weight_kg > 0):
            raise SafetyLimitError(f"patient weight {patient_weight_kg} kg is not a positive number")
        self.limits = limits
        self.mode = mode
        self.gamma_hz_per_t = gamma_hz_per_t
        self.weight_assumed = patient_weight_kg is None
        self.weight_kg = ASSUMED_WEIGHT_KG if patient_weight_kg is None else patient_weight_kg
        self.scan_position_mm = scan_position_mm
        self.horizon_s = horizon_s
        rf = limits.rf
        #: The largest average forward power the amplifier can deliver (W): the worst case between checks.
        self.worst_power_w = rf.peak_power_w * rf.max_duty_cycle
        body_kg = self.weight_kg / rf.body_absorbed_fraction
        head_kg = rf.head_mass_fraction * self.weight_kg / rf.head_absorbed_fraction
        self.sar_limits: list[SarLimit] = []
        regions = (("whole_body", sar.whole_body_w_per_kg, body_kg), ("head", sar.head_w_per_kg, head_kg))
        for region, table, kg in regions:
            for window, factor in ((sar.short_window_s, sar.short_window_factor), (sar.window_s, 1.0)):
                label = f"{region.replace('_', '-')} SAR ({window:g} s window)"
                self.sar_limits.append(SarLimit(f"sar.{region}.{window:g}s", label, window, table[mode] * factor,
                                                kg * window))
        self.energy = EnergyLog(max(lim.window_s for lim in self.sar_limits))
        self._pending: deque[tuple[float, float, float]] = deque()  # loaded, not yet measured: t0, t1, programmed J
        self._gain = 1.0  # measured / programmed energy, as last seen (>= 1: never assume the amplifier weaker)
        self._t_s = 0.0
        self._energy_seen_j = 0.0  # the RF energy counter counts from arm(), before the run starts
        self._temperature: tuple[float, float] | None = None  # (t_s, °C) of the last reading
        #: The fastest rise of the coil temperature seen (K/s), this run or (given) an earlier one since the
        #: last reset: a reading that is stale (a silent gradient system) or the first of a run is assumed to
        #: rise at least this fast (a coolant failure heats faster than full gradient power).
        self.coil_rate_k_per_s = coil_rate_k_per_s
        self.max_sar_w_per_kg: dict[str, float] = {lim.name: 0.0 for lim in self.sar_limits}
        self.checks = 0

    def max_interval_s(self) -> float:
        """The longest time between two checks for which the amplifier's worst case uses at most a quarter of
        the tightest SAR budget: the executor cuts its segments no longer than this."""
        return 0.25 * min(lim.budget_j() for lim in self.sar_limits) / self.worst_power_w

    def note(self) -> str:
        """What the run is supervised for (for the journal)."""
        weight = (f"an assumed {self.weight_kg:g} kg patient (no weight given)" if self.weight_assumed
                  else f"a {self.weight_kg:g} kg patient")
        return f"supervised for {weight}, {self.mode} mode"

    # -- before a segment is loaded ------------------------------------------------------------------------
    def before_load(self, rf: RFProgram) -> None:
        """Refuse (SupervisorTrip) a segment whose programmed RF energy, at the amplifier's observed gain,
        would take a SAR window over its limit by the end of the segment."""
        energy = rf_energy_j(rf, self.gamma_hz_per_t, self.limits.rf.watts_per_ut2)
        for lim in self.sar_limits:
            start = rf.t1_s - lim.window_s
            total = self.energy.energy_in(start, self._t_s) + self._gain * energy
            total += sum(self._gain * e * _overlap(t0, t1, start, rf.t1_s) for t0, t1, e in self._pending)
            if not total <= lim.budget_j():  # (a NaN energy fails too: every comparison here is written so)
                raise SupervisorTrip(lim.name, lim.sar(total), lim.limit_w_per_kg, self._t_s,
                                     f"{lim.label} would reach {lim.sar(total):.3g} W/kg by {rf.t1_s:.3f} s with "
                                     f"the next segment (limit {lim.limit_w_per_kg:g} W/kg, {self.note()})")
        self._pending.append((rf.t0_s, rf.t1_s, energy))

    # -- after each sync --------------------------------------------------------------------------------------
    def observe(self, t_s: float, statuses: Mapping[str, Status]) -> None:
        """Take the subsystems' telemetry at scan time ``t_s`` and check every limit, looking ``horizon_s``
        ahead. Raises SupervisorTrip for the first one that is (or could by the next check be) crossed."""
        self.checks += 1
        self._check_finite(t_s, statuses)
        dt = max(0.0, t_s - self._t_s)
        self._check_interlocks(t_s, statuses)
        self._check_heartbeats(t_s, statuses)
        self._check_table(t_s, statuses)
        self._measure_energy(t_s, dt, statuses.get("rf"))
        self._check_sar(t_s)
        self._check_rf_peak(t_s, statuses.get("rf"))
        self._check_temperature(t_s, statuses.get("gradient"))

    def before_start(self, statuses: Mapping[str, Status]) -> None:
        """Check, before anything is armed, what can already stop the scan: the interlocks, the table and the
        coil — one already too hot for the first horizon. (No energy is measured: the RF energy counter still
        holds the previous run's until the subsystem is armed.) Raises SupervisorTrip."""
        self._check_finite(0.0, statuses)
        self._check_interlocks(0.0, statuses)
        self._check_table(0.0, statuses)
        self._check_temperature(0.0, statuses.get("gradient"))

    def _check_finite(self, t_s: float, statuses: Mapping[str, Status]) -> None:
        """Fail closed: a non-finite check time, sequencer clock or telemetry reading is a trip (``telemetry``),
        whatever it measures: nothing else here can be trusted to compare against it."""
        if not math.isfinite(t_s):
            raise SupervisorTrip("telemetry", t_s, math.nan, self._t_s, f"the check time {t_s} s is not finite")
        for kind, status in statuses.items():
            readings = dict(status.telemetry)
            if kind in SEQUENCERS:
                readings["time_s"] = status.time_s
            for key, value in readings.items():
                if not _finite(value):
                    raise SupervisorTrip(f"telemetry.{kind}.{key}", math.nan, math.nan, t_s,
                                         f"{kind} reports {key} = {value!r}: a reading must be a finite number")

    def sar_now(self, t_s: float | None = None) -> dict[str, float]:
        """The measured SAR (W/kg) on every window ending at ``t_s`` (default: the last check)."""
        t = self._t_s if t_s is None else t_s
        return {lim.name: lim.sar(self.energy.energy_in(t - lim.window_s, t)) for lim in self.sar_limits}

    def _measure_energy(self, t_s: float, dt: float, rf: Status | None) -> None:
        measured = 0.0
        if rf is not None:
            counter = rf.telemetry.get("forward_energy_j")
            if counter is not None:
                # A counter that went back was reset (re-armed): all it shows is new.
                measured = counter - self._energy_seen_j if counter >= self._energy_seen_j else counter
                self._energy_seen_j = counter
            else:  # no energy counter: integrate the power reading over the interval
                measured = rf.telemetry.get("forward_power_w", 0.0) * dt
        programmed = 0.0
        while self._pending and self._pending[0][1] <= t_s + 1e-12:
            programmed += self._pending.popleft()[2]
        if programmed > 1e-9:
            self._gain = max(1.0, measured / programmed)
        self.energy.add(self._t_s, t_s, measured)
        self._t_s = t_s

    def _check_sar(self, t_s: float) -> None:
        worst = self.worst_power_w * self.horizon_s
        for lim in self.sar_limits:
            now = self.energy.energy_in(t_s - lim.window_s, t_s)
            sar = lim.sar(now)
            self.max_sar_w_per_kg[lim.name] = max(self.max_sar_w_per_kg[lim.name], sar)
            if not sar <= lim.limit_w_per_kg:
                raise SupervisorTrip(lim.name, sar, lim.limit_w_per_kg, t_s, f"{lim.label} is {sar:.3g} W/kg "
                                     f"(limit {lim.limit_w_per_kg:g} W/kg, {self.note()})")
            ahead = self.energy.energy_in(t_s + self.horizon_s - lim.window_s, t_s) + worst
            if not ahead <= lim.budget_j():
                raise SupervisorTrip(lim.name, lim.sar(ahead), lim.limit_w_per_kg, t_s,
                                     f"{lim.label} could reach {lim.sar(ahead):.3g} W/kg before the next check "
                                     f"(measured {sar:.3g} W/kg, limit {lim.limit_w_per_kg:g} W/kg, {self.note()})")

    def _check_rf_peak(self, t_s: float, rf: Status | None) -> None:
        if rf is None:
            return
        peak = rf.telemetry.get("peak_forward_power_w", 0.0)
        if not peak <= self.limits.rf.peak_power_w:
            raise SupervisorTrip("rf.peak_power", peak, self.limits.rf.peak_power_w, t_s,
                                 f"RF peak forward power {peak:.4g} W exceeds {self.limits.rf.peak_power_w:g} W")

    def _check_temperature(self, t_s: float, gradient: Status | None) -> None:
        if gradient is None or "coil_temperature_c" not in gradient.telemetry:
            return
        thermal = self.limits.gradient_thermal
        temp = gradient.telemetry["coil_temperature_c"]
        # The reading is as old as the gradient's last report (a silent system's is older than this check):
        # the worst case runs from then, through the next check.
        read_s = min(t_s, gradient.time_s)
        span_s = t_s - read_s + self.horizon_s
        # Worst case by the next check: full gradient power on the RC model, or the last rate of rise.
        hottest = thermal.ambient_c + thermal.watts_at_max * thermal.kelvin_per_watt
        by_model = hottest + (temp - hottest) * math.exp(-span_s / thermal.tau_s) + thermal.max_rise_k_per_s * span_s
        # A rate over at least half a horizon: one over a sliver of time (a sync's last short step) would turn
        # a sensor's quantisation into a rise it remembers until the next reset.
        if self._temperature is None:
            self._temperature = (read_s, temp)
        elif read_s - self._temperature[0] >= self.horizon_s / 2:
            rate = (temp - self._temperature[1]) / (read_s - self._temperature[0])
            self.coil_rate_k_per_s = max(self.coil_rate_k_per_s, rate)
            self._temperature = (read_s, temp)
        by_rate = temp + max(0.0, self.coil_rate_k_per_s) * span_s
        ahead = max(by_model, by_rate)
        if not ahead < thermal.max_temp_c:
            raise SupervisorTrip("coil_temperature", ahead, thermal.max_temp_c, t_s,
                                 f"gradient coil temperature {temp:.1f} °C could reach {ahead:.1f} °C before the next "
                                 f"check (limit {thermal.max_temp_c:g} °C)")

    def _check_heartbeats(self, t_s: float, statuses: Mapping[str, Status]) -> None:
        max_age = self.limits.heartbeat_max_age_s
        for kind, status in statuses.items():
            if status.state is SubsystemState.UNKNOWN:
                raise SupervisorTrip(f"heartbeat.{kind}", math.inf, max_age, t_s,
                                     f"{kind} heartbeat lost ({status.message or 'state UNKNOWN'})")
            if kind in SEQUENCERS:  # on the scan timebase: how far its last report lags the scan
                age = t_s - status.time_s
                if age < -1e-6:  # a sequencer never plays past what it was synced to: a report from before
                    raise SupervisorTrip(f"heartbeat.{kind}", age, max_age, t_s,  # (a frozen one, a past run)
                                         f"{kind} reports scan time {status.time_s:.3f} s, ahead of the scan at "
                                         f"{t_s:.3f} s: not a report of this scan")
                if not age + self.horizon_s <= max_age:
                    raise SupervisorTrip(f"heartbeat.{kind}", age, max_age, t_s,
                                         f"{kind} heartbeat is {age:.3f} s old and could pass {max_age:g} s before "
                                         f"the next check")

    def _check_table(self, t_s: float, statuses: Mapping[str, Status]) -> None:
        table = statuses.get("table")
        if table is None:
            return
        if table.state is not SubsystemState.STANDBY:
            raise SupervisorTrip("table.moving", math.nan, math.nan, t_s,
                                 f"the table is {table.state.name} while scanning ({table.message})")
        position = table.telemetry.get("position_mm")
        if position is None:
            return
        limits = self.limits.table
        if not limits.min_mm <= position <= limits.max_mm:
            raise SupervisorTrip("table.travel", position, limits.max_mm if position > 0 else limits.min_mm, t_s,
                                 f"the table at {position:g} mm is outside its travel {limits.min_mm:g} to "
                                 f"{limits.max_mm:g} mm")
        if not abs(position - self.scan_position_mm) <= TABLE_TOLERANCE_MM:
            raise SupervisorTrip("table.moved", position, self.scan_position_mm, t_s,
                                 f"the table moved to {position:g} mm while scanning at {self.scan_position_mm:g} mm")

    def _check_interlocks(self, t_s: float, statuses: Mapping[str, Status]) -> None:
        for name, tripped in read_inputs(statuses).items():
            if tripped:
                raise SupervisorTrip(f"interlock.{name}", 1.0, 0.0, t_s, f"interlock {name.replace('_', ' ')}")


def _finite(value: object) -> bool:
    """A reading is a finite real number (a bool or an int counts; text, None or NaN does not)."""
    try:
        return math.isfinite(value)  # type: ignore[arg-type]
    except TypeError:
        return False


def _overlap(t0: float, t1: float, start: float, end: float) -> float:
    """The fraction of ``[t0, t1]`` inside ``[start, end]``."""
    if t1 <= t0:
        return 1.0 if start <= t0 <= end else 0.0
    return max(0.0, min(t1, end) - max(t0, start)) / (t1 - t0)


__all__ = ["ASSUMED_WEIGHT_KG", "EnergyLog", "SarLimit", "Supervisor", "SupervisorTrip", "rf_energy_j"]
