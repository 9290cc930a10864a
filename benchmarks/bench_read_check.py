"""Benchmark: read + full check of a large Pulseq file, scanctl beside pypulseq, in one run.

    .venv/bin/python benchmarks/bench_read_check.py            # 256,000-block 3D GRE
    .venv/bin/python benchmarks/bench_read_check.py --blocks 64000 --repeat 5
    .venv/bin/python benchmarks/bench_read_check.py --process   # the whole `scanctl check FILE` process

The file is a 3D GRE written by pypulseq (``benchmarks/make_gre3d.py``), cached under
``.bench-cache/``. Every measurement runs in a fresh Python process, so each tool pays for its own
imports' memory but not their time: the clock covers reading the file and checking it, and peak memory is
the process's maximum resident set size. scanctl does ``pulseq_read.read`` (with the MD5 signature check)
plus ``checks.check`` against the default system profile; pypulseq does ``Sequence.read`` plus
``check_timing``. The scanctl figure is the median of ``--repeat`` runs; pypulseq runs once (it takes about
half a minute and several GB).

``--process`` times the whole command instead: ``scanctl check FILE`` as a child process, from interpreter
start to exit (imports, read, timing checks, SAR, PNS, heating prediction, output), its wall time (median
of ``--repeat``) and peak resident memory (the child's own ``ru_maxrss``, from ``os.wait4``), against
pypulseq's ``Sequence.read`` + ``check_timing`` in the same run (timed inside its process, so pypulseq is
not charged for its imports). The scanctl package is byte-compiled first, as an installed package is (with
PYTHONDONTWRITEBYTECODE set, as here, every run would otherwise compile its modules again). Both tools' CPU
times (user + system) are printed too: on a shared machine they swing less than wall times. Targets:
>= 50x (wall), < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Targets from issue 2.
TARGET_SPEEDUP = 50.0
TARGET_BLOCKS_PER_S = 500_000.0
TARGET_PEAK_MB = 300.0

_SCANCTL = """
import json, resource, sys, time
from scanctl.config import profile
from scanctl.sequence import checks, pulseq_read
system = profile.load("default")
t0 = time.perf_counter()
seq = pulseq_read.read(sys.argv[1])
t1 = time.perf_counter()
report = checks.check(seq, system)
t2 = time.perf_counter()
print(json.dumps({"blocks": len(seq.blocks), "read_s": t1 - t0, "check_s": t2 - t1,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "duration_s": seq.duration_s, "ok": report.ok}))
"""

_PYPULSEQ = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import pypulseq as pp
t0, c0 = time.perf_counter(), time.process_time()
seq = pp.Sequence()
seq.read(sys.argv[1])
t1 = time.perf_counter()
ok, errors = seq.check_timing()
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"blocks": len(seq.block_events), "read_s": t1 - t0, "check_s": t2 - t1, "cpu_s": c2 - c0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "duration_s": float(sum(seq.block_durations.values())), "ok": bool(ok)}))
"""


