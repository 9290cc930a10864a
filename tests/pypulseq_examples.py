"""Sequences as pypulseq 1.5.0.post1's own example scripts write them (``examples/scripts/write_*.py`` of
github.com/imr-framework/pypulseq at tag v1.5.0.post1), built with the pinned pypulseq.

Each builder follows its script's events, timing and loop structure — the hardware limits, the pulses, the
gradient areas and how the loop changes them (reversed read gradients, RF frequency offsets per slice,
labels or none), and whether the file gets a ``FOV`` definition — which is what scanctl must read right.
Only the matrix is a parameter (the scripts' own value is the default), so that the tests stay small;
whatever follows from the matrix follows as in the script. These are equivalents written for the tests,
not copies of the scripts: plotting, printing and the script's ``main`` are left out.
"""

from __future__ import annotations

import math

import numpy as np
import pypulseq as pp


def epi(n: int = 64, n_slices: int = 3) -> pp.Sequence:
    """``write_epi.py``: single-shot gradient-echo EPI without ramp sampling, ``n_slices`` contiguous
    3 mm slices told apart only by the excitation's frequency offset (no labels, no FOV definition),
    the read gradient reversed after every line."""
    fov, slice_thickness = 220e-3, 3e-3
    system = pp.Opts(max_grad=32, grad_unit="mT/m", max_slew=130, slew_unit="T/m/s", rf_ringdown_time=30e-6,
                     rf_dead_time=100e-6)
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=np.pi / 2, system=system, duration=3e-3,
                                   slice_thickness=slice_thickness, apodization=0.5, time_bw_product=4,
                                   return_gz=True, delay=system.rf_dead_time, use="excitation")
    delta_k = 1 / fov
    dwell = 4e-6
    readout_time = n * dwell
    flat_time = np.ceil(readout_time * 1e5) * 1e-5
    gx = pp.make_trapezoid(channel="x", system=system, amplitude=n * delta_k / readout_time, flat_time=flat_time)
    adc = pp.make_adc(num_samples=n, duration=readout_time,
                      delay=gx.rise_time + flat_time / 2 - (readout_time - dwell) / 2)
    pre_time = 8e-4
    gx_pre = pp.make_trapezoid(channel="x", system=system, area=-gx.area / 2, duration=pre_time)
    gz_reph = pp.make_trapezoid(channel="z", system=system, area=-gz.area / 2, duration=pre_time)
    gy_pre = pp.make_trapezoid(channel="y", system=system, area=-n / 2 * delta_k, duration=pre_time)
    blip = np.ceil(2 * np.sqrt(delta_k / system.max_slew) / 10e-6) * 10e-6
    gy = pp.make_trapezoid(channel="y", system=system, area=delta_k, duration=blip)
    for s in range(n_slices):
        rf.freq_offset = gz.amplitude * slice_thickness * (s - (n_slices - 1) / 2)
        seq.add_block(rf, gz)
        seq.add_block(gx_pre, gy_pre, gz_reph)
        for _ in range(n):
            seq.add_block(gx, adc)
            seq.add_block(gy)
            gx.amplitude = -gx.amplitude
    return seq


def epi_se(n: int = 64) -> pp.Sequence:
    """``write_epi_se.py``: spin-echo EPI (TE 60 ms), the phase pre-phaser before the refocusing pulse,
    the read gradient reversed after every line, no labels (so no ``REV``) and no FOV definition."""
    fov = 256e-3
    system = pp.Opts(max_grad=32, grad_unit="mT/m", max_slew=130, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=20e-6)
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=np.pi / 2, system=system, duration=3e-3, slice_thickness=3e-3,
                                   apodization=0.5, time_bw_product=4, return_gz=True, delay=system.rf_dead_time,
                                   use="excitation")
    delta_k = 1 / fov
    gx = pp.make_trapezoid(channel="x", system=system, flat_area=n * delta_k, flat_time=3.2e-4 * n / 64)
    adc = pp.make_adc(num_samples=n, system=system, duration=gx.flat_time, delay=gx.rise_time)
    pre_time = 8e-4
    gz_reph = pp.make_trapezoid(channel="z", system=system, area=-gz.area / 2, duration=pre_time)
    gx_pre = pp.make_trapezoid(channel="x", system=system, area=gx.area / 2 - delta_k / 2, duration=pre_time)
    gy_pre = pp.make_trapezoid(channel="y", system=system, area=n / 2 * delta_k, duration=pre_time)
    blip = math.ceil(2 * math.sqrt(delta_k / system.max_slew) / 10e-6) * 10e-6
    gy = pp.make_trapezoid(channel="y", system=system, area=delta_k, duration=blip)
    rf180 = pp.make_block_pulse(flip_angle=np.pi, delay=system.rf_dead_time, system=system, duration=500e-6,
                                use="refocusing")
    gz_spoil = pp.make_trapezoid(channel="z", system=system, area=gz.area * 2, duration=3 * pre_time)
    te = 60e-3
    to_centre = (n / 2 + 0.5) * pp.calc_duration(gx) + n / 2 * pp.calc_duration(gy)
    rf_centre = rf.delay + pp.calc_rf_center(rf)[0]
    rf180_centre = rf180.delay + pp.calc_rf_center(rf180)[0]
    delay_te1 = te / 2 - pp.calc_duration(gz) + rf_centre - pre_time - pp.calc_duration(gz_spoil) - rf180_centre
    delay_te2 = te / 2 - pp.calc_duration(rf180) + rf180_centre - pp.calc_duration(gz_spoil) - to_centre
    seq.add_block(rf, gz)
    seq.add_block(gx_pre, gy_pre, gz_reph)
    seq.add_block(pp.make_delay(_raster(delay_te1)))
    seq.add_block(gz_spoil)
    seq.add_block(rf180)
    seq.add_block(gz_spoil)
    seq.add_block(pp.make_delay(_raster(delay_te2)))
    for _ in range(n):
        seq.add_block(gx, adc)
        seq.add_block(gy)
        gx.amplitude = -gx.amplitude
    seq.add_block(pp.make_delay(1e-4))
    return seq


def _raster(t_s: float, raster_s: float = 10e-6) -> float:
    """A delay on the block raster (the script's TE delays are, at its matrix; a smaller one need not be)."""
    return round(t_s / raster_s) * raster_s
