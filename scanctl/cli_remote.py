"""The ``scanctl`` commands of the scanner as a service: ``serve``, ``status``, ``watch``, a verb for every
control-server command, ``runs`` and ``fetch`` (the server's copies of runs), ``driver serve``, ``keys``,
``up`` and ``down`` (docs/server.md, docs/cli.md). Registered by :func:`scanctl.cli.build_parser`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scanctl.cli_common import (
    EXIT_LIMITS,
    EXIT_OK,
    EXIT_UNREADABLE,
    client_keys,
    connect_arg,
    endpoint_args,
    endpoints_of,
    json_default,
    positive_count,
    safety_args,
    seconds,
    server_curve,
    server_security_args,
)
from scanctl.config import profile as profiles
from scanctl.errors import ScanctlError
from scanctl.hw.registry import KINDS

if TYPE_CHECKING:
    from scanctl.services.client import Client
    from scanctl.transport.wire import Message


def add_parsers(sub: Any) -> None:
    """Add the service commands to the ``scanctl`` sub-command parsers ``sub``."""
    p = sub.add_parser("serve", help="serve the scanner on ZeroMQ (the control server)",
                       description="Serve the scanner: commands (ROUTER), events and ADC data (PUB); see "
                                   "docs/server.md. Loopback only unless --insecure.")
    p.add_argument("--system", help="system profile: a shipped name (e.g. 'default') or a TOML path")
    endpoint_args(p)
    for kind in KINDS:
        p.add_argument(f"--{kind}", metavar="URL", help=f"{kind} subsystem URL (default: the profile's)")
    p.add_argument("--control-timeout", type=seconds, metavar="S",
                   help="a controller silent this long (no command, not even status) may be taken over without "
                        "--force (default 30 s)")
    p.add_argument("--data-dir", metavar="DIR", help="where the server keeps its copy of every run (default "
                   "$SCANCTL_DATA_DIR, else $XDG_DATA_HOME/scanctl/runs, else ~/.local/share/scanctl/runs)")
    server_security_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="the control server's state", description="Print the server's snapshot")
    connect_arg(p)
    p.add_argument("--json", action="store_true", help="print the snapshot as one JSON object")
    p.add_argument("--timeout", type=seconds, default=2.0, help="seconds to wait for the answer (default 2)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help="print the control server's live events",
                       description="Print every event (state, progress, telemetry, safety, run, control) as it "
                                   "comes; gaps in sequence numbers go to stderr.")
    connect_arg(p)
    p.add_argument("--data", action="store_true", help="also the ADC data messages (summarised)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--count", type=positive_count, help="stop after this many events")
    p.add_argument("--timeout", type=seconds, help="stop after this many seconds without an event")
    p.set_defaults(func=cmd_watch)

    verbs = (("take-control", "take control of the scanner (for this --name)"),
             ("release-control", "give control back"),
             ("load", "load and check a protocol or Pulseq file (scanner READY)"),
             ("start", "start the loaded protocol (scanctl run --connect also writes its data)"),
             ("abort", "abort the scan (make safe, keep the data so far)"),
             ("pause", "pause the scan at the next safe point"), ("resume", "resume a paused scan"),
             ("stop", "stop the scan cleanly"), ("reset", "leave FAULT or EMERGENCY_STOP"),
             ("emergency-stop", "make every subsystem safe at once (latched)"),
             ("release-emergency-stop", "release the emergency stop interlock (then reset)"),
             ("move-table", "move the table (IDLE or READY only)"))
    for verb, text in verbs:
        if verb in ("take-control", "release-control", "emergency-stop"):
            how = "needs no control" if verb == "emergency-stop" else "as the client --name"
        else:
            how = "takes control, sends the command and gives control back (unless --name holds it already)"
        p = sub.add_parser(verb, help=text, description=f"{text[0].upper()}{text[1:]}: {how}.")
        connect_arg(p)
        p.add_argument("--name", required=verb in ("take-control", "release-control"),
                       help="this client's id, under which control is held (default: a new one); lets a console "
                            "script take-control, load, start, … release-control")
        if verb not in ("release-control", "emergency-stop"):
            p.add_argument("--force", action="store_true", help="take control from the client holding it")
        if verb == "load":
            p.add_argument("file", help="protocol (.toml) or Pulseq file (.seq), a path on the server")
            p.add_argument("--upload", action="store_true", help="send the file's content, not its path")
            p.add_argument("--no-prescan", action="store_true", help="skip the calibrations the protocol needs "
                                                                     "first (docs/prescan.md)")
            safety_args(p)
        if verb == "move-table":
            p.add_argument("position_mm", type=float, help="target position, mm from home")
            p.add_argument("--speed", type=float, help="mm/s (default: the table's maximum)")
        if verb == "emergency-stop":
            p.add_argument("--reason", help="why (it goes into the journal)")
        p.set_defaults(func=cmd_command)

    p = sub.add_parser("driver", help="driver services", description="Run a subsystem driver as a ZeroMQ service")
    driver = p.add_subparsers(dest="driver_command", required=True)
    p = driver.add_parser("serve", help="serve one subsystem (simulated or real) on a ZeroMQ endpoint")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--url", default="sim://", help="the subsystem to serve (default: its simulator, sim://)")
    p.add_argument("--bind", default="tcp://127.0.0.1:*", help="endpoint (default: a free loopback port)")
    p.add_argument("--system", help="system profile the subsystem is built for")
    p.add_argument("--client-timeout", type=seconds, default=3.0, metavar="S",
                   help="abort a scan under way by itself when the scanner says nothing for S seconds (default 3)")
    server_security_args(p)
    p.set_defaults(func=cmd_driver_serve)

    p = sub.add_parser("keys", help="CurveZMQ keys", description="CurveZMQ key pairs for scanctl serve and "
                                                                  "driver services (docs/server.md#security)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("generate", help="write a key pair NAME.key (public) and NAME.key_secret (secret)")
    p.add_argument("dir", help="directory to write into (created if missing)")
    p.add_argument("--name", default="server", help="the pair's name (default 'server'; e.g. 'client' or a "
                                                      "console's name)")
    p.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("up", help="start the control server and every simulated subsystem as processes",
                       description="Start each simulated subsystem as a driver service and the control server "
                                   "using them, each its own process; record endpoints and pids in "
                                   "RUN_DIR/endpoints.json (docs/server.md#scanctl-up-and-down).")
    p.add_argument("--system", help="system profile: a shipped name (e.g. 'default') or a TOML path")
    p.add_argument("--run-dir", default="run", help="where endpoints.json and the logs go (default ./run)")
    endpoint_args(p)
    p.add_argument("--realtime", action="store_true", help="pace the simulators to wall-clock time")
    p.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait for each process (default 30)")
    p.add_argument("--restart", choices=KINDS, metavar="KIND",
                   help="restart only this driver of a running up, as recorded (same URL, world and endpoint); "
                        "then reset the scanner")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what scanctl up started",
                       description="SIGTERM every process in RUN_DIR/endpoints.json, SIGKILL after the timeout; "
                                   "remove the file.")
    p.add_argument("--run-dir", default="run", help="the directory given to scanctl up (default ./run)")
    p.add_argument("--timeout", type=seconds, default=10.0, help="seconds before SIGKILL (default 10)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("runs", help="the runs the control server keeps a copy of",
                       description="List the runs the control server keeps (raw data, sequence, report), oldest "
                                   "first.")
    connect_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("fetch", help="copy a run the control server keeps into a folder here",
                       description="Copy a run's raw.h5, sequence.seq and report.json from the control server "
                                   "(new files only: nothing is overwritten).")
    connect_arg(p)
    p.add_argument("run", help="the run id (scanctl runs lists them)")
    p.add_argument("--out", help="folder to copy into (default ./RUN)")
    p.set_defaults(func=cmd_fetch)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from scanctl.transport.security import generate

    public, secret = generate(args.dir, args.name)
    print(f"wrote {public} (public: give it to the other side) and {secret} (secret: keep it here)")
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from scanctl.services.launcher import restart, up

    if args.restart is not None:
        driver = restart(args.run_dir, args.restart, timeout_s=args.timeout)["drivers"][args.restart]
        print(f"up: {args.restart} driver restarted on {driver['endpoint']} (pid {driver['pid']}); reset the "
              f"scanner to reconnect it (scanctl reset)")
        return EXIT_OK
    control, events, data = endpoints_of(args, profiles.load(args.system))
    record = up(args.run_dir, system=args.system, control=control, events=events, data=data,
                realtime=args.realtime, timeout_s=args.timeout)
    drivers = ", ".join(f"{kind} {d['endpoint']} (pid {d['pid']})" for kind, d in record["drivers"].items())
    print(f"up: control server {record['control']} (pid {record['server_pid']}), events {record['events']}, "
          f"data {record['data']}; drivers: {drivers or 'none'}; recorded in "
          f"{Path(args.run_dir) / 'endpoints.json'}")
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    from scanctl.services.launcher import down

    stopped = down(args.run_dir, timeout_s=args.timeout)
    print(f"down: stopped {', '.join(stopped) if stopped else 'nothing (no process was still running)'}")
    return EXIT_OK


def cmd_driver_serve(args: argparse.Namespace) -> int:
    import signal

    from scanctl.hw.registry import open_subsystem
    from scanctl.services.driver_service import DriverService

    prof = profiles.load(args.system)
    subsystem = open_subsystem(args.kind, args.url, prof)
    try:
        service = DriverService(args.kind, subsystem, args.bind, curve=server_curve(args), insecure=args.insecure,
                                client_timeout_s=args.client_timeout)
    except ScanctlError:
        subsystem.close()
        raise
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    print(f"serving {args.kind} ({args.url}) on {service.endpoint}", flush=True)
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        subsystem.close()
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from scanctl.services.server import ControlServer

    prof = profiles.load(args.system)
    overrides = {kind: url for kind in KINDS if (url := getattr(args, kind)) is not None}
    control, events, data = endpoints_of(args, prof)
    server = ControlServer(prof, control, events, None if data == "events" else data, overrides,
                           insecure=args.insecure, curve=server_curve(args), data_dir=args.data_dir,
                           **({} if args.control_timeout is None else {"control_timeout_s": args.control_timeout}))
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    e = server.endpoints
    print(f"scanner {prof.name!r}: commands on {e['control']}, events on {e['events']}, data on {e['data']}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from scanctl.services.client import Client

    with Client(args.connect, timeout_s=args.timeout, retries=0, keys=client_keys(args)) as client:
        snap = client.status()
    if args.json:
        print(json.dumps(snap, indent=2, default=json_default))
        return EXIT_OK
    print(f"{snap['server']} ({args.connect}): {snap['state']}" + (f", run {snap['run']}" if snap["run"] else ""))
    print(f"  control: {snap['controller'] or 'nobody'}" + (f"; busy: {snap['busy']}" if snap["busy"] else ""))
    prog = snap["progress"]
    if prog:
        print(f"  progress: {prog['t_s']:.3f}/{prog['total_s']:.3f} s, {prog['acquisitions']} acquisitions")
    for kind, sub in snap["subsystems"].items():
        print(f"  {kind}: {sub['state']}" + (f" ({sub['message']})" if sub["message"] else ""))
    tripped = [name for name, on in snap["interlocks"].items() if on]
    if tripped:
        print(f"  interlocks active: {', '.join(tripped)}")
    if snap["loaded"]:
        print(f"  loaded: {snap['loaded']['source']}")
    if snap["last_report"]:
        r = snap["last_report"]
        print(f"  last run {r['run']}: {r['outcome']}, {r['acquisitions']} acquisitions"
              + (f": {r['message']}" if r["message"] else ""))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    from scanctl.services.client import Client, ServerTimeoutError

    with Client(args.connect, keys=client_keys(args)) as client:
        snap = client.status()
        print(f"# {snap['server']}: {snap['state']}" + (f", run {snap['run']}" if snap["run"] else ""), flush=True,
              file=sys.stderr if args.json else sys.stdout)  # with --json, stdout holds one object a line
        try:  # the server answered: from here on, one that stops answering went away
            _watch(client, args)
        except ServerTimeoutError:
            print(f"scanctl: error: the control server at {args.connect} stopped answering", file=sys.stderr)
            return EXIT_LIMITS
    return EXIT_OK


#: How long ``watch`` waits without an event before it asks whether the server is still there (s): the
#: server publishes telemetry every second.
WATCH_PROBE_S = 3.0


def _watch(client: Any, args: argparse.Namespace) -> None:
    """Print events until ``--count`` or ``--timeout``; raises ServerTimeoutError when the server is gone."""
    seen = 0
    with client.subscribe(data=args.data) as sub:
        reported, quiet_s = 0, 0.0
        while args.count is None or seen < args.count:
            wait_s = WATCH_PROBE_S if args.timeout is None else min(WATCH_PROBE_S, args.timeout - quiet_s)
            msg = sub.recv(wait_s)
            if msg is None:
                quiet_s += wait_s
                if args.timeout is not None and quiet_s >= args.timeout:
                    return
                client.command("status", timeout_s=2.0)  # quiet this long: is it there?
                continue
            quiet_s = 0.0
            if msg.stream in ("sync", "data_sync"):
                continue
            seen += 1
            for gap in sub.gaps[reported:]:
                print(f"scanctl: gap on {gap.stream}: expected seq {gap.expected}, got {gap.got}", file=sys.stderr)
            reported = len(sub.gaps)
            print(event_line(msg, args.json), flush=True)


def event_line(msg: Message, as_json: bool) -> str:
    from dataclasses import fields

    if as_json:  # arrays are binary frames on the wire: each is listed by its dtype and shape here
        return json.dumps({f.name: getattr(msg, f.name) for f in fields(msg)}, default=_array_summary)
    try:
        text = _event_text(msg.stream, msg.body)
    except Exception:  # noqa: BLE001 - not the body its stream has (any error: an event never ends watch)
        text = json.dumps(msg.body, default=_array_summary)
    return f"{msg.ts:.3f} {msg.stream}#{msg.seq} {msg.run or '-'} {text}"


def _event_text(stream: str | None, b: dict[str, Any]) -> str:
    """An event's body in a few words, by its stream (a body of another shape raises)."""
    from scanctl.transport.acquisitions import check_acquisitions

    if stream == "state":
        return f"{b['source']} -> {b['dest']} ({b['trigger']})" + (f": {b['reason']}" if b.get("reason") else "")
    if stream == "progress":
        return f"{b['t_s']:.3f}/{b['total_s']:.3f} s, {b['acquisitions']} acquisitions"
    if stream == "telemetry":
        return ", ".join(f"{k}: {v['state']}" for k, v in b["subsystems"].items())
    if stream == "run":
        return f"{b['event']}" + (f": {b['outcome']}, {b['acquisitions']} acquisitions" if b["event"] == "end" else "")
    if stream == "data" and b.get("end"):
        return f"end of data: {b['acquisitions']} acquisitions in the run"
    if stream == "data":
        return f"{check_acquisitions(b['acquisitions'])} acquisitions, {b['acquisitions']['data'].size} samples"
    return json.dumps(b, default=_array_summary)


