"""The control server's view of its subsystems: each one's status asked, kept for ``status`` snapshots and
published on the ``telemetry`` stream; between commands, a subsystem lost latches FAULT
(docs/server.md#driver-services)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from scanctl.engine.executor import Scanner
from scanctl.errors import ScanctlError
from scanctl.transport.wire import to_plain

log = logging.getLogger(__name__)

#: Least time between two telemetry messages in a run (s).
RUN_PERIOD_S = 0.1


class Telemetry:
    """The statuses of ``scanner``'s subsystems, published through ``publish(stream, body)`` every
    ``period_s`` between commands (sooner when a subsystem's state changes), at most every
    :data:`RUN_PERIOD_S` in a run. ``lock`` guards :attr:`statuses` (the worker writes, the loop reads)."""

    def __init__(self, scanner: Scanner, publish: Callable[[str, dict[str, Any]], None], lock: threading.Lock,
                 period_s: float, name: str) -> None:
        self.scanner, self._publish, self._lock = scanner, publish, lock
        self.period_s = period_s
        self.name = name
        self.statuses: dict[str, Any] = {}  # kind -> status as last asked
        self._last = 0.0  # monotonic time of the last telemetry published

    def watch(self) -> None:
        """Between commands (every LIVENESS_CHECK_S): look at every subsystem; one lost (UNKNOWN: its driver
        silent) latches FAULT at once, as in a scan; telemetry is published every period, or sooner when a
        subsystem's state changed."""
        before = {kind: sub.get("state") for kind, sub in self.statuses.items()}
        statuses = self.refresh()
        changed = {kind: sub["state"] for kind, sub in statuses.items()} != before
        if {"unknown", "off"} & {sub["state"] for sub in statuses.values()}:
            try:
                self.scanner.require_known()
            except ScanctlError as exc:
                log.error("%s: %s", self.name, exc)
        if changed or time.monotonic() - self._last >= self.period_s:
            self._last = time.monotonic()
            self._publish("telemetry", {"subsystems": statuses})

    def refresh(self) -> dict[str, Any]:
        """Every subsystem's status (for ``status``), asked now; one that cannot be asked is ``unknown``."""
        statuses: dict[str, Any] = {}
        scanner = self.scanner
        for kind, sub in (("gradient", scanner.gradient), ("rf", scanner.rf), ("table", scanner.table)):
            try:
                statuses[kind] = to_plain(sub.status())
            except ScanctlError as exc:
                statuses[kind] = {"state": "unknown", "time_s": 0.0, "message": str(exc), "telemetry": {}}
        with self._lock:
            self.statuses = statuses
        return statuses

    def publish(self, force: bool = False) -> None:
        """Refresh the statuses and publish them, at most every :data:`RUN_PERIOD_S` unless ``force``."""
        now = time.monotonic()
        if not force and now - self._last < RUN_PERIOD_S:
            return
        self._last = now
        self._publish("telemetry", {"subsystems": self.refresh()})
