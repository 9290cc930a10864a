"""Bench commands for hardware-in-the-loop rigs: ``scanctl table`` (drive one table directly) and
``scanctl sim`` (a wire simulator in its own process). Registered in :func:`scanctl.cli.build_parser`.

The wire simulators are found through the entry point group ``scanctl.wire_simulators`` (name: the
subsystem kind), so the core never imports a simulator.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from scanctl.config import profile as profiles
from scanctl.errors import ConfigError, DriverError, SafetyLimitError

if TYPE_CHECKING:  # imported where used: the parser is built for every command, `check` included
    from scanctl.hw.interfaces import Status

EXIT_OK, EXIT_FAILED = 0, 1
WIRE_SIMULATORS = "scanctl.wire_simulators"


def add_parsers(sub: Any) -> None:
    """Add ``table`` and ``sim`` to the ``scanctl`` sub-command parsers ``sub``."""
    p = sub.add_parser("table", help="bench work on the patient table: home, move, stop, status",
                       description="Drive the patient table directly (nothing else is connected): the profile's "
                                   "table or any table URL, e.g. serial:///dev/ttyUSB0. Exit 0: done; 1: the "
                                   "table failed or refused; 2: bad input.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--system", help="system profile (shipped name or TOML path) whose table to use")
    source.add_argument("--url", help="table URL, e.g. serial:///dev/ttyUSB0, socket://HOST:PORT, sim://")
    actions = p.add_subparsers(dest="table_action", required=True)
    for name, text in (("home", "find the home position (0 mm)"), ("move", "move to a position and wait"),
                       ("stop", "stop moving"), ("status", "print the table's state and telemetry")):
        a = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if name == "move":
            a.add_argument("position_mm", type=float, help="target, mm from home")
            a.add_argument("--speed", type=float, help="mm/s (default: the table's maximum)")
        a.add_argument("--json", action="store_true", help="print the final status as one JSON object")
        a.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for the motion (default 60)")
        a.set_defaults(func=cmd_table)

    p = sub.add_parser("sim", help="run a wire simulator in its own process (for driver tests and rigs)",
                       description="The other end of a real driver's wire: serves until SIGTERM or SIGINT; "
                                   "prints where (a device path or socket:// URL) on its first line.")
    kinds = p.add_subparsers(dest="sim_kind", required=True)
    p = kinds.add_parser("table", help="the table controller on a serial line (docs/table-serial.md)",
                         description="The patient-table controller: a pseudo-terminal (--pty) or a TCP port "
                                     "(--tcp), speaking the serial protocol of docs/table-serial.md. SIGUSR1 "
                                     "reboots it.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="create a pseudo-terminal; print its device path")
    where.add_argument("--tcp", metavar="HOST:PORT", help="serve on TCP (port 0: any free port; prints it)")
    p.add_argument("--url", default="sim://", help="the simulated table and its options, as in a system "
                                                   "profile (default sim://), e.g. 'sim://?max_mm=1500'")
    p.add_argument("--fault", default="", help="faults on the wire: garble=P,drop=P,delay=S,reset@N,stuck@N "
                                               "(docs/table-serial.md#fault-injection)")
    p.add_argument("--seed", type=int, help="seed of the fault injection (default: random)")
    p.add_argument("--speedup", type=float, default=1.0, help="run the axis this many times faster than real "
                                                              "time (default 1)")
    p.add_argument("--boot", type=int, default=1, help="the boot counter at start (default 1)")
    p.set_defaults(func=cmd_sim)


def cmd_table(args: argparse.Namespace) -> int:
    from scanctl.hw.interfaces import SubsystemState
    from scanctl.hw.registry import open_subsystem

    if args.system:
        prof = profiles.load(args.system)
        url = prof.subsystems["table"]
    else:
        prof, url = profiles.load(), args.url
    table = open_subsystem("table", url, prof)
    try:
        table.connect(timeout_s=min(args.timeout, 2.0))
        if args.table_action == "home":
            table.home(args.timeout)
        elif args.table_action == "move":
            table.move_to(args.position_mm, args.speed)
            table.wait_idle(args.timeout)
        elif args.table_action == "stop":
            table.stop()
        status = table.status()
    except (DriverError, SafetyLimitError) as exc:
        print(f"scanctl: table {url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        table.close()
    print(json.dumps(status_json(status, url)) if args.json else status_line(status, url))
    return EXIT_OK if status.state not in (SubsystemState.FAULT, SubsystemState.UNKNOWN) else EXIT_FAILED


def status_json(status: Status, url: str) -> dict[str, Any]:
    """The table's status as ``scanctl table … --json`` prints it."""
    telemetry = dict(status.telemetry)
    return {"state": status.state.value, "position_mm": telemetry.get("position_mm"),
            "homed": bool(telemetry["homed"]) if "homed" in telemetry else None, "time_s": status.time_s,
            "message": status.message, "url": url, "telemetry": telemetry}


def status_line(status: Status, url: str) -> str:
    where = status.telemetry.get("position_mm")
    at = "position unknown" if where is None else f"at {where:g} mm"
    homed = "" if status.telemetry.get("homed", 1.0) else ", not homed"
    note = f" ({status.message})" if status.message and status.message != at else ""
    return f"table {url}: {status.state.value}, {at}{homed}{note}"


def cmd_sim(args: argparse.Namespace) -> int:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=WIRE_SIMULATORS) if ep.name == args.sim_kind]
    if not found:
        raise ConfigError(f"no wire simulator for {args.sim_kind!r}")
    run = found[0].load()

    def announce(where: str) -> None:
        print(f"{args.sim_kind} simulator on {where}", flush=True)

    code: int = run(args, announce)
    return code
