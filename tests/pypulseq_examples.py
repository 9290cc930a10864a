"""Sequences as pypulseq 1.5.0.post1's own example scripts write them (``examples/scripts/write_*.py`` of
github.com/imr-framework/pypulseq at tag v1.5.0.post1), built with the pinned pypulseq.

Each builder follows its script's events, timing and loop structure — the hardware limits, the pulses, the
gradient areas and how the loop changes them (reversed read gradients, RF frequency offsets per slice,
labels or none), and whether the file gets a ``FOV`` definition — which is what scanctl must read right.
Only the matrix is a parameter (the scripts' own value is the default), so that the tests stay small;
whatever follows from the matrix follows as in the script. These are equivalents written for the tests,
not copies of the scripts: plotting, printing and the script's ``main`` are left out. At their default
parameters the files these write are the ones the scripts write, line for line (checked with ``diff``
against the scripts' output, signature and comments aside, for epi, epi_se, tse and haste).
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


def tse(n: int = 64, n_echo: int = 16) -> pp.Sequence:
    """``write_tse.py``: 2D turbo spin echo, ``n // n_echo`` shots of ``n_echo`` echoes after one dummy shot
    (no ADC), TE 12 ms, TR 2 s; slice gradients as extended trapezoids across blocks (their areas, rounded
    to the raster in the file, leave k_z at +-5e-4 1/m, not 0); no labels, no FOV definition."""
    system = pp.Opts(max_grad=32, grad_unit="mT/m", max_slew=130, slew_unit="T/m/s", rf_ringdown_time=100e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    n_ex = n // n_echo
    pe_steps = np.arange(1, n_echo * n_ex + 1) - 0.5 * n_echo * n_ex - 1
    if n_echo % 2 == 0:
        pe_steps = np.roll(pe_steps, -int(np.round(n_ex / 2)))
    pe_order = pe_steps.reshape((n_ex, n_echo), order="F").T
    shots = [None] + [pe_order[:, k] for k in range(n_ex)]  # the first shot is a dummy
    return _fast_spin_echo(system, n, n_echo, shots, end_delay_s=0.0)


def haste(n: int = 64, n_pre: int = 8) -> pp.Sequence:
    """``write_haste.py``: single-shot half-Fourier turbo spin echo, ``n / 2 + n_pre`` echoes on lines
    ``-n_pre .. n/2 - 1``, TR 2 s then a 5 s delay (one block); built as ``write_tse.py`` otherwise (30 mT/m,
    170 T/m/s); no labels, no FOV definition."""
    system = pp.Opts(max_grad=30, grad_unit="mT/m", max_slew=170, slew_unit="T/m/s", rf_ringdown_time=100e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    n_echo = n // 2 + n_pre
    lines = np.arange(-n_pre, n + 1)[:n_echo].astype(float)
    return _fast_spin_echo(system, n, n_echo, [lines], end_delay_s=5.0)


def _fast_spin_echo(system: pp.Opts, n: int, n_echo: int, shots: list, end_delay_s: float) -> pp.Sequence:
    """The echo train of ``write_tse.py`` / ``write_haste.py`` (one slice of 5 mm, FOV 256 mm, TE 12 ms,
    TR 2 s, 6.4 ms readouts, 250 us ramps): ``shots`` lists each shot's phase-encoding steps (units of 1/FOV),
    ``None`` for a dummy shot without ADC."""
    seq = pp.Sequence(system)
    fov, slice_thickness, te, tr, d_g = 256e-3, 5e-3, 12e-3, 2000e-3, 250e-6
    sampling_time = 6.4e-3
    readout_time = sampling_time + 2 * system.adc_dead_time
    t_ex, t_ref = 2.5e-3, 2e-3
    t_exwd = t_ex + system.rf_ringdown_time + system.rf_dead_time
    t_refwd = t_ref + system.rf_ringdown_time + system.rf_dead_time
    t_sp = 0.5 * (te - readout_time - t_refwd)
    t_spex = 0.5 * (te - t_exwd - t_refwd)
    rf_ex_phase, rf_ref_phase = np.pi / 2, 0.0
    rf_ex, gz, _ = pp.make_sinc_pulse(flip_angle=np.pi / 2, system=system, duration=t_ex,
                                      slice_thickness=slice_thickness, apodization=0.5, time_bw_product=4,
                                      phase_offset=rf_ex_phase, return_gz=True, delay=system.rf_dead_time,
                                      use="excitation")
    gs_ex = pp.make_trapezoid(channel="z", system=system, amplitude=gz.amplitude, flat_time=t_exwd, rise_time=d_g)
    rf_ref, gz, _ = pp.make_sinc_pulse(flip_angle=np.pi, system=system, duration=t_ref,
                                       slice_thickness=slice_thickness, apodization=0.5, time_bw_product=4,
                                       phase_offset=rf_ref_phase, use="refocusing", return_gz=True,
                                       delay=system.rf_dead_time)
    gs_ref = pp.make_trapezoid(channel="z", system=system, amplitude=gs_ex.amplitude, flat_time=t_refwd,
                               rise_time=d_g)
    ags_ex = gs_ex.area / 2
    gs_spr = pp.make_trapezoid(channel="z", system=system, area=ags_ex * 1.5, duration=t_sp, rise_time=d_g)
    gs_spex = pp.make_trapezoid(channel="z", system=system, area=ags_ex * 0.5, duration=t_spex, rise_time=d_g)
    delta_k = 1 / fov
    gr_acq = pp.make_trapezoid(channel="x", system=system, flat_area=n * delta_k, flat_time=readout_time,
                               rise_time=d_g)
    adc = pp.make_adc(num_samples=n, duration=sampling_time, delay=system.adc_dead_time, system=system)
    gr_spr = pp.make_trapezoid(channel="x", system=system, area=gr_acq.area, duration=t_sp, rise_time=d_g)
    gr_preph = pp.make_trapezoid(channel="x", system=system, area=gr_acq.area / 2 + gr_spr.area, duration=t_spex,
                                 rise_time=d_g)

    def ramp(channel: str, trap, start: float, end: float) -> object:
        """An extended trapezoid through ``trap``'s flat top, from ``start`` to ``end`` amplitude."""
        times = np.cumsum([0, trap.rise_time, trap.flat_time, trap.fall_time])
        return pp.make_extended_trapezoid(channel=channel, times=times,
                                          amplitudes=np.array([start, trap.amplitude, trap.amplitude, end]))

    def flat(channel: str, amplitude: float, duration: float) -> object:
        return pp.make_extended_trapezoid(channel=channel, times=np.array([0, duration]),
                                          amplitudes=np.array([amplitude, amplitude]))

    gs1 = pp.make_extended_trapezoid(channel="z", times=np.array([0, gs_ex.rise_time]),
                                     amplitudes=np.array([0, gs_ex.amplitude]))
    gs2 = flat("z", gs_ex.amplitude, gs_ex.flat_time)
    gs3 = ramp("z", gs_spex, gs_ex.amplitude, gs_ref.amplitude)
    gs4 = flat("z", gs_ref.amplitude, gs_ref.flat_time)
    gs5 = ramp("z", gs_spr, gs_ref.amplitude, 0)
    gs7 = ramp("z", gs_spr, 0, gs_ref.amplitude)
    gr5 = ramp("x", gr_spr, 0, gr_acq.amplitude)
    gr6 = flat("x", gr_acq.amplitude, readout_time)
    gr7 = ramp("x", gr_spr, gr_acq.amplitude, 0)
    train = (pp.calc_duration(gs1) + pp.calc_duration(gs2) + pp.calc_duration(gs3)
             + n_echo * (pp.calc_duration(gs4) + pp.calc_duration(gs5) + pp.calc_duration(gs7) + readout_time)
             + pp.calc_duration(gs4) + pp.calc_duration(gs5))
    tr_fill = system.grad_raster_time * round((tr - train) / system.grad_raster_time)
    rf_ex.phase_offset = rf_ex_phase - 2 * np.pi * rf_ex.freq_offset * pp.calc_rf_center(rf_ex)[0]
    rf_ref.phase_offset = rf_ref_phase - 2 * np.pi * rf_ref.freq_offset * pp.calc_rf_center(rf_ref)[0]
    for steps in shots:
        seq.add_block(gs1)
        seq.add_block(rf_ex, gs2)
        seq.add_block(gs3, gr_preph)
        for echo in range(n_echo):
            area = 0.0 if steps is None else float(steps[echo]) * delta_k
            gp_pre = pp.make_trapezoid(channel="y", system=system, area=area, duration=t_sp, rise_time=d_g)
            gp_rew = pp.make_trapezoid(channel="y", system=system, area=-area, duration=t_sp, rise_time=d_g)
            seq.add_block(rf_ref, gs4)
            seq.add_block(gr5, gp_pre, gs5)
            seq.add_block(gr6, adc) if steps is not None else seq.add_block(gr6)
            seq.add_block(gr7, gp_rew, gs7)
        seq.add_block(gs4)
        seq.add_block(gs5)
        seq.add_block(pp.make_delay(tr_fill))
    if end_delay_s > 0:
        seq.add_block(pp.make_delay(end_delay_s))
    return seq


