"""Benchmark: real-time factor (sequence duration / wall time) of whole scans on the simulators.

    .venv/bin/python benchmarks/bench_run.py

1. ``protocols/gre_2d.toml`` (128 x 128 RF-spoiled GRE) with physics on: Bloch simulation of the
   phantom, raw data written, image reconstructed.
2. The pypulseq-generated 256,000-block 3D GRE (``benchmarks/make_gre3d.py``, cached in
   ``.bench-cache/``) with physics off: timing, streaming and raw data only.

Each scan runs through ``scanctl.engine.run.run_scan``, exactly what ``scanctl run`` does; the wall time is the
scan itself (``timings.scan_wall_s`` of the report: arming, streaming, acquisition, raw data).
Targets (issue 3): >= 1x real time with physics at 128 x 128, >= 50x without.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from bench_read_check import _ensure_file  # noqa: E402

from scanctl.config import profile as profiles  # noqa: E402
from scanctl.engine.session import run_scan  # noqa: E402

TARGET_PHYSICS = 1.0
TARGET_NO_PHYSICS = 50.0


def _measure(source: Path, overrides: dict[str, str], reconstruct: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        report = run_scan(source, profiles.load(), out, overrides=overrides, reconstruct=reconstruct)
    if report.outcome != "completed":
        raise SystemExit(f"{source}: scan ended {report.outcome}: {report.message}")
    t = report.timings
    return {"duration_s": report.sequence["duration_s"], "scan_wall_s": t["scan_wall_s"],
            "real_time_factor": t["real_time_factor"], "acquisitions": report.acquisitions,
            "blocks": report.sequence["blocks"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", type=Path, default=REPO_ROOT / "protocols" / "gre_2d.toml")
    parser.add_argument("--blocks", type=int, default=256_000, help="blocks of the physics-off 3D GRE")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / ".bench-cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    rows = {
        "physics on": (_measure(args.protocol, {}, True), TARGET_PHYSICS),
        "physics off": (_measure(_ensure_file(args.blocks, args.cache, False), {"rf": "sim://?physics=0"}, False),
                        TARGET_NO_PHYSICS),
    }
    print(f"{'scan':12} {'blocks':>8} {'acq':>7} {'sequence s':>11} {'wall s':>8} {'x real time':>12}  target")
    ok = True
    for name, (r, target) in rows.items():
        passed = r["real_time_factor"] >= target
        ok &= passed
        print(f"{name:12} {r['blocks']:8d} {r['acquisitions']:7d} {r['duration_s']:11.3f} {r['scan_wall_s']:8.3f} "
              f"{r['real_time_factor']:12.2f}  >= {target:g}x {'PASS' if passed else 'FAIL'}")
    if args.json:
        print(json.dumps({name: r for name, (r, _) in rows.items()}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
