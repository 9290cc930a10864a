"""Sequences as pypulseq 1.5.0.post1's own example scripts write them (``examples/scripts/write_*.py`` of
github.com/imr-framework/pypulseq at tag v1.5.0.post1), built with the pinned pypulseq.

Each builder follows its script's events, timing and loop structure — the hardware limits, the pulses, the
gradient areas and how the loop changes them (reversed read gradients, RF frequency and phase offsets per
slice, RF spoiling, labels or none), and the definitions (``FOV``, ``Name``) the script sets before it writes
the file, or none — which is what scanctl must read right. Only the sizes are parameters (the scripts' own
values are the defaults), so that the tests stay small; whatever follows from them follows as in the script.
These are equivalents written for the tests, not copies of the scripts (which are not in this repository):
plotting, printing, timing checks and the scripts' ``main`` are left out. At their default parameters the
files these write are the ones the scripts write, line for line (``diff`` against the scripts' own output,
the signature aside), for all twelve scripts pypulseq can write; at the tests' sizes too, definitions aside
(the scripts set those only when they write the file).

``write_2Dt1_mprage.py`` and ``write_3Dt1_mprage.py`` have no builder: pypulseq 1.5.0.post1's own ``write``
fails on them (a block duration off the block raster).
"""

from __future__ import annotations

import math
from copy import copy
from types import SimpleNamespace

import numpy as np
import pypulseq as pp

#: Every ``write_*.py`` of pypulseq 1.5.0.post1's examples/scripts (the tag's listing).
ALL_SCRIPTS = ("2Dt1_mprage", "3Dt1_mprage", "epi", "epi_label", "epi_se", "epi_se_rs", "gre", "gre_label",
               "gre_label_softdelay", "haste", "mprage", "radial_gre", "tse", "ute")


def _epi_events(n: int, pe_sign: float) -> SimpleNamespace:
    """The events of ``write_epi.py`` and ``write_epi_label.py``: a 3 ms sinc excitation of a 3 mm slice,
    ``n`` samples of 4 us centred on the flat top of each read gradient (no ramp sampling), 0.8 ms
    pre-phasers, the phase pre-phaser to ``pe_sign * n / 2`` and blips of ``-pe_sign`` (units of 1/FOV,
    FOV 220 mm); 32 mT/m, 130 T/m/s."""
    fov, thickness = 220e-3, 3e-3
    system = pp.Opts(max_grad=32, grad_unit="mT/m", max_slew=130, slew_unit="T/m/s", rf_ringdown_time=30e-6,
                     rf_dead_time=100e-6)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=np.pi / 2, system=system, duration=3e-3, slice_thickness=thickness,
                                   apodization=0.5, time_bw_product=4, return_gz=True, delay=system.rf_dead_time,
                                   use="excitation")
    dk = 1 / fov
    dwell = 4e-6
    readout_time = n * dwell
    flat_time = np.ceil(readout_time * 1e5) * 1e-5  # up to the 10 us gradient raster
    gx = pp.make_trapezoid(channel="x", system=system, amplitude=n * dk / readout_time, flat_time=flat_time)
    pre_time = 8e-4
    blip = np.ceil(2 * np.sqrt(dk / system.max_slew) / 10e-6) * 10e-6  # a triangle of area dk at full slew
    return SimpleNamespace(
        system=system, fov=fov, thickness=thickness, rf=rf, gz=gz, gx=gx,
        # the samples' centre on the flat top's centre
        adc=pp.make_adc(num_samples=n, duration=readout_time,
                        delay=gx.rise_time + flat_time / 2 - (readout_time - dwell) / 2),
        gx_pre=pp.make_trapezoid(channel="x", system=system, area=-gx.area / 2, duration=pre_time),
        gz_reph=pp.make_trapezoid(channel="z", system=system, area=-gz.area / 2, duration=pre_time),
        gy_pre=pp.make_trapezoid(channel="y", system=system, area=pe_sign * (n / 2 * dk), duration=pre_time),
        gy=pp.make_trapezoid(channel="y", system=system, area=-pe_sign * dk, duration=blip))


def _slice_offset(gz, thickness: float, s: int, n_slices: int) -> float:
    """The excitation's frequency offset (Hz) for slice ``s`` of ``n_slices`` contiguous ones centred on
    the isocentre, under slice gradient ``gz``."""
    return gz.amplitude * thickness * (s - (n_slices - 1) / 2)


