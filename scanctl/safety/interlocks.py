"""Interlocks: the inputs that forbid a scan whatever the sequence (door, coil), the rule that the table
never moves while RF or gradients play, the table's travel and speed limits, and making every subsystem
safe at once.

The inputs come from the subsystems' telemetry: a subsystem wired to the door switch or the coil plug
reports ``door_closed`` / ``coil_present`` (1 or 0; the RF simulator does, see
:mod:`scanctl.simulators.rf`). A 0 trips the interlock named in :data:`INPUTS`; a subsystem that does not
report an input leaves its interlock clear; a reading that is not a number >= 0.5 (NaN included) trips it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from scanctl.errors import InterlockError, SafetyLimitError, ScanctlError
from scanctl.hw.interfaces import Status, SubsystemState

log = logging.getLogger(__name__)

#: Telemetry input -> the interlock it trips when 0.
INPUTS = {"door_closed": "door_open", "coil_present": "coil_absent"}
#: Subsystem states in which an amplifier is (or may at once be) playing.
PLAYING = frozenset({SubsystemState.ON, SubsystemState.RUNNING})


def read_inputs(statuses: Mapping[str, Status]) -> dict[str, bool]:
    """The input interlocks from the subsystems' telemetry: name -> tripped (only those reported)."""
    tripped: dict[str, bool] = {}
    for status in statuses.values():
        for key, name in INPUTS.items():
            if key in status.telemetry:
                # Fail closed: only a reading of 1 (>= 0.5) is clear; 0, NaN or anything else trips.
                tripped[name] = tripped.get(name, False) or not status.telemetry[key] >= 0.5
    return tripped


def require_amplifiers_off(statuses: Mapping[str, Status]) -> None:
    """The table may move only while neither gradients nor RF play. Raises InterlockError."""
    playing = [kind for kind in ("gradient", "rf") if kind in statuses and statuses[kind].state in PLAYING]
    if playing:
        raise InterlockError(f"the table cannot move while {' and '.join(playing)} "
                             f"{'is' if len(playing) == 1 else 'are'} on")


def check_table_move(table: Any, position_mm: float, speed_mm_s: float | None) -> None:
    """A commanded table move against the profile's table limits (``TableSafety``: ``min_mm``, ``max_mm``,
    ``max_speed_mm_s``), before the table is asked. Raises SafetyLimitError naming the limit."""
    if not (math.isfinite(position_mm) and table.min_mm <= position_mm <= table.max_mm):
        raise SafetyLimitError(f"table target {position_mm:g} mm is outside the profile's travel limits "
                               f"{table.min_mm:g} to {table.max_mm:g} mm")
    if speed_mm_s is not None and not (math.isfinite(speed_mm_s) and 0 < speed_mm_s <= table.max_speed_mm_s):
        raise SafetyLimitError(f"table speed {speed_mm_s:g} mm/s is outside the profile's limit "
                               f"0 to {table.max_speed_mm_s:g} mm/s")


def make_safe(subsystems: Iterable[Any]) -> list[str]:
    """``abort()`` every subsystem at once, each even if another complains; returns the complaints.

    All together, on a small pool of threads kept for it: one after another, a subsystem whose driver has
    just died (not yet known to be silent) held the others back by up to the liveness bound — the RF
    blanked half a second late behind a lost gradient driver. Waits for every abort to end; an exception
    that is no ScanctlError (a bug) is raised once all were tried."""
    subs = list(subsystems)
    pool = _abort_pool()
    futures = [(sub, pool.submit(sub.abort)) for sub in subs]
    failures = []
    for sub, future in futures:
        try:
            future.result()
        except ScanctlError as exc:
            kind = getattr(sub, "kind", sub)
            log.error("%s abort failed: %s", kind, exc)
            failures.append(f"{kind}: {exc}")
    return failures


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _abort_pool() -> ThreadPoolExecutor:
    """The threads every make_safe shares (made at the first; one a subsystem, and one spare)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="make-safe")
        return _POOL
