"""Sequence diagrams and k-space plots (matplotlib is an optional extra: ``pip install scanctl[plot]``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from scanctl.errors import ConfigError
from scanctl.sequence.model import TIME_DEFAULT, FloatArray, Sequence
from scanctl.sequence.waveforms import AXES, adc_sample_times, axis_waveform, kspace_adc

#: Without an explicit time range, at most this many blocks are drawn.
DEFAULT_MAX_BLOCKS = 2000


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("plotting needs matplotlib: pip install 'scanctl[plot]'") from exc
    return plt


def blocks_in(seq: Sequence, t0: float, t1: float) -> np.ndarray:
    """Indices of blocks overlapping ``[t0, t1]`` seconds."""
    starts = seq.block_start_s
    first = max(int(np.searchsorted(starts[1:], t0, side="right")), 0)
    last = int(np.searchsorted(starts[:-1], t1, side="right"))
    return np.arange(first, max(last, first))


def default_range(seq: Sequence) -> tuple[float, float]:
    n = min(len(seq.blocks), DEFAULT_MAX_BLOCKS)
    return 0.0, float(seq.block_start_s[n])


def rf_waveform(seq: Sequence, blocks: np.ndarray) -> tuple[FloatArray, np.ndarray]:
    """Complex RF (Hz) at its samples for the given blocks, with NaN gaps between pulses."""
    rf, shapes = seq.rf, seq.shapes
    times: list[FloatArray] = []
    values: list[np.ndarray] = []
    for b in blocks[seq.blocks.rf[blocks] >= 0].tolist():
        row = int(seq.blocks.rf[b])
        mag = shapes.get(int(rf.mag_shape[row]))
        phase = shapes.get(int(rf.phase_shape[row])) if rf.phase_shape[row] >= 0 else np.zeros(mag.size)
        if rf.time_shape[row] == TIME_DEFAULT:
            t = (np.arange(mag.size) + 0.5) * seq.rasters.rf_s
        else:
            t = shapes.get(int(rf.time_shape[row])) * seq.rasters.rf_s
        signal = rf.amplitude_hz[row] * mag * np.exp(1j * (2 * np.pi * phase + rf.phase_rad[row]
                                                           + 2 * np.pi * rf.freq_hz[row] * t))
        times.append(np.concatenate((seq.block_start_s[b] + rf.delay_s[row] + t, [np.nan])))
        values.append(np.concatenate((signal, [np.nan])))
    if not times:
        return np.zeros(0), np.zeros(0, complex)
    return np.concatenate(times), np.concatenate(values)


def plot_sequence(seq: Sequence, out: str | os.PathLike[str], time_range: tuple[float, float] | None = None) -> None:
    """Draw RF magnitude and phase, ADC, Gx, Gy, Gz against time (ms) to a PNG."""
    plt = _pyplot()
    t0, t1 = time_range or default_range(seq)
    blocks = blocks_in(seq, t0, t1)
    fig, axes = plt.subplots(6, 1, sharex=True, figsize=(12, 10))
    t_rf, s_rf = rf_waveform(seq, blocks)
    axes[0].plot(t_rf * 1e3, np.abs(s_rf), lw=0.8)
    axes[0].set_ylabel("RF |B1| (Hz)")
    axes[1].plot(t_rf * 1e3, np.angle(s_rf), ".", ms=1)
    axes[1].set_ylabel("RF phase (rad)")
    t_adc, adc_block = adc_sample_times(seq)
    sel = (t_adc >= t0) & (t_adc <= t1)
    axes[2].plot(t_adc[sel] * 1e3, np.ones(int(sel.sum())), "|", ms=6)
    axes[2].set_ylabel("ADC")
    axes[2].set_yticks([])
    for axis in range(3):
        w = axis_waveform(seq, axis, blocks)
        axes[3 + axis].plot(w.t_s * 1e3, w.g_hz_per_m * 1e-3, lw=0.8)
        axes[3 + axis].set_ylabel(f"G{AXES[axis]} (kHz/m)")
    axes[-1].set_xlabel("time (ms)")
    axes[-1].set_xlim(t0 * 1e3, t1 * 1e3)
    name = seq.definitions.get("Name", "")
    fig.suptitle(f"{name} {t0 * 1e3:.3f}–{t1 * 1e3:.3f} ms ({blocks.size} of {len(seq.blocks)} blocks)".strip())
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_kspace(seq: Sequence, out: str | os.PathLike[str]) -> None:
    """Draw the k-space trajectory at the ADC samples (kx–ky, and kz against kx)."""
    plt = _pyplot()
    k = kspace_adc(seq)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    axes[0].plot(k[0], k[1], ".", ms=1)
    axes[0].set_xlabel("kx (1/m)")
    axes[0].set_ylabel("ky (1/m)")
    axes[0].set_aspect("equal", adjustable="datalim")
    axes[1].plot(k[0], k[2], ".", ms=1)
    axes[1].set_xlabel("kx (1/m)")
    axes[1].set_ylabel("kz (1/m)")
    fig.suptitle(f"k-space at {k.shape[1]} ADC samples")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