def epi(n: int = 64, n_slices: int = 3) -> pp.Sequence:
    """``write_epi.py``: single-shot gradient-echo EPI without ramp sampling, ``n_slices`` contiguous
    3 mm slices told apart only by the excitation's frequency offset (no labels, no FOV definition),
    the read gradient reversed after every line."""
    ev = _epi_events(n, pe_sign=-1.0)
    seq = pp.Sequence(ev.system)
    for s in range(n_slices):
        ev.rf.freq_offset = _slice_offset(ev.gz, ev.thickness, s, n_slices)
        seq.add_block(ev.rf, ev.gz)
        seq.add_block(ev.gx_pre, ev.gy_pre, ev.gz_reph)
        for _ in range(n):
            seq.add_block(ev.gx, ev.adc)
            seq.add_block(ev.gy)
            ev.gx.amplitude = -ev.gx.amplitude
    return seq


def epi_label(n: int = 64, n_slices: int = 7, n_reps: int = 4, navigators: int = 3) -> pp.Sequence:
    """``write_epi_label.py``: ``n_reps`` repetitions of ``n_slices`` EPI slices, each repetition after a
    2 ms ``physio1`` trigger; per slice ``navigators`` readouts without phase encoding (``NAV`` = 1, ``LIN``
    n/2, ``AVG`` set on the third) then ``n`` lines from +n/2 down (``LIN`` counting up from 0), ``REV`` and
    ``SEG`` set on the reversed readouts, a z spoiler and 100 ms after each slice (``SLC`` +1), ``REP`` +1
    after each repetition; the RF phase follows the slice's frequency offset; the ``FOV`` (slab of all
    slices) and ``Name`` definitions."""
    ev = _epi_events(n, pe_sign=1.0)
    seq = pp.Sequence(ev.system)
    trigger = pp.make_trigger(channel="physio1", duration=2000e-6)
    gz_spoil = pp.make_trapezoid(channel="z", system=ev.system, area=1 / ev.fov * n * 4)

    def reversed_labels() -> list:
        back = ev.gx.amplitude < 0
        return [pp.make_label(type="SET", label="REV", value=back), pp.make_label(type="SET", label="SEG", value=back)]

    for _ in range(n_reps):
        seq.add_block(trigger, pp.make_label(type="SET", label="SLC", value=0))
        for s in range(n_slices):
            ev.rf.freq_offset = _slice_offset(ev.gz, ev.thickness, s, n_slices)
            ev.rf.phase_offset = -ev.rf.freq_offset * pp.calc_rf_center(ev.rf)[0]
            seq.add_block(ev.rf, ev.gz)
            seq.add_block(ev.gx_pre, ev.gz_reph, pp.make_label(type="SET", label="NAV", value=1),
                          pp.make_label(type="SET", label="LIN", value=np.round(n / 2)))
            for k in range(navigators):
                seq.add_block(ev.gx, ev.adc, *reversed_labels(),
                              pp.make_label(type="SET", label="AVG", value=k + 1 == 3))
                if k + 1 != navigators:  # the blip's time, without the blip
                    seq.add_block(pp.make_delay(pp.calc_duration(ev.gy)))
                ev.gx.amplitude = -ev.gx.amplitude
            seq.add_block(ev.gy_pre, *(pp.make_label(type="SET", label=k, value=0) for k in ("LIN", "NAV", "AVG")))
            for _ in range(n):
                seq.add_block(*reversed_labels())
                seq.add_block(ev.gx, ev.adc)
                seq.add_block(ev.gy, pp.make_label(type="INC", label="LIN", value=1))
                ev.gx.amplitude = -ev.gx.amplitude
            seq.add_block(gz_spoil, pp.make_delay(0.1), pp.make_label(type="INC", label="SLC", value=1))
            if (navigators + n) % 2:  # every slice starts with the read gradient positive
                ev.gx.amplitude = -ev.gx.amplitude
        seq.add_block(pp.make_label(type="INC", label="REP", value=1))
    seq.set_definition(key="FOV", value=[ev.fov, ev.fov, ev.thickness * n_slices])
    seq.set_definition(key="Name", value="epi_lbl")
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
    gx = pp.make_trapezoid(channel="x", system=system, flat_area=n * delta_k, flat_time=3.2e-4)
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


