"""The patient-table controller simulator: the controller's end of the serial line
(docs/table-serial.md), for the serial driver to meet exactly as it will meet the hardware.

It runs in its own process (``scanctl sim table --pty`` or ``--tcp HOST:PORT``; the line and the serving
loop are :mod:`scanctl.simulators.table_serve`): a pseudo-terminal whose device path the driver opens as a
serial port, or a TCP port as a serial-over-TCP bridge serves one. The axis is a
:class:`~scanctl.simulators.table.SimulatedTable` running on the wall clock (times ``speedup``), so moves
take real time. Faults on the wire (:class:`WireFaults`) garble, drop and delay what the controller sends,
reboot it, or stick its axis. SIGUSR1 reboots it at once.

Like a real motion controller it watches its host link: while the axis moves, a host that has sent no
valid command for ``watchdog_s`` (the ``WD`` command; 1 s at power-up) has the move stopped and fault F04
latched, so a move never goes on with nobody watching it (docs/table-serial.md, "The host-link watchdog").
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scanctl.simulators.table import SimulatedTable

from scanctl.config.profile import SystemProfile
from scanctl.errors import ConfigError
from scanctl.hw.interfaces import SubsystemState
from scanctl.hw.registry import open_subsystem, parse_url
from scanctl.transport.table_protocol import (
    COMMAND,
    ERRORS,
    EVENT,
    REPLY,
    WATCHDOG_MAX_S,
    WATCHDOG_MIN_S,
    WATCHDOG_POWER_UP_S,
    FrameError,
    Line,
    LineSplitter,
    clean_text,
    decode,
    fmt,
)

log = logging.getLogger(__name__)

IDENTITY = {"ID": "SCANCTL-TABLE", "FW": "1.2", "SN": "SIM0001"}


@dataclass(frozen=True)
class WireFaults:
    """Faults the controller injects. ``garble`` and ``drop``: the probability that a line it sends is
    garbled or lost; ``delay_s``: each line it sends is held back a random time up to this (order kept);
    ``reset_at``: it reboots just after accepting its N-th MOVE; ``stuck_at``: from its N-th MOVE on the
    axis does not move, though the controller says MOVING."""

    garble: float = 0.0
    drop: float = 0.0
    delay_s: float = 0.0
    reset_at: int | None = None
    stuck_at: int | None = None

    @classmethod
    def parse(cls, text: str) -> WireFaults:
        """``garble=P,drop=P,delay=S,reset@N,stuck@N`` (any subset, any order). Raises ConfigError."""
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            name, at, count = item.partition("@")
            try:
                if sep and key in ("garble", "drop"):
                    values[key] = float(value)
                    if not 0.0 <= values[key] <= 1.0:
                        raise ValueError("a probability is between 0 and 1")
                elif sep and key == "delay":
                    values["delay_s"] = float(value.removesuffix("s"))
                    if not 0.0 <= values["delay_s"] <= 60.0:
                        raise ValueError("a delay is between 0 and 60 s")
                elif at and name in ("reset", "stuck"):
                    values[f"{name}_at"] = int(count)
                    if values[f"{name}_at"] < 1:
                        raise ValueError("moves are counted from 1")
                else:
                    raise ValueError("expected garble=P, drop=P, delay=S, reset@N or stuck@N")
            except ValueError as exc:
                raise ConfigError(f"wire fault {item!r}: {exc}") from exc
        return cls(**values)


class TableController:
    """The controller's firmware: decodes commands, drives the axis, answers, and reports events.

    Feed it the bytes from the line (:meth:`receive`), let it look at its axis every few ms
    (:meth:`poll`) and send what :meth:`due_output` returns. Not thread-safe: one loop owns it.
    """

    def __init__(self, table: SimulatedTable, faults: WireFaults | None = None, *, seed: int | None = None,
                 boot: int = 1, wall_clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.faults = faults or WireFaults()
        self.boot = boot
        self.counts = {"commands": 0, "discarded": 0, "duplicates": 0, "garbled": 0, "dropped": 0, "moves": 0,
                       "heartbeats": 0, "watchdog_trips": 0}
        self.watchdog_s = WATCHDOG_POWER_UP_S  # the host-link watchdog (s): the host sets it with WD
        self._rng = random.Random(seed)
        self._now = wall_clock
        self._splitter = LineSplitter()
        self._out: deque[tuple[float, bytes]] = deque()
        self._last: tuple[int, str, bytes] | None = None  # seq, command payload, encoded reply
        self._stuck = False  # the axis is stuck (from the stuck_at move on)
        self._stuck_moving = False  # a move was accepted on the stuck axis and not stopped
        self._fault_reported = False
        self._heard = self._now()  # when the last valid command came from the host (wall clock, s)
        self._host_lost: str | None = None  # fault F04, latched by the watchdog until CLR
        table.connect()
        self._event("RESET", BOOT=str(self.boot))

    # -- the line --------------------------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Bytes from the host: execute every valid command line; discard anything else silently.

        The watchdog is looked at first: commands that queued up on the line while this controller was not
        running (frozen, starved) were read only now and say nothing about whether the host is there now."""
        self._watch()
        for raw in self._splitter.feed(data):
            try:
                line = decode(raw)
            except FrameError:
                self.counts["discarded"] += 1
                continue
            if line.kind != COMMAND or line.seq is None:
                self.counts["discarded"] += 1
                continue
            self.counts["commands"] += 1
            self._heard = self._now()
            payload = line.payload().split(" ", 1)[-1]
            if self._last is not None and self._last[0] == line.seq and self._last[1] == payload:
                # A retry of the command just executed: answer again, do not execute twice.
                self.counts["duplicates"] += 1
                self._send(self._last[2])
                continue
            reply = self._execute(line)
            encoded = reply.encode()
            self._last = (line.seq, payload, encoded)
            self._send(encoded)
            if line.word == "MOVE" and reply.word == "OK" and self.counts["moves"] == self.faults.reset_at:
                self.reboot()

    def poll(self) -> None:
        """Look at the axis and the host link: report a fault once when it latches."""
        self._watch()
        status = self.table.status()
        if status.state is SubsystemState.FAULT:
            if not self._fault_reported:
                self._fault_reported = True
                self._event("FAULT", BOOT=str(self.boot), CODE="F01", POS=fmt(status.telemetry["position_mm"]),
                            MSG=clean_text(status.message))
        else:
            self._fault_reported = False

    def due_output(self) -> bytes:
        """The bytes to send now (lines whose injected delay has passed)."""
        now, out = self._now(), bytearray()
        while self._out and self._out[0][0] <= now:
            out += self._out.popleft()[1]
        return bytes(out)

    def next_due_s(self) -> float | None:
        """Seconds until the next held-back line is due (None: nothing waiting)."""
        return None if not self._out else max(0.0, self._out[0][0] - self._now())

    def reboot(self) -> None:
        """Power-cycle the controller: the axis stops, homing is lost, the boot counter goes up by one."""
        log.warning("table controller reboots (boot %d)", self.boot + 1)
        self.boot += 1
        self.table.power_cycle()
        self._last = None
        self._stuck_moving = False
        self._host_lost = None
        self.watchdog_s, self._heard = WATCHDOG_POWER_UP_S, self._now()
        self._splitter.clear()
        self._event("RESET", BOOT=str(self.boot))

    def _watch(self) -> None:
        """The host-link watchdog: a move whose host has been silent for longer than ``watchdog_s`` is
        stopped (as STOP stops it) and fault F04 latched, reported with a ``!FAULT`` event."""
        silent_s = self._now() - self._heard
        if silent_s <= self.watchdog_s or not self._moving():
            return
        self.table.stop()
        self._stuck_moving = False
        where = fmt(self.table.position_mm())
        # Short (the position has a field of its own): an ST reply carrying it must fit in a line.
        self._host_lost = f"stopped: no command from the host for {silent_s:.2f} s (watchdog {self.watchdog_s:g} s)"
        self.counts["watchdog_trips"] += 1
        log.warning("table controller: %s at %s mm", self._host_lost, where)
        self._event("FAULT", BOOT=str(self.boot), CODE="F04", POS=where, MSG=self._host_lost)

    def _moving(self) -> bool:
        return self._stuck_moving or self.table.status().state is SubsystemState.MOVING

    # -- commands ----------------------------------------------------------------------------------------------
    def _execute(self, cmd: Line) -> Line:
        assert cmd.seq is not None
        handler = getattr(self, f"_cmd_{cmd.word.lower()}", None)
        if handler is None or cmd.fields:
            return self._error(cmd.seq, "E01", f"unknown command {cmd.word}" if handler is None else "no fields")
        try:
            result: Line = handler(cmd.seq, cmd.args)
        except (ValueError, TypeError):
            return self._error(cmd.seq, "E01", f"bad arguments to {cmd.word}")
        return result

    def _ok(self, seq: int, **fields: str) -> Line:
        return Line(REPLY, seq, "OK", (), fields)

    def _error(self, seq: int, code: str, message: str) -> Line:
        return Line(REPLY, seq, "ERR", (code, ERRORS[code]), {"MSG": clean_text(message)})

    def _cmd_id(self, seq: int, args: tuple[str, ...]) -> Line:
        _no_args(args)
        return self._ok(seq, **IDENTITY, BOOT=str(self.boot))

    def _cmd_lim(self, seq: int, args: tuple[str, ...]) -> Line:
        _no_args(args)
        t = self.table
        return self._ok(seq, MIN=fmt(t.min_position_mm), MAX=fmt(t.max_position_mm), VMAX=fmt(t.max_speed_mm_s),
                        AMAX=fmt(t.accel_mm_s2))

    def _cmd_st(self, seq: int, args: tuple[str, ...]) -> Line:
        _no_args(args)
        status = self.table.status()
        state = {SubsystemState.MOVING: "MOVING", SubsystemState.FAULT: "FAULT"}.get(status.state, "IDLE")
        code, message = ("F01" if state == "FAULT" else "F00"), status.message
        if self._stuck_moving:
            state = "MOVING"
        if self._host_lost is not None:
            state, code, message = "FAULT", "F04", self._host_lost
        return self._ok(seq, ST=state, POS=fmt(status.telemetry["position_mm"]),
                        HOMED=str(int(status.telemetry["homed"])), T=f"{status.time_s:.6f}", BOOT=str(self.boot),
                        CODE=code, MSG=clean_text(message))

    def _cmd_pos(self, seq: int, args: tuple[str, ...]) -> Line:
        _no_args(args)
        return self._ok(seq, POS=fmt(self.table.position_mm()))

    def _cmd_home(self, seq: int, args: tuple[str, ...]) -> Line:
        _no_args(args)
        refused = self._refuse_motion(seq)
        if refused is not None:
            return refused
        self.table.begin_home()
        return self._ok(seq)

    def _cmd_move(self, seq: int, args: tuple[str, ...]) -> Line:
        if len(args) not in (1, 2):
            raise ValueError("MOVE POSITION [SPEED]")
        target = _number(args[0])
        t = self.table
        speed = _number(args[1]) if len(args) == 2 else t.max_speed_mm_s
        refused = self._refuse_motion(seq)
        if refused is not None:
            return refused
        if t.status().telemetry["homed"] == 0.0:
            return self._error(seq, "E03", "not homed")
        if not t.min_position_mm <= target <= t.max_position_mm:
            return self._error(seq, "E10", f"target {target:g} mm outside {t.min_position_mm:g} to "
                                            f"{t.max_position_mm:g} mm")
        if not 0.0 < speed <= t.max_speed_mm_s:
            return self._error(seq, "E11", f"speed {speed:g} mm/s outside 0 to {t.max_speed_mm_s:g} mm/s")
        self.counts["moves"] += 1
        if self.faults.stuck_at is not None and self.counts["moves"] >= self.faults.stuck_at:
            self._stuck = True
        if self._stuck:
            self._stuck_moving = True  # accepted, but the axis will not turn
        else:
            t.move_to(target, speed)
        return self._ok(seq, TGT=fmt(target))

    def _cmd_stop(self, seq: int, args: tuple[str, ...]) -> Line:
        _no_args(args)
        self.table.stop()
        self._stuck_moving = False
        return self._ok(seq)

    def _cmd_clr(self, seq: int, args: tuple[str, ...]) -> Line:
        _no_args(args)
        self._host_lost = None  # acknowledged; the axis was stopped under control, so it keeps its homing
        self.table.reset()
        if self.table.status().state is SubsystemState.FAULT:
            return self._error(seq, "E12", self.table.status().message)
        return self._ok(seq)

    def _cmd_hb(self, seq: int, args: tuple[str, ...]) -> Line:
        _no_args(args)  # receiving it has fed the watchdog: nothing else to do
        self.counts["heartbeats"] += 1
        return self._ok(seq)

    def _cmd_wd(self, seq: int, args: tuple[str, ...]) -> Line:
        if len(args) != 1:
            raise ValueError("WD SECONDS")
        timeout_s = _number(args[0])
        if not WATCHDOG_MIN_S <= timeout_s <= WATCHDOG_MAX_S:
            return self._error(seq, "E13", f"watchdog {timeout_s:g} s outside {WATCHDOG_MIN_S:g} to "
                                            f"{WATCHDOG_MAX_S:g} s")
        self.watchdog_s = timeout_s
        return self._ok(seq, WD=fmt(timeout_s))

    def _refuse_motion(self, seq: int) -> Line | None:
        if self._host_lost is not None:
            return self._error(seq, "E05", self._host_lost)
        status = self.table.status()
        if status.state is SubsystemState.FAULT:
            return self._error(seq, "E05", status.message)
        if status.state is SubsystemState.MOVING or self._stuck_moving:
            return self._error(seq, "E04", "moving")
        return None

    # -- output, with the injected faults ----------------------------------------------------------------------
    def _event(self, name: str, **fields: str) -> None:
        self._send(Line(EVENT, None, name, (), fields).encode())

    def _send(self, data: bytes) -> None:
        f, rng = self.faults, self._rng
        if f.drop and rng.random() < f.drop:
            self.counts["dropped"] += 1
            return
        if f.garble and rng.random() < f.garble:
            self.counts["garbled"] += 1
            data = _garble(data, rng)
        due = self._now() + (rng.uniform(0.0, f.delay_s) if f.delay_s else 0.0)
        if self._out:
            due = max(due, self._out[-1][0])  # a serial line keeps its order
        self._out.append((due, data))


