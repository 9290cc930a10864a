"""Benchmark: whole-process real-time factor of ``scanctl run`` for the acquisitions of issue 16, and the NUFFT
recon time of pypulseq's radial GRE.

    .venv/bin/python benchmarks/bench_acquisitions.py [--repeat 1] [--only NAME]

Real-time factor = the sequence's duration / the wall time of the whole ``scanctl run`` process (Python
start-up, reading and checking the file, prescan, the simulated scan with physics on (Bloch simulation of
the 3D phantom), raw data, recon, image files), on the default profile:

- ``gre_3slice``: ``protocols/t1_gre_multislice.toml`` with ``slices = 3`` (96 x 96, TR 70 ms);
- ``epi``: pypulseq 1.5.0.post1's ``write_epi.py`` as the script writes it (64 x 64, 3 slices);
- ``gre_3d``: ``protocols/gre_3d.toml`` (64 x 64 x 32).

Targets (issue 16): >= 1x real time for the 2D scans, >= 0.5x for the 3D one. Then the radial GRE recon
(``benchmarks/bench_recon.py``'s file and timer: read + recon of the 64-spoke, 64-sample radial GRE),
target < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # tests/pypulseq_examples.py
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

TARGETS = {"gre_3slice": 1.0, "epi": 1.0, "gre_3d": 0.5}
RECON_TARGET_S = 1.0


def gre_3slice(folder: Path) -> Path:
    """protocols/t1_gre_multislice.toml with 3 slices instead of 7 (the rest as shipped)."""
    text = (REPO_ROOT / "protocols" / "t1_gre_multislice.toml").read_text(encoding="utf-8")
    if "slices = 7" not in text:
        raise SystemExit("protocols/t1_gre_multislice.toml no longer says 'slices = 7': update this benchmark")
    path = folder / "t1_gre_3slice.toml"
    path.write_text(text.replace("slices = 7", "slices = 3").replace('name = "t1_gre_multislice"',
                                                                       'name = "t1_gre_3slice"'), encoding="utf-8")
    return path


def epi(folder: Path) -> Path:
    """pypulseq's write_epi.py at its own size, as tests/pypulseq_examples.py builds it (the same file)."""
    from tests import pypulseq_examples as examples

    path = folder / "epi.seq"
    examples.epi().write(str(path))
    return path


def gre_3d(folder: Path) -> Path:
    return REPO_ROOT / "protocols" / "gre_3d.toml"


CASES = {"gre_3slice": gre_3slice, "epi": epi, "gre_3d": gre_3d}


def run_once(source: Path, out: Path) -> tuple[float, dict]:
    """Wall time (s) of one ``scanctl run`` process and its report."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "scanctl", "run", str(source), "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{source}: scanctl run exit {done.returncode}: {done.stderr.strip()}")
    return wall, json.loads((out / "report.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per scan (the best is reported)")
    parser.add_argument("--only", choices=[*CASES, "recon"], help="one measurement only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, make in CASES.items():
            if args.only not in (None, name):
                continue
            source = make(folder)
            runs = [run_once(source, folder / f"{name}-{i}") for i in range(args.repeat)]
            wall, report = min(runs, key=lambda r: r[0])
            duration = float(report["sequence"]["duration_s"])
            t = report["timings"]
            factor = duration / wall
            print(f"{name:11s} {duration:6.2f} s of sequence, scanctl run {wall:6.2f} s wall: {factor:5.2f}x real "
                  f"time (target >= {TARGETS[name]}x: {'met' if factor >= TARGETS[name] else 'MISSED'}); scan "
                  f"{t['scan_wall_s']:.2f} s, recon {t.get('recon_s', float('nan')):.2f} s, "
                  f"{report['acquisitions']} acquisitions")
        if args.only in (None, "recon"):
            from bench_recon import SPOKES, N, radial_file, timed

            from scanctl.data.rawdata import read_acquisitions
            from scanctl.data.recon import reconstruct_file

            for channels in (1, 8):
                (folder / f"radial{channels}").mkdir()
                path = radial_file(folder / f"radial{channels}", channels)
                seconds = timed(lambda p=path: reconstruct_file(read_acquisitions(p)), 7)
                print(f"radial GRE recon ({SPOKES} spokes x {N} samples, {channels} channel(s), read + NUFFT): "
                      f"{seconds * 1e3:.1f} ms (target < {RECON_TARGET_S * 1e3:.0f} ms: "
                      f"{'met' if seconds < RECON_TARGET_S else 'MISSED'})")


if __name__ == "__main__":
    main()