def _rf_spoil_phases(count: int, increment_deg: float = 117.0):
    """RF spoiling: the phase (rad) of each of ``count`` excitations, starting at 0, the step between two
    growing by ``increment_deg`` every time (a quadratic phase schedule, degrees kept in [0, 360))."""
    phase_deg = step_deg = 0.0
    for _ in range(count):
        yield phase_deg / 180 * np.pi
        step_deg = (step_deg + increment_deg) % 360.0
        phase_deg = (phase_deg + step_deg) % 360.0


def _gre_events(n: int, fov: float, flip_deg: float, apodization: float, use: str) -> SimpleNamespace:
    """The events shared by ``write_gre.py`` and ``write_gre_label*.py``: a 3 ms sinc excitation of a 3 mm
    slice, a 3.2 ms readout of ``n`` samples over ``fov`` (m), 1 ms pre-phasers, spoilers of 2 cycles per
    pixel in x and 4 per slice in z; 28 mT/m, 150 T/m/s."""
    thickness = 3e-3
    system = pp.Opts(max_grad=28, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=flip_deg * np.pi / 180, duration=3e-3, slice_thickness=thickness,
                                   apodization=apodization, time_bw_product=4, system=system, return_gz=True,
                                   delay=system.rf_dead_time, use=use)
    dk = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * dk, flat_time=3.2e-3, system=system)
    return SimpleNamespace(
        system=system, fov=fov, thickness=thickness, dk=dk, rf=rf, gz=gz, gx=gx,
        adc=pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system),
        gx_pre=pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system),
        gz_reph=pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system),
        gx_spoil=pp.make_trapezoid(channel="x", area=2 * n * dk, system=system),
        gz_spoil=pp.make_trapezoid(channel="z", area=4 / thickness, system=system))


def _gre_line(seq: pp.Sequence, ev: SimpleNamespace, phase: float, area: float, wait: object,
              *spoil_extras: object) -> None:
    """One TR of the GRE scripts: excite with RF phase ``phase`` (rad, the ADC's too), phase-encode to
    ``area`` (1/m) with the read and slice pre-phasers, ``wait`` (a delay block), read, then spoil while the
    phase encoding is rewound, with ``spoil_extras`` (a delay, labels) in that last block."""
    ev.rf.phase_offset = phase
    ev.adc.phase_offset = phase
    seq.add_block(ev.rf, ev.gz)
    gy = pp.make_trapezoid(channel="y", area=area, duration=pp.calc_duration(ev.gx_pre), system=ev.system)
    seq.add_block(ev.gx_pre, gy, ev.gz_reph)
    seq.add_block(wait)
    seq.add_block(ev.gx, ev.adc)
    gy.amplitude = -gy.amplitude
    seq.add_block(ev.gx_spoil, gy, ev.gz_spoil, *spoil_extras)


def gre(n: int = 64) -> pp.Sequence:
    """``write_gre.py``: RF-spoiled 2D gradient echo, FOV 256 mm, 3 mm slice, 10 deg, TE 5 ms, TR 12 ms,
    ``n`` lines with phase areas from -n/2 to n/2 - 1 (units of 1/FOV) in that order; no labels; the ``FOV``
    and ``Name`` definitions the script sets before writing."""
    ev = _gre_events(n, 256e-3, 10, 0.42, "excitation")
    seq = pp.Sequence(ev.system)
    raster = seq.grad_raster_time
    # TE counted from the RF centre (end of the excitation block less the time after the centre).
    rf_tail = pp.calc_duration(ev.gz, ev.rf) - pp.calc_rf_center(ev.rf)[0] - ev.rf.delay
    delay_te = math.ceil((5e-3 - rf_tail - pp.calc_duration(ev.gx_pre) - pp.calc_duration(ev.gx) / 2 - pp.eps)
                         / raster) * raster
    delay_tr = np.ceil((12e-3 - pp.calc_duration(ev.gz, ev.rf) - pp.calc_duration(ev.gx_pre)
                        - pp.calc_duration(ev.gx) - delay_te) / raster) * raster
    areas = (np.arange(n) - n / 2) * ev.dk
    for area, phase in zip(areas, _rf_spoil_phases(n), strict=True):
        _gre_line(seq, ev, phase, area, pp.make_delay(delay_te), pp.make_delay(delay_tr))
    seq.set_definition(key="FOV", value=[ev.fov, ev.fov, ev.thickness])
    seq.set_definition(key="Name", value="gre")
    return seq