def _array_summary(value: object) -> object:
    if isinstance(value, np.ndarray):
        return {"dtype": value.dtype.str, "shape": list(value.shape)}
    return json_default(value)


def cmd_command(args: argparse.Namespace) -> int:
    """One command verb (load, start, abort, …): take control, send it, give control back — unless this
    client (``--name``) held control already, or the verb is about control itself or needs none."""
    from scanctl.services.client import Client, CommandError

    name = args.command.replace("-", "_")
    with Client(args.connect, name=args.name, keys=client_keys(args)) as client:
        try:
            if name in ("take_control", "release_control", "emergency_stop"):
                body = _send_command(client, name, args)
            else:
                holder = client.status()["controller"] or ""
                held = holder == client.name or holder.startswith(f"{client.name}@")  # (@KEY: with CurveZMQ)
                if not held:
                    client.take_control(force=args.force)
                try:
                    body = _send_command(client, name, args)
                finally:
                    if not held:
                        client.release_control()
        except CommandError as exc:
            print(f"scanctl: {args.command} refused: {exc}", file=sys.stderr)
            return EXIT_UNREADABLE if exc.code == "bad_argument" else EXIT_LIMITS
    print(_command_line(args.command, body))
    return EXIT_OK


def _send_command(client: Client, name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "take_control":
        return client.take_control(force=args.force)
    if name == "move_table":
        return client.move_table(args.position_mm, args.speed)
    if name == "emergency_stop":
        return client.emergency_stop(args.reason)
    if name == "load":
        options = {"patient_weight_kg": args.patient_weight, "mode": args.mode, "prescan": not args.no_prescan}
        if not args.upload:
            return client.load(Path(args.file).resolve(), **options)
        source = Path(args.file)
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScanctlError(f"{source}: cannot read: {exc}") from None
        return client.load(text=text, format="seq" if source.suffix.lower() == ".seq" else "toml",
                           name=source.name, **options)
    return client.command(name)


def _command_line(verb: str, body: dict[str, Any]) -> str:
    """What a command verb prints: its answer, and what the answer carries that matters."""
    details = []
    if "position_mm" in body:
        details.append(f"at {body['position_mm']:.1f} mm")
    if "controller" in body:
        details.append(f"controller {body['controller'] or 'nobody'}")
    if "sequence" in body:  # load
        seq = body["sequence"]
        details.append(f"{seq['name'] or body['protocol'].get('source', '')}: {seq['blocks']} blocks, "
                       f"{seq['duration_s']:.3f} s")
    if "run" in body:  # start
        details.append(f"run {body['run']}: its data goes to subscribers, e.g. scanctl watch --data")
    if "state" in body:
        details.append(f"state {body['state']}")
    return f"{verb}: {body['status']}" + (f" ({'; '.join(details)})" if details else "")


def cmd_runs(args: argparse.Namespace) -> int:
    from scanctl.services.client import Client

    with Client(args.connect, keys=client_keys(args)) as client:
        body = client.command("runs")
    if args.json:
        print(json.dumps(body, indent=2))
        return EXIT_OK
    print(f"{len(body['runs'])} runs kept in {body['dir']} on the server at {args.connect}")
    for run in body["runs"]:
        sizes = ", ".join(f"{name} {size:,} bytes" for name, size in run["files"].items())
        print(f"  {run['run']}: {sizes}")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from scanctl.services.client import Client

    out = Path(args.out) if args.out else Path(args.run)
    with Client(args.connect, keys=client_keys(args)) as client:
        written = client.fetch(args.run, out)
    print(f"fetched {args.run} into {out}: {', '.join(p.name for p in written)}")
    return EXIT_OK