def _run(code: str, path: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr.strip()}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _run_process(path: Path) -> dict[str, float]:
    """``scanctl check FILE`` as a child process: wall time from spawn to exit and the child's peak RSS."""
    script = Path(sys.executable).with_name("scanctl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "scanctl.cli"]
    t0 = time.perf_counter()
    child = subprocess.Popen([*command, "check", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"scanctl check exited {code}:\n{(err or out).decode().strip()}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def _compile_scanctl() -> None:
    """Byte-compile the scanctl package the child imports, as an installed package has it (pip compiles on
    install; Python writes the cache on first import unless PYTHONDONTWRITEBYTECODE is set): the child then
    pays for loading its modules, not for compiling them each run."""
    done = subprocess.run([sys.executable, "-c", "import scanctl, os; print(os.path.dirname(scanctl.__file__))"],
                          capture_output=True, text=True, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", done.stdout.strip()], check=True,
                   stdout=subprocess.DEVNULL)


def _process_mode(path: Path, repeat: int, skip_pypulseq: bool, as_json: bool) -> int:
    _compile_scanctl()
    runs = [_run_process(path) for _ in range(max(repeat, 1))]
    walls, cpus = [r["wall_s"] for r in runs], [r["cpu_s"] for r in runs]
    wall, cpu, peak = statistics.median(walls), statistics.median(cpus), max(r["peak_mb"] for r in runs)
    print(f"\n{path.name}: scanctl check, whole process: {wall:.3f} s (median of {len(walls)}: "
          f"{', '.join(f'{w:.3f}' for w in walls)}), CPU {cpu:.3f} s (user + system, median), peak RSS {peak:.0f} MB")
    verdicts = [(f"peak memory < {TARGET_PEAK_MB:.0f} MB", peak < TARGET_PEAK_MB)]
    summary: dict[str, object] = {"scanctl_check_wall_s": wall, "scanctl_check_walls_s": walls,
                                  "scanctl_check_cpu_s": cpu, "peak_mb": peak}
    if not skip_pypulseq:
        theirs = _run(_PYPULSEQ, path)
        total = theirs["read_s"] + theirs["check_s"]
        speedup = total / wall
        print(f"pypulseq Sequence.read + check_timing: {total:.3f} s (read {theirs['read_s']:.3f}, "
              f"check_timing {theirs['check_s']:.3f}; CPU {theirs['cpu_s']:.3f} s), peak {theirs['peak_mb']:.0f} MB")
        print(f"speed-up, whole scanctl check process vs pypulseq read + check_timing: {speedup:.1f}x "
              f"(CPU time: {theirs['cpu_s'] / cpu:.1f}x)")
        verdicts.insert(0, (f"speed-up >= {TARGET_SPEEDUP:.0f}x", speedup >= TARGET_SPEEDUP))
        summary.update(pypulseq_s=total, pypulseq_cpu_s=theirs["cpu_s"], speedup=speedup,
                       cpu_speedup=theirs["cpu_s"] / cpu)
    for what, passed in verdicts:
        print(f"  {'PASS' if passed else 'FAIL'}  {what}")
    if as_json:
        print(json.dumps(summary))
    return 0 if all(p for _, p in verdicts) else 1


def _ensure_file(blocks: int, cache: Path, regenerate: bool) -> Path:
    path = cache / f"gre3d_{blocks}.seq"
    if regenerate or not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} with pypulseq ...", flush=True)
        subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "make_gre3d.py"),
                        "--blocks", str(blocks), "--out", str(path)], check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=256_000, help="blocks in the 3D GRE (default 256000)")
    parser.add_argument("--repeat", type=int, default=3, help="scanctl runs, median reported (default 3)")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / ".bench-cache", help="where the file is kept")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the file even if cached")
    parser.add_argument("--skip-pypulseq", action="store_true", help="measure scanctl only (no ratio)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    parser.add_argument("--process", action="store_true",
                        help="time the whole `scanctl check FILE` process (with the safety prediction)")
    args = parser.parse_args(argv)

    path = _ensure_file(args.blocks, args.cache, args.regenerate)
    if args.process:
        return _process_mode(path, args.repeat, args.skip_pypulseq, args.json)
    size_mb = path.stat().st_size / 1e6
    runs = [_run(_SCANCTL, path) for _ in range(max(args.repeat, 1))]
    totals = [r["read_s"] + r["check_s"] for r in runs]
    median = statistics.median(totals)
    mine = runs[totals.index(median)] if median in totals else runs[0]
    mine = {**mine, "total_s": median, "peak_mb": max(r["peak_mb"] for r in runs)}
    rows = [("scanctl", mine)]
    theirs = None
    if not args.skip_pypulseq:
        theirs = _run(_PYPULSEQ, path)
        theirs["total_s"] = theirs["read_s"] + theirs["check_s"]
        rows.append(("pypulseq", theirs))
        if theirs["blocks"] != mine["blocks"] or abs(theirs["duration_s"] - mine["duration_s"]) > 1e-6:
            raise SystemExit(f"tools disagree: scanctl {mine} vs pypulseq {theirs}")

    print(f"\n{path.name}: {size_mb:.1f} MB, {int(mine['blocks'])} blocks, {mine['duration_s']:.3f} s of sequence")
    print(f"{'tool':10} {'read s':>8} {'check s':>8} {'total s':>8} {'blocks/s':>11} {'peak MB':>8}")
    for name, r in rows:
        rate = r["blocks"] / r["total_s"]
        print(f"{name:10} {r['read_s']:8.3f} {r['check_s']:8.3f} {r['total_s']:8.3f} {rate:11,.0f} {r['peak_mb']:8.0f}")
    rate = mine["blocks"] / mine["total_s"]
    verdicts = [
        (f"blocks/s >= {TARGET_BLOCKS_PER_S:,.0f}", rate >= TARGET_BLOCKS_PER_S),
        (f"peak memory < {TARGET_PEAK_MB:.0f} MB", mine["peak_mb"] < TARGET_PEAK_MB),
    ]
    summary: dict[str, object] = {"file_mb": size_mb, "scanctl": mine, "scanctl_totals_s": totals}
    if theirs is not None:
        speedup = theirs["total_s"] / mine["total_s"]
        print(f"speed-up scanctl vs pypulseq (read + check): {speedup:.1f}x; "
              f"memory ratio {theirs['peak_mb'] / mine['peak_mb']:.1f}x")
        verdicts.insert(0, (f"speed-up >= {TARGET_SPEEDUP:.0f}x", speedup >= TARGET_SPEEDUP))
        summary.update(pypulseq=theirs, speedup=speedup)
    for what, passed in verdicts:
        print(f"  {'PASS' if passed else 'FAIL'}  {what}")
    if args.json:
        print(json.dumps(summary))
    return 0 if all(p for _, p in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
