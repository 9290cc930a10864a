"""Reference Pulseq sequences built with pypulseq (pinned to 1.5.0.post1).

Every builder returns a fully built :class:`pypulseq.Sequence` that

* passes ``seq.check_timing()`` without errors,
* can be written with ``seq.write(path)`` and read back with ``pypulseq.Sequence().read(path)``,
* carries the usual ``[DEFINITIONS]`` (``Name``, ``FOV``, ...).

They are modelled on the example scripts shipped with pypulseq (``write_gre.py``, ``write_tse.py``,
``write_epi_label.py``, ``write_radial_gre.py``, ``write_ute.py``, ``write_gre_label_softdelay.py``) but
kept small so that the interoperability tests, which compare scanctl's own Pulseq reader against pypulseq,
stay fast.

``gre3d`` is the exception: it is meant for benchmarks and scales to hundreds of thousands of blocks (see
``benchmarks/make_gre3d.py``).

Each builder takes an optional ``system`` (:class:`pypulseq.Opts`); :func:`default_system` describes the
realistic hardware used otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import copy
from types import SimpleNamespace

import numpy as np
import pypulseq as pp

__all__ = [
    "ALL_SMALL",
    "arbitrary_gradient_oversampled",
    "default_system",
    "epi",
    "gre",
    "gre3d",
    "labels_and_triggers",
    "radial",
    "soft_delays",
    "spin_echo",
    "tse",
    "ute",
]

#: RF spoiling phase increment in degrees (as in the pypulseq examples).
RF_SPOILING_INC = 117.0


def default_system() -> pp.Opts:
    """Return realistic scanner limits: 28 mT/m, 150 T/m/s, usual RF/ADC dead and ringdown times."""
    return pp.Opts(
        max_grad=28,
        grad_unit="mT/m",
        max_slew=150,
        slew_unit="T/m/s",
        rf_ringdown_time=20e-6,
        rf_dead_time=100e-6,
        adc_dead_time=10e-6,
    )


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def _system(system: pp.Opts | None) -> pp.Opts:
    return default_system() if system is None else system


def _ceil_raster(t: float, raster: float) -> float:
    """Round ``t`` up to the next multiple of ``raster`` (tolerant to floating point noise)."""
    return math.ceil(t / raster - 1e-6) * raster


def _round_raster(t: float, raster: float) -> float:
    """Round ``t`` to the nearest multiple of ``raster``."""
    return round(t / raster) * raster


def _rf_spoil_phases(n: int) -> np.ndarray:
    """Quadratic RF-spoiling phases in radians for ``n`` excitations.

    The phases are accumulated in integer degrees so that they repeat exactly, which keeps the RF and ADC
    event libraries small (at most 360 distinct phases).
    """
    phases = np.empty(n)
    rf_phase = 0.0
    rf_inc = 0.0
    for i in range(n):
        phases[i] = rf_phase
        rf_inc = (rf_inc + RF_SPOILING_INC) % 360.0
        rf_phase = (rf_phase + rf_inc) % 360.0
    return np.deg2rad(phases)


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} is too short by {-value * 1e3:.3f} ms; increase TE/TR")


def _finish(seq: pp.Sequence, name: str, fov: tuple[float, float, float], **extra: object) -> pp.Sequence:
    """Set the usual definitions (``Name``, ``FOV`` and any ``extra`` ones)."""
    seq.set_definition("Name", name)
    seq.set_definition("FOV", list(fov))
    for key, value in extra.items():
        seq.set_definition(key, value)
    return seq


# ----------------------------------------------------------------------------------------------------------
# Cartesian gradient echo / spin echo
# ----------------------------------------------------------------------------------------------------------


def gre(n: int = 16, system: pp.Opts | None = None) -> pp.Sequence:
    """2D RF-spoiled gradient echo (FLASH), like pypulseq's ``write_gre_label.py``.

    Sinc slice-selective excitation, slice rephaser, read prephaser, phase encoding (``n`` lines), read-out
    with ADC, spoilers with phase-encode rewinder, 117 degree RF spoiling, and ``LIN``/``SLC`` labels (``SET``
    in the first TR, ``INC`` afterwards). Five blocks per TR.
    """
    system = _system(system)
    seq = pp.Sequence(system)

    fov = 256e-3
    slice_thickness = 5e-3
    flip = np.deg2rad(10)
    te, tr = 4.3e-3, 10e-3
    dwell = 20e-6

    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=flip,
        duration=2e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="excitation",
    )
    delta_k = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * delta_k, flat_time=n * dwell, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system)
    phase_areas = (np.arange(n) - n / 2) * delta_k
    gy_pre = [
        pp.make_trapezoid(channel="y", area=a, duration=pp.calc_duration(gx_pre), system=system)
        for a in phase_areas
    ]
    gy_rew = [pp.scale_grad(g, -1) for g in gy_pre]
    gx_spoil = pp.make_trapezoid(channel="x", area=2 * n * delta_k, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=system)

    te_delay = _ceil_raster(
        te - pp.calc_duration(gx_pre) - gz.fall_time - gz.flat_time / 2 - pp.calc_duration(gx) / 2,
        system.grad_raster_time,
    )
    tr_delay = _ceil_raster(
        tr - pp.calc_duration(gz) - pp.calc_duration(gx_pre) - te_delay - pp.calc_duration(gx),
        system.grad_raster_time,
    )
    _check_positive("TE delay", te_delay)
    _check_positive("TR delay", tr_delay - pp.calc_duration(gx_spoil, gz_spoil) + 1e-12)

    phases = _rf_spoil_phases(n)
    for i in range(n):
        rf.phase_offset = adc.phase_offset = phases[i]
        if i == 0:
            labels = [pp.make_label("LIN", "SET", 0), pp.make_label("SLC", "SET", 0)]
        else:
            labels = [pp.make_label("LIN", "INC", 1)]
        seq.add_block(rf, gz)
        seq.add_block(gx_pre, gy_pre[i], gz_reph, *labels)
        seq.add_block(pp.make_delay(te_delay))
        seq.add_block(gx, adc)
        seq.add_block(gx_spoil, gy_rew[i], gz_spoil, pp.make_delay(tr_delay))

    return _finish(seq, "gre", (fov, fov, slice_thickness), TE=te, TR=tr)


def spin_echo(n: int = 16, system: pp.Opts | None = None) -> pp.Sequence:
    """2D spin echo: 90 degree sinc excitation, 180 degree sinc refocusing (``use='refocusing'``), crushers.

    Blocks per TR: excitation, prephasers/phase encode, TE/2 fill, crusher, refocusing, crusher, TE/2 fill,
    read-out, spoiler + TR fill.
    """
    system = _system(system)
    seq = pp.Sequence(system)

    fov = 256e-3
    slice_thickness = 5e-3
    te, tr = 20e-3, 60e-3
    dwell = 20e-6
    raster = system.grad_raster_time

    rf_ex, gz_ex, _ = pp.make_sinc_pulse(
        flip_angle=np.pi / 2,
        duration=2.5e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="excitation",
    )
    rf_ref, gz_ref, _ = pp.make_sinc_pulse(
        flip_angle=np.pi,
        duration=2.5e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        phase_offset=np.pi / 2,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="refocusing",
    )
    gz_crush = pp.make_trapezoid(channel="z", area=4 / slice_thickness, duration=1e-3, system=system)

    delta_k = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * delta_k, flat_time=n * dwell, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    # The read prephaser is played before the refocusing pulse, hence the positive sign.
    gx_pre = pp.make_trapezoid(channel="x", area=gx.area / 2, duration=1.5e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz_ex.area / 2, duration=1.5e-3, system=system)
    gy_pre = [
        pp.make_trapezoid(channel="y", area=(k - n / 2) * delta_k, duration=1.5e-3, system=system)
        for k in range(n)
    ]
    gx_spoil = pp.make_trapezoid(channel="x", area=2 * n * delta_k, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=system)

    t_ex_center = rf_ex.delay + pp.calc_rf_center(rf_ex)[0]
    t_ref_center = rf_ref.delay + pp.calc_rf_center(rf_ref)[0]
    d_ex = pp.calc_duration(rf_ex, gz_ex)
    d_ref = pp.calc_duration(rf_ref, gz_ref)
    d_pre = pp.calc_duration(gx_pre, gz_reph, gy_pre[0])
    d_crush = pp.calc_duration(gz_crush)
    delay1 = _round_raster(te / 2 - (d_ex - t_ex_center) - d_pre - d_crush - t_ref_center, raster)
    delay2 = _round_raster(
        te / 2 - (d_ref - t_ref_center) - d_crush - (gx.rise_time + gx.flat_time / 2), raster
    )
    tr_fill = _round_raster(
        tr - d_ex - d_pre - delay1 - 2 * d_crush - d_ref - delay2 - pp.calc_duration(gx), raster
    )
    _check_positive("TE/2 delay before refocusing", delay1)
    _check_positive("TE/2 delay after refocusing", delay2)
    _check_positive("TR delay", tr_fill - pp.calc_duration(gx_spoil, gz_spoil) + 1e-12)

    for i in range(n):
        label = pp.make_label("LIN", "SET", i)
        seq.add_block(rf_ex, gz_ex)
        seq.add_block(gx_pre, gy_pre[i], gz_reph, label)
        seq.add_block(pp.make_delay(delay1))
        seq.add_block(gz_crush)
        seq.add_block(rf_ref, gz_ref)
        seq.add_block(gz_crush)
        seq.add_block(pp.make_delay(delay2))
        seq.add_block(gx, adc)
        seq.add_block(gx_spoil, gz_spoil, pp.make_delay(tr_fill))

    return _finish(seq, "spin_echo", (fov, fov, slice_thickness), TE=te, TR=tr)


# ----------------------------------------------------------------------------------------------------------
# Turbo spin echo with split gradients (extended trapezoids)
# ----------------------------------------------------------------------------------------------------------


def _etrap(channel: str, times: list[float], amps: list[float], system: pp.Opts) -> SimpleNamespace:
    return pp.make_extended_trapezoid(
        channel=channel, times=np.array(times), amplitudes=np.array(amps), system=system
    )


def tse(n: int = 16, etl: int = 4, system: pp.Opts | None = None) -> pp.Sequence:
    """Turbo spin echo built from split gradients, like pypulseq's ``write_tse.py``.

    The slice-select, spoiler and read-out gradients are cut at the block boundaries into extended trapezoids
    (``make_extended_trapezoid``) whose ``first``/``last`` amplitudes are non-zero, so consecutive blocks must
    join seamlessly. One dummy echo train without ADC precedes the ``n // etl`` imaging shots. ``LIN`` is set
    for every echo.
    """
    system = _system(system)
    if n % etl:
        raise ValueError("n must be a multiple of the echo train length")
    seq = pp.Sequence(system)
    raster = system.grad_raster_time

    d_g = 250e-6  # ramp time of all split gradients
    fov = 256e-3
    slice_thickness = 5e-3
    te, tr = 10e-3, 400e-3
    sampling_time = n * 40e-6
    readout_time = sampling_time + 2 * system.adc_dead_time
    t_ex, t_ref = 2.5e-3, 2e-3
    # The RF pulses sit in the middle of their slice-select plateaus: pad both sides by the longer of the RF
    # dead and ringdown times (write_tse.py has them equal; here they differ).
    rf_pad = max(system.rf_dead_time, system.rf_ringdown_time)
    t_exwd = t_ex + 2 * rf_pad
    t_refwd = t_ref + 2 * rf_pad
    t_sp = _round_raster(0.5 * (te - readout_time - t_refwd), raster)
    t_spex = _round_raster(0.5 * (te - t_exwd - t_refwd), raster)
    fsp_r, fsp_s = 1.0, 0.5
    rf_ex_phase, rf_ref_phase = np.pi / 2, 0.0

    rf_ex, gz, _ = pp.make_sinc_pulse(
        flip_angle=np.pi / 2,
        duration=t_ex,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        phase_offset=rf_ex_phase,
        delay=rf_pad,
        system=system,
        return_gz=True,
        use="excitation",
    )
    gs_ex = pp.make_trapezoid(
        channel="z", amplitude=gz.amplitude, flat_time=t_exwd, rise_time=d_g, system=system
    )
    rf_ref, _, _ = pp.make_sinc_pulse(
        flip_angle=np.pi,
        duration=t_ref,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        phase_offset=rf_ref_phase,
        delay=rf_pad,
        system=system,
        return_gz=True,
        use="refocusing",
    )
    gs_ref = pp.make_trapezoid(
        channel="z", amplitude=gs_ex.amplitude, flat_time=t_refwd, rise_time=d_g, system=system
    )
    ags_ex = gs_ex.area / 2
    gs_spr = pp.make_trapezoid(
        channel="z", area=ags_ex * (1 + fsp_s), duration=t_sp, rise_time=d_g, system=system
    )
    gs_spex = pp.make_trapezoid(
        channel="z", area=ags_ex * fsp_s, duration=t_spex, rise_time=d_g, system=system
    )

    delta_k = 1 / fov
    gr_acq = pp.make_trapezoid(
        channel="x", flat_area=n * delta_k, flat_time=readout_time, rise_time=d_g, system=system
    )
    adc = pp.make_adc(num_samples=n, duration=sampling_time, delay=system.adc_dead_time, system=system)
    gr_spr = pp.make_trapezoid(
        channel="x", area=gr_acq.area * fsp_r, duration=t_sp, rise_time=d_g, system=system
    )
    gr_preph = pp.make_trapezoid(
        channel="x", area=gr_acq.area / 2 + gr_spr.area, duration=t_spex, rise_time=d_g, system=system
    )

    # Phase-encoding order: shot k_ex acquires lines pe_order[:, k_ex] (centred line indices).
    n_ex = n // etl
    pe_steps = np.arange(1, etl * n_ex + 1) - 0.5 * etl * n_ex - 1
    if etl % 2 == 0:
        pe_steps = np.roll(pe_steps, -round(n_ex / 2))
    pe_order = pe_steps.reshape((n_ex, etl), order="F").T
    phase_areas = pe_order * delta_k

    def spoiler_times(g: SimpleNamespace) -> list[float]:
        return [0.0, g.rise_time, g.rise_time + g.flat_time, g.rise_time + g.flat_time + g.fall_time]

    # Split gradients: 1 ramp-up, 2 excitation plateau, 3 spoiler ex->ref, 4 refocusing plateau,
    # 5 spoiler after refocusing ramping down to 0, 7 spoiler ramping up to the next refocusing plateau.
    gs1 = _etrap("z", [0, gs_ex.rise_time], [0, gs_ex.amplitude], system)
    gs2 = _etrap("z", [0, gs_ex.flat_time], [gs_ex.amplitude, gs_ex.amplitude], system)
    gs3 = _etrap(
        "z",
        spoiler_times(gs_spex),
        [gs_ex.amplitude, gs_spex.amplitude, gs_spex.amplitude, gs_ref.amplitude],
        system,
    )
    gs4 = _etrap("z", [0, gs_ref.flat_time], [gs_ref.amplitude, gs_ref.amplitude], system)
    gs5 = _etrap(
        "z", spoiler_times(gs_spr), [gs_ref.amplitude, gs_spr.amplitude, gs_spr.amplitude, 0], system
    )
    gs7 = _etrap(
        "z", spoiler_times(gs_spr), [0, gs_spr.amplitude, gs_spr.amplitude, gs_ref.amplitude], system
    )
    gr3 = gr_preph
    gr5 = _etrap(
        "x", spoiler_times(gr_spr), [0, gr_spr.amplitude, gr_spr.amplitude, gr_acq.amplitude], system
    )
    gr6 = _etrap("x", [0, readout_time], [gr_acq.amplitude, gr_acq.amplitude], system)
    gr7 = _etrap(
        "x", spoiler_times(gr_spr), [gr_acq.amplitude, gr_spr.amplitude, gr_spr.amplitude, 0], system
    )

    t_train = (
        pp.calc_duration(gs1)
        + pp.calc_duration(gs2)
        + pp.calc_duration(gs3)
        + etl * (pp.calc_duration(gs4) + pp.calc_duration(gs5) + pp.calc_duration(gs7) + readout_time)
        + pp.calc_duration(gs4)
        + pp.calc_duration(gs5)
    )
    tr_fill = _round_raster(tr - t_train, raster)
    _check_positive("TR fill", tr_fill)

    pe_pre = {}
    pe_rew = {}
    for area in [0.0, *np.unique(phase_areas)]:
        pe_pre[area] = pp.make_trapezoid(channel="y", area=area, duration=t_sp, rise_time=d_g, system=system)
        pe_rew[area] = pp.make_trapezoid(channel="y", area=-area, duration=t_sp, rise_time=d_g, system=system)

    for k_ex in range(n_ex + 1):  # k_ex == 0 is a dummy echo train without ADC
        seq.add_block(gs1)
        seq.add_block(rf_ex, gs2)
        seq.add_block(gs3, gr3)
        for k_echo in range(etl):
            area = phase_areas[k_echo, k_ex - 1] if k_ex > 0 else 0.0
            seq.add_block(rf_ref, gs4)
            seq.add_block(gr5, pe_pre[area], gs5)
            if k_ex > 0:
                line = int(pe_order[k_echo, k_ex - 1] + n // 2)
                seq.add_block(gr6, adc, pp.make_label("LIN", "SET", line))
            else:
                seq.add_block(gr6)
            seq.add_block(gr7, pe_rew[area], gs7)
        seq.add_block(gs4)
        seq.add_block(gs5)
        seq.add_block(pp.make_delay(tr_fill))

    return _finish(seq, "tse", (fov, fov, slice_thickness), TE=te, TR=tr, ETL=etl)


# ----------------------------------------------------------------------------------------------------------
# EPI
# ----------------------------------------------------------------------------------------------------------


def epi(n: int = 16, system: pp.Opts | None = None) -> pp.Sequence:
    """Single-shot blipped EPI without ramp sampling, with labels, like pypulseq's ``write_epi_label.py``.

    Three navigator echoes (``NAV`` flag, ``REV``/``SEG`` for the reversed lines, ``AVG`` marks the third
    one), then ``n`` imaging lines with ``LIN`` incremented by the blips, ``SLC`` and ``REP`` counters.
    """
    system = _system(system)
    seq = pp.Sequence(system)

    fov = 220e-3
    slice_thickness = 3e-3
    n_navigators = 3
    dwell = 10e-6

    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=np.pi / 2,
        duration=3e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="excitation",
    )
    delta_k = 1 / fov
    readout_time = n * dwell
    flat_time = _ceil_raster(readout_time, system.grad_raster_time)
    gx = pp.make_trapezoid(
        channel="x", amplitude=n * delta_k / readout_time, flat_time=flat_time, system=system
    )
    adc = pp.make_adc(
        num_samples=n,
        duration=readout_time,
        delay=gx.rise_time + flat_time / 2 - (readout_time - dwell) / 2,
        system=system,
    )
    pre_time = max(
        8e-4,
        *(
            pp.calc_duration(pp.make_trapezoid(channel="z", area=area, system=system))
            for area in (gx.area / 2, gz.area / 2, n / 2 * delta_k)
        ),
    )
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=pre_time, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=pre_time, system=system)
    gy_pre = pp.make_trapezoid(channel="y", area=n / 2 * delta_k, duration=pre_time, system=system)
    blip_dur = _ceil_raster(2 * np.sqrt(delta_k / system.max_slew), system.grad_raster_time)
    gy = pp.make_trapezoid(channel="y", area=-delta_k, duration=blip_dur, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 * n * delta_k, system=system)
    gx_neg = pp.scale_grad(gx, -1)

    def readout(k: int) -> SimpleNamespace:
        return gx if k % 2 == 0 else gx_neg

    seq.add_block(rf, gz, pp.make_label("SLC", "SET", 0), pp.make_label("REP", "SET", 0))
    seq.add_block(
        gx_pre,
        gz_reph,
        pp.make_label("NAV", "SET", 1),
        pp.make_label("LIN", "SET", n // 2),
    )
    for k in range(n_navigators):
        reversed_ = k % 2 == 1
        seq.add_block(
            readout(k),
            adc,
            pp.make_label("REV", "SET", reversed_),
            pp.make_label("SEG", "SET", reversed_),
            pp.make_label("AVG", "SET", k + 1 == 3),
        )
        if k + 1 != n_navigators:
            # Dummy blip keeps the read-out timing (and eddy currents) identical to the imaging echoes.
            seq.add_block(pp.make_delay(pp.calc_duration(gy)))
    seq.add_block(
        gy_pre,
        pp.make_label("LIN", "SET", 0),
        pp.make_label("NAV", "SET", 0),
        pp.make_label("AVG", "SET", 0),
    )
    for line in range(n):
        k = n_navigators + line
        reversed_ = k % 2 == 1
        seq.add_block(pp.make_label("REV", "SET", reversed_), pp.make_label("SEG", "SET", reversed_))
        seq.add_block(readout(k), adc)
        if line + 1 != n:
            seq.add_block(gy, pp.make_label("LIN", "INC", 1))
    seq.add_block(gz_spoil, pp.make_delay(10e-3), pp.make_label("SLC", "INC", 1))
    seq.add_block(pp.make_label("REP", "INC", 1))

    return _finish(seq, "epi", (fov, fov, slice_thickness))


# ----------------------------------------------------------------------------------------------------------
# Non-Cartesian
# ----------------------------------------------------------------------------------------------------------


def radial(n_spokes: int = 16, system: pp.Opts | None = None) -> pp.Sequence:
    """2D radial RF-spoiled GRE, like pypulseq's ``write_radial_gre.py``.

    The read prephaser, read-out and read spoiler are rotated about ``z`` with :func:`pypulseq.rotate`, so
    the spokes are built from trapezoids on x and y with per-spoke amplitudes. Two dummy TRs without ADC
    precede the ``n_spokes`` spokes covering 180 degrees.
    """
    system = _system(system)
    seq = pp.Sequence(system)

    fov = 260e-3
    n_x = 32
    slice_thickness = 3e-3
    te, tr = 5e-3, 10e-3
    n_dummy = 2

    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=np.deg2rad(10),
        duration=2e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="excitation",
    )
    delta_k = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n_x * delta_k, flat_time=n_x * 20e-6, system=system)
    adc = pp.make_adc(num_samples=n_x, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2 - delta_k / 2, duration=1e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system)
    gx_spoil = pp.make_trapezoid(channel="x", area=0.5 * n_x * delta_k, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=system)

    te_delay = _ceil_raster(
        te - pp.calc_duration(gx_pre) - gz.fall_time - gz.flat_time / 2 - pp.calc_duration(gx) / 2,
        system.grad_raster_time,
    )
    tr_delay = _ceil_raster(
        tr - pp.calc_duration(gz) - pp.calc_duration(gx_pre) - te_delay - pp.calc_duration(gx),
        system.grad_raster_time,
    )
    _check_positive("TE delay", te_delay)
    _check_positive("TR delay", tr_delay - pp.calc_duration(gx_spoil, gz_spoil) + 1e-12)

    phases = _rf_spoil_phases(n_dummy + n_spokes)
    for i in range(-n_dummy, n_spokes):
        rf.phase_offset = adc.phase_offset = phases[i + n_dummy]
        phi = np.pi * max(i, 0) / n_spokes
        seq.add_block(rf, gz)
        seq.add_block(*pp.rotate(gx_pre, gz_reph, angle=phi, axis="z", system=system))
        seq.add_block(pp.make_delay(te_delay))
        if i >= 0:
            seq.add_block(
                *pp.rotate(gx, adc, angle=phi, axis="z", system=system), pp.make_label("LIN", "SET", i)
            )
        else:
            seq.add_block(*pp.rotate(gx, angle=phi, axis="z", system=system))
        seq.add_block(
            *pp.rotate(gx_spoil, gz_spoil, angle=phi, axis="z", system=system), pp.make_delay(tr_delay)
        )

    return _finish(seq, "radial", (fov, fov, slice_thickness), TE=te, TR=tr)


def ute(n_spokes: int = 8, system: pp.Opts | None = None) -> pp.Sequence:
    """2D UTE: half-sinc excitation pairs and centre-out, ramp-sampled radial read-outs.

    Each spoke is acquired twice, with the slice-select gradient (and its rephaser) negated the second time,
    as half-pulse UTE requires. The read-out is an arbitrary gradient (trapezoid sampled on the gradient
    raster) that starts with the ADC, so the ramp is sampled; it is scaled onto x and y for each of the
    ``n_spokes`` angles covering 360 degrees.
    """
    system = _system(system)
    seq = pp.Sequence(system)
    raster = system.grad_raster_time

    fov = 250e-3
    n_r = 32  # samples along k-space radius at Nyquist
    ro_os = 2
    slice_thickness = 3e-3
    tr = 10e-3
    adc_duration = 0.64e-3

    rf, gz, gz_reph = pp.make_sinc_pulse(
        flip_angle=np.deg2rad(10),
        duration=1e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=2,
        center_pos=1,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="excitation",
    )

    # Ramp-sampled read-out: the ADC opens after the ADC dead time, with the gradient ramping up from t = 0.
    k_max = n_r / fov
    adc_delay = system.adc_dead_time
    amplitude = k_max / adc_duration
    for _ in range(3):  # fixed-point iteration: the ramp lowers the area reached by the end of the ADC
        rise = _ceil_raster(abs(amplitude) / system.max_slew, raster)
        amplitude = k_max / (adc_delay + adc_duration - rise / 2)
    rise = _ceil_raster(abs(amplitude) / system.max_slew, raster)
    t_flat_end = _ceil_raster(adc_delay + adc_duration, raster)
    ro_times = np.array([0, rise, t_flat_end, t_flat_end + rise])
    ro_amps = np.array([0, amplitude, amplitude, 0])
    gro = pp.make_arbitrary_grad(
        channel="x",
        waveform=pp.points_to_waveform(amplitudes=ro_amps, times=ro_times, grad_raster_time=raster),
        first=0,
        last=0,
        system=system,
    )
    adc = pp.make_adc(num_samples=n_r * ro_os, duration=adc_duration, delay=adc_delay, system=system)
    g_spoil = pp.make_trapezoid(channel="x", area=0.5 * k_max, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=system)

    def on_axes(g: SimpleNamespace, phi: float) -> list[SimpleNamespace]:
        """Project a gradient on x onto x and y for the spoke angle ``phi`` (skipping zero components)."""
        out = []
        for channel, scale in (("x", np.cos(phi)), ("y", np.sin(phi))):
            if abs(scale) > 1e-9:
                scaled = pp.scale_grad(g, scale)
                scaled.channel = channel
                out.append(scaled)
        return out

    gz_neg, gz_reph_neg = pp.scale_grad(gz, -1), pp.scale_grad(gz_reph, -1)
    d_ex = pp.calc_duration(rf, gz)
    d_spoil = pp.calc_duration(g_spoil, gz_spoil)
    tr_delay = _round_raster(tr - d_ex - pp.calc_duration(gz_reph) - pp.calc_duration(gro, adc), raster)
    _check_positive("TR delay", tr_delay - d_spoil + 1e-12)

    phases = _rf_spoil_phases(2 * n_spokes)
    for i in range(n_spokes):
        phi = 2 * np.pi * i / n_spokes
        for half in range(2):
            rf.phase_offset = adc.phase_offset = phases[2 * i + half]
            seq.add_block(rf, gz if half == 0 else gz_neg)
            seq.add_block(gz_reph if half == 0 else gz_reph_neg)
            seq.add_block(
                *on_axes(gro, phi), adc, pp.make_label("LIN", "SET", i), pp.make_label("SET", "SET", half)
            )
            seq.add_block(*on_axes(g_spoil, phi), gz_spoil, pp.make_delay(tr_delay))

    te = gz.fall_time + pp.calc_duration(gz_reph) + adc_delay
    return _finish(seq, "ute", (fov, fov, slice_thickness), TE=te, TR=tr)


# ----------------------------------------------------------------------------------------------------------
# Extensions: labels, triggers, soft delays
# ----------------------------------------------------------------------------------------------------------


def labels_and_triggers(system: pp.Opts | None = None) -> pp.Sequence:
    """Small multi-echo, multi-slice GRE exercising the extension events.

    * a noise pre-scan flagged ``NOISE`` and ``ONCE`` (reset in a zero-duration, label-only block),
    * a ``physio1`` trigger (:func:`pypulseq.make_trigger`) at the start of every repetition,
    * an ``osc0`` digital output pulse with every excitation and an ``ext1`` pulse in every spoiler block
      (:func:`pypulseq.make_digital_output_pulse`),
    * counters ``SLC``, ``LIN``, ``ECO``, ``REP``, ``PAR``, ``TRID`` set and incremented, and the flags
      ``NAV``, ``REV``, ``PMC``, ``NOISE``, ``ONCE`` set and cleared.

    Each TR has a bipolar pair of echoes (the second one ``REV``) followed by a navigator echo (``NAV``).
    """
    system = _system(system)
    seq = pp.Sequence(system)

    fov = 200e-3
    slice_thickness = 4e-3
    n_x, n_lines, n_slices, n_reps = 16, 4, 2, 2
    delta_k = 1 / fov

    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=np.deg2rad(15),
        duration=2e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="excitation",
    )
    gx = pp.make_trapezoid(channel="x", flat_area=n_x * delta_k, flat_time=n_x * 20e-6, system=system)
    gx_neg = pp.scale_grad(gx, -1)
    adc = pp.make_adc(num_samples=n_x, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system)
    gy_pre = [
        pp.make_trapezoid(channel="y", area=(k - n_lines / 2) * delta_k, duration=1e-3, system=system)
        for k in range(n_lines)
    ]
    gy_rew = [pp.scale_grad(g, -1) for g in gy_pre]
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, duration=1.5e-3, system=system)

    trigger = pp.make_trigger(channel="physio1", duration=2e-3, system=system)
    scope = pp.make_digital_output_pulse(channel="osc0", duration=100e-6, system=system)
    ext_out = pp.make_digital_output_pulse(channel="ext1", delay=200e-6, duration=500e-6, system=system)
    adc_noise = pp.make_adc(num_samples=n_x, duration=n_x * 20e-6, delay=system.adc_dead_time, system=system)

    def label(name: str, value: int, kind: str = "SET") -> SimpleNamespace:
        return pp.make_label(label=name, type=kind, value=value)

    # Noise pre-scan: executed only on the first repetition of the whole sequence.
    seq.add_block(adc_noise, pp.make_delay(1e-3), label("NOISE", 1), label("ONCE", 1), label("TRID", 1))
    seq.add_block(label("NOISE", 0), label("ONCE", 0), label("PMC", 1), label("PAR", 0))  # zero duration

    phases = _rf_spoil_phases(n_reps * n_slices * n_lines)
    k = 0
    for rep in range(n_reps):
        seq.add_block(trigger, label("SLC", 0), label("REP", rep))
        for slc in range(n_slices):
            rf.freq_offset = gz.amplitude * slice_thickness * (slc - (n_slices - 1) / 2)
            for line in range(n_lines):
                rf.phase_offset = adc.phase_offset = phases[k]
                k += 1
                seq.add_block(rf, gz, scope, label("TRID", 2))
                seq.add_block(
                    gx_pre, gy_pre[line], gz_reph, label("LIN", line), label("ECO", 0), label("REV", 0)
                )
                seq.add_block(gx, adc)
                seq.add_block(gx_neg, adc, label("ECO", 1, "INC"), label("REV", 1))
                seq.add_block(gx, adc, label("NAV", 1), label("REV", 0), label("ECO", 1, "INC"))
                spoiler_labels = [label("NAV", 0)]
                if line == n_lines - 1:
                    spoiler_labels.append(label("SLC", 1, "INC"))
                seq.add_block(gy_rew[line], gz_spoil, ext_out, pp.make_delay(3e-3), *spoiler_labels)
    seq.add_block(label("PMC", 0), pp.make_delay(1e-3))

    return _finish(seq, "labels_and_triggers", (fov, fov, slice_thickness * n_slices))


def soft_delays(system: pp.Opts | None = None) -> pp.Sequence:
    """2D GRE with soft delays (``DELAYS`` extension), like pypulseq's ``write_gre_label_softdelay.py``.

    Per TR there are three soft-delay blocks: ``TE`` (factor 1) before the read-out, ``TE`` again (factor -1)
    after it so that changing TE keeps TR constant, and ``TR`` at the end. The default durations give
    ``TE`` = the ``TE`` definition and ``TR`` = the ``TR`` definition;
    ``seq.apply_soft_delay(TE=..., TR=...)`` changes them.
    """
    system = _system(system)
    seq = pp.Sequence(system)
    raster = system.block_duration_raster

    fov = 224e-3
    n = 16
    slice_thickness = 3e-3
    te_target, tr = 5e-3, 20e-3
    te_range = 3e-3  # max TE - default TE

    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=np.deg2rad(7),
        duration=3e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="excitation",
    )
    delta_k = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * delta_k, flat_time=n * 50e-6, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system)
    gy_pre = [
        pp.make_trapezoid(channel="y", area=-(k - n / 2) * delta_k, duration=1e-3, system=system)
        for k in range(n)
    ]
    gy_rew = [pp.scale_grad(g, -1) for g in gy_pre]
    gx_spoil = pp.make_trapezoid(channel="x", area=2 * n * delta_k, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=system)

    d_ex = pp.calc_duration(rf, gz)
    d_pre = pp.calc_duration(gx_pre, gz_reph, gy_pre[0])
    d_ro = pp.calc_duration(gx, adc)
    d_spoil = pp.calc_duration(gx_spoil, gy_rew[0], gz_spoil)
    rf_center = rf.delay + pp.calc_rf_center(rf)[0]
    min_te = (d_ex - rf_center) + d_pre + d_ro / 2  # TE with a zero first TE delay
    te_delay = _ceil_raster(te_target - min_te, raster)
    te = min_te + te_delay
    max_te = te + te_range
    fixed = d_ex + d_pre + d_ro + d_spoil + (max_te - min_te)  # TR without the TR soft delay
    tr_delay = _round_raster(tr - fixed, raster)
    _check_positive("TE soft delay", te_delay)
    _check_positive("TR soft delay", tr_delay)

    # Zero-duration, label-only block: the counters start at 0.
    seq.add_block(pp.make_label("LIN", "SET", 0), pp.make_label("SLC", "SET", 0))
    phases = _rf_spoil_phases(n)
    for i in range(n):
        rf.phase_offset = adc.phase_offset = phases[i]
        seq.add_block(rf, gz)
        seq.add_block(gx_pre, gy_pre[i], gz_reph)
        # duration = TE / 1 - min_TE
        seq.add_block(pp.make_soft_delay("TE", offset=-min_te, factor=1.0, default_duration=te_delay))
        seq.add_block(gx, adc)
        seq.add_block(gx_spoil, gy_rew[i], gz_spoil, pp.make_label("LIN", "INC", 1))
        # duration = TE / -1 + max_TE: grows when TE shrinks, so that TR stays constant
        seq.add_block(pp.make_soft_delay("TE", offset=max_te, factor=-1.0, default_duration=te_range))
        # duration = TR / 1 - (TR without this delay)
        seq.add_block(pp.make_soft_delay("TR", offset=-fixed, factor=1.0, default_duration=tr_delay))

    return _finish(seq, "soft_delays", (fov, fov, slice_thickness), TE=te, TR=fixed + tr_delay)


# ----------------------------------------------------------------------------------------------------------
# Arbitrary gradients, explicit time shapes, oversampling
# ----------------------------------------------------------------------------------------------------------


def _lobe(shape: np.ndarray, area: float, raster: float) -> np.ndarray:
    """Scale a unit waveform sampled at raster centres so that its area (sum * raster) is ``area``."""
    return shape * (area / (shape.sum() * raster))


def arbitrary_gradient_oversampled(system: pp.Opts | None = None, oversampled: bool = False) -> pp.Sequence:
    """2D GRE made of arbitrary gradients and extended trapezoids stored with explicit time shapes.

    * slice select: extended trapezoid with unequal ramps (irregular corner times -> ``time_shape_id`` > 0),
    * slice rephaser: extended trapezoid with unequal ramps (another time shape),
    * read prephaser (sine lobe) and phase encoding (Hann lobe, one shape, several amplitudes): regularly
      sampled arbitrary gradients (``time_shape_id`` 0, explicit ``first``/``last``),
    * read-out: extended trapezoid with unequal ramps and the ADC on its plateau,
    * z spoiler split across two blocks: ramp-up ending at a non-zero ``last`` on the block boundary, then a
      block starting from that amplitude (``first`` != 0).

    With ``oversampled=True`` an x spoiler sampled on the half raster
    (``make_arbitrary_grad(oversampling=True)``, written with ``time_shape_id`` -1) is added to the last block
    of every TR. pypulseq 1.5.0.post1 only handles this partially, which is why it is off by default:

    * ``seq.write(path)`` and ``Sequence().read(path)`` raise ``KeyError: -1`` in ``remove_duplicates``; use
      ``seq.write(path, remove_duplicates=False)`` and ``Sequence().read(path, remove_duplicates=False)``.
    * ``seq.get_block()`` reports ``shape_dur`` = ``(N + 1) * grad_raster_time`` for an N-sample oversampled
      waveform (twice the real ``(N + 1) / 2 * grad_raster_time``), so the block is padded with a delay at
      least that long to keep ``check_timing()`` clean.
    """
    system = _system(system)
    seq = pp.Sequence(system)
    raster = system.grad_raster_time

    fov = 200e-3
    slice_thickness = 5e-3
    n_x, n_lines = 16, 8
    tr = 12e-3
    delta_k = 1 / fov

    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=np.deg2rad(12),
        duration=2e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use="excitation",
    )
    # Slice select with a steeper ramp-up than ramp-down; the RF pulse sits on the plateau.
    rise = _ceil_raster(gz.amplitude / system.max_slew, raster)
    fall = rise + 3 * raster
    t_start = _ceil_raster(max(rf.delay - rise, 0.0), raster)
    rf = copy(rf)
    rf.delay = t_start + rise
    flat = _ceil_raster(rf.shape_dur, raster)
    gz_ss = _etrap(
        "z",
        [t_start, t_start + rise, t_start + rise + flat, t_start + rise + flat + fall],
        [0, gz.amplitude, gz.amplitude, 0],
        system,
    )
    # Rephaser (second half of the plateau plus the ramp-down), again with unequal ramps.
    reph_area = gz.amplitude * (flat / 2 + fall / 2)
    reph_amp = 0.7 * system.max_grad
    r1 = _ceil_raster(reph_amp / system.max_slew, raster)
    r2 = r1 + 2 * raster
    reph_flat = _ceil_raster(reph_area / reph_amp - (r1 + r2) / 2, raster)
    reph_amp = reph_area / (reph_flat + (r1 + r2) / 2)
    gz_reph = _etrap("z", [0, r1, r1 + reph_flat, r1 + reph_flat + r2], [0, -reph_amp, -reph_amp, 0], system)

    # Read-out: extended trapezoid with unequal ramps, ADC on the plateau.
    ro_flat = n_x * 20e-6
    ro_amp = n_x * delta_k / ro_flat
    ro_rise = _ceil_raster(ro_amp / system.max_slew, raster) + raster
    ro_fall = ro_rise + 2 * raster
    gx_ro = _etrap(
        "x",
        [0, ro_rise, ro_rise + ro_flat, ro_rise + ro_flat + ro_fall],
        [0, ro_amp, ro_amp, 0],
        system,
    )
    adc = pp.make_adc(num_samples=n_x, duration=ro_flat, delay=ro_rise, system=system)

    # Prephaser / phase encoding: regularly sampled arbitrary lobes.
    n_lobe = 60
    centres = (np.arange(n_lobe) + 0.5) / n_lobe
    sine = np.sin(np.pi * centres)
    hann = np.sin(np.pi * centres) ** 2
    pre_area = -(ro_amp * (ro_rise / 2 + ro_flat / 2))
    gx_pre = pp.make_arbitrary_grad("x", _lobe(sine, pre_area, raster), first=0, last=0, system=system)
    gy_unit = pp.make_arbitrary_grad(
        "y", _lobe(hann, n_lines / 2 * delta_k, raster), first=0, last=0, system=system
    )
    gy_pre = [pp.scale_grad(gy_unit, (k - n_lines / 2) / (n_lines / 2)) for k in range(n_lines)]
    gy_rew = [pp.scale_grad(g, -1) for g in gy_pre]

    # z spoiler split at the end of its ramp-up.
    sp_amp = 0.8 * system.max_grad
    sp_rise = _ceil_raster(sp_amp / system.max_slew, raster)
    gz_sp1 = _etrap("z", [0, sp_rise], [0, sp_amp], system)
    gz_sp2 = _etrap("z", [0, 600e-6, 600e-6 + sp_rise], [sp_amp, sp_amp, 0], system)

    if oversampled:
        m = 40  # duration in raster units; 2 * m - 1 half-raster samples
        t = np.arange(1, 2 * m) * 0.5 * raster
        waveform = 0.5 * system.max_grad * np.sin(np.pi * t / (m * raster)) ** 2
        g_os = pp.make_arbitrary_grad("x", waveform, first=0, last=0, system=system, oversampling=True)
        os_events = [g_os, pp.make_delay(2 * g_os.shape_dur)]  # see the docstring: get_block() doubles it
    else:
        os_events = []

    d_fixed = (
        pp.calc_duration(rf, gz_ss)
        + pp.calc_duration(gz_reph, gx_pre, gy_pre[0])
        + pp.calc_duration(gx_ro, adc)
        + pp.calc_duration(gz_sp1)
        + pp.calc_duration(gz_sp2, gy_rew[0], *os_events)
    )
    tr_fill = _round_raster(tr - d_fixed, system.block_duration_raster)
    _check_positive("TR fill", tr_fill)

    phases = _rf_spoil_phases(n_lines)
    for k in range(n_lines):
        rf.phase_offset = adc.phase_offset = phases[k]
        seq.add_block(rf, gz_ss)
        seq.add_block(gz_reph, gx_pre, gy_pre[k])
        seq.add_block(gx_ro, adc, pp.make_label("LIN", "SET", k))
        seq.add_block(gz_sp1)
        seq.add_block(gz_sp2, gy_rew[k], *os_events)
        seq.add_block(pp.make_delay(tr_fill))

    name = "arbitrary_gradient_oversampled" if oversampled else "arbitrary_gradient"
    return _finish(seq, name, (fov, fov, slice_thickness), TR=tr)


# ----------------------------------------------------------------------------------------------------------
# Large 3D GRE for benchmarks
# ----------------------------------------------------------------------------------------------------------


def gre3d(
    n_pe1: int, n_pe2: int, n_read: int = 64, system: pp.Opts | None = None, labels: bool = True
) -> pp.Sequence:
    """3D RF-spoiled GRE with exactly ``4 * n_pe1 * n_pe2`` blocks (benchmark sequence).

    Blocks per TR: non-selective block pulse; read prephaser + both phase encodes; read-out with ADC; read
    spoiler + phase-encode rewinders. Minimum TR, no dummy scans. With ``labels`` the prephaser block sets
    ``LIN`` in every TR and ``PAR`` in the first TR of each partition (inner loop: ``n_pe1`` lines, outer
    loop: ``n_pe2`` partitions).

    Built for speed: every event is created once outside the loops and registered with the sequence up front
    (``seq.register_*_event`` -> ``event.id``), so ``add_block`` only looks the IDs up. RF spoiling uses
    integer degree phases, hence at most 360 distinct RF/ADC events.
    """
    system = _system(system)
    seq = pp.Sequence(system)

    fov = (256e-3, 256e-3, 192e-3)
    dwell = 10e-6

    rf = pp.make_block_pulse(
        flip_angle=np.deg2rad(8), duration=100e-6, delay=system.rf_dead_time, system=system, use="excitation"
    )
    gx = pp.make_trapezoid(channel="x", flat_area=n_read / fov[0], flat_time=n_read * dwell, system=system)
    adc = pp.make_adc(num_samples=n_read, duration=gx.flat_time, delay=gx.rise_time, system=system)
    areas_y = (np.arange(n_pe1) - n_pe1 // 2) / fov[1]
    areas_z = (np.arange(n_pe2) - n_pe2 // 2) / fov[2]
    max_area = max(abs(gx.area) / 2, np.abs(areas_y).max(), np.abs(areas_z).max())
    pe_dur = pp.calc_duration(pp.make_trapezoid(channel="x", area=max_area, system=system))
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=pe_dur, system=system)
    gy_pre = [pp.make_trapezoid(channel="y", area=a, duration=pe_dur, system=system) for a in areas_y]
    gz_pre = [pp.make_trapezoid(channel="z", area=a, duration=pe_dur, system=system) for a in areas_z]
    gy_rew = [pp.scale_grad(g, -1) for g in gy_pre]
    gz_rew = [pp.scale_grad(g, -1) for g in gz_pre]
    spoil_area = 2 * n_read / fov[0]
    spoil_dur = max(pe_dur, pp.calc_duration(pp.make_trapezoid(channel="x", area=spoil_area, system=system)))
    gx_spoil = pp.make_trapezoid(channel="x", area=spoil_area, duration=spoil_dur, system=system)

    # Register everything once; set_block() then uses the cached IDs.
    for g in [gx, gx_pre, gx_spoil, *gy_pre, *gz_pre, *gy_rew, *gz_rew]:
        g.id = seq.register_grad_event(g)
    phases = _rf_spoil_phases(n_pe1 * n_pe2)
    rf_by_phase: dict[float, SimpleNamespace] = {}
    adc_by_phase: dict[float, SimpleNamespace] = {}
    for phase in np.unique(phases):
        rf_p, adc_p = copy(rf), copy(adc)
        rf_p.phase_offset = adc_p.phase_offset = float(phase)
        rf_p.id, rf_p.shape_IDs = seq.register_rf_event(rf_p)
        adc_p.id, _ = seq.register_adc_event(adc_p)
        rf_by_phase[phase], adc_by_phase[phase] = rf_p, adc_p
    rf_seq = [rf_by_phase[p] for p in phases]
    adc_seq = [adc_by_phase[p] for p in phases]
    lin: list[SimpleNamespace] = []
    par: list[SimpleNamespace] = []
    if labels:
        lin = [pp.make_label("LIN", "SET", i) for i in range(n_pe1)]
        par = [pp.make_label("PAR", "SET", j) for j in range(n_pe2)]
        for lab in [*lin, *par]:
            lab.id = seq.register_label_event(lab)

    add_block = seq.add_block
    k = 0
    for j in range(n_pe2):
        for i in range(n_pe1):
            add_block(rf_seq[k])
            if labels and i == 0:
                add_block(gx_pre, gy_pre[i], gz_pre[j], lin[i], par[j])
            elif labels:
                add_block(gx_pre, gy_pre[i], gz_pre[j], lin[i])
            else:
                add_block(gx_pre, gy_pre[i], gz_pre[j])
            add_block(gx, adc_seq[k])
            add_block(gx_spoil, gy_rew[i], gz_rew[j])
            k += 1

    return _finish(seq, "gre3d", fov)


#: The small builders (everything except :func:`gre3d`), by name; each can be called without arguments.
ALL_SMALL: dict[str, Callable[..., pp.Sequence]] = {
    "gre": gre,
    "spin_echo": spin_echo,
    "tse": tse,
    "epi": epi,
    "radial": radial,
    "ute": ute,
    "labels_and_triggers": labels_and_triggers,
    "soft_delays": soft_delays,
    "arbitrary_gradient_oversampled": arbitrary_gradient_oversampled,
}