def radial_gre(n: int = 64, spokes: int = 60, dummies: int = 20) -> pp.Sequence:
    """``write_radial_gre.py``: RF-spoiled 2D radial gradient echo (FOV 260 mm, 3 mm slice, 10 deg, TE 8 ms,
    TR 20 ms), ``spokes`` spokes of ``n`` samples at angles ``pi / spokes`` apart (``pp.rotate`` about z),
    after ``dummies`` dummy spokes without ADC; a ``FOV`` and ``Name`` definition, no labels."""
    fov, slice_thickness, te, tr = 260e-3, 3e-3, 8e-3, 20e-3
    delta = np.pi / spokes
    system = pp.Opts(max_grad=28, grad_unit="mT/m", max_slew=120, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(apodization=0.5, duration=4e-3, flip_angle=10 * np.pi / 180,
                                   slice_thickness=slice_thickness, system=system, time_bw_product=4,
                                   return_gz=True, delay=system.rf_dead_time, use="excitation")
    delta_k = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * delta_k, flat_time=6.4e-3 / 5, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2 - delta_k / 2, duration=2e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=2e-3, system=system)
    gx_spoil = pp.make_trapezoid(channel="x", area=0.5 * n * delta_k, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=system)
    raster = seq.grad_raster_time
    delay_te = np.ceil((te - pp.calc_duration(gx_pre) - gz.fall_time - gz.flat_time / 2
                        - pp.calc_duration(gx) / 2) / raster) * raster
    delay_tr = np.ceil((tr - pp.calc_duration(gx_pre) - pp.calc_duration(gz) - pp.calc_duration(gx) - delay_te)
                       / raster) * raster
    rf_phase, rf_inc = 0.0, 0.0
    for i in range(-dummies, spokes + 1):
        rf.phase_offset = rf_phase / 180 * np.pi
        adc.phase_offset = rf_phase / 180 * np.pi
        rf_inc = divmod(rf_inc + 117, 360.0)[1]
        rf_phase = divmod(rf_inc + rf_phase, 360.0)[1]
        seq.add_block(rf, gz)
        phi = delta * (i - 1)
        seq.add_block(*pp.rotate(gx_pre, gz_reph, angle=phi, axis="z"))
        seq.add_block(pp.make_delay(delay_te))
        if i > 0:
            seq.add_block(*pp.rotate(gx, adc, angle=phi, axis="z"))
        else:
            seq.add_block(*pp.rotate(gx, angle=phi, axis="z"))
        seq.add_block(*pp.rotate(gx_spoil, gz_spoil, pp.make_delay(delay_tr), angle=phi, axis="z"))
    seq.set_definition(key="FOV", value=[fov, fov, slice_thickness])
    seq.set_definition(key="Name", value="gre_rad")
    return seq