def gre_label(n: int = 64, fov: float = 224e-3, soft_delays: bool = False) -> pp.Sequence:
    """``write_gre_label.py`` (TE 4.3 ms, TR 10 ms), or with ``soft_delays`` ``write_gre_label_softdelay.py``
    (TE and TR as soft delays with hints ``TE``/``TR``, TR 20 ms, TE up to 8 ms, RF ``use`` undefined): a
    2D spoiled GRE of 7 deg over ``fov`` (m) whose phase areas run from +n/2 down to -n/2 + 1 while ``LIN``
    counts up from 0, with ``REV`` set to 1 once at the start (on readouts towards +k_x); ``SLC`` incremented
    and ``LIN`` reset after the last line; the ``FOV`` and ``Name`` definitions."""
    ev = _gre_events(n, fov, 7, 0.5, "undefined" if soft_delays else "excitation")
    seq = pp.Sequence(ev.system)
    raster = seq.grad_raster_time
    # Excitation centre to echo: half the flat top and the fall of the slice gradient, the pre-phaser, half
    # the readout.
    to_echo = pp.calc_duration(ev.gx_pre) + ev.gz.fall_time + ev.gz.flat_time / 2 + pp.calc_duration(ev.gx) / 2
    if soft_delays:
        tr, max_te = 20e-3, 8e-3
        min_te = math.ceil(to_echo / raster) * raster
        min_tr = math.ceil((ev.gz.fall_time + ev.gz.flat_time / 2 + max_te + pp.calc_duration(ev.gx) / 2
                            + pp.calc_duration(ev.gx_spoil, ev.gz_spoil)) / raster) * raster
    else:
        te, tr = 4.3e-3, 10e-3
        delay_te = math.ceil((te - pp.calc_duration(ev.gx_pre) - ev.gz.fall_time - ev.gz.flat_time / 2
                              - pp.calc_duration(ev.gx) / 2) / raster) * raster
        delay_tr = math.ceil((tr - pp.calc_duration(ev.gz) - pp.calc_duration(ev.gx_pre) - pp.calc_duration(ev.gx)
                              - delay_te) / raster) * raster
    seq.add_block(pp.make_label(label="REV", type="SET", value=1))
    areas = -(np.arange(n) - n / 2) * ev.dk
    for i, (area, phase) in enumerate(zip(areas, _rf_spoil_phases(n), strict=True)):
        labels = ([pp.make_label(type="INC", label="LIN", value=1)] if i < n - 1 else
                  [pp.make_label(type="SET", label="LIN", value=0), pp.make_label(type="INC", label="SLC", value=1)])
        if not soft_delays:
            _gre_line(seq, ev, phase, area, pp.make_delay(delay_te), pp.make_delay(delay_tr), *labels)
            continue
        # TE lengthens the first soft delay and shortens the second by as much: TR stays.
        _gre_line(seq, ev, phase, area, pp.make_soft_delay(hint="TE", offset=-min_te, factor=1.0), *labels)
        seq.add_block(pp.make_soft_delay(hint="TE", offset=max_te, factor=-1.0,
                                         default_duration=max_te - min_te - 10e-6))
        seq.add_block(pp.make_soft_delay(hint="TR", offset=-min_tr, factor=1.0,
                                         default_duration=tr - min_tr - max_te + min_te))
    seq.set_definition(key="FOV", value=[ev.fov, ev.fov, ev.thickness])
    seq.set_definition(key="Name", value="gre_label")
    return seq