def _garble(data: bytes, rng: random.Random) -> bytes:
    """One of the ways a line gets hurt on a noisy cable."""
    buf = bytearray(data)
    how = rng.randrange(4)
    if how == 0:  # bit errors in one to three bytes
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif how == 1:  # noise inserted
        i = rng.randrange(len(buf))
        buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    elif how == 2:  # bytes lost (the line may lose its end)
        i = rng.randrange(len(buf))
        del buf[i:i + rng.randint(1, 4)]
    else:  # cut short: the rest of the line never comes
        del buf[rng.randrange(1, len(buf)):]
    return bytes(buf)


def _no_args(args: tuple[str, ...]) -> None:
    if args:
        raise ValueError("no arguments expected")


def _number(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def build_controller(url: str = "sim://", faults: str = "", *, seed: int | None = None, speedup: float = 1.0,
                     boot: int = 1, profile: SystemProfile | None = None) -> TableController:
    """A controller driving the table simulator ``url`` (``sim://?max_mm=…``, its options as in the system
    profile) in real time, ``speedup`` times faster than the wall clock. Raises ConfigError."""
    from scanctl.config import profile as profiles

    if parse_url(url).scheme != "sim":
        raise ConfigError(f"the table controller simulator drives a simulated table (sim://…), not {url!r}")
    if not speedup > 0:
        raise ConfigError(f"speedup must be positive, got {speedup}")
    table = open_subsystem("table", url, profile or profiles.load())
    assert isinstance(table, SimulatedTable)
    table.follow_clock(lambda: time.monotonic() * speedup)
    return TableController(table, WireFaults.parse(faults), seed=seed, boot=boot)
