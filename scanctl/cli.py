"""The ``scanctl`` command line.

Exit codes: 0 success (and, for ``check``, within limits); 1 readable but limits broken;
2 unreadable input or a usage/configuration error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Sequence as Argv
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from scanctl.config import profile as profiles
from scanctl.errors import ScanctlError, SequenceFormatError
from scanctl.hw.registry import KINDS
from scanctl.sequence.model import Sequence

if TYPE_CHECKING:
    from scanctl.services.client import Client
    from scanctl.transport.security import ClientCurve, ServerCurve
    from scanctl.transport.wire import Message

log = logging.getLogger("scanctl")

EXIT_OK, EXIT_LIMITS, EXIT_UNREADABLE = 0, 1, 2
# The control server's default endpoints (scanctl.services.server has the same; not imported: a light startup).
DEFAULT_CONTROL = profiles.DEFAULT_ENDPOINTS["control"]


def _load_sequence(args: argparse.Namespace, profile: profiles.SystemProfile | None = None) -> Sequence:
    """The Pulseq file ``args.file``, or the sequence of a protocol file (``.toml``) built for ``profile``."""
    from scanctl.sequence.pulseq_read import read

    if Path(args.file).suffix.lower() == ".toml":
        from scanctl.config.protocol import load_protocol

        return load_protocol(args.file).build_sequence(profile or profiles.load())
    try:
        return read(args.file, verify_signature=not args.ignore_signature)
    except ScanctlError:
        raise
    except Exception as exc:  # MemoryError, a reader bug (IndexError, KeyError, ...): still one clear line
        # tests call the reader directly and see the bug itself.
        raise SequenceFormatError(args.file, None, f"cannot be read ({type(exc).__name__}: {exc})") from exc


def cmd_check(args: argparse.Namespace) -> int:
    from scanctl.safety.predict import predict, write_report
    from scanctl.sequence.checks import check

    prof = profiles.load(args.system)
    seq = _load_sequence(args, prof)
    report = check(seq, prof)
    weight = args.patient_weight if args.patient_weight is not None else _protocol_weight(args.file)
    safety = predict(seq, prof, weight, args.mode)
    for v in safety.violations:
        report.violations.append(v)
        report.violation_counts[v.kind] = report.violation_counts.get(v.kind, 0) + 1
    if args.report:
        write_report(safety, seq, prof, args.report)
    if args.json:
        print(json.dumps({**report.to_json(), **safety.to_json()}, indent=2, default=_json_default))
    else:
        kind = "protocol" if Path(args.file).suffix.lower() == ".toml" else f"Pulseq {report.format_version}"
        print(f"{args.file}: {kind}, {report.blocks} blocks, {report.duration_s:.6f} s, "
              f"{report.rf_events} RF, {report.adc_events} ADC ({report.adc_samples} samples)")
        for axis in "xyz":
            print(f"  {axis}: max gradient {report.max_gradient_hz_per_m[axis]:.6g} Hz/m, "
                  f"max slew {report.max_slew_hz_per_m_per_s[axis]:.6g} Hz/m/s")
        for v in report.violations:
            print(f"  {v.kind}: {v.message}")
        listed = len(report.violations)
        total = sum(report.violation_counts.values())
        if total > listed:
            print(f"  … {total - listed} more ({', '.join(f'{k}: {n}' for k, n in report.violation_counts.items())})")
        sar, pns, coil = safety.sar, safety.pns, safety.heating["gradient_coil"]
        assumed = " (assumed: no --patient-weight)" if safety.weight_assumed else ""
        print(f"  safety, {safety.mode.replace('_', '-')} mode, {safety.patient_weight_kg:g} kg{assumed}: "
              f"SAR whole body {sar['whole_body']['6min']['peak_w_per_kg']:.3g} W/kg (6 min), "
              f"{sar['whole_body']['10s']['peak_w_per_kg']:.3g} W/kg (10 s), head "
              f"{sar['head']['6min']['peak_w_per_kg']:.3g} W/kg; PNS {pns['peak_percent']:.1f} %; "
              f"coil {coil['peak_temperature_c']:.1f} °C")
        print(f"{'OK' if report.ok else 'LIMITS BROKEN'} against profile {prof.name!r}")
    return EXIT_OK if report.ok else EXIT_LIMITS


def _protocol_weight(path: str) -> float | None:
    """The patient weight a protocol file gives (None for a Pulseq file)."""
    if Path(path).suffix.lower() != ".toml":
        return None
    from scanctl.config.protocol import load_protocol

    return load_protocol(path).patient.weight_kg


def safety_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patient-weight", type=float, metavar="KG",
                   help="the patient's weight for SAR (default: the protocol's; for a Pulseq file a conservative "
                        "assumed weight)")
    p.add_argument("--mode", default="normal", choices=("normal", "first-level"),
                   help="IEC 60601-2-33 operating mode (default normal; first-level only when asked for)")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def cmd_waveforms(args: argparse.Namespace) -> int:
    from scanctl.sequence.waveforms import axis_waveform

    seq = _load_sequence(args)
    waves = [axis_waveform(seq, a) for a in range(3)]
    if args.raster is not None:
        if not args.raster > 0:
            raise ScanctlError(f"--raster must be positive, got {args.raster}")
        n = int(np.floor(seq.duration_s / args.raster)) + 1
        if n > 200_000_000:
            raise ScanctlError(f"--raster {args.raster} s gives {n} samples; choose a coarser raster")
        t = np.arange(n) * args.raster
    else:
        t = np.unique(np.concatenate([w.t_s for w in waves] + [np.array([0.0, seq.duration_s])]))
    np.savez(args.out, t_s=t, gx=waves[0].sample(t), gy=waves[1].sample(t), gz=waves[2].sample(t))
    print(f"wrote {args.out}: {t.size} time points, gradients in Hz/m")
    return EXIT_OK


def cmd_kspace(args: argparse.Namespace) -> int:
    from scanctl.sequence.waveforms import kspace_adc

    seq = _load_sequence(args)
    k = kspace_adc(seq)
    with open(args.out, "wb") as fh:
        np.save(fh, k)
    print(f"wrote {args.out}: k-space at {k.shape[1]} ADC samples, shape (3, N), 1/m")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from scanctl.sequence import plot

    seq = _load_sequence(args)
    if args.kspace:
        plot.plot_kspace(seq, args.out)
    else:
        rng = None
        if args.time_range is not None:
            a, b = args.time_range
            if not (np.isfinite(a) and np.isfinite(b) and b > a):
                raise ScanctlError(f"--time-range needs A < B (seconds), got {a} {b}")
            rng = (a, b)
        plot.plot_sequence(seq, args.out, rng)
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from scanctl.data.outputs import OutputError, OutputExistsError, claim_dir, new_series_dir, remove_if_empty
    from scanctl.data.rawdata import RawDataError
    from scanctl.engine.run import RunOutputError

    if args.connect and (args.system or any(getattr(args, kind) for kind in KINDS)):
        raise ScanctlError("--system and subsystem URLs belong to the server (scanctl serve) with --connect")
    # Never over earlier data: --out must be new or empty; by default each run gets the next numbered
    # directory, as a console numbers its series (docs/cli.md).
    numbered = not args.out
    out = new_series_dir(Path("out") / Path(args.file).stem) if numbered else claim_dir(args.out)
    try:
        report = _run(args, out)
    except OutputExistsError:
        raise
    except (OutputError, RawDataError, RunOutputError) as exc:  # the run's files, not its input: exit 1
        print(f"scanctl: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_LIMITS
    except BaseException:
        if numbered:  # a run refused as bad input leaves no empty numbered directory (nor out/<name>)
            remove_if_empty(out)
            remove_if_empty(out.parent)
        raise
    if isinstance(report, int):  # refused by the server, or lost during the run (printed)
        return report
    t = report.timings
    if report.outcome == "refused":
        print(f"{args.file}: refused before anything moved: {report.message}", file=sys.stderr)
    else:
        rate = f", {t['real_time_factor']:.2f}x real time" if "real_time_factor" in t else ""
        played = f"{report.sequence.get('duration_s', report.duration_s):.3f} s"
        if report.outcome != "completed" and "real_time_factor" in t:  # ended early: how far it played
            played = f"{t['real_time_factor'] * t['scan_wall_s']:.3f} of {played}"
        print(f"{args.file}: {report.outcome}: {report.acquisitions} acquisitions, "
              f"{played} of sequence in {t.get('scan_wall_s', 0.0):.3f} s{rate}")
        if report.message:
            print(f"  {report.message}")
    print(f"wrote into {out}: {', '.join(report.outputs.values())}")
    return EXIT_OK if report.ok else EXIT_LIMITS


def _run(args: argparse.Namespace, out: Path) -> Any:
    """``scanctl run`` into ``out``, in this process or on the server ``--connect`` names: the RunReport,
    or the exit code when the server refused the run or stopped answering during it (the line printed)."""
    from scanctl.engine.run import ProgressBar
    from scanctl.engine.session import run_scan

    if not args.connect:
        prof = profiles.load(args.system)
        overrides = {kind: url for kind in KINDS if (url := getattr(args, kind)) is not None}
        return run_scan(args.file, prof, out, overrides=overrides, progress=ProgressBar(),
                        reconstruct=not args.no_recon, patient_weight_kg=args.patient_weight, mode=args.mode)
    from scanctl.services.client import Client, CommandError, ServerLostError, run_remote

    with Client(args.connect, keys=client_keys(args)) as client:
        try:
            return run_remote(client, args.file, out, upload=args.upload, progress=ProgressBar(),
                              reconstruct=not args.no_recon, force=args.force,
                              patient_weight_kg=args.patient_weight, mode=args.mode)
        except CommandError as exc:
            print(f"scanctl: run refused: {_one_line(exc)}", file=sys.stderr)
            return EXIT_UNREADABLE if exc.code == "bad_argument" else EXIT_LIMITS
        except ServerLostError as exc:  # it answered before: not a key or endpoint problem, the run ended early
            print(f"scanctl: error: the control server at {args.connect} stopped answering during run "
                  f"{exc.run_id}; the acquisitions received so far are in {out / 'raw.h5'}", file=sys.stderr)
            return EXIT_LIMITS


def client_keys(args: argparse.Namespace) -> ClientCurve | None:
    """The CurveZMQ keys of ``--keys``/``--server-key`` (None without ``--keys``)."""
    from scanctl.transport.security import ClientCurve

    if getattr(args, "keys", None) is None:
        if getattr(args, "server_key", None) is not None:
            raise ScanctlError("--server-key needs --keys (this client's key pair)")
        return None
    return ClientCurve.load(args.keys, args.server_key)


def server_curve(args: argparse.Namespace) -> ServerCurve | None:
    """The CurveZMQ server keys of ``--keys``/``--allow`` (None without ``--keys``)."""
    from scanctl.transport.security import ServerCurve

    if args.keys is None:
        if args.allow is not None:
            raise ScanctlError("--allow needs --keys (the server's key pair)")
        return None
    return ServerCurve.load(args.keys, args.allow)


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
        print(json.dumps(snap, indent=2, default=_json_default))
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
            print(_event_line(msg, args.json), flush=True)


def _event_line(msg: Message, as_json: bool) -> str:
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
    from scanctl.transport.wire import check_acquisitions

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
    return _json_default(value)


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
        if not args.upload:
            return client.load(Path(args.file).resolve(), patient_weight_kg=args.patient_weight, mode=args.mode)
        source = Path(args.file)
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScanctlError(f"{source}: cannot read: {exc}") from None
        return client.load(text=text, format="seq" if source.suffix.lower() == ".seq" else "toml",
                           name=source.name, patient_weight_kg=args.patient_weight, mode=args.mode)
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


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def positive_count(text: str) -> int:
    """An argparse type: a whole number, at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def endpoint_args(p: argparse.ArgumentParser) -> None:
    """--bind/--events/--data: the server's endpoints (default: the profile's [server], else 5555–5557)."""
    d = profiles.DEFAULT_ENDPOINTS
    p.add_argument("--bind", help=f"command endpoint (default: the profile's server.control, else {d['control']}; "
                                  f"':0' for a free port)")
    p.add_argument("--events", help=f"event endpoint (default: server.events, else {d['events']})")
    p.add_argument("--data", help=f"ADC data endpoint, or 'events' to publish data on the event socket "
                                  f"(default: server.data, else {d['data']})")


