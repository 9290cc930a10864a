"""Benchmark: how fast the Bloch simulator images a scan, as a user runs it, beside MRzeroCore.

    .venv/bin/python benchmarks/bench_physics.py            # 128 x 128, 64 spokes, MRzeroCore if installed
    .venv/bin/python benchmarks/bench_physics.py --n 32 --spokes 8 --no-targets   # the test's tiny mode

Each case is one whole ``scanctl run`` process (start-up, safety checks, Bloch simulation of the
Shepp–Logan phantom, raw data, image), timed from outside: wall time, CPU time (user + system, which the
other processes on a shared machine inflate much less) and peak memory. The cases:

* ``protocols/gre_2d.toml``, ``se_2d.toml``, ``tse_2d.toml`` at ``--n`` x ``--n``;
* an EPI time series (``epi_2d``: ``--n`` x ``--n``, 32 shots, TR 150 ms at 128, the shortest TR there is
  135 ms), written here as a protocol;
* a radial RF-spoiled GRE of ``--spokes`` spokes written with pypulseq, modelled on pypulseq's
  ``write_radial_gre.py`` example (``--n`` samples per spoke, TR 20 ms, 20 dummy TRs).

With MRzeroCore installed (``./setup-env bench``), each ``sequence.seq`` that ``scanctl run`` wrote is then
simulated by MRzeroCore, also as a whole process, on the same phantom maps (sinc voxels, its default
state limits: 200 states, 1e-4, signal thresholds 1e-2 -- less accurate than scanctl's, so the ratio favours
MRzeroCore), and the ratio of wall times is printed.

Targets (issue 15): real-time factor (sequence duration / whole-process wall time) >= 1 for every
Cartesian case at 128 x 128 on 2 cores, >= 0.5 for the radial GRE, and >= 3x faster than MRzeroCore.
Exits 1 when a target is missed (unless ``--no-targets``); prints the load average beside the figures,
since other processes on the machine slow the wall times down.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = REPO_ROOT / "protocols"
LARMOR_HZ = 42.576e6 * 3.0  # the default profile's 3 T

TARGET_CARTESIAN = 1.0
TARGET_RADIAL = 0.5
TARGET_MRZERO = 3.0

EPI_PROTOCOL = """\
[protocol]
name = "epi_2d"
description = "2D single-shot EPI time series, {n} x {n}, FOV 256 mm, 5 mm slice, TR {tr_ms:g} ms, 32 shots"

[sequence]
type = "epi_2d"
fov_m = 0.256
matrix = [{n}, {n}]
slice_thickness_m = 0.005
tr_s = {tr}
te_s = {te}
flip_angle_deg = 90.0
averages = 32

[table]
position_mm = 0.0

[patient]
weight_kg = 70.0

[phantom]
name = "shepp_logan"
"""


class CaseError(Exception):
    """A case that could not be measured (its process failed): reported, and the other cases still run."""


@dataclass
class Result:
    """One case: the ``scanctl run`` process and, if measured, MRzeroCore's."""

    case: str
    kind: str  # cartesian or radial
    outcome: str
    duration_s: float  # of the sequence
    wall_s: float  # whole process
    cpu_s: float  # user + system of the whole process
    peak_mb: float
    real_time_factor: float
    mrzero_wall_s: float | None = None
    mrzero_cpu_s: float | None = None
    mrzero_peak_mb: float | None = None
    speedup: float | None = None  # MRzeroCore wall / scanctl wall
    mrzero_error: str | None = None  # why MRzeroCore gave no figure (failed, or stopped at --mrzero-timeout)
    speedup_at_least: bool = False  # MRzeroCore was stopped at --mrzero-timeout: the speed-up is a lower bound


