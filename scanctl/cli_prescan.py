"""``scanctl prescan``: the calibrations (frequency, transmit scale, shim, receiver gain, noise) on the profile's
subsystems, printed with their uncertainties (docs/prescan.md). Registered in :func:`scanctl.cli.build_parser`;
``scanctl run``'s ``--no-prescan`` is added there too."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scanctl.cli_common import EXIT_LIMITS, EXIT_OK, json_default, safety_args
from scanctl.config import profile as profiles


def add_parsers(sub: Any) -> None:
    """Add ``prescan`` to the ``scanctl`` sub-command parsers ``sub``."""
    from scanctl.prescan.runner import DEFAULT_STEPS, STEPS

    p = sub.add_parser("prescan", help="calibrate frequency, transmit scale, shim, receiver gain and noise",
                       description="Run the prescan calibrations on the profile's subsystems (all, or the STEPs "
                                   "named), set what they find on the drivers and print it with its uncertainty. "
                                   "Exit 0: every step converged; 1: a step was refused or did not converge (its "
                                   "previous values kept); 2: bad input.")
    p.add_argument("steps", nargs="*", metavar="STEP", help=f"steps to run: {', '.join(STEPS)} (default: "
                                                                    f"{', '.join(DEFAULT_STEPS)})")
    p.add_argument("--system", help="system profile: a shipped name (e.g. 'default') or a TOML path")
    for kind in ("rf", "gradient", "table"):
        p.add_argument(f"--{kind}", metavar="URL", help=f"{kind} subsystem URL (default: the profile's)")
    p.add_argument("--phantom", help="a simulated RF system's phantom (default: the simulator's own)")
    p.add_argument("--matrix", type=int, help="a simulated RF system's phantom matrix (default: the simulator's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    safety_args(p)
    p.set_defaults(func=cmd_prescan)


def cmd_prescan(args: argparse.Namespace) -> int:
    from scanctl.engine.executor import Scanner
    from scanctl.engine.run import place_scene
    from scanctl.hw.interfaces import Scene
    from scanctl.prescan.runner import Prescan, ordered

    steps = ordered(args.steps or None)  # an unknown step is bad input before anything connects
    profile = profiles.load(args.system)
    overrides = {kind: url for kind in ("rf", "gradient", "table") if (url := getattr(args, kind)) is not None}
    scanner = Scanner.from_profile(profile, overrides)
    try:
        scanner.connect()
        if args.phantom is not None or args.matrix is not None:
            place_scene(scanner.rf, Scene(phantom=args.phantom, matrix=args.matrix))
        result = Prescan(scanner, patient_weight_kg=args.patient_weight, mode=args.mode.replace("-", "_")).run(steps)
    finally:
        scanner.close()
    if args.json:
        print(json.dumps(result.to_json(), default=json_default))
    else:
        _print(result)
    return EXIT_OK if result.ok else EXIT_LIMITS


def _print(result: Any) -> None:
    for step in result.steps:
        found = ", ".join(f"{k} {_fmt(v)}" + (f" ± {step.sigma[k]:.2g}" if k in step.sigma else "")
                          for k, v in step.values.items())
        note = f" ({step.message})" if step.message else ""
        print(f"{step.step}: {step.outcome}{': ' + found if found else ''}{note}", file=sys.stdout)
    a = result.adjustments
    shim = ", ".join(f"{k} {v:.4g}" for k, v in result.shim.items())
    print(f"in force: frequency offset {a['frequency_offset_hz']:.3f} Hz, transmit scale {a['tx_scale']:.4f}, "
          f"receiver gain {a['receiver_gain_db']:.2f} dB, shim [{shim}] (Hz/m)")
    print(f"{result.sequence_s:.3f} s of sequence in {result.wall_s:.3f} s")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