def epi_se_rs(n: int = 64, n_slices: int = 3) -> pp.Sequence:
    """``write_epi_se_rs.py``: spin-echo EPI (TE 40 ms) with ramp sampling and blips split across readout
    blocks, 3/4 partial Fourier in y, FOV 250 mm; per slice a fat saturation (Gaussian,
    110 deg at -3.45 ppm of 2.89 T) and its spoiler, the excitation with an ``osc0`` trigger, and a
    refocusing pulse whose slice gradient carries the crusher areas as one extended trapezoid; the ``FOV``
    and ``Name`` definitions."""
    fov, thickness, te = 250e-3, 3e-3, 40e-3
    readout_time, t_ex, t_ref, crusher = 4.2e-4, 2e-3, 2e-3, 1.5
    system = pp.Opts(max_grad=32, grad_unit="mT/m", max_slew=130, slew_unit="T/m/s", rf_ringdown_time=30e-6,
                     rf_dead_time=100e-6)
    seq = pp.Sequence(system)
    fat_hz = -3.45 * 1e-6 * 2.89 * system.gamma
    rf_fs = pp.make_gauss_pulse(flip_angle=110 * np.pi / 180, system=system, duration=8e-3, bandwidth=np.abs(fat_hz),
                                freq_offset=fat_hz, delay=system.rf_dead_time, use="saturation")
    gz_fs = pp.make_trapezoid(channel="z", system=system, delay=pp.calc_duration(rf_fs), area=1 / 1e-4)
    rf, gz, gz_reph = pp.make_sinc_pulse(flip_angle=np.pi / 2, system=system, duration=t_ex, slice_thickness=thickness,
                                         apodization=0.5, time_bw_product=4, return_gz=True,
                                         delay=system.rf_dead_time, use="excitation")
    rf180, gz180, _ = pp.make_sinc_pulse(flip_angle=np.pi, system=system, duration=t_ref, slice_thickness=thickness,
                                         apodization=0.5, time_bw_product=4, phase_offset=np.pi / 2,
                                         use="refocusing", return_gz=True, delay=system.rf_dead_time)
    gz180n, rf180 = _crushed_refocusing(system, gz, gz_reph, gz180, rf180, crusher)
    trigger = pp.make_digital_output_pulse(channel="osc0", duration=100e-6)

    dk = 1 / fov
    blip_time = np.ceil(2 * np.sqrt(dk / system.max_slew) / 10e-6 / 2) * 10e-6 * 2  # even number of rasters
    gy = pp.make_trapezoid(channel="y", system=system, area=-dk, duration=blip_time)
    gx = _ramp_sampled_read(system, n * dk, readout_time, blip_time)
    dwell = math.floor(dk / gx.amplitude * 1e7) * 1e-7  # Nyquist at the flat top, down to 100 ns
    samples = math.floor(readout_time / dwell / 4) * 4
    adc = pp.make_adc(num_samples=samples, dwell=dwell, delay=blip_time / 2)
    # The samples' centre on the read gradient's centre, on a 1 us grid.
    adc.delay = round((gx.rise_time + gx.flat_time / 2 - dwell * ((samples - 1) / 2 + 0.5)) * 1e6) * 1e-6
    # Each blip split at its peak: the first half ends one readout block, the second starts the next.
    halves = pp.split_gradient_at(grad=gy, time_point=blip_time / 2, system=system)
    blip_up, blip_down, _ = pp.align(right=halves[0], left=[halves[1], gx])
    blip_down_up = pp.add_gradients((blip_down, blip_up), system=system)

    lines_before = round(0.75 * n / 2 - 1)
    lines = lines_before + round(n / 2 + 1)
    gx_pre = pp.make_trapezoid(channel="x", system=system, area=-gx.area / 2)
    gy_pre = pp.make_trapezoid(channel="y", system=system, area=lines_before * dk)
    gx_pre, gy_pre = pp.align(right=gx_pre, left=gy_pre)
    gy_pre = pp.make_trapezoid("y", system=system, area=gy_pre.area, duration=pp.calc_duration(gx_pre, gy_pre))

    raster = system.grad_raster_time
    rf_centre = rf.delay + pp.calc_rf_center(rf)[0]
    rf180_centre = rf180.delay + pp.calc_rf_center(rf180)[0]
    delay_te1 = math.ceil((te / 2 - pp.calc_duration(rf, gz) + rf_centre - rf180_centre) / raster) * raster
    to_k_centre = (lines_before + 0.5) * pp.calc_duration(gx)
    delay_te2 = math.ceil((te / 2 - pp.calc_duration(rf180, gz180n) + rf180_centre - to_k_centre) / raster) * raster
    # The refocusing block lasts to the first readout: pre-phasers at its end, after the pulse.
    refocus_block = delay_te2 + pp.calc_duration(rf180, gz180n)
    gx_pre.delay = 0
    gx_pre.delay = refocus_block - pp.calc_duration(gx_pre)
    gy_pre.delay = pp.calc_duration(rf180)
    for s in range(n_slices):
        seq.add_block(rf_fs, gz_fs)
        rf.freq_offset = _slice_offset(gz, thickness, s, n_slices)
        rf180.freq_offset = _slice_offset(gz180, thickness, s, n_slices)
        seq.add_block(rf, gz, trigger)
        seq.add_block(pp.make_delay(delay_te1))
        seq.add_block(rf180, gz180n, pp.make_delay(refocus_block), gx_pre, gy_pre)
        for i in range(lines):
            blip = blip_up if i == 0 else blip_down if i == lines - 1 else blip_down_up
            seq.add_block(gx, blip, adc)
            gx.amplitude = -gx.amplitude
    seq.set_definition(key="FOV", value=[fov, fov, thickness])
    seq.set_definition(key="Name", value="epi")
    return seq


