"""scanctl sweep: points per minute of a 100-point flip x TR sweep of gre_2d with 1 and 2 local workers, the
per-point overhead of the sweep machinery against bare runs of the same points, and the time to resume the
finished sweep.

    .venv/bin/python benchmarks/bench_sweep.py [--matrix 64] [--points 100]

Targets (issue 19): 2 workers >= 1.7x the points per minute of 1; per-point overhead < 5 % against a bare
``scanctl run`` of the same point (the issue's reference: the whole command, as a hand-written loop runs it;
measured on ``--bare-commands`` points spread over the sweep); resuming a finished sweep reruns no scan and
takes < 2 s (the whole ``scanctl sweep`` command). Exits 1 when a target is missed.

Printed beside, stricter and not a target: the sweep's points (1 worker, from the first submitted to the
last stored) against ``run_scan`` — what ``scanctl run`` does, without the interpreter's start and imports —
of every point one after another in one process. A point measures more than a bare run (its image
figures), and a Dask worker runs it in a thread beside the worker's own. The cluster's start and stop, the
table and the plots are once per sweep and printed beside. On a 2-core machine shared with other work the
figures move by several per cent between runs.
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


def bare_commands(tasks: list) -> float:  # type: ignore[type-arg]
    """Wall seconds per point of ``scanctl run`` — the whole command, a new process each — on ``tasks``."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for task in tasks:
            source = Path(tmp) / f"p{task.index}.toml"
            source.write_text(task.protocol_text)
            options = [f"--{kind}={url}" for kind, url in task.urls.items()]
            done = subprocess.run([sys.executable, "-m", "scanctl", "run", str(source), "--out",
                                   str(Path(tmp) / f"r{task.index}"), "--no-prescan", *options],  # (points run none)
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"scanctl run failed: {done.stderr.strip()}")
        return (time.perf_counter() - t0) / len(tasks)


def bare_side_by_side(tasks: list) -> float:  # type: ignore[type-arg]
    """Wall seconds for the points split between two processes, each running its half through ``run_scan``:
    what this machine gives two processes at the moment (a reference for the 2-worker speed-up, not a sweep)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()  # (spawn: a fork of this process, which has run scans and their threads, can hang)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(bare, [tasks[0::2], tasks[1::2]]))
    return time.perf_counter() - t0


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def swept(spec, all_tasks: list, out: Path, workers: int) -> tuple[float, float, float, float]:  # type: ignore[no-untyped-def,type-arg]
    """One sweep into ``out`` (new): its points' wall time (first submitted to last stored), worker CPU and this
    process's CPU (scheduler, client, storing, table, plots), and the whole call's wall time."""
    from scanctl.sweep.runner import run_sweep
    from scanctl.sweep.store import PointStore

    main0 = self_cpu_s()
    with open(os.devnull, "w") as quiet:
        summary = run_sweep(spec, out, workers=workers, stream=quiet)
    main_cpu_s = self_cpu_s() - main0
    assert summary.outcomes == {"completed": spec.size}, summary.outcomes
    store = PointStore(out)
    worker_cpu_s = sum(store.load(t.key)["cpu_s"] for t in all_tasks)  # type: ignore[index]
    return summary.compute_s, worker_cpu_s, main_cpu_s, summary.wall_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--points", type=int, default=100, help="a multiple of 10 (10 TRs x points/10 flip angles)")
    ap.add_argument("--bare-commands", type=int, default=10, help="points timed as whole scanctl run commands")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of bare, 1 worker, 2 workers; the best of each "
                                                           "is taken (other load on the machine only slows)")
    args = ap.parse_args()

    from scanctl.sweep.point import tasks
    from scanctl.sweep.spec import load_spec

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        spec = load_spec(write_spec(work, args.matrix, args.points))
        all_tasks = tasks(spec)
        n = spec.size
        print(f"sweep: {n} points of gre_2d at {args.matrix} x {args.matrix} (flip x TR), best of {args.repeats}")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        bares: list[tuple[float, float]] = []
        runs: dict[int, list[tuple[float, float, float, float]]] = {1: [], 2: []}
        pairs: list[float] = []
        sample = all_tasks[::max(1, n // args.bare_commands)][:args.bare_commands]
        commands: list[float] = []
        for r in range(args.repeats):
            commands.append(bare_commands(sample))
            bares.append(bare(all_tasks))
            pairs.append(bare_side_by_side(all_tasks))
            for workers in (1, 2):
                runs[workers].append(swept(spec, all_tasks, work / f"out{workers}-{r}", workers))
        bare_s, bare_cpu_s = min(bares)
        print(f"bare run_scan, one process:   {bare_s:7.1f} s  {60 * n / bare_s:6.1f} points/min   "
              f"CPU {1e3 * bare_cpu_s / n:.0f} ms/point   (rounds: {', '.join(f'{b[0]:.1f}' for b in bares)} s)")
        command_s = min(commands)
        print(f"bare scanctl run, the command: {command_s:6.2f} s a point  ({len(sample)} points one after another, "
              f"rounds: {', '.join(f'{c:.2f}' for c in commands)} s)")
        pair_s = min(pairs)
        print(f"bare, two processes:          {pair_s:7.1f} s  {60 * n / pair_s:6.1f} points/min   "
              f"(this machine's own 2-process speed-up now: {bare_s / pair_s:.2f}x)")
        best = {w: min(runs[w]) for w in runs}
        for workers, (compute_s, worker_cpu_s, main_cpu_s, wall_s) in best.items():
            print(f"sweep, {workers} worker(s):          {compute_s:7.1f} s  {60 * n / compute_s:6.1f} points/min  "
                  f"CPU {1e3 * worker_cpu_s / n:.0f} ms/point on the workers, {1e3 * main_cpu_s / n:.0f} ms/point "
                  f"here; whole call {wall_s:.1f} s   (rounds: {', '.join(f'{x[0]:.1f}' for x in runs[workers])} s)")
        speedup = best[1][0] / best[2][0]
        overhead = best[1][0] / n / command_s - 1
        in_process = best[1][0] / bare_s - 1
        cpu_overhead = best[1][1] / bare_cpu_s - 1

        t0 = time.perf_counter()
        resumed = subprocess.run([sys.executable, "-m", "scanctl", "sweep", str(spec.source), "--out",
                                  str(work / "out2-0")], capture_output=True, text=True, cwd=ROOT)
        resume_s = time.perf_counter() - t0
        rerun = f"{n} already done, 0 run" not in resumed.stdout
        print(f"resume the finished sweep:    {resume_s:7.2f} s  (scanctl sweep, whole command; "
              f"{'RERAN POINTS' if rerun else 'no scan rerun'})")
        print(f"load average after: {os.getloadavg()[0]:.1f}")

        print(f"\n2 workers / 1 worker:         {speedup:.2f}x   (target >= 1.7x)")
        print(f"per-point overhead:           {100 * overhead:+.1f} %  (target < 5 %; wall time a point, 1 worker vs "
              f"bare scanctl run)")
        print(f"  against run_scan in-process:{100 * in_process:+.1f} %  (stricter, not the target: no interpreter "
              f"start in the bare runs)")
        print(f"  the same in CPU time:       {100 * cpu_overhead:+.1f} %  (a worker's CPU per point against run_scan)")
        print(f"resume:                       {resume_s:.2f} s  (target < 2 s, no scan rerun)")
        ok = speedup >= 1.7 and overhead < 0.05 and resume_s < 2.0 and not rerun
        print("all targets met" if ok else "TARGET MISSED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
