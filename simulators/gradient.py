"""Simulated gradient system: three amplifiers and coils on a virtual clock.

It refuses programs beyond the profile's amplitude and slew limits, models coil heating with a
first-order thermal RC model driven by the dissipated power (proportional to the sum of the squared
gradients), reports it as telemetry and trips on over-temperature; ``fault=trip@T`` or
``fault=overtemp@T`` injects an amplifier trip or an over-temperature at scan time ``T``; ``fault=cooling@T``
a coolant failure (from ``T`` the coil heats ``overheat_k_per_s`` K/s faster while it plays, until it
trips at ``max_temp_c`` unless the safety supervisor stops the scan first); ``fault=silent@T`` a lost
heartbeat (see :mod:`scanctl.simulators.base`). The coil model is the profile's
``[safety.gradient_thermal]``; the URL options ``tau_s``, ``watts_at_max``, ``kelvin_per_watt`` and
``max_temp_c`` override it (a coil that differs from what the profile says).

Every program it accepts goes to its world (``world``: a name in this process, or ``tcp://127.0.0.1:PORT``
across processes, where the RF simulator listens; see :mod:`scanctl.simulators.world`).

URL: ``sim://?buffer_s=2&tau_s=60&heating_k_per_w=...`` — see ``OPTIONS``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from scanctl.simulators.base import SimulatedSequencer
from scanctl.simulators.world import sender, world_option

from scanctl.config.profile import SystemProfile
from scanctl.errors import DriverError, SafetyLimitError
from scanctl.hw.interfaces import SubsystemState
from scanctl.hw.program import GradientProgram, breakpoint_slew
from scanctl.hw.registry import Converter, SubsystemURL, fault_spec, flag, positive_float
from scanctl.safety.heating import SAMPLES_PER_STEP, STEP_S, step_power

log = logging.getLogger(__name__)

#: A step (two breakpoints less than a picosecond apart) may change the gradient by at most this fraction of
#: the amplitude limit (rounding where two blocks meet; the sequence checks allow 1e-5 of the sequence's
#: largest gradient there, see scanctl.sequence.checks); a larger step is an infinite slew.
STEP_TOLERANCE = 1e-5


def _worst(values: np.ndarray, over: np.ndarray) -> int:
    """The index (among ``over``) of the largest of ``values``, a NaN counting as the largest."""
    return int(over[np.argmax(np.nan_to_num(values[over], nan=np.inf))])


class SimulatedGradient(SimulatedSequencer):
    """Gradient simulator. Temperatures in °C, powers in W (of the coil model, not a real coil)."""

    kind = "gradient"
    OPTIONS: ClassVar[dict[str, Converter]] = {
        "buffer_s": positive_float,
        "realtime": flag,
        "fault": fault_spec(("trip", "overtemp", "cooling", "silent")),
        "overheat_k_per_s": positive_float,  # extra heating after fault=cooling
        "tau_s": positive_float,  # thermal time constant of the coil
        "watts_at_max": positive_float,  # dissipation with all three axes at full amplitude
        "kelvin_per_watt": positive_float,  # steady-state temperature rise per watt
        "max_temp_c": positive_float,
        "world": world_option,  # where the RF simulator takes the gradients from: a name or an endpoint
    }

    def __init__(self, url: str, profile: SystemProfile, *, buffer_s: float = 2.0,
                 fault: tuple[str, float] | None = None, tau_s: float | None = None,
                 watts_at_max: float | None = None, kelvin_per_watt: float | None = None,
                 max_temp_c: float | None = None, world: str = "default", realtime: bool = False,
                 overheat_k_per_s: float = 5.0) -> None:
        super().__init__(url, buffer_s=buffer_s, fault=fault, realtime=realtime)
        self.max_gradient_hz_per_m = np.array(profile.max_gradient_hz_per_m())
        self.max_slew_hz_per_m_per_s = np.array(profile.max_slew_hz_per_m_per_s())
        coil = profile.safety.gradient_thermal  # the coil model the profile gives; URL options override it
        self.tau_s = coil.tau_s if tau_s is None else tau_s
        self.watts_at_max = coil.watts_at_max if watts_at_max is None else watts_at_max
        self.kelvin_per_watt = coil.kelvin_per_watt if kelvin_per_watt is None else kelvin_per_watt
        self.max_temp_c = coil.max_temp_c if max_temp_c is None else max_temp_c
        self.ambient_c = coil.ambient_c
        self.temperature_c = self.ambient_c
        self.power_w = 0.0
        self.overheat_k_per_s = overheat_k_per_s
        self._cooling_lost_s: float | None = None
        self._queue: deque[GradientProgram] = deque()
        self._world = sender(world)
        self.limits = profile.adjustments
        self.shim: dict[str, float] = dict.fromkeys(self.limits.shim_channels, 0.0)

    @classmethod
    def from_url(cls, url: SubsystemURL, options: dict[str, Any], profile: SystemProfile) -> SimulatedGradient:
        return cls(url.url, profile, **options)

    def connect(self, timeout_s: float = 5.0) -> None:
        self._world.open()
        super().connect(timeout_s)

    def close(self) -> None:
        super().close()
        self._world.close()

    def load(self, program: GradientProgram) -> None:
        """Queue ``program``. Raises SafetyLimitError for a non-finite value or a waveform beyond the
        amplitude or slew limits (nothing is queued), DriverError/BufferFullError as every sequencer."""
        program.validate()
        with self._lock:
            self._accept_program(program.t0_s, program.t1_s)
            self._check_limits(program)
            self._queue.append(program)
            self._loaded_until_s = program.t1_s
            self._world.post_gradient(self._shimmed(program))

    def _check_limits(self, program: GradientProgram) -> None:
        # Written so that a NaN fails (``not value <= limit``), whatever slipped past validation.
        for axis, name in enumerate("xyz"):
            t, g = program.t_s[axis], program.g_hz_per_m[axis]
            if g.size == 0:
                continue
            limit = self.max_gradient_hz_per_m[axis]
            amplitude = np.abs(g + self.shim[name])  # the shim current flows in the same coil
            over = np.flatnonzero(~(amplitude <= limit * (1 + 1e-9)))
            if over.size:
                i = _worst(amplitude, over)
                raise SafetyLimitError(f"gradient: {name} amplitude {amplitude[i]:.6g} Hz/m at {t[i]:.6f} s exceeds "
                                       f"the amplifier limit {limit:.6g} Hz/m")
            slew = breakpoint_slew(t, g, STEP_TOLERANCE * limit)
            max_slew = self.max_slew_hz_per_m_per_s[axis]
            over = np.flatnonzero(~(slew <= max_slew * (1 + 1e-6)))
            if over.size:
                i = _worst(slew, over)
                raise SafetyLimitError(f"gradient: {name} slew {slew[i]:.6g} Hz/m/s at {t[i]:.6f} s exceeds the "
                                       f"amplifier limit {max_slew:.6g} Hz/m/s (a change of "
                                       f"{abs(g[i + 1] - g[i]):.6g} Hz/m in {t[i + 1] - t[i]:.3g} s)")

    def _play_until(self, t_s: float) -> None:
        """Advance the thermal model over ``[playhead, t_s)`` on the grid of scanctl.safety.heating (10 ms)."""
        t0 = self._playhead_s
        while self._queue and self._queue[0].t1_s <= t0 + 1e-12:
            self._queue.popleft()
        n = max(1, int(np.ceil((t_s - t0) / STEP_S)))
        edges = np.linspace(t0, t_s, n + 1)
        # Mean squared gradient (normalised to the limit) per step, summed over axes, from samples.
        fine = np.linspace(t0, t_s, SAMPLES_PER_STEP * n + 1)
        g2 = np.zeros(fine.size)
        for program in self._queue:
            inside = (fine >= program.t0_s) & (fine <= program.t1_s)
            if inside.any():
                g = program.sample(fine[inside]) / self.max_gradient_hz_per_m[:, None]
                g2[inside] += (g * g).sum(axis=0) / 3.0
        power = step_power(g2, self.watts_at_max)  # the same model as the prediction's
        decay = np.exp(-np.diff(edges) / self.tau_s)
        extra = np.zeros(n)
        if self._cooling_lost_s is not None:  # coolant failure: heat the cooling no longer removes
            extra = self.overheat_k_per_s * np.clip(edges[1:] - np.maximum(edges[:-1], self._cooling_lost_s), 0, None)
        temp = self.temperature_c
        for step, (p, d, e) in enumerate(zip(power.tolist(), decay.tolist(), extra.tolist(), strict=True)):
            steady = self.ambient_c + p * self.kelvin_per_watt
            temp = steady + (temp - steady) * d + e
            if not temp <= self.max_temp_c:  # a NaN temperature trips too
                self.temperature_c, self.power_w = temp, p
                self._playhead_s = float(edges[step + 1])  # the fault happens within this step
                self._trip(f"coil over-temperature {temp:.1f} °C > {self.max_temp_c:.1f} °C")
        self.temperature_c, self.power_w = temp, float(power[-1])

    def _soft_fault(self, kind: str, when_s: float) -> bool:
        if kind == "cooling":
            self._cooling_lost_s = when_s
            log.warning("gradient: coolant failure at %.6f s (injected)", when_s)
            return True
        return super()._soft_fault(kind, when_s)

    def reset(self) -> None:
        super().reset()
        self._cooling_lost_s = None

    def _make_safe(self) -> None:
        self._queue.clear()
        self._world.clear()
        self.power_w = 0.0
        self._loaded_until_s = self._playhead_s

    def _telemetry(self) -> dict[str, float]:
        return {"coil_temperature_c": self.temperature_c, "power_w": self.power_w,
                "buffered_s": max(0.0, self._loaded_until_s - self._playhead_s)}

    # -- the shim (docs/prescan.md) --------------------------------------------------------------------------
    def set_shim(self, values: Mapping[str, float]) -> None:
        """Set the shim channels given (Hz/m; the others keep their value). Raises SafetyLimitError beyond the
        shim supplies (the profile's ``[gradient]`` shim limits) or for a channel the hardware lacks, DriverError
        while a scan is under way; a refused shim leaves the previous one."""
        with self._lock:
            if self._state in (SubsystemState.ON, SubsystemState.RUNNING):
                raise DriverError(f"gradient: cannot set the shim in state {self._state.name} (a scan is under way)")
            self.shim.update(self.limits.check_shim(dict(values)))

    def adjustments(self) -> dict[str, float]:
        with self._lock:
            return dict(self.shim)

    def _shimmed(self, program: GradientProgram) -> GradientProgram:
        """What the coils play, as the simulated magnet room gets it: the program plus the linear shim, a static
        gradient, and the second-order shim channels' field (``shim_hz_per_m2``): the physics sees both."""
        from dataclasses import replace

        second = {c: v for c, v in self.shim.items() if c not in ("x", "y", "z") and v != 0}
        if second:
            program = replace(program, shim_hz_per_m2=second)
        linear = (self.shim["x"], self.shim["y"], self.shim["z"])
        if not any(linear):
            return program
        from scanctl.simulators.physics.moments import with_static_gradient  # (the physics only when shimmed)

        return with_static_gradient(program, linear)