def endpoints_of(args: argparse.Namespace, prof: profiles.SystemProfile) -> tuple[str, str, str]:
    """The control, events and data endpoints: the options given, else the profile's."""
    e = prof.endpoints
    return args.bind or e["control"], args.events or e["events"], args.data or e["data"]


def server_security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", metavar="PATH", help="CurveZMQ: the server's .key_secret file, or a directory holding "
                                                  "server.key_secret; requires CURVE of every client")
    p.add_argument("--allow", metavar="DIR", help="with --keys: directory of the allowed clients' public keys (*.key)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without authentication")


def client_security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", metavar="PATH", help="CurveZMQ: this client's .key_secret file, or a directory holding "
                                                  "client.key_secret (and the server's server.key)")
    p.add_argument("--server-key", metavar="FILE", help="with --keys: the server's public key "
                                                        "(default server.key beside the client key)")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (``scanctl: error: ...``, exit 2) like every other
    bad input; ``-h`` still prints the usage. Subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("scanctl").strip()
        self.exit(EXIT_UNREADABLE, f"scanctl: error: {f'{where}: ' if where else ''}{_one_line(message)} "
                                   f"(see {self.prog} --help)\n")


def _one_line(text: object) -> str:
    """``text`` on one line: an error that carries several (a child's log tail, a parser's message)
    keeps every line, joined with `` | ``."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scanctl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog="scanctl", description="MR scanner control plane")
    parser.add_argument("--version", action="version", version=f"scanctl {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress to stderr (-vv: also the state machine library's own log)")
    sub = parser.add_subparsers(dest="command", required=True)

    def seq_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("file", help="Pulseq .seq file")
        p.add_argument("--ignore-signature", action="store_true",
                       help="read the file even if its MD5 signature does not match")
        return p

    p = sub.add_parser("run", help="run a protocol (or a Pulseq file) on the scanner's subsystems",
                       description="Run a protocol (.toml) or a Pulseq file (.seq): raw data (ISMRMRD), image, "
                                   "report. Exit 0: completed; 1: refused or ended early; 2: bad input.")
    p.add_argument("file", help="protocol .toml or Pulseq .seq file")
    p.add_argument("--system", help="system profile: a shipped name (e.g. 'default') or a TOML path")
    p.add_argument("--out", help="output directory, new or empty (default: the next numbered one, out/<name>/NNN)")
    for kind in KINDS:
        p.add_argument(f"--{kind}", metavar="URL", help=f"{kind} subsystem URL (default: the profile's)")
    p.add_argument("--no-recon", action="store_true", help="skip the image reconstruction")
    safety_args(p)
    p.add_argument("--connect", metavar="ENDPOINT", help="run on a control server (scanctl serve) instead of in "
                                                         "this process; outputs are written here")
    p.add_argument("--upload", action="store_true", help="with --connect: send the file's content, not its path")
    p.add_argument("--force", action="store_true", help="with --connect: take control from another client")
    client_security_args(p)
    p.set_defaults(func=cmd_run)

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

    def connect_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--connect", default=DEFAULT_CONTROL, metavar="ENDPOINT",
                       help=f"the control server's command endpoint (default {DEFAULT_CONTROL})")
        client_security_args(p)

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

    from scanctl import cli_bench, cli_runs

    cli_bench.add_parsers(sub)  # table, sim: bench work on rigs
    cli_runs.add_parsers(sub, connect_arg, client_keys)  # runs, fetch: the server's copies of runs

    p = seq_command("check", "check a sequence's (or a protocol's) timing and a scanner's limits")
    p.add_argument("--system", help="system profile: a shipped name (e.g. 'default') or a TOML path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    safety_args(p)
    p.add_argument("--report", metavar="DIR", help="also draw the SAR, PNS and temperature curves as PNGs in DIR")
    p.set_defaults(func=cmd_check)

    p = seq_command("waveforms", "write the gradient waveforms (Hz/m) to an .npz file")
    p.add_argument("--out", required=True, help="output .npz (t_s, gx, gy, gz)")
    p.add_argument("--raster", type=float, help="sample on a uniform grid of this step (s) instead of breakpoints")
    p.set_defaults(func=cmd_waveforms)

    p = seq_command("kspace", "write the k-space trajectory at the ADC samples to an .npy file")
    p.add_argument("--out", required=True, help="output .npy, shape (3, N), 1/m")
    p.set_defaults(func=cmd_kspace)

    p = seq_command("plot", "draw the sequence diagram (or the k-space trajectory) as PNG")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--time-range", nargs=2, type=float, metavar=("A", "B"), help="seconds")
    p.add_argument("--kspace", action="store_true", help="plot the k-space trajectory instead")
    p.set_defaults(func=cmd_plot)
    return parser


#: Exit code when whoever reads stdout stops reading (``scanctl status --json | head -c 10``): as a tool
#: killed by SIGPIPE shows in a shell (128 + 13), but exiting by itself, so a run in progress ends safe.
EXIT_BROKEN_PIPE = 141


def configure_logging(verbosity: int) -> None:
    """Logging to stderr: warnings only; ``-v`` (1) scanctl's progress (INFO); ``-vv`` (2) scanctl's debug
    log and the ``transitions`` library's own INFO log (every callback it runs), kept at WARNING below."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("scanctl").setLevel(
        logging.NOTSET if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    logging.getLogger("transitions").setLevel(logging.INFO if verbosity >= 2 else logging.WARNING)


def main(argv: Argv[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except ScanctlError as exc:
        print(f"scanctl: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_UNREADABLE
    except OSError as exc:
        target = getattr(exc, "filename", None)
        print(f"scanctl: error: {f'{target}: ' if target else ''}{_one_line(exc.strerror or exc)}", file=sys.stderr)
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        print("scanctl: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what is left in its buffer cannot be written, and Python would say so
    (a traceback) when it flushes at exit."""
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
