"""The simulated RF system's imperfect hardware and what a console adjusts on it (docs/prescan.md): the
magnet's B0 errors (global, linear, second order), the transmit coil's B1 efficiency (global and its spatial
map), a receiver of finite ADC range that clips, and the frequency offset, transmit scale and receiver gain a
prescan sets.
A mixin of :class:`scanctl.simulators.rf.SimulatedRF` (it uses that class's lock, state and spin systems).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scanctl.simulators.physics.field import TransmitMap

from scanctl.config.profile import SystemProfile
from scanctl.errors import ConfigError, DriverError, SafetyLimitError
from scanctl.hw.interfaces import SubsystemState
from scanctl.hw.program import RFProgram


class Adjustable:
    """The adjustments and imperfections of :class:`scanctl.simulators.rf.SimulatedRF`."""

    # Provided by SimulatedRF.
    _lock: Any
    _state: SubsystemState
    b0_offset_hz: float

    if TYPE_CHECKING:  # PlaneImaging's: declared for the type checker only (no MRO stub)
        def _every_spin_system(self) -> list[Any]: ...

    # -- imperfect hardware and what a console sets (docs/prescan.md) ------------------------------------------
    def _init_imperfections(self, profile: SystemProfile, b0_grad: tuple[float, float, float],
                            b0_2nd: tuple[float, ...], b1: float, adc_range: float, gain: float,
                            b1_map: TransmitMap | None = None) -> None:
        """The simulated hardware's errors (URL options: ``b0`` Hz, ``b0_grad`` Hz/cm, ``b0_2nd`` Hz/cm², ``b1``,
        ``b1_map``, ``adc_range``) and the settings a console adjusts, at their defaults (0 Hz, scale 1, ``gain``
        dB: a gain outside the profile's range is a ConfigError)."""
        self.b0_gradient_hz_per_m = tuple(100.0 * g for g in b0_grad)  # Hz/cm -> Hz/m
        self.b0_second_order_hz_per_m2 = tuple(1e4 * c for c in b0_2nd)  # Hz/cm² -> Hz/m²
        self.b1_scale = b1
        self.b1_map = None if b1_map is None or b1_map.uniform else b1_map
        self.adc_range = adc_range
        self.limits = profile.adjustments
        self.frequency_offset_hz = 0.0
        self.tx_scale = 1.0
        try:
            self.receiver_gain_db = self.limits.check_receiver_gain(gain)
        except SafetyLimitError as exc:
            raise ConfigError(f"rf: gain={gain}: {exc}") from None
        self.clipped_samples = 0

    def _field_options(self, phantom: Any) -> dict[str, Any]:
        """The SpinSystem options of the static fields and the transmit coil: the global offset (B0 error less
        the synthesiser's offset), the linear inhomogeneity as a static gradient, the second-order terms (added
        to the phantom's own off-resonance map at each voxel's scanner position, with the second-order shim's
        field the gradient programs carry), the spatial transmit efficiency (``b1_map``: every voxel's flip
        scaled by it; the global ``b1`` scales the played B1, :meth:`_transmitted`)."""
        return {"b0_offset_hz": self.b0_offset_hz - self.frequency_offset_hz,
                "static_gradient_hz_per_m": self.b0_gradient_hz_per_m, "phantom": phantom,
                "second_order_hz_per_m2": self.b0_second_order_hz_per_m2, "b1_map": self.b1_map}

    def _require_between_scans(self, what: str) -> None:
        if self._state in (SubsystemState.ON, SubsystemState.RUNNING):
            raise DriverError(f"rf: cannot set {what} in state {self._state.name} (a scan is under way)")

    def set_frequency_offset(self, hz: float) -> None:
        """Centre-frequency offset (Hz): the spins are then off resonance by the B0 error less this."""
        with self._lock:
            self._require_between_scans("the frequency offset")
            hz = self.limits.check_frequency_offset(hz)
            for spins in self._every_spin_system():
                spins.shift_off_resonance(self.frequency_offset_hz - hz)
            self.frequency_offset_hz = hz

    def set_tx_scale(self, scale: float) -> None:
        """Transmit scale: every pulse's B1 is the program's times this (and the coil's ``b1`` efficiency)."""
        with self._lock:
            self._require_between_scans("the transmit scale")
            self.tx_scale = self.limits.check_tx_scale(scale)

    def set_receiver_gain(self, db: float) -> None:
        """Receiver gain before the ADC (dB)."""
        with self._lock:
            self._require_between_scans("the receiver gain")
            self.receiver_gain_db = self.limits.check_receiver_gain(db)

    def adjustments(self) -> dict[str, float]:
        with self._lock:
            return {"frequency_offset_hz": self.frequency_offset_hz, "tx_scale": self.tx_scale,
                    "receiver_gain_db": self.receiver_gain_db}

    def _transmitted(self, rf: RFProgram) -> RFProgram:
        """The B1 that reaches the spins: the program's times the transmit scale and the coil's efficiency."""
        scale = self.tx_scale * self.b1_scale
        if scale == 1.0 or rf.b1_hz.size == 0:
            return rf
        from dataclasses import replace

        return replace(rf, b1_hz=rf.b1_hz * scale)

    def _receive_chain(self, data: np.ndarray) -> np.ndarray:
        """The receiver: gain before an ADC of ``adc_range`` full scale (real and imaginary parts clip there,
        counted in ``adc_clipped_samples``), reported in input units (divided by the gain again)."""
        if not np.isfinite(self.adc_range) or data.size == 0:
            return data
        gain = 10.0 ** (self.receiver_gain_db / 20.0)
        amplified = data * gain
        clipped = (np.abs(amplified.real) > self.adc_range) | (np.abs(amplified.imag) > self.adc_range)
        self.clipped_samples += int(clipped.sum())
        out = (np.clip(amplified.real, -self.adc_range, self.adc_range)
               + 1j * np.clip(amplified.imag, -self.adc_range, self.adc_range)) / gain
        return out.astype(np.complex64)
