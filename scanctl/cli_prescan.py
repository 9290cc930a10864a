"""``scanctl prescan``: the calibrations (frequency, transmit scale, shim, receiver gain, noise) on the profile's
subsystems, printed with their uncertainties (docs/prescan.md). Registered in :func:`scanctl.cli.build_parser`;
``scanctl run``'s ``--no-prescan`` is added there too."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from typing import Any

from scanctl.cli_common import EXIT_LIMITS, EXIT_OK, json_default, safety_args
from scanctl.config import profile as profiles
from scanctl.errors import ConfigError, SafetyLimitError


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
    where = p.add_mutually_exclusive_group()
    where.add_argument("--protocol", metavar="FILE",
                       help="calibrate for this protocol (.toml) or Pulseq file as scanctl run does before it: at its "
                            "table position ([table] position_mm), on its scene in a simulated RF system")
    where.add_argument("--table-position-mm", type=_millimetres, metavar="MM",
                       help="the table position to calibrate at, mm from home (default 0): where the scan will "
                            "image, since the patient loads the coil and shifts B0 there")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    safety_args(p)
    p.set_defaults(func=cmd_prescan)


def _millimetres(text: str) -> float:
    """An argparse type: a finite number (mm)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of millimetres")
    return value


def _where(args: argparse.Namespace, profile: Any) -> tuple[float, Any]:
    """The table position (mm) to calibrate at and the scene to place (None: the simulator's own, or what
    --phantom/--matrix say), as ``scanctl run`` would for ``--protocol``. Raises ConfigError naming the option
    (a position beyond the profile's table travel included) before anything connects."""
    from scanctl.engine.run import load_source, scene_for
    from scanctl.hw.interfaces import Scene
    from scanctl.safety.interlocks import check_table_move

    scene = None
    if args.protocol is not None:
        seq, protocol = load_source(args.protocol, profile)
        position, option = (protocol.table_position_mm if protocol is not None else 0.0), f"--protocol {args.protocol}"
        scene = scene_for(seq, protocol)
    else:
        position = 0.0 if args.table_position_mm is None else args.table_position_mm
        option = f"--table-position-mm {position:g}"
    try:
        check_table_move(profile.safety.table, position, None)
    except SafetyLimitError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    if args.phantom is not None or args.matrix is not None:
        given = {k: v for k, v in (("phantom", args.phantom), ("matrix", args.matrix)) if v is not None}
        scene = Scene(**given) if scene is None else replace(scene, **given)
    return position, scene


def cmd_prescan(args: argparse.Namespace) -> int:
    from scanctl.engine.executor import Scanner
    from scanctl.engine.run import place_scene
    from scanctl.prescan.runner import Prescan, ordered

    steps = ordered(args.steps or None)  # an unknown step is bad input before anything connects
    profile = profiles.load(args.system)
    position_mm, scene = _where(args, profile)
    overrides = {kind: url for kind in ("rf", "gradient", "table") if (url := getattr(args, kind)) is not None}
    scanner = Scanner.from_profile(profile, overrides)
    try:
        scanner.connect()
        if scene is not None:
            place_scene(scanner.rf, scene)
        result = Prescan(scanner, patient_weight_kg=args.patient_weight, mode=args.mode.replace("-", "_"),
                         table_position_mm=position_mm).run(steps)
    finally:
        scanner.close()
    if args.json:
        print(json.dumps({**result.to_json(), "table_position_mm": position_mm}, default=json_default))
    else:
        _print(result, position_mm)
    return EXIT_OK if result.ok else EXIT_LIMITS


def _print(result: Any, position_mm: float) -> None:
    for step in result.steps:
        found = ", ".join(f"{k} {_fmt(v)}" + (f" ± {step.sigma[k]:.2g}" if k in step.sigma else "")
                          for k, v in step.values.items())
        note = f" ({step.message})" if step.message else ""
        print(f"{step.step}: {step.outcome}{': ' + found if found else ''}{note}", file=sys.stdout)
    a = result.adjustments
    shim = ", ".join(f"{k} {v:.4g}" for k, v in result.shim.items())
    print(f"in force: frequency offset {a['frequency_offset_hz']:.3f} Hz, transmit scale {a['tx_scale']:.4f}, "
          f"receiver gain {a['receiver_gain_db']:.2f} dB, shim [{shim}] (Hz/m)")
    print(f"{result.sequence_s:.3f} s of sequence in {result.wall_s:.3f} s, at table position {position_mm:g} mm")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
