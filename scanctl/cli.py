"""The ``scanctl`` command line.

Exit codes: 0 success (and, for ``check``, within limits); 1 readable but limits broken;
2 unreadable input or a usage/configuration error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence as Argv
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from scanctl.cli_common import (
    EXIT_LIMITS,
    EXIT_OK,
    EXIT_UNREADABLE,
    client_keys,
    client_security_args,
    json_default,
    one_line,
    safety_args,
)
from scanctl.config import profile as profiles
from scanctl.errors import ScanctlError, SequenceFormatError
from scanctl.hw.registry import KINDS
from scanctl.sequence.model import Sequence

if TYPE_CHECKING:
    pass

log = logging.getLogger("scanctl")



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
        print(json.dumps({**report.to_json(), **safety.to_json()}, indent=2, default=json_default))
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
    from scanctl import cli_dicom
    from scanctl.data.outputs import OutputError, OutputExistsError, claim_dir, new_series_dir, remove_if_empty
    from scanctl.data.rawdata import RawDataError
    from scanctl.engine.run import RunOutputError

    if args.connect and (args.system or any(getattr(args, kind) for kind in KINDS)):
        raise ScanctlError("--system and subsystem URLs belong to the server (scanctl serve) with --connect")
    order = cli_dicom.resolve_order(args)  # the patient: its weight judges SAR, its study the DICOM
    if order is not None:
        args.patient_weight = _order_weight(order, args.patient_weight)
    dicom = cli_dicom.prepare(args, order)  # a bad PACS address or order is refused before anything moves
    if dicom is not None and args.no_recon:
        raise ScanctlError("--dicom needs the reconstruction: leave out --no-recon")
    # Never over earlier data: --out must be new or empty; by default each run gets the next numbered
    # directory, as a console numbers its series (docs/cli.md).
    numbered = not args.out
    out = new_series_dir(Path("out") / Path(args.file).stem) if numbered else claim_dir(args.out)
    try:
        report = _run(args, out)
    except OutputExistsError:
        raise
    except (OutputError, RawDataError, RunOutputError) as exc:  # the run's files, not its input: exit 1
        print(f"scanctl: error: {one_line(exc)}", file=sys.stderr)
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
    code = EXIT_OK if report.ok else EXIT_LIMITS
    if dicom is not None and "image_npy" in report.outputs:  # what was acquired is on disk whatever the PACS does
        code = max(code, cli_dicom.export(out, dicom))
    return code


def _order_weight(order: Any, given: float | None) -> float:
    """The patient weight (kg) the scan's SAR is judged with: the order's. Raises ScanctlError (nothing
    moves) when the order has none and none is given, or when ``--patient-weight`` says otherwise."""
    if order.weight_kg is None and given is None:
        raise ScanctlError(f"the order for patient {order.patient_id} has no weight: SAR cannot be judged for "
                           f"this patient; give --patient-weight KG")
    if order.weight_kg is not None and given is not None and abs(given - order.weight_kg) > 1e-9:
        raise ScanctlError(f"--patient-weight {given:g} kg and the order's {order.weight_kg:g} kg (patient "
                           f"{order.patient_id}) differ: give one")
    return float(order.weight_kg if order.weight_kg is not None else given)  # type: ignore[arg-type]


def _run(args: argparse.Namespace, out: Path) -> Any:
    """``scanctl run`` into ``out``, in this process or on the server ``--connect`` names: the RunReport,
    or the exit code when the server refused the run or stopped answering during it (the line printed)."""
    from scanctl.engine.run import ProgressBar
    from scanctl.engine.session import run_scan

    if not args.connect:
        prof = profiles.load(args.system)
        overrides = {kind: url for kind in KINDS if (url := getattr(args, kind)) is not None}
        from scanctl.prescan.plan import before_run

        return run_scan(args.file, prof, out, overrides=overrides, progress=ProgressBar(),
                        reconstruct=not args.no_recon, patient_weight_kg=args.patient_weight, mode=args.mode,
                        prescan=None if args.no_prescan else before_run)
    from scanctl.services.client import Client, CommandError, ServerLostError
    from scanctl.services.remote_run import run_remote

    with Client(args.connect, keys=client_keys(args)) as client:
        try:
            return run_remote(client, args.file, out, upload=args.upload, progress=ProgressBar(),
                              reconstruct=not args.no_recon, force=args.force,
                              patient_weight_kg=args.patient_weight, mode=args.mode, prescan=not args.no_prescan)
        except CommandError as exc:
            print(f"scanctl: run refused: {one_line(exc)}", file=sys.stderr)
            return EXIT_UNREADABLE if exc.code == "bad_argument" else EXIT_LIMITS
        except ServerLostError as exc:  # it answered before: not a key or endpoint problem, the run ended early
            print(f"scanctl: error: the control server at {args.connect} stopped answering during run "
                  f"{exc.run_id}; the acquisitions received so far are in {out / 'raw.h5'}", file=sys.stderr)
            return EXIT_LIMITS




class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (``scanctl: error: ...``, exit 2) like every other
    bad input; ``-h`` still prints the usage. Subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("scanctl").strip()
        self.exit(EXIT_UNREADABLE, f"scanctl: error: {f'{where}: ' if where else ''}{one_line(message)} "
                                   f"(see {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scanctl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked for (importlib.metadata costs every
    other command 10 ms of start-up)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        print(f"scanctl {_version()}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog="scanctl", description="MR scanner control plane")
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
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
    p.add_argument("--no-prescan", action="store_true", help="skip the calibrations the protocol needs first "
                                                             "(docs/prescan.md)")
    from scanctl.cli_dicom import dicom_args

    dicom_args(p)  # --dicom DIR, --order, --store AET@HOST:PORT: images out (docs/dicom.md)
    safety_args(p)
    p.add_argument("--connect", metavar="ENDPOINT", help="run on a control server (scanctl serve) instead of in "
                                                         "this process; outputs are written here")
    p.add_argument("--upload", action="store_true", help="with --connect: send the file's content, not its path")
    p.add_argument("--force", action="store_true", help="with --connect: take control from another client")
    client_security_args(p)
    p.set_defaults(func=cmd_run)

    from scanctl import cli_bench, cli_dicom, cli_exam, cli_prescan, cli_recon, cli_remote, cli_report, cli_sweep
    cli_prescan.add_parsers(sub)  # prescan: frequency, transmit, shim, gain, noise
    cli_remote.add_parsers(sub)  # serve, status, watch, the command verbs, driver, keys, up, down, runs, fetch
    cli_bench.add_parsers(sub)  # table, sim: bench work on rigs
    cli_dicom.add_parsers(sub)  # export, pacs: images out as DICOM, to a PACS
    cli_exam.add_parsers(sub)  # exam: an order's exam card as a queue of runs (docs/exam.md)
    cli_recon.add_parsers(sub)  # recon: the images of any ISMRMRD file
    cli_report.add_parsers(sub)  # report: an exam's or a run's HTML report
    cli_sweep.add_parsers(sub)  # sweep: many scans on a Dask cluster, one results table

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
        print(f"scanctl: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_UNREADABLE
    except OSError as exc:
        target = getattr(exc, "filename", None)
        print(f"scanctl: error: {f'{target}: ' if target else ''}{one_line(exc.strerror or exc)}", file=sys.stderr)
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