def _crushed_refocusing(system: pp.Opts, gz, gz_reph, gz180, rf180, crusher: float) -> tuple:
    """``write_epi_se_rs.py``'s refocusing slice gradient: ramps of area ``crusher`` times the excitation's
    slice gradient area on either side of ``gz180``'s flat top (the second also rephasing the excitation),
    as one extended trapezoid; the pulse or the gradient delayed so that the flat top still spans the pulse.
    Returns the gradient and the pulse."""
    _, t1, a1 = pp.make_extended_trapezoid_area(channel="z", grad_start=0, grad_end=gz180.amplitude,
                                                area=crusher * gz.area, system=system)
    _, t2, a2 = pp.make_extended_trapezoid_area(channel="z", grad_start=gz180.amplitude, grad_end=0,
                                                area=-gz_reph.area + crusher * gz.area, system=system)
    lead = t1[3] - gz180.rise_time  # how much longer the crusher ramp is than the plain rise
    if gz180.delay > lead:
        gz180.delay -= lead
    else:
        rf180.delay += lead - gz180.delay
    times = np.array([*t1, *t1[3] + gz180.flat_time + t2]) + gz180.delay
    return pp.make_extended_trapezoid(channel="z", system=system, times=times, amplitudes=np.array([*a1, *a2])), rf180


def _ramp_sampled_read(system: pp.Opts, k_width: float, readout_time: float, blip_time: float):
    """A read trapezoid lasting ``readout_time`` plus one blip, scaled so that the area between the blips'
    centres (half a blip after its start, before its end) is ``k_width`` (1/m)."""
    gx = pp.make_trapezoid(channel="x", system=system, area=k_width + blip_time / 2 * blip_time / 2 * system.max_slew,
                           duration=readout_time + blip_time)
    # Less the two triangles of the ramps under the half blips.
    inner = gx.area - gx.amplitude / gx.rise_time * blip_time / 2 * blip_time / 2 / 2
    inner -= gx.amplitude / gx.fall_time * blip_time / 2 * blip_time / 2 / 2
    gx.amplitude = gx.amplitude / inner * k_width
    gx.area = gx.amplitude * (gx.flat_time + gx.rise_time / 2 + gx.fall_time / 2)
    gx.flat_area = gx.amplitude * gx.flat_time
    return gx


