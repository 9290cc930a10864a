"""The patient-table controller over a serial line (docs/table-serial.md), through pyserial.

URLs: ``serial:///dev/ttyUSB0`` (a serial device), ``socket://HOST:PORT`` (a serial-over-TCP bridge) and
``loop://`` (pyserial's loopback, for tests), each opened with ``serial.serial_for_url``. Options:
``timeout_s`` (wait for one reply, s), ``retries`` (attempts after the first), ``poll_s`` (status polling
while moving, s), ``stuck_s`` (no motion for this long while MOVING is a stuck axis, s), ``heartbeat_s``
(the longest the line stays quiet while connected, s), ``watchdog_s`` (the controller's host-link watchdog
this driver sets, s), ``baud``.

One host at a time: a serial device is opened exclusively (pyserial's ``exclusive=True``, an advisory
``flock``), so a second host opening it gets a clear :class:`DriverError`; a TCP bridge decides for itself
(``loop://`` is private to its opener).

Robustness, as the field demands:

- Every wait is bounded: a command is tried ``1 + retries`` times, ``timeout_s`` each, then
  :class:`DriverTimeoutError`; a move is watched until it ends, stalls or ``wait_idle``'s timeout.
- Lines that fail their checksum or framing are discarded and the reader resynchronises at the next line
  start; replies to another sequence number (late answers to an earlier attempt) are ignored.
- A retried command keeps its sequence number, and the controller does not execute a repeated one twice:
  a MOVE whose reply was lost is never run twice.
- A position is only ever one the controller sent in a valid, checksummed reply; a move is confirmed by
  querying where the axis ended.
- A move is never left running unwatched: the driver keeps the line busy (``HB`` when it has nothing else to
  say, every ``heartbeat_s``) while it trusts the controller, and the controller stops any move of a host
  silent for ``watchdog_s`` (fault F04). A host that gives up on its controller stops its heartbeat; one
  that connects to a table moving for nobody stops it.
- A controller that stops answering, reboots (its boot counter changes, or it forgets its homing), or whose
  port fails leaves the table UNKNOWN: motion is refused until the controller answers again as the same
  boot (``status()`` probes it), or until ``connect()``/``reset()`` identifies it afresh.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from typing import Any, ClassVar

from scanctl.drivers.serial_link import SerialLink

from scanctl.config.profile import SystemProfile
from scanctl.errors import ConfigError, DriverError, DriverTimeoutError, SafetyLimitError, ScanctlError, SubsystemFault
from scanctl.hw.interfaces import Status, SubsystemState
from scanctl.hw.registry import Converter, SubsystemURL, positive_float
from scanctl.transport.table_protocol import (
    WATCHDOG_MAX_S,
    WATCHDOG_MIN_S,
    FrameError,
    Line,
    fmt,
)

log = logging.getLogger(__name__)

READ_SLICE_S = 0.01  # the port's read timeout: how often a waiting reader looks at its deadline
POSITION_TOLERANCE_MM = 0.005  # a move has reached its target when the reported position is this close
STATES = {"IDLE": SubsystemState.STANDBY, "MOVING": SubsystemState.MOVING, "FAULT": SubsystemState.FAULT}
DEFAULT_WATCHDOG_S = 0.5  # the controller's host-link watchdog the driver sets: below its 0.8 s to give up
# A lock held by another opener: flock's EWOULDBLOCK (pyserial's exclusive=True), or EBUSY (TIOCEXCL).
IN_USE_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY})


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 20:
        raise ValueError("must be a whole number from 0 to 20")
    return value


def _watchdog(text: str) -> float:
    value = float(text)
    if not WATCHDOG_MIN_S <= value <= WATCHDOG_MAX_S:  # also refuses nan
        raise ValueError(f"must be from {WATCHDOG_MIN_S:g} to {WATCHDOG_MAX_S:g} s")
    return value


class SerialTable:
    """The table driver for the serial controller (see the module docstring)."""

    kind = "table"
    OPTIONS: ClassVar[dict[str, Converter]] = {
        "timeout_s": positive_float, "retries": _count, "poll_s": positive_float, "stuck_s": positive_float,
        "heartbeat_s": positive_float, "watchdog_s": _watchdog, "baud": int}

    def __init__(self, url: str, port_url: str, *, timeout_s: float = 0.2, retries: int = 3, poll_s: float = 0.02,
                 stuck_s: float = 1.0, heartbeat_s: float = 0.1, watchdog_s: float | None = None,
                 baud: int = 115200) -> None:
        """``watchdog_s`` None: 0.5 s, or twice the longer of ``timeout_s`` and ``heartbeat_s`` if that is more.
        Raises ConfigError when ``watchdog_s`` leaves no room for a lost reply or a late heartbeat."""
        # While the driver awaits a reply it sends nothing, for up to timeout_s; between commands it sends a
        # heartbeat after heartbeat_s. Either gap must fit twice into the controller's watchdog, or one lost
        # reply on a noisy line would stop the table.
        shortest_s = 2 * max(timeout_s, heartbeat_s)
        watchdog_s = max(DEFAULT_WATCHDOG_S, shortest_s) if watchdog_s is None else watchdog_s
        if not shortest_s <= watchdog_s <= WATCHDOG_MAX_S:
            raise ConfigError(f"table URL {url!r}: watchdog_s={watchdog_s:g} must be from twice the longer of "
                              f"timeout_s and heartbeat_s ({shortest_s:g} s: the line may be quiet half that long) "
                              f"to {WATCHDOG_MAX_S:g} s")
        self.url = url
        self.port_url = port_url
        self.timeout_s = timeout_s
        self.retries = retries
        self.poll_s = poll_s
        self.stuck_s = stuck_s
        self.heartbeat_s = heartbeat_s
        self.watchdog_s = watchdog_s
        self.baud = baud
        self.min_position_mm = 0.0  # read from the controller on connect
        self.max_position_mm = 0.0
        self.max_speed_mm_s = 0.0
        self._port: Any = None
        self._link: SerialLink | None = None
        self._lock = threading.RLock()
        self._boot: int | None = None
        self._lost: str | None = None  # why the controller is not trusted now (state UNKNOWN)
        self._was_reset = False  # it rebooted: only identifying it afresh (connect, reset) brings it back
        self._fault: str | None = None  # a fault the driver found itself (a stuck axis)
        self._homed_seen = False  # the controller said HOMED=1 and nothing since should have cleared it
        self._target: float | None = None  # the move (or homing) this driver started, until confirmed
        self._last_time_s = 0.0
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()

    @classmethod
    def from_url(cls, url: SubsystemURL, options: dict[str, Any], profile: SystemProfile) -> SerialTable:
        if url.scheme == "serial":
            if not url.location:
                raise ConfigError(f"table URL {url.url!r}: no device (e.g. serial:///dev/ttyUSB0)")
            port_url = url.location
        elif url.scheme == "socket":
            if ":" not in url.location:
                raise ConfigError(f"table URL {url.url!r}: expected socket://HOST:PORT")
            port_url = f"socket://{url.location}"
        elif url.scheme == "loop":
            port_url = "loop://"
        else:
            raise ConfigError(f"table URL {url.url!r}: the serial table takes serial://, socket:// or loop://")
        return cls(url.url, port_url, **options)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> None:
        """Open the port and identify the controller (at least ``1 + retries`` attempts, more until
        ``timeout_s``); read its limits and state. Raises DriverError (port), DriverTimeoutError (no
        valid answer)."""
        with self._lock:
            if self._link is not None and self._lost is not None:
                self._close_port()  # a lost line is opened afresh: an adapter replugged, a bridge restarted
            if self._link is None:
                self._open()
            t0 = time.monotonic()
            attempts = 0
            while True:
                attempts += 1
                try:
                    ident = self._ok(self._request("ID", retries=0), "ID")
                    break
                except DriverTimeoutError as exc:
                    now = time.monotonic()
                    if attempts > self.retries and now + self.timeout_s > t0 + timeout_s:
                        raise DriverTimeoutError(f"table: no valid reply to ID from the controller on "
                                                 f"{self.port_url} ({attempts} attempts in {now - t0:.2g} s)") from exc
            limits = self._ok(self._request("LIM"), "LIM")
            self._set_watchdog()
            try:
                boot = ident.integer("BOOT")
                self.min_position_mm = limits.number("MIN")
                self.max_position_mm = limits.number("MAX")
                self.max_speed_mm_s = limits.number("VMAX")
            except FrameError as exc:
                raise DriverError(f"table: the controller on {self.port_url} answered ID/LIM oddly: {exc}") from exc
            self._boot, self._lost, self._was_reset = boot, None, False
            self._fault, self._homed_seen, self._target = None, False, None
            log.info("table: %s firmware %s serial %s, boot %d, on %s", ident.fields.get("ID"),
                     ident.fields.get("FW"), ident.fields.get("SN"), boot, self.port_url)
            if self._query_status().state is SubsystemState.MOVING:
                # A move this host did not start (its host gone, a host before a restart): nobody watches it.
                log.warning("table: the table on %s was moving for no host: stopping it", self.port_url)
                self.stop()
            self._start_heartbeat()

    def close(self) -> None:
        self._stop_heartbeat()
        with self._lock:
            if self._link is None:
                return
            if self._target is not None and self._lost is None:
                with contextlib.suppress(ScanctlError):  # closing must not fail on a dead line
                    self.stop()
            self._close_port()
            self._target = None

    def status(self) -> Status:
        """The controller's state and telemetry; UNKNOWN (without telemetry) while it cannot be trusted."""
        with self._lock:
            if self._link is None:
                return Status(SubsystemState.OFF, self._last_time_s, "not connected")
            try:
                if self._lost is not None:
                    self._probe()
                return self._query_status()
            except ScanctlError as exc:
                self._mark_lost(str(exc).removeprefix("table: "))
            return Status(SubsystemState.UNKNOWN, self._last_time_s, f"table: {self._lost}")

    def abort(self) -> None:
        """Stop the table; never raises (a lost controller gets one attempt, not the retries)."""
        with self._lock:
            if self._link is None:
                return
            try:
                self._ok(self._request("STOP", retries=0 if self._lost else None), "STOP")
                self._target = None
            except ScanctlError as exc:
                log.error("table: abort could not stop the table: %s", exc)

    def reset(self) -> None:
        """Clear a latched fault (the controller's or a stuck axis; homing is lost but for F04); a controller
        that was lost is identified afresh, and its fault (F04, most likely) cleared. Raises DriverError if the
        fault cannot be cleared."""
        with self._lock:
            if self._lost is not None:
                self.connect()
                if self._query_status().state is not SubsystemState.FAULT:
                    return
            self._fault = None
            self._homed_seen = False
            self._ok(self._request("CLR"), "CLR")

    # -- motion ----------------------------------------------------------------------------------------------
    def home(self, timeout_s: float = 60.0) -> None:
        with self._lock:
            self._trust("home")
            self._homed_seen = False
            self._ok(self._request("HOME"), "HOME", "home")
            self._target = 0.0
        self.wait_idle(timeout_s)

    def move_to(self, position_mm: float, speed_mm_s: float | None = None) -> None:
        with self._lock:
            self._trust("move")
            speed = self.max_speed_mm_s if speed_mm_s is None else speed_mm_s
            if not (self.min_position_mm <= position_mm <= self.max_position_mm):  # also refuses nan
                raise SafetyLimitError(f"table: target {position_mm:g} mm is outside the travel limits "
                                       f"{self.min_position_mm:g} to {self.max_position_mm:g} mm")
            if not 0 < speed <= self.max_speed_mm_s:
                raise SafetyLimitError(f"table: speed {speed:g} mm/s is outside 0 to {self.max_speed_mm_s:g} mm/s")
            self._ok(self._request("MOVE", fmt(position_mm), fmt(speed)), "MOVE", "move")
            self._target = float(fmt(position_mm))

    def wait_idle(self, timeout_s: float = 60.0) -> Status:
        """Poll until the table stops and confirm it stopped where it was sent. Raises SubsystemFault
        (controller fault, stuck axis, wrong end position), DriverTimeoutError (silent controller or
        ``timeout_s``), DriverError (controller lost or reset)."""
        deadline = time.monotonic() + timeout_s
        last_position, last_change = None, time.monotonic()
        while True:
            with self._lock:
                status = self._query_status()
                position = status.telemetry["position_mm"]
                if status.state is SubsystemState.FAULT:
                    self._target = None
                    raise SubsystemFault(f"table: {status.message or 'controller fault'}")
                if status.state is not SubsystemState.MOVING:
                    return self._confirm(status)
                now = time.monotonic()
                if position != last_position:
                    last_position, last_change = position, now
                elif now - last_change > self.stuck_s:
                    self._stuck(position)
                if now > deadline:
                    raise DriverTimeoutError(f"table: still moving after {timeout_s:g} s (at {position:g} mm)")
            time.sleep(self.poll_s)

    def position_mm(self) -> float:
        """Where the controller says the axis is (a fresh query). Raises DriverTimeoutError, DriverError."""
        with self._lock:
            self._trust("read the position", motion=False)
            return self._number(self._ok(self._request("POS"), "POS"), "POS")

    def stop(self) -> None:
        with self._lock:
            self._ok(self._request("STOP"), "STOP")
            self._target = None

    # -- internals -------------------------------------------------------------------------------------------
    def _open(self) -> None:
        import serial  # pyserial

        # A device is locked against a second host; socket:// is a TCP bridge's business (it serves one client
        # at a time), loop:// is private to its opener: pyserial would silently ignore the flag for both.
        device = "://" not in self.port_url
        try:  # exclusive=None is pyserial's default (no lock)
            self._port = serial.serial_for_url(self.port_url, baudrate=self.baud, timeout=READ_SLICE_S,
                                               write_timeout=max(self.timeout_s, 0.5),
                                               exclusive=True if device else None)
        except (serial.SerialException, OSError, ValueError) as exc:
            if device and getattr(exc, "errno", None) in IN_USE_ERRNOS:
                raise DriverError(f"table: serial port {self.port_url} is in use by another host (it is opened "
                                  f"exclusively): close that one first") from exc
            raise DriverError(f"table: cannot open serial port {self.port_url}: {exc}") from exc
        self._link = SerialLink(self._port, self.port_url, timeout_s=self.timeout_s, retries=self.retries,
                                on_event=self._on_event)

    def _close_port(self) -> None:
        with contextlib.suppress(Exception):  # pyserial may raise anything from a dead port's close
            self._port.close()
        self._port = self._link = None

    def _set_watchdog(self) -> None:
        """Set the controller's host-link watchdog to ``watchdog_s``. Raises DriverError when it refuses:
        a controller that would keep moving for a silent host is not one to move a patient with."""
        reply = self._request("WD", fmt(self.watchdog_s))
        if reply.word != "OK":
            raise DriverError(f"table: the controller on {self.port_url} refused its host-link watchdog "
                              f"(WD {fmt(self.watchdog_s)}): {' '.join(reply.args)} {reply.fields.get('MSG', '')}"
                              .rstrip())

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, args=(self._heartbeat_stop,), daemon=True,
                                           name=f"table heartbeat {self.port_url}")
        self._heartbeat.start()

    def _stop_heartbeat(self) -> None:
        """Stop the heartbeat thread (not holding the lock: it may be waiting for it)."""
        thread, self._heartbeat = self._heartbeat, None
        self._heartbeat_stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=(1 + self.retries) * self.timeout_s + 1.0)  # at most one HB in flight

    def _beat(self, stop: threading.Event) -> None:
        """The heartbeat thread: an ``HB`` whenever the line has been quiet for ``heartbeat_s``."""
        wait_s = self.heartbeat_s
        while not stop.wait(wait_s):
            with self._lock:
                wait_s = self._beat_once()

    def _beat_once(self) -> float:
        """One look at the line (lock held): send ``HB`` if it is due; the seconds until the next look. No
        heartbeat while the controller is not trusted: a host that has given up on its controller lets the
        controller's watchdog stop whatever it was doing."""
        link = self._link
        if link is None or self._lost is not None:
            return self.heartbeat_s
        quiet_s = time.monotonic() - link.last_write_s
        if quiet_s < self.heartbeat_s:
            return self.heartbeat_s - quiet_s
        with contextlib.suppress(ScanctlError):  # _request has marked the controller lost, and logged why
            self._ok(self._request("HB"), "HB")
        return self.heartbeat_s

    def _request(self, verb: str, *args: str, retries: int | None = None) -> Line:
        """One command through the link; a controller that does not answer (or a port that fails) is lost."""
        if self._link is None:
            raise DriverError(f"table: not connected ({self.port_url}); connect() first")
        try:
            return self._link.request(verb, *args, retries=retries)
        except ScanctlError as exc:
            self._mark_lost(str(exc).removeprefix("table: "))
            raise

    def _trust(self, action: str, motion: bool = True) -> None:
        """Refuse ``action`` unless the controller can be trusted (a lost one is probed once first)."""
        if self._lost is not None:
            with contextlib.suppress(ScanctlError):
                self._probe()
            if self._lost is not None:
                raise DriverError(f"table: cannot {action}: state UNKNOWN ({self._lost})")
        if motion and self._fault is not None:
            raise DriverError(f"table: cannot {action} in state FAULT ({self._fault})")

    def _probe(self) -> None:
        """One quick identify of a lost controller: the same boot, not reset meanwhile, brings it back."""
        boot = self._ok(self._request("ID", retries=0), "ID").integer("BOOT")
        if boot != self._boot:
            self._reset_seen(boot)
        elif not self._was_reset:
            log.info("table: the controller on %s answers again (boot %d)", self.port_url, boot)
            self._lost = None

    def _query_status(self) -> Status:
        link = self._require_link()
        reply = self._ok(self._request("ST"), "ST")
        try:
            state = STATES[reply.fields["ST"]]
            position = reply.number("POS")
            homed = reply.integer("HOMED")
            boot = reply.integer("BOOT")
            time_s = reply.number("T")
        except (KeyError, FrameError) as exc:
            raise DriverError(f"table: malformed status from the controller: {exc}") from exc
        if boot != self._boot:
            self._reset_seen(boot)
        elif self._homed_seen and not homed:
            self._reset_seen(None, "the controller forgot its homing (reset?): position lost; reset to identify it "
                                   "again")
        link.pump()  # events that came with the reply (a !RESET) count now
        if self._lost is not None:
            raise DriverError(f"table: state UNKNOWN ({self._lost})")
        self._homed_seen = self._homed_seen or bool(homed)
        self._last_time_s = time_s
        message = reply.fields.get("MSG", "")
        if self._fault is not None:
            state, message = SubsystemState.FAULT, self._fault
        telemetry = {"position_mm": position, "homed": float(homed), "boot": float(boot),
                     "serial_retries": float(link.counts["retries"]), "serial_discarded": float(link.discarded())}
        return Status(state, time_s, message, telemetry)

    def _require_link(self) -> SerialLink:
        if self._link is None:
            raise DriverError(f"table: not connected ({self.port_url}); connect() first")
        return self._link

    def _confirm(self, status: Status) -> Status:
        """The move has ended: it must have ended where it was sent (as the controller says)."""
        target, self._target = self._target, None
        position = status.telemetry["position_mm"]
        if target is not None and not abs(position - target) <= POSITION_TOLERANCE_MM:  # (a NaN fails too)
            raise SubsystemFault(f"table: the move ended at {position:g} mm, not at its target {target:g} mm")
        return status

    def _stuck(self, position: float) -> None:
        target, self._target = self._target, None
        self._fault = f"axis stuck at {position:g} mm: no motion for {self.stuck_s:g} s while moving to {target} mm"
        with contextlib.suppress(ScanctlError):
            self._ok(self._request("STOP"), "STOP")
        raise SubsystemFault(f"table: {self._fault}; stopped")

    def _reset_seen(self, boot: int | None, why: str = "") -> None:
        """The controller rebooted (a new boot count, or ``why``): UNKNOWN until identified afresh."""
        why = why or (f"the controller was reset (boot {self._boot} -> {boot}): position and homing lost; "
                      f"reset to identify it again")
        if not self._was_reset:
            log.warning("table: %s", why)
        self._was_reset, self._lost = True, why

    def _mark_lost(self, why: str) -> None:
        """The controller is not trusted (UNKNOWN) from now on; the first reason is kept."""
        if self._lost is None:
            log.warning("table: the controller on %s is lost: %s", self.port_url, why)
            self._lost = why

    def _on_event(self, line: Line) -> None:
        if line.word == "RESET":
            with contextlib.suppress(FrameError):
                boot = line.integer("BOOT")
                if self._boot is not None and boot != self._boot:
                    self._reset_seen(boot)
        elif line.word in ("FAULT", "LIMIT"):
            log.warning("table controller: %s %s", line.word, line.fields.get("MSG", ""))

    def _ok(self, reply: Line, verb: str, action: str | None = None) -> Line:
        """``reply`` if it is OK; an ERR as the typed error it stands for."""
        if reply.word == "OK":
            return reply
        code = reply.args[0] if reply.args else "?"
        text = reply.fields.get("MSG", "")
        action = action or verb
        if code == "E03":
            raise DriverError("table: not homed; home() first")
        if code == "E04":
            raise DriverError(f"table: cannot {action} in state MOVING ({text})")
        if code == "E05":
            raise DriverError(f"table: cannot {action} in state FAULT ({text})")
        if code in ("E10", "E11"):
            raise SafetyLimitError(f"table: the controller refused {verb}: {text}")
        raise DriverError(f"table: the controller refused {verb}: {' '.join(reply.args)} {text}".rstrip())

    def _number(self, reply: Line, key: str) -> float:
        try:
            return reply.number(key)
        except FrameError as exc:
            raise DriverError(f"table: malformed reply from the controller: {exc}") from exc