def timed(cmd: list[str], timeout_s: float | None = None) -> tuple[subprocess.CompletedProcess[str], float, float,
                                                                   float]:
    """Run ``cmd`` (killed after ``timeout_s``); return the finished process, its wall and CPU time (s) and
    peak RSS (MB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
        if timer is not None:
            timer.start()
        # wait4: this child's own resource usage (RUSAGE_CHILDREN would sum every child so far).
        _, status, usage = os.wait4(proc.pid, 0)
        if timer is not None:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    return done, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def scanctl_run(source: Path, out: Path, n: int) -> tuple[dict[str, object], float, float, float]:
    """``scanctl run SOURCE`` (phantom grid ``n``) as its own process; its report, wall, CPU and peak MB."""
    cmd = [sys.executable, "-m", "scanctl.cli", "run", str(source), "--out", str(out), "--rf", f"sim://?matrix={n}",
           "--no-prescan"]  # the sequence alone, as MRzeroCore simulates it
    done, wall, cpu, peak = timed(cmd)
    if done.returncode != 0:
        raise CaseError(f"{source.name}: scanctl run exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return report, wall, cpu, peak


def protocol_at(name: str, n: int, tmp: Path) -> Path:
    """A shipped protocol with its matrix set to ``n`` x ``n`` (the file itself when it is already)."""
    path = PROTOCOLS / f"{name}.toml"
    text = path.read_text()
    matrix = re.compile(r"^matrix = \[\d+, \d+\]", re.M)
    if not matrix.search(text):
        raise SystemExit(f"{path}: no 'matrix = [nx, ny]' line to set")
    if f"matrix = [{n}, {n}]" in text:
        return path
    out = tmp / f"{name}.toml"
    out.write_text(matrix.sub(f"matrix = [{n}, {n}]", text))
    return out


def epi_protocol(n: int, tmp: Path) -> Path:
    out = tmp / "epi_2d.toml"
    # The shortest TE and TR grow with the matrix: at 128, TE >= 66 ms and TR >= 135 ms.
    te, tr = (0.03, 0.1) if n <= 64 else (0.07, 0.15)
    out.write_text(EPI_PROTOCOL.format(n=n, te=te, tr=tr, tr_ms=tr * 1e3))
    return out


def radial_seq(path: Path, n: int, spokes: int) -> Path:
    """A radial RF-spoiled GRE written with pypulseq, after pypulseq's ``write_radial_gre.py``: ``n``
    samples per spoke over 256 mm, ``spokes`` spokes over 180 degrees, 20 dummy TRs, 10 degrees, TE 8 ms,
    TR 20 ms, 5 mm slice, RF spoiling (117 degrees)."""
    import numpy as np
    import pypulseq as pp

    fov, slice_thickness, te, tr, n_dummy = 0.256, 5e-3, 8e-3, 20e-3, 20
    system = pp.Opts(max_grad=28, grad_unit="mT/m", max_slew=120, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=np.deg2rad(10), duration=4e-3, slice_thickness=slice_thickness,
                                   apodization=0.5, time_bw_product=4, system=system, return_gz=True,
                                   delay=system.rf_dead_time, use="excitation")
    dk = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * dk, flat_time=6.4e-3, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2 - dk / 2, duration=2e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=2e-3, system=system)
    gx_spoil = pp.make_trapezoid(channel="x", area=0.5 * n * dk, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=system)
    raster = system.grad_raster_time
    te_delay = np.ceil((te - pp.calc_duration(gx_pre) - gz.fall_time - gz.flat_time / 2
                        - pp.calc_duration(gx) / 2) / raster - 1e-6) * raster
    tr_delay = np.ceil((tr - pp.calc_duration(gz) - pp.calc_duration(gx_pre) - pp.calc_duration(gx)
                        - te_delay) / raster - 1e-6) * raster
    phase, increment = 0.0, 0.0
    for i in range(-n_dummy, spokes):
        rf.phase_offset = adc.phase_offset = np.deg2rad(phase)
        increment = (increment + 117.0) % 360.0
        phase = (phase + increment) % 360.0
        phi = np.pi * max(i, 0) / spokes
        seq.add_block(rf, gz)
        seq.add_block(*pp.rotate(gx_pre, gz_reph, angle=phi, axis="z", system=system))
        seq.add_block(pp.make_delay(te_delay))
        if i >= 0:
            seq.add_block(*pp.rotate(gx, adc, angle=phi, axis="z", system=system), pp.make_label("LIN", "SET", i))
        else:
            seq.add_block(*pp.rotate(gx, angle=phi, axis="z", system=system))
        seq.add_block(*pp.rotate(gx_spoil, gz_spoil, angle=phi, axis="z", system=system), pp.make_delay(tr_delay))
    ok, errors = seq.check_timing()
    if not ok:
        raise SystemExit(f"radial GRE: pypulseq timing errors: {errors}")
    seq.set_definition("FOV", [fov, fov, slice_thickness])
    seq.set_definition("Name", "radial_gre")
    seq.write(str(path))
    return path


# --------------------------------------------------------------------------------------------------------------
# MRzeroCore (in a process of its own, started by main: ``--mrzero-worker SEQ MAPS``)
# --------------------------------------------------------------------------------------------------------------


def mrzero_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("MRzeroCore") is not None and importlib.util.find_spec("torch") is not None


def write_maps(path: Path, n: int) -> Path:
    """The phantom maps ``scanctl run`` images (Shepp–Logan at ``n``, its default 10 mm slab), as .npz."""
    import numpy as np
    from scanctl.simulators.physics import shepp_logan

    p = shepp_logan(n)
    np.savez(path, pd=p.pd, t1_s=p.t1_s, t2_s=p.t2_s, voxel_size_m=np.array(p.voxel_size_m))
    return path


def mrzero_worker(seq_path: str, maps_path: str) -> None:
    """Simulate ``seq_path`` with MRzeroCore on the maps (2D, ``(ny, nx)``); print the sample count."""
    import MRzeroCore as mr0
    import numpy as np
    import torch

    maps = np.load(maps_path)
    pd, t1, t2 = maps["pd"], maps["t1_s"], maps["t2_s"]
    ny, nx = pd.shape
    affine = torch.eye(3, 4)
    for axis, size in enumerate(maps["voxel_size_m"][:3]):
        affine[axis, axis] = float(size) * 1000.0  # mm

    def xyz(m: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.ascontiguousarray(m.T[:, :, None]), dtype=torch.float32)

    zeros = torch.zeros(nx, ny, 1)
    phantom = mr0.VoxelGridPhantom(xyz(pd), xyz(np.where(pd > 0, t1, 1.0)), xyz(np.where(pd > 0, t2, 1.0)),
                                   torch.full((nx, ny, 1), 1e9), zeros, zeros, torch.ones(1, nx, ny, 1),
                                   torch.ones(1, nx, ny, 1), affine)
    data = phantom.build()
    seq = mr0.Sequence.import_file(seq_path, larmor_hz=LARMOR_HZ)
    graph = mr0.compute_graph(seq, data)
    signal = mr0.execute_graph(graph, seq, data, print_progress=False)
    print(int(signal.numel()))


class MrzeroStopped(CaseError):
    """MRzeroCore did not finish within --mrzero-timeout: scanctl is at least timeout / wall faster."""


def mrzero_run(seq_path: Path, maps: Path, timeout_s: float) -> tuple[float, float, float]:
    cmd = [sys.executable, __file__, "--mrzero-worker", str(seq_path), str(maps)]
    done, wall, cpu, peak = timed(cmd, timeout_s)
    if wall >= timeout_s and done.returncode != 0:
        raise MrzeroStopped(f"MRzeroCore on {seq_path.name}: stopped after {timeout_s:g} s (peak {peak:.0f} MB)")
    if done.returncode != 0:
        raise CaseError(f"MRzeroCore on {seq_path}: exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return wall, cpu, peak


# --------------------------------------------------------------------------------------------------------------


def measure(case: str, kind: str, source: Path, work: Path, n: int, maps: Path | None,
            mrzero_timeout_s: float) -> Result:
    out = work / f"out-{case}"
    report, wall, cpu, peak = scanctl_run(source, out, n)
    duration = float(report["sequence"]["duration_s"])  # type: ignore[index]
    result = Result(case, kind, str(report["outcome"]), duration, wall, cpu, peak, duration / wall)
    if maps is not None:
        try:
            result.mrzero_wall_s, result.mrzero_cpu_s, result.mrzero_peak_mb = mrzero_run(
                out / "sequence.seq", maps, mrzero_timeout_s)
        except MrzeroStopped as exc:  # unfinished after the timeout: a lower bound of the speed-up
            print(f"  {case}: {exc}", file=sys.stderr)
            result.mrzero_wall_s, result.speedup_at_least = mrzero_timeout_s, True
            result.speedup = mrzero_timeout_s / wall
        except CaseError as exc:  # scanctl's figures stand; the comparison is reported as missing
            print(f"  {case}: {exc}", file=sys.stderr)
            result.mrzero_error = str(exc)
        else:
            result.speedup = result.mrzero_wall_s / wall
    return result


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="matrix (and phantom grid) n x n")
    parser.add_argument("--spokes", type=int, default=64, help="spokes of the radial GRE")
    parser.add_argument("--cases", default="gre_2d,se_2d,tse_2d,epi_2d,radial_gre", help="comma-separated")
    parser.add_argument("--no-mrzero", action="store_true", help="skip MRzeroCore even when installed")
    parser.add_argument("--mrzero-timeout", type=float, default=900.0, help="s per MRzeroCore process")
    parser.add_argument("--no-targets", action="store_true", help="report only; exit 0 whatever the figures")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    parser.add_argument("--mrzero-worker", nargs=2, metavar=("SEQ", "MAPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mrzero_worker:
        mrzero_worker(*args.mrzero_worker)
        return 0

    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - {"gre_2d", "se_2d", "tse_2d", "epi_2d", "radial_gre"}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    use_mrzero = not args.no_mrzero and mrzero_available()
    if not args.no_mrzero and not use_mrzero:
        print("MRzeroCore not installed (./setup-env bench): scanctl only")
    results: list[Result] = []
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-physics-") as tmp:
        work = Path(tmp)
        maps = write_maps(work / "maps.npz", args.n) if use_mrzero else None
        for case in cases:
            if case == "radial_gre":
                source, kind = radial_seq(work / "radial_gre.seq", args.n, args.spokes), "radial"
            elif case == "epi_2d":
                source, kind = epi_protocol(args.n, work), "cartesian"
            else:
                source, kind = protocol_at(case, args.n, work), "cartesian"
            try:
                results.append(measure(case, kind, source, work, args.n, maps, args.mrzero_timeout))
            except CaseError as exc:
                print(f"  {case}: FAILED: {exc}", file=sys.stderr)
                results.append(Result(case, kind, "error", 0.0, 0.0, 0.0, 0.0, 0.0))
            print(f"  {case}: done (load average {loadavg()})", file=sys.stderr)

    print(f"Bloch simulation through whole `scanctl run` processes, {args.n} x {args.n}, Shepp-Logan; "
          f"load average {load_before} before, {loadavg()} after ({os.cpu_count()} CPUs)")
    print(f"{'case':11} {'sequence s':>10} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} {'x real time':>11} "
          f"{'MRzero s':>9} {'MRzero cpu':>10} {'speed-up':>8}  target")
    ok = True
    for r in results:
        target = TARGET_RADIAL if r.kind == "radial" else TARGET_CARTESIAN
        passed = r.outcome == "completed" and r.real_time_factor >= target
        if r.speedup is not None:
            passed &= r.speedup >= TARGET_MRZERO
        if r.mrzero_error is not None:
            passed = False
        ok &= passed
        if r.outcome == "error":
            print(f"{r.case:11} {'(failed: see above)':>50}  FAIL")
            ok = False
            continue
        mz = (f"{'>' + format(r.mrzero_wall_s, '.0f'):>9} {'-':>10} {'>' + format(r.speedup, '.1f'):>7}x"
              if r.speedup_at_least and r.speedup is not None
              else f"{r.mrzero_wall_s:9.2f} {r.mrzero_cpu_s:10.2f} {r.speedup:7.1f}x" if r.speedup is not None
              else f"{'failed':>9} {'-':>10} {'-':>8}" if r.mrzero_error else f"{'-':>9} {'-':>10} {'-':>8}")
        goal = f">= {target:g}x" + (f", >= {TARGET_MRZERO:g}x MRzero" if r.speedup is not None else "")
        print(f"{r.case:11} {r.duration_s:10.3f} {r.wall_s:7.2f} {r.cpu_s:7.2f} {r.peak_mb:8.0f} "
              f"{r.real_time_factor:11.2f} {mz}  {goal} {'PASS' if passed else 'FAIL'}")
    if args.json:
        print(json.dumps({"n": args.n, "spokes": args.spokes, "load_before": load_before, "load_after": loadavg(),
                          "results": [asdict(r) for r in results]}))
    return 0 if ok or args.no_targets else 1


if __name__ == "__main__":
    raise SystemExit(main())
