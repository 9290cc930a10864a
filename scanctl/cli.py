"""The ``scanctl`` command line.

Exit codes: 0 success (and, for ``check``, within limits); 1 readable but limits broken;
2 unreadable input or a usage/configuration error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence as Argv
from pathlib import Path

import numpy as np

from scanctl import profile as profiles
from scanctl.errors import ScanctlError, SequenceFormatError
from scanctl.sequence.model import Sequence

log = logging.getLogger("scanctl")

EXIT_OK, EXIT_LIMITS, EXIT_UNREADABLE = 0, 1, 2


def _load_sequence(args: argparse.Namespace, profile: profiles.SystemProfile | None = None) -> Sequence:
    """The Pulseq file ``args.file``, or the sequence of a protocol file (``.toml``) built for ``profile``."""
    from scanctl.sequence.pulseq_read import read

    if Path(args.file).suffix.lower() == ".toml":
        from scanctl.protocol import load_protocol

        return load_protocol(args.file).build_sequence(profile or profiles.load())
    try:
        return read(args.file, verify_signature=not args.ignore_signature)
    except ScanctlError:
        raise
    except Exception as exc:  # MemoryError, a reader bug (IndexError, KeyError, ...): still one clear line
        # tests call the reader directly and see the bug itself.
        raise SequenceFormatError(args.file, None, f"cannot be read ({type(exc).__name__}: {exc})") from exc


def cmd_check(args: argparse.Namespace) -> int:
    from scanctl.sequence.checks import check

    prof = profiles.load(args.system)
    seq = _load_sequence(args, prof)
    report = check(seq, prof)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=_json_default))
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
        print(f"{'OK' if report.ok else 'LIMITS BROKEN'} against profile {prof.name!r}")
    return EXIT_OK if report.ok else EXIT_LIMITS


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
    from scanctl.run import ProgressBar, run_scan

    prof = profiles.load(args.system)
    overrides = {kind: url for kind in ("gradient", "rf", "table") if (url := getattr(args, kind)) is not None}
    out = Path(args.out) if args.out else Path("out") / Path(args.file).stem
    report = run_scan(args.file, prof, out, overrides=overrides, progress=ProgressBar(),
                      reconstruct=not args.no_recon)
    t = report.timings
    if report.outcome == "refused":
        print(f"{args.file}: refused before anything moved: {report.message}", file=sys.stderr)
    else:
        rate = f", {t['real_time_factor']:.2f}x real time" if "real_time_factor" in t else ""
        print(f"{args.file}: {report.outcome}: {report.acquisitions} acquisitions, "
              f"{report.sequence['duration_s']:.3f} s of sequence in {t.get('scan_wall_s', 0.0):.3f} s{rate}")
        if report.message:
            print(f"  {report.message}")
    print(f"wrote {', '.join(str(out / name) for name in report.outputs.values())}")
    return EXIT_OK if report.ok else EXIT_LIMITS


def cmd_driver_serve(args: argparse.Namespace) -> int:
    import signal

    from scanctl.registry import open_subsystem
    from scanctl.service import DriverService

    prof = profiles.load(args.system)
    subsystem = open_subsystem(args.kind, args.url, prof)
    service = DriverService(args.kind, subsystem, args.bind)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    print(f"serving {args.kind} ({args.url}) on {service.endpoint}", flush=True)
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        subsystem.close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanctl", description="MR scanner control plane")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
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
    p.add_argument("--out", help="output directory (default: out/<name>)")
    for kind in ("gradient", "rf", "table"):
        p.add_argument(f"--{kind}", metavar="URL", help=f"{kind} subsystem URL (default: the profile's)")
    p.add_argument("--no-recon", action="store_true", help="skip the image reconstruction")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("driver", help="driver services", description="Run a subsystem driver as a ZeroMQ service")
    driver = p.add_subparsers(dest="driver_command", required=True)
    p = driver.add_parser("serve", help="serve one subsystem (simulated or real) on a ZeroMQ endpoint")
    p.add_argument("kind", choices=("gradient", "rf", "table"))
    p.add_argument("--url", default="sim://", help="the subsystem to serve (default: its simulator, sim://)")
    p.add_argument("--bind", default="tcp://127.0.0.1:*", help="endpoint (default: a free loopback port)")
    p.add_argument("--system", help="system profile the subsystem is built for")
    p.set_defaults(func=cmd_driver_serve)

    p = seq_command("check", "check a sequence's (or a protocol's) timing and a scanner's limits")
    p.add_argument("--system", help="system profile: a shipped name (e.g. 'default') or a TOML path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
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


def main(argv: Argv[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
        return code
    except ScanctlError as exc:
        print(f"scanctl: error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except OSError as exc:
        target = getattr(exc, "filename", None) or ""
        print(f"scanctl: error: {target}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        print("scanctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
