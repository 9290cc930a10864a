"""Bloch simulator throughput on a pypulseq-written RF-spoiled 2D GRE (Shepp–Logan phantom).

Usage: .venv/bin/python benchmarks/bench_bloch.py [--n 128] [--repeat 3]

Prints the sequence duration, the compile time of its segments (the executor's work, not physics),
the physics wall time (best of ``--repeat``), the real-time factor (sequence duration / physics time),
the phase-graph state count, and the equivalent spin-steps per second: isochromats (voxels with proton
density x isochromats through the slab) x time points simulated (RF raster samples + ADC samples),
divided by the wall time -- what a per-isochromat simulator would have to reach for the same scan.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.pulseq_factory

from scanctl.simulators.physics import SpinSystem, shepp_logan  # noqa: E402

from scanctl.engine.segments import compile_segments  # noqa: E402
from scanctl.sequence import pulseq_read  # noqa: E402
from tests import pulseq_factory  # noqa: E402

LARMOR_HZ = 42.576e6 * 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="matrix size (n x n), TR 10 ms")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gre.seq"
        pulseq_factory.gre(n=args.n).write(str(path))
        seq = pulseq_read.read(path)
    t = time.perf_counter()
    segments = list(compile_segments(seq, larmor_hz=LARMOR_HZ))
    compile_s = time.perf_counter() - t

    spins = SpinSystem(shepp_logan(args.n))
    times = []
    for _ in range(args.repeat):
        spins.reset()
        t = time.perf_counter()
        for segment in segments:
            spins.play(segment.gradient, segment.rf, segment.adc)
        times.append(time.perf_counter() - t)
    best = min(times)
    stats = spins.stats
    steps = spins.n_spins * (stats.rf_samples + stats.adc_samples)
    print(f"RF-spoiled 2D GRE {args.n}x{args.n}, TR 10 ms, Shepp-Logan: {seq.duration_s:.3f} s of scan, "
          f"{stats.rf_pulses} RF pulses ({stats.rf_samples} samples), {stats.adc_samples} ADC samples")
    print(f"  tissue classes {spins.n_classes}, isochromats/voxel {spins.isochromats}, "
          f"equivalent isochromats {spins.n_spins}, phase-graph states (max) {stats.max_states}")
    print(f"  compile segments: {compile_s:.3f} s")
    print(f"  physics: {best:.3f} s (runs: {', '.join(f'{x:.3f}' for x in times)})")
    print(f"  real-time factor (scan / physics): {seq.duration_s / best:.2f}x")
    print(f"  equivalent spin-steps/s: {steps / best:.3e}")


if __name__ == "__main__":
    main()
