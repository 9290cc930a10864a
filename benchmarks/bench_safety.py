"""Safety prediction speed: SAR + PNS + heating (scanctl.safety.predict) for a pypulseq-written MPRAGE
(pypulseq's example design: 150 s, 60 x 48 echoes, 5,940 blocks) and the 256,000-block 3D GRE, beside
pypulseq's ``calc_pns`` (safe_example_hw) on the MPRAGE in the same run.

    .venv/bin/python benchmarks/bench_safety.py [--skip-pypulseq] [--repeat 3]

Both sequences are written once with pypulseq and cached in .bench-cache/.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

from scanctl.config import profile as profiles
from scanctl.safety.predict import predict
from scanctl.sequence import pulseq_read

CACHE = Path(__file__).parents[1] / ".bench-cache"
MPRAGE = CACHE / "mprage_example.seq"
GRE3D = CACHE / "gre3d_256000.seq"


def write_mprage(path: Path) -> None:
    """A 3D MPRAGE written with pypulseq after its example ``examples/scripts/write_mprage.py`` (not shipped
    in the installed package): 24 mT/m, 100 T/m/s; FOV 192 x 240 x 256 mm, matrix 48 x 60 x 64 (x, y, z),
    readout on z (5.0176 ms), inner phase encoding on x (48), outer on y (60); per outer step a 10.24 ms
    hyperbolic-secant adiabatic inversion, TI 1.1 s with a 10 ms spoiler, 48 RF-spoiled 7° hard-pulse echoes
    whose read spoiler and phase rewinders overlap the next pulse, TR 2.5 s; 60 outer steps (150 s)."""
    import numpy as np
    import pypulseq as pp

    system = pp.Opts(max_grad=24, grad_unit="mT/m", max_slew=100, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    seq = pp.Sequence(system)
    fov = np.array([192e-3, 240e-3, 256e-3])
    matrix = (48, 60, 64)
    read, inner, outer = 2, 0, 1  # axis indices: z, x, y
    channel = "xyz"
    ro_dur, ti, tr_out = 5017.6e-6, 1.1, 2.5
    dk = 1 / fov
    excitation = pp.make_block_pulse(flip_angle=math.radians(7), duration=100e-6, delay=system.rf_dead_time,
                                     system=system)
    inversion = pp.make_adiabatic_pulse(pulse_type="hypsec", duration=10.24e-3, dwell=1e-5,
                                        delay=system.rf_dead_time, system=system)
    raster = system.grad_raster_time
    g_read = pp.make_trapezoid(channel[read], amplitude=matrix[read] * dk[read] / ro_dur,
                               flat_time=math.ceil((ro_dur + system.adc_dead_time) / raster) * raster, system=system)
    adc = pp.make_adc(num_samples=matrix[read], duration=ro_dur, delay=g_read.rise_time, system=system)
    g_pre = pp.make_trapezoid(channel[read], system=system, area=-g_read.amplitude * (
        adc.dwell * (adc.num_samples / 2 + 0.5) + 0.5 * g_read.rise_time))
    pe_inner = pp.make_trapezoid(channel[inner], area=-dk[inner] * matrix[inner] / 2, system=system)
    pe_outer = pp.make_trapezoid(channel[outer], area=-dk[outer] * matrix[outer] / 2, system=system)
    spoiler = pp.make_trapezoid(channel[outer], area=float(np.max(dk * np.array(matrix))) * 4, duration=10e-3,
                                system=system)
    read_flat, _ = pp.split_gradient_at(grad=g_read, time_point=g_read.rise_time + g_read.flat_time)
    read_spoil = pp.make_extended_trapezoid_area(channel=channel[read], grad_start=g_read.amplitude, grad_end=0,
                                                 area=dk[read] / 2 * matrix[read] * 3, system=system)[0]
    excitation.delay = pp.calc_duration(read_spoil, pe_inner, pe_outer)
    g_pre, _, _ = pp.align(right=[g_pre, pe_inner, pe_outer])
    read_flat.delay = pp.calc_duration(g_pre)
    adc.delay = read_flat.delay + g_read.rise_time
    readout = pp.add_gradients(grads=[read_flat, g_pre], system=system)
    tr_inner = pp.calc_duration(excitation) + pp.calc_duration(readout)
    steps_inner = (np.arange(matrix[inner]) - matrix[inner] / 2) / matrix[inner] * 2
    steps_outer = (np.arange(matrix[outer]) - matrix[outer] / 2) / matrix[outer] * 2
    centre = int(np.flatnonzero(steps_inner == 0)[0])
    before = (ti - centre * tr_inner - (pp.calc_duration(inversion) - pp.calc_rf_center(inversion)[0] - inversion.delay)
              - excitation.delay - pp.calc_rf_center(excitation)[0])
    ti_delay = round(before / system.block_duration_raster) * system.block_duration_raster
    tr_delay = tr_out - tr_inner * matrix[inner] - ti_delay - pp.calc_duration(inversion)
    for j in range(matrix[outer]):
        seq.add_block(inversion)
        seq.add_block(pp.make_delay(ti_delay), spoiler)
        phase = increment = 0.0
        encode_outer = pp.scale_grad(grad=pe_outer, scale=steps_outer[j])
        rewind_outer = pp.scale_grad(grad=pe_outer, scale=-steps_outer[j])
        for i in range(matrix[inner]):
            excitation.phase_offset = adc.phase_offset = math.radians(phase)
            increment = (increment + 117.0) % 360.0
            phase = (phase + increment) % 360.0
            if i == 0:
                seq.add_block(excitation)
            else:
                seq.add_block(excitation, read_spoil, pp.scale_grad(grad=pe_inner, scale=-steps_inner[i - 1]),
                              rewind_outer)
            seq.add_block(adc, readout, pp.scale_grad(grad=pe_inner, scale=steps_inner[i]), encode_outer)
        seq.add_block(read_spoil, pp.make_delay(tr_delay))
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
