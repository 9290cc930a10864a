"""Safety prediction speed: SAR + PNS + heating (scanctl.safety.predict) for a pypulseq-written MPRAGE
(150 s, 60 shots, about 6,000 blocks) and the 256,000-block 3D GRE, beside pypulseq's ``calc_pns``
(safe_example_hw) on the MPRAGE in the same run.

    .venv/bin/python benchmarks/bench_safety.py [--skip-pypulseq] [--repeat 3]

Both sequences are written once with pypulseq and cached in .bench-cache/.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

from scanctl import profile as profiles
from scanctl.safety.predict import predict
from scanctl.sequence import pulseq_read

CACHE = Path(__file__).parents[1] / ".bench-cache"
MPRAGE = CACHE / "mprage_150s.seq"
GRE3D = CACHE / "gre3d_256000.seq"


def write_mprage(path: Path) -> None:
    """A 3D MPRAGE with pypulseq: per shot a non-selective 180° inversion, TI, a train of 25 RF-spoiled
    gradient echoes (partition and phase encoding, readout, spoiler), recovery to TR = 2.5 s; 60 shots."""
    import pypulseq as pp

    system = pp.Opts(max_grad=28, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    seq = pp.Sequence(system)
    fov, n_read, n_echoes, shots, tr, ti = 0.256, 192, 25, 60, 2.5, 1.1
    inversion = pp.make_block_pulse(flip_angle=math.pi, duration=1e-3, system=system, use="inversion")
    spoil_inv = pp.make_trapezoid("z", area=4 / (fov / n_read) * 4, system=system)
    excitation = pp.make_block_pulse(flip_angle=math.radians(8), duration=100e-6, system=system)
    delta_k = 1 / fov
    gx = pp.make_trapezoid("x", flat_area=n_read * delta_k, flat_time=3.2e-3, system=system)
    adc = pp.make_adc(n_read, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid("x", area=-gx.area / 2, duration=1e-3, system=system)
    gx_spoil = pp.make_trapezoid("x", area=2 * gx.area, duration=1.5e-3, system=system)
    phase_areas = [(i - n_echoes / 2) * delta_k for i in range(n_echoes)]
    for shot in range(shots):
        seq.add_block(inversion)
        seq.add_block(spoil_inv)
        train_start = ti - (n_echoes // 2) * 10e-3
        seq.add_block(pp.make_delay(round(train_start / 10e-6) * 10e-6))
        partition = (shot - shots / 2) * delta_k
        for echo in range(n_echoes):
            excitation.phase_offset = math.radians(117 * (echo * (echo + 1) / 2) % 360)
            adc.phase_offset = excitation.phase_offset
            seq.add_block(excitation)
            gy = pp.make_trapezoid("y", area=phase_areas[echo], duration=1e-3, system=system)
            gz = pp.make_trapezoid("z", area=partition, duration=1e-3, system=system)
            seq.add_block(gx_pre, gy, gz)
            seq.add_block(gx, adc)
            seq.add_block(gx_spoil, pp.scale_grad(gy, -1), pp.scale_grad(gz, -1))
        used = sum(seq.block_durations.values()) - shot * tr
        seq.add_block(pp.make_delay(round((tr - used) / 10e-6) * 10e-6))
    CACHE.mkdir(exist_ok=True)
    seq.write(str(path))


def timed(repeat: int, fn, *args):  # type: ignore[no-untyped-def]
    best, result = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pypulseq", action="store_true", help="do not run pypulseq's calc_pns")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if not MPRAGE.exists():
        write_mprage(MPRAGE)
    if not GRE3D.exists():
        raise SystemExit(f"{GRE3D} missing: run benchmarks/bench_read_check.py once (it writes it)")
    profile = profiles.load("safe-example")
    ours = {}
    for name, path in (("MPRAGE", MPRAGE), ("3D GRE 256k", GRE3D)):
        seq = pulseq_read.read(path)
        seconds, result = timed(args.repeat, predict, seq, profile, 70.0, "normal")
        ours[name] = seconds
        print(f"{name}: {len(seq.blocks):,} blocks, {seq.duration_s:.1f} s: SAR + PNS + heating in {seconds:.2f} s "
              f"(PNS peak {result.pns['peak_percent']:.1f} %, whole-body SAR 6 min "
              f"{result.sar['whole_body']['6min']['peak_w_per_kg']:.3f} W/kg, coil "
              f"{result.heating['gradient_coil']['peak_temperature_c']:.1f} °C)", flush=True)
    if not args.skip_pypulseq:
        import matplotlib

        matplotlib.use("Agg")
        import pypulseq as pp
        from pypulseq.Sequence.calc_pns import calc_pns
        from pypulseq.utils.safe_pns_prediction import safe_example_hw

        seq = pp.Sequence()
        seq.read(str(MPRAGE))
        t0 = time.perf_counter()
        _, norm, _, _ = calc_pns(seq, safe_example_hw(), do_plots=False)
        theirs = time.perf_counter() - t0
        print(f"pypulseq calc_pns on the MPRAGE: {theirs:.1f} s (PNS peak {100 * norm.max():.1f} %); scanctl's "
              f"whole prediction is {theirs / ours['MPRAGE']:.0f}x faster  (target >= 100x)", flush=True)


if __name__ == "__main__":
    main()
