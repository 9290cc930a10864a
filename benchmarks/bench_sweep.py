"""scanctl sweep: points per minute of a 100-point flip x TR sweep of gre_2d with 1 and 2 local workers, the
per-point overhead of the sweep machinery against bare runs of the same points, and the time to resume the
finished sweep.

    .venv/bin/python benchmarks/bench_sweep.py [--matrix 64] [--points 100]

Targets (issue 19): 2 workers >= 1.7x the points per minute of 1; per-point overhead < 5 % (the points of
the sweep with 1 worker, from the first submitted to the last stored, against ``run_scan`` — what ``scanctl
run`` does, without the interpreter's start — of every point one after another in one process; the cluster's
start and stop, the table and the plots are once per sweep and printed beside); resuming a finished sweep
reruns no scan and takes < 2 s (the whole ``scanctl sweep`` command). Exits 1 when a target is missed. On a
2-core machine shared with other work the figures move by several per cent between runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_spec(folder: Path, matrix: int, points: int) -> Path:
    flips = points // 10
    spec = folder / "flip_tr.toml"
    spec.write_text(f"""[sweep]
name = "flip-tr"
base = "{ROOT / 'protocols' / 'gre_2d.toml'}"
keep = []

[axes]
"sequence.matrix" = [[{matrix}, {matrix}]]
"sequence.flip_angle_deg" = {{ start = 5, stop = {5 * flips}, step = 5 }}
"sequence.tr_s" = {{ start = 0.010, stop = 0.028, step = 0.002 }}
"rf.noise" = [1.0]

[measure]
contrast = [["white_matter", "gray_matter"]]
""")
    return spec


def bare(tasks: list) -> tuple[float, float]:  # type: ignore[type-arg]
    """Wall and CPU seconds for every point through ``run_scan`` and nothing else, one after another in this
    process."""
    from scanctl.engine.session import run_scan

    with tempfile.TemporaryDirectory() as tmp:
        t0, cpu0 = time.perf_counter(), time.process_time()
        for task in tasks:
            source = Path(tmp) / f"p{task.index}.toml"
            source.write_text(task.protocol_text)
            run_scan(source, task.profile, Path(tmp) / f"r{task.index}", overrides=task.urls)
        return time.perf_counter() - t0, time.process_time() - cpu0


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--points", type=int, default=100, help="a multiple of 10 (10 TRs x points/10 flip angles)")
    args = ap.parse_args()

    from scanctl.sweep.point import tasks
    from scanctl.sweep.runner import run_sweep
    from scanctl.sweep.spec import load_spec
    from scanctl.sweep.store import PointStore

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        spec = load_spec(write_spec(work, args.matrix, args.points))
        all_tasks = tasks(spec)
        print(f"sweep: {spec.size} points of gre_2d at {args.matrix} x {args.matrix} (flip x TR)")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        bare_s, bare_cpu_s = bare(all_tasks)
        print(f"bare run_scan, one process:   {bare_s:7.1f} s  {60 * spec.size / bare_s:6.1f} points/min   "
              f"CPU {1e3 * bare_cpu_s / spec.size:.0f} ms/point")

        rates = {}
        for workers in (1, 2):
            out = work / f"out{workers}"
            main0 = self_cpu_s()
            with open(os.devnull, "w") as quiet:
                summary = run_sweep(spec, out, workers=workers, stream=quiet)
            main_cpu_s = self_cpu_s() - main0
            assert summary.outcomes == {"completed": spec.size}, summary.outcomes
            store = PointStore(out)
            worker_cpu_s = sum(store.load(t.key)["cpu_s"] for t in all_tasks)  # type: ignore[index]
            rates[workers] = 60 * spec.size / summary.compute_s
            print(f"sweep, {workers} worker(s):          {summary.compute_s:7.1f} s  {rates[workers]:6.1f} points/min  "
                  f"CPU {1e3 * worker_cpu_s / spec.size:.0f} ms/point on the workers, "
                  f"{1e3 * main_cpu_s / spec.size:.0f} ms/point here (scheduler, storing, table, plots); "
                  f"whole command {summary.wall_s:.1f} s")
            if workers == 1:
                overhead = summary.compute_s / bare_s - 1
                cpu_overhead = worker_cpu_s / bare_cpu_s - 1
        speedup = rates[2] / rates[1]

        t0 = time.perf_counter()
        resumed = subprocess.run([sys.executable, "-m", "scanctl", "sweep", str(spec.source), "--out",
                                  str(work / "out2")], capture_output=True, text=True, cwd=ROOT)
        resume_s = time.perf_counter() - t0
        rerun = "0 run" not in resumed.stdout
        print(f"resume the finished sweep:    {resume_s:7.2f} s  (scanctl sweep, whole command; "
              f"{'RERAN POINTS' if rerun else 'no scan rerun'})")

        print(f"\n2 workers / 1 worker:         {speedup:.2f}x   (target >= 1.7x)")
        print(f"per-point overhead:           {100 * overhead:+.1f} %  (target < 5 %; wall time, 1 worker vs bare)")
        print(f"  the same in CPU time:       {100 * cpu_overhead:+.1f} %  (a worker's CPU per point against bare; "
              "less moved by other load)")
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print(f"resume:                       {resume_s:.2f} s  (target < 2 s, no scan rerun)")
        ok = speedup >= 1.7 and overhead < 0.05 and resume_s < 2.0 and not rerun
        print("all targets met" if ok else "TARGET MISSED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
