"""The gradient coil's temperature predicted from a sequence (docs/safety.md#heating), by the first-order
thermal model the gradient simulator plays (simulators/gradient.py): on a 10 ms grid the coil dissipates
``watts_at_max`` times the mean over the step of the squared gradients, each axis as a fraction of its
amplitude limit, averaged over the three axes; the temperature relaxes towards ``ambient + P·K/W`` with the
time constant ``tau_s``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanctl.config.limits import GradientThermal
from scanctl.config.profile import SystemProfile
from scanctl.safety.lowpass import low_pass
from scanctl.sequence.model import FloatArray, Sequence
from scanctl.sequence.waveforms import axis_waveform

#: The model's time step (s) and the samples per step of the squared gradients, as the simulator's.
STEP_S = 0.01
SAMPLES_PER_STEP = 8


@dataclass(frozen=True)
class HeatingPrediction:
    """Coil temperature at the end of each step (``t_s``), its peak, when and in which block."""

    t_s: FloatArray
    temperature_c: FloatArray
    peak_c: float
    peak_time_s: float
    peak_block: int


def step_power(g2: FloatArray, watts_at_max: float) -> FloatArray:
    """The mean power (W) dissipated in each step, from the squared gradients ``g2`` (fractions of the axes'
    limits, averaged over the axes) sampled ``SAMPLES_PER_STEP`` times per step plus the end (trapezoid
    rule). The gradient simulator calls this too."""
    n = (g2.size - 1) // SAMPLES_PER_STEP
    return np.asarray(watts_at_max * 0.5 * (g2[:-1] + g2[1:]).reshape(n, SAMPLES_PER_STEP).mean(axis=1))


def coil_temperature(power_w: FloatArray, coil: GradientThermal, start_c: float, step_s: float = STEP_S) -> FloatArray:
    """The temperature after each step of dissipated ``power_w``, starting from ``start_c``."""
    decay = float(np.exp(-step_s / coil.tau_s))
    steady = coil.ambient_c + power_w * coil.kelvin_per_watt
    return low_pass(steady, 1.0 - decay, decay, [decay * start_c])[0]


def predict_heating(seq: Sequence, profile: SystemProfile) -> HeatingPrediction:
    """The coil temperature over ``seq``, from ambient, by :func:`coil_temperature`."""
    coil = profile.safety.gradient_thermal
    n = max(1, int(np.ceil(seq.duration_s / STEP_S)))
    fine = np.linspace(0.0, n * STEP_S, SAMPLES_PER_STEP * n + 1)
    g2 = np.zeros(fine.size)
    limits = profile.max_gradient_hz_per_m()
    for axis in range(3):
        g = axis_waveform(seq, axis).sample(fine) / limits[axis]
        g2 += g * g / 3.0
    power = step_power(g2, coil.watts_at_max)
    temperature = coil_temperature(power, coil, coil.ambient_c)
    i = int(np.argmax(temperature))
    t_s = (np.arange(n, dtype=np.float64) + 1) * STEP_S
    peak_time = min(float(t_s[i]), seq.duration_s)
    block = int(np.clip(np.searchsorted(seq.block_start_s, peak_time, side="right") - 1, 0,
                        max(seq.block_start_s.size - 2, 0)))
    return HeatingPrediction(t_s=t_s, temperature_c=temperature, peak_c=float(temperature[i]),
                             peak_time_s=peak_time, peak_block=block)