def ute(n: int = 64, spokes: int = 32) -> pp.Sequence:
    """``write_ute.py``: 2D half-echo radial UTE (FOV 250 mm, 3 mm slice, 10 deg, TR 10 ms), ``spokes``
    spokes ``2 pi / spokes`` apart, each acquired twice with the slice gradient's sign flipped (a half pulse
    each, ``center_pos`` 1), ``2 n`` samples over 2.56 ms from the k-space centre out, the spoke's x and y
    gradients as scaled copies of one trapezoid; RF spoiling; the ``FOV`` and ``Name`` definitions."""
    fov, thickness, tr, oversampling = 250e-3, 3e-3, 10e-3, 2
    system = pp.Opts(max_grad=28, grad_unit="mT/m", max_slew=100, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    seq = pp.Sequence(system)
    rf, gz, gz_reph = pp.make_sinc_pulse(flip_angle=10 * np.pi / 180, duration=1e-3, slice_thickness=thickness,
                                         apodization=0.5, time_bw_product=2, center_pos=1, system=system,
                                         return_gz=True, delay=system.rf_dead_time, use="excitation")
    samples = np.round(oversampling * n)
    asymmetry = pp.round_half_up(1 * samples / 2) / samples * 2  # 1: a half echo
    dk = 1 / fov / (1 + asymmetry)
    ro_area = n * dk
    gx = pp.make_trapezoid(channel="x", flat_area=ro_area, flat_time=2.56e-3, system=system)
    adc = pp.make_adc(num_samples=samples, duration=gx.flat_time, delay=gx.rise_time, system=system)
    # Back over the ramp-up and half a dwell so that the first sample's centre is at k = 0 (half echo).
    gx_pre = pp.make_trapezoid(channel="x", area=-(gx.area - ro_area) / 2 - gx.amplitude * adc.dwell / 2
                               - ro_area / 2 * (1 - asymmetry), system=system)
    gx_spoil = pp.make_trapezoid(channel="x", area=0.2 * n * dk, system=system)
    raster = seq.grad_raster_time
    delay_tr = np.ceil((tr - pp.calc_duration(gx_pre, gz_reph) - pp.calc_duration(gz) - pp.calc_duration(gx))
                       / raster) * raster
    if pp.calc_duration(gz_reph) > pp.calc_duration(gx_pre):  # the read pre-phaser ends with the slice rephaser
        gx_pre.delay = pp.calc_duration(gz_reph) - pp.calc_duration(gx_pre)

    def on_spoke(grad, phi: float) -> tuple:
        """``grad`` projected on the spoke at angle ``phi``: its x and y copies."""
        along_x, along_y = copy(grad), copy(grad)
        along_x.amplitude = grad.amplitude * np.cos(phi)
        along_y.amplitude = grad.amplitude * np.sin(phi)
        along_y.channel = "y"
        return along_x, along_y

    phases = _rf_spoil_phases(2 * spokes)
    for i in range(spokes):
        phi = 2 * np.pi / spokes * i
        for _ in range(2):
            rf.phase_offset = adc.phase_offset = next(phases)
            gz.amplitude = -gz.amplitude  # the two half pulses' slice profiles add up
            gz_reph.amplitude = -gz_reph.amplitude
            seq.add_block(rf, gz)
            seq.add_block(*on_spoke(gx_pre, phi), gz_reph)
            seq.add_block(*on_spoke(gx, phi), adc)
            seq.add_block(*on_spoke(gx_spoil, phi), pp.make_delay(delay_tr))
    seq.set_definition(key="FOV", value=[fov, fov, thickness])
    seq.set_definition(key="Name", value="UTE")
    return seq


def mprage(matrix: tuple[int, int, int] = (48, 60, 64)) -> pp.Sequence:
    """``write_mprage.py``: 3D MPRAGE over FOV 192 x 240 x 256 mm with ``matrix`` (x, y, z; each even)
    samples, read along z (``matrix[2]`` samples over 5.0176 ms), the inner phase-encoding loop along x and
    the outer along y: per y partition a 10.24 ms hyperbolic-secant inversion, TI 1.1 s to the k_x = 0
    excitation (a 7 deg 100 us block pulse, RF-spoiled from phase 0 each partition) with a y spoiler
    during it, the read spoiler (3 times half k_max) and the encoding rewinders played with the next
    excitation, TR 2.5 s per partition; ``PAR`` counts the x lines and ``LIN`` the y partitions; no
    definitions (the script writes none)."""
    fov = np.array([192, 240, 256]) * 1e-3
    n_read, n_inner, n_outer = matrix[2], matrix[0], matrix[1]
    dk_read, dk_inner, dk_outer = 1 / fov[2], 1 / fov[0], 1 / fov[1]
    ro_time, ti, tr_out = 5017.6e-6, 1.1, 2.5
    system = pp.Opts(max_grad=24, grad_unit="mT/m", max_slew=100, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    seq = pp.Sequence(system)
    rf = pp.make_block_pulse(flip_angle=7 * np.pi / 180, system=system, duration=100e-6, delay=system.rf_dead_time,
                             use="excitation")
    rf180 = pp.make_adiabatic_pulse(pulse_type="hypsec", system=system, duration=10.24e-3, dwell=1e-5,
                                    delay=system.rf_dead_time, use="inversion")
    raster = system.grad_raster_time
    gro = pp.make_trapezoid(channel="z", amplitude=n_read * dk_read / ro_time, system=system,
                            flat_time=np.ceil((ro_time + system.adc_dead_time) / raster) * raster)
    adc = pp.make_adc(num_samples=n_read, duration=ro_time, delay=gro.rise_time, system=system)
    # Pre-phase to half a dwell before k = 0 at the centre sample, and the ramp-up's area.
    gro_pre = pp.make_trapezoid(channel="z", system=system,
                                area=-gro.amplitude * (adc.dwell * (adc.num_samples / 2 + 0.5) + 0.5 * gro.rise_time))
    gpe1 = pp.make_trapezoid(channel="x", area=-dk_inner * (n_inner / 2), system=system)  # the largest steps
    gpe2 = pp.make_trapezoid(channel="y", area=-dk_outer * (n_outer / 2), system=system)
    gsl_sp = pp.make_trapezoid(channel="y", area=np.max(1 / fov * np.array(matrix)) * 4, duration=10e-3,
                               system=system)
    # The read gradient cut at its flat top's end; the ramp down replaced by a spoiler ramp.
    gro1, _ = pp.split_gradient_at(grad=gro, time_point=gro.rise_time + gro.flat_time)
    gro_sp = pp.make_extended_trapezoid_area(channel="z", grad_start=gro.amplitude, grad_end=0,
                                             area=dk_read / 2 * n_read * 3, system=system)[0]
    rf.delay = pp.calc_duration(gro_sp, gpe1, gpe2)  # the rewinders and the spoiler go with the excitation
    gro_pre, _, _ = pp.align(right=[gro_pre, gpe1, gpe2])
    gro1.delay = pp.calc_duration(gro_pre)
    adc.delay = gro1.delay + gro.rise_time
    gro1 = pp.add_gradients(grads=[gro1, gro_pre], system=system)  # pre-phaser and readout as one gradient
    tr_inner = pp.calc_duration(rf) + pp.calc_duration(gro1)
    steps_inner = (np.arange(n_inner) - n_inner / 2) / n_inner * 2  # fractions of the largest step
    steps_outer = (np.arange(n_outer) - n_outer / 2) / n_outer * 2
    rf180_tail = pp.calc_duration(rf180) - pp.calc_rf_center(rf180)[0] - rf180.delay
    ti_delay = np.round((ti - np.where(steps_inner == 0)[0][0] * tr_inner - rf180_tail - rf.delay
                         - pp.calc_rf_center(rf)[0]) / system.block_duration_raster) * system.block_duration_raster
    tr_out_delay = tr_out - tr_inner * n_inner - ti_delay - pp.calc_duration(rf180)
    inc_lin = pp.make_label(type="INC", label="LIN", value=1)
    inc_par = pp.make_label(type="INC", label="PAR", value=1)
    reset_par = pp.make_label(type="SET", label="PAR", value=0)
    for j in range(n_outer):
        seq.add_block(rf180)
        seq.add_block(pp.make_delay(ti_delay), gsl_sp)
        encode = pp.scale_grad(grad=gpe2, scale=steps_outer[j])
        encode.id = seq.register_grad_event(encode)  # registered once, reused along the partition
        rewind = pp.scale_grad(grad=gpe2, scale=-steps_outer[j])
        rewind.id = seq.register_grad_event(rewind)
        for i, phase in enumerate(_rf_spoil_phases(n_inner)):
            rf.phase_offset = adc.phase_offset = phase
            if i == 0:
                seq.add_block(rf)
            else:
                seq.add_block(rf, gro_sp, pp.scale_grad(grad=gpe1, scale=-steps_inner[i - 1]), rewind, inc_par)
            seq.add_block(adc, gro1, pp.scale_grad(grad=gpe1, scale=steps_inner[i]), encode)
        seq.add_block(gro_sp, pp.make_delay(tr_out_delay), reset_par, inc_lin)
    return seq
