"""Simulated RF system: transmitter with power telemetry, receiver producing the MR signal.

Transmit: forward power from the B1 waveform (``watts_per_ut2`` W per µT² of B1, a coil calibration)
and reflected power (``reflection``, the fraction of power reflected); ``fault=reflected@T`` injects a
reflected-power interlock and ``fault=trip@T`` an amplifier trip at scan time ``T``; ``fault=spike@T``
makes the amplifier run away from ``T`` on (it transmits ``spike_w`` W continuously instead of the
programmed pulses, until aborted) and ``fault=silent@T`` loses its heartbeat (see
:mod:`scanctl.simulators.base`). ``forward_energy_j`` counts the energy transmitted since ``arm()``, as
an RF power monitor integrates it.

Interlock inputs: ``door=open`` (or ``door=open@T``: the examination-room door opens at scan time
``T``) and ``coil=absent`` (no coil plugged in) are reported as ``door_closed`` and ``coil_present``
telemetry (1 or 0); :meth:`set_input` changes them at any time (tests, a rig's panel).

Receive: with ``physics=1`` (the default) every ADC window is computed by Bloch simulation of a
numerical phantom (``scanctl.simulators.physics``) under the gradients the gradient simulator of the
same world played and this system's RF; ``noise`` adds white complex Gaussian noise of that standard
deviation per sample at a 10 µs dwell, scaling as ``1/sqrt(dwell)`` (``physics/noise.py``); ``b0`` adds a
global off-resonance (Hz). With ``physics=0`` the receiver returns noise only
(timing and streaming tests, benchmarks of the control path).

The gradients come from the world (``world``: a name in this process, or ``tcp://127.0.0.1:PORT`` across
processes, where this simulator listens for the gradient simulator's programs; see
:mod:`scanctl.simulators.world`).

The scene — the object in the bore: ``phantom``, ``matrix``, ``fov`` and ``noise`` — follows the scan:
``scanctl run`` and the control server give it by a runtime call, :meth:`SimulatedRF.place` with a
:class:`scanctl.hw.interfaces.Scene` (in this process, or through the driver service of a simulator in its
own process: ``place``, a simulator's own method), never through the URL; placing it never reconnects
anything. Options the URL sets itself win over the scene's (a rig that images one fixed phantom).

Receive coil: ``coils=1`` (the default) is the body coil, one channel of sensitivity 1; ``coils=N`` a ring
array of ``N`` loops around the object (``physics/coils.py``: Biot–Savart sensitivities, noise correlated
between channels), and every window comes out ``(N, samples)``. :meth:`SimulatedRF.coil_info` gives the
coil's name, channel names and noise covariance (for the raw data's header).

Where the object is: the Shepp–Logan phantom sits in patient coordinates, mapped to the scanner by
``patient_position`` (HFS, the default, is the identity; FFS, HFP, FFP). A scan's first selective RF pulse
says which plane it images (``physics/placement.py``): a transverse slice at the isocentre sees the 2D
default phantom; any other slice (off-centre, sagittal, coronal, oblique) a grid laid on that plane; a slab
thicker than 15 mm a 3D grid through it; the slices of a multi-slice scan (the same pulse at other carrier
offsets in the segments queued with the first) a stack of slabs through them. An excitation of a plane none
of these covers (a three-plane localizer's other orientations, a slice first excited later) poses a spin
system of its own there; each system plays its excitations and the pulses and windows after them, and every
segment's gradients (docs/phantom.md).

URL: ``sim://?noise=20&b0=0&phantom=shepp_logan&matrix=128&fov=0.256&physics=1&coils=8`` — see ``OPTIONS``
(``fov``: the phantom's field of view in m; a scan's scene sets it to the sequence's).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, ClassVar

import numpy as np
from scanctl.simulators.base import SimulatedSequencer
from scanctl.simulators.physics.field import TransmitMap, transmit_map
from scanctl.simulators.physics.noise import receiver_noise
from scanctl.simulators.rf_adjust import Adjustable
from scanctl.simulators.rf_planes import PlaneImaging, PosedPlanes
from scanctl.simulators.world import receiver, world_option

from scanctl.config.profile import SECOND_ORDER, SystemProfile
from scanctl.errors import ConfigError, DriverError
from scanctl.hw.interfaces import AcquisitionBatch, Scene, SubsystemState
from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram
from scanctl.hw.registry import Converter, SubsystemURL, fault_spec, flag, nonnegative_float, parse_url, positive_float

log = logging.getLogger(__name__)

#: The receive array's ring radius as a fraction of the field of view the phantom fills (0.154 m at the
#: default 0.256 m: 32 mm clear of the phantom's widest point, 0.475 of the field of view from the centre).
RING_FOV_FRACTION = 0.6
def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _door(text: str) -> float:
    """``open`` (from the start) or ``open@T``: the scan time at which the door opens."""
    return fault_spec(("open",))(text if "@" in text else f"{text}@0")[1]


def _patient_position(text: str) -> str:
    from scanctl.simulators.physics.placement import PATIENT_TO_SCANNER

    if text.upper() not in PATIENT_TO_SCANNER:
        raise ValueError(f"must be one of {', '.join(PATIENT_TO_SCANNER)}")
    return text.upper()


def _coil(text: str) -> bool:
    if text not in ("present", "absent"):
        raise ValueError("must be present or absent")
    return text == "present"


def _three_floats(text: str) -> tuple[float, float, float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 3 or not all(np.isfinite(values)):
        raise ValueError("must be three finite numbers x,y,z")
    return values[0], values[1], values[2]


def _second_order(text: str) -> tuple[float, ...]:
    values = [float(v) for v in text.split(",")]
    if len(values) != len(SECOND_ORDER) or not all(np.isfinite(values)):
        raise ValueError(f"must be {len(SECOND_ORDER)} finite numbers {','.join(SECOND_ORDER)}")
    return tuple(values)


class SimulatedRF(PlaneImaging, Adjustable, SimulatedSequencer):
    """RF transmit/receive simulator."""

    kind = "rf"
    OPTIONS: ClassVar[dict[str, Converter]] = {
        "buffer_s": positive_float,
        "fault": fault_spec(("reflected", "trip", "spike", "silent")),
        "spike_w": positive_float,
        "door": _door,
        "coil": _coil,
        "noise": nonnegative_float,
        "b0": float,
        "b0_grad": _three_floats,  # linear B0 inhomogeneity x, y, z (Hz/cm)
        "b0_2nd": _second_order,  # second-order B0 terms z2, zx, zy, x2y2, xy (Hz/cm²)
        "b1": positive_float,  # the coil's transmit efficiency: B1 played = program x tx_scale x b1
        "b1_map": transmit_map,  # its spatial map over the object (relative): radial,A[,R_CM] or linear,GX,GY
        "adc_range": positive_float,  # the ADC's full scale (signal units, real and imaginary each); clips
        "gain": float,  # the receiver gain it starts with (dB; a console sets it: set_receiver_gain)
        "physics": flag,
        "realtime": flag,
        "phantom": str,
        "matrix": _count,
        "fov": positive_float,
        "isochromats": _count,
        "coils": _count,  # receive channels: 1 the body coil, more a ring array of loops
        "patient_position": _patient_position,
        "seed": int,
        "watts_per_ut2": positive_float,
        "reflection": nonnegative_float,
        "world": world_option,  # where the gradients come from: a name, or the endpoint this simulator binds
    }
    #: The options that describe the object in the bore (:meth:`place`), by attribute.
    SCENE = {"phantom": "phantom_name", "matrix": "matrix", "fov": "fov_m", "noise": "noise_std"}

    def __init__(self, url: str, profile: SystemProfile, *, buffer_s: float = 2.0,
                 fault: tuple[str, float] | None = None, noise: float = 0.0, b0: float = 0.0, physics: bool = True,
                 phantom: str = "shepp_logan", matrix: int = 128, fov: float = 0.256, isochromats: int | None = None,
                 seed: int = 0,
                 watts_per_ut2: float = 40.0, reflection: float = 0.01, world: str = "default",
                 realtime: bool = False, spike_w: float = 3000.0, door: float | None = None,
                 coil: bool = True, coils: int = 1, patient_position: str = "HFS",
                 b0_grad: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 b0_2nd: tuple[float, ...] = (0.0,) * 5, b1: float = 1.0, adc_range: float = np.inf,
                 gain: float = 0.0, b1_map: TransmitMap | None = None) -> None:
        super().__init__(url, buffer_s=buffer_s, fault=fault, realtime=realtime)
        self._init_imperfections(profile, b0_grad, b0_2nd, b1, adc_range, gain, b1_map)
        self.channels = coils
        self.patient_position = patient_position
        self._planes: list[PosedPlanes] = []  # the spin systems posed in this scan, in the order first excited
        self._current = 0  # which of them the latest excitation belongs to
        self._awaiting_plane = False
        self._posed: dict[tuple[float, ...], tuple[Any, list[float]]] = {}  # posed spin systems, by planes
        self._base_spins: Any = None
        self._coil_made: tuple[tuple[int, float], Any] | None = None
        self.gamma_hz_per_t = profile.gamma_hz_per_t
        self.noise_std = noise
        self.b0_offset_hz = b0
        self.physics = physics
        self.phantom_name = phantom
        self.matrix = matrix
        self.fov_m = fov
        self.b0_t = profile.b0_t
        self.isochromats = isochromats
        self.watts_per_ut2 = watts_per_ut2
        self.reflection = reflection
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._queue: deque[tuple[RFProgram, ADCProgram]] = deque()
        self._done: list[AcquisitionBatch] = []
        self._world = receiver(world)
        # The scene as built, from the URL or the defaults: what a place() without an option goes back to.
        self._built_scene = {option: getattr(self, attr) for option, attr in self.SCENE.items()}
        self._spins: Any = None
        self._warned_no_gradient = False
        self.forward_power_w = 0.0
        self.peak_power_w = 0.0
        self.forward_energy_j = 0.0
        self.spike_w = spike_w
        self._spike_from_s: float | None = None
        self._door_opens_s = door
        self.inputs = {"door_closed": door is None or door > 0, "coil_present": coil}

    @classmethod
    def from_url(cls, url: SubsystemURL, options: dict[str, Any], profile: SystemProfile) -> SimulatedRF:
        return cls(url.url, profile, **options)

    def connect(self, timeout_s: float = 5.0) -> None:
        self._world.open()  # first: an address it cannot bind leaves it unconnected
        super().connect(timeout_s)
        if self.physics and self._spins is None:
            self._set_spins(self._make_spins())

    def close(self) -> None:
        super().close()
        self._world.close()

    def place(self, scene: Scene) -> None:
        """Place the object to image in the bore (:class:`scanctl.hw.interfaces.Scene`). As for a URL's own
        options, an option this simulator's URL sets wins, and a field ``scene`` leaves None goes back to the
        URL's or the default. A scene that differs from the current one rebuilds the phantom (the simulator
        is then as if built with these options); the same scene changes nothing. Raises ConfigError for a
        bad value or a phantom that cannot be made (the old scene stays), DriverError while a scan is under
        way."""
        fixed = parse_url(self.url).options  # set by this simulator's URL: they stay
        wanted = dict(self._built_scene)
        given = {"phantom": scene.phantom, "matrix": scene.matrix, "fov": scene.fov_m, "noise": scene.noise_std}
        for option, value in given.items():
            if value is None or option in fixed:
                continue
            try:
                wanted[option] = self.OPTIONS[option](str(value))
            except (ValueError, ConfigError) as exc:
                raise ConfigError(f"rf: scene {option}={value!r}: {exc}") from None
        with self._lock:
            if self._state in (SubsystemState.ON, SubsystemState.RUNNING):
                raise DriverError(f"rf: cannot place a scene in state {self._state.name} (a scan is under way)")
            current = {option: getattr(self, attr) for option, attr in self.SCENE.items()}
            if wanted == current:
                return
            for option, attr in self.SCENE.items():
                setattr(self, attr, wanted[option])
            try:  # the new phantom (at once when connected, else on connect)
                spins = self._make_spins() if self.physics and self._state is not SubsystemState.OFF else None
            except BaseException:  # a phantom that cannot be made (a bad file): the old scene stays
                for option, attr in self.SCENE.items():
                    setattr(self, attr, current[option])
                raise
            self._set_spins(spins)
            log.info("rf: scene placed: %s", ", ".join(f"{k}={v}" for k, v in wanted.items()))

    def _make_spins(self, phantom: Any = None, isochromats: int | None = None) -> Any:
        """The spin system of the scene's phantom (or of ``phantom``, with ``isochromats`` through each
        slab), received by this coil."""
        from scanctl.simulators.physics import SpinSystem, load_phantom, shepp_logan

        if phantom is None and self.phantom_name == "shepp_logan":
            phantom = shepp_logan(self.matrix, fov_m=self.fov_m, b0_t=self.b0_t)
        elif phantom is None:
            phantom = load_phantom(self.phantom_name)
        kwargs: dict[str, Any] = {"noise_std": 0.0, "seed": self._seed, **self._field_options(phantom),
                                  "coil": self._receive_coil(), "coil_to_scanner": self._to_scanner()}
        if isochromats is not None:
            kwargs["isochromats"] = isochromats
        elif self.isochromats is not None and phantom.ndim == 2:
            kwargs["isochromats"] = self.isochromats
        return SpinSystem(**kwargs)

    # ---- receive coil and placement (physics/coils.py, physics/placement.py) ----------------------------

    def _receive_coil(self) -> Any:
        """The receive coil: None for the body coil, else a ring of ``channels`` loops fitted to the scene's
        field of view (the ring's radius :data:`RING_FOV_FRACTION` of it: the phantom fills the field of
        view, and the coil fits the object)."""
        if self.channels == 1:
            return None
        from scanctl.simulators.physics.coils import loop_ring

        key = (self.channels, self.fov_m)
        if self._coil_made is None or self._coil_made[0] != key:  # made once per scene (0.5 s)
            self._coil_made = (key, loop_ring(self.channels, RING_FOV_FRACTION * self.fov_m))
        return self._coil_made[1]

    def coil_info(self) -> dict[str, Any]:
        """The receive coil for a raw-data header: ``name``, ``channels``, ``channel_names`` and
        ``noise_covariance`` (``(channels, channels)`` nested lists, the receiver noise's units squared at
        a 10 µs dwell) and ``noise_correlation``."""
        from scanctl.simulators.physics.coils import body_coil

        coil = self._receive_coil() or body_coil()
        return coil.info(self.noise_std)

    def _to_scanner(self) -> Any:
        from scanctl.simulators.physics.placement import patient_to_scanner

        return patient_to_scanner(self.patient_position)

    def _noise_for(self, adc: ADCProgram, windows: list[Any]) -> Any:
        """Receiver noise for the windows' samples, flat as the data: white for the body coil, correlated
        between channels (each window channel by channel) for an array."""
        counts = np.array([w.size for w in windows], dtype=np.int64)
        if self.channels == 1:
            return receiver_noise(self._rng, self.noise_std, adc.dwell_s, counts).astype(np.complex64)
        from scanctl.simulators.physics.coils import correlated_noise
        from scanctl.simulators.physics.noise import NOISE_REFERENCE_DWELL_S

        chol = self._receive_coil().noise_cholesky()
        parts = [correlated_noise(self._rng, chol, np.full(w.shape[1], self.noise_std
                                                          * np.sqrt(NOISE_REFERENCE_DWELL_S / dwell))).ravel()
                 for w, dwell in zip(windows, adc.dwell_s.tolist(), strict=True)]
        return np.concatenate(parts).astype(np.complex64)

    def set_input(self, name: str, on: bool) -> None:
        """Set an interlock input (``door_closed`` or ``coil_present``)."""
        if name not in self.inputs:
            raise KeyError(f"rf: no input {name!r} (inputs: {', '.join(self.inputs)})")
        with self._lock:
            self.inputs[name] = on

    def arm(self) -> None:
        super().arm()
        self.forward_energy_j = 0.0
        self.clipped_samples = 0
        self._done.clear()
        self._rng = np.random.default_rng(self._seed)  # every scan's noise from its seed: the same scan, the same data
        if self._spins is not None:
            self._spins = self._base_spins  # the plane is chosen again by this scan's first pulse
            self._spins.reset()
        self._awaiting_plane, self._planes, self._current = True, [], 0

    def load(self, rf: RFProgram, adc: ADCProgram) -> None:
        """Queue one segment's pulses and receive windows. Raises SafetyLimitError for a non-finite value
        in either (nothing is queued), DriverError/BufferFullError as every sequencer."""
        rf.validate()
        adc.validate()
        with self._lock:
            self._accept_program(rf.t0_s, rf.t1_s)
            self._queue.append((rf, adc))
            self._loaded_until_s = rf.t1_s

    def acquisitions(self) -> AcquisitionBatch:
        with self._lock:
            done, self._done = self._done, []
        return AcquisitionBatch.concatenate(done) if done else AcquisitionBatch.empty()

    def _play_until(self, t_s: float) -> None:
        if self._door_opens_s is not None and self._door_opens_s <= t_s:
            self.inputs["door_closed"] = False
            self._door_opens_s = None
        while self._queue and self._queue[0][0].t1_s <= t_s + 1e-12:
            rf, adc = self._queue.popleft()
            self._transmit(rf)
            self._receive(rf, adc)
        if self._spike_from_s is not None:  # the runaway amplifier transmits spike_w regardless of the program
            self.forward_energy_j += self.spike_w * max(0.0, t_s - max(self._spike_from_s, self._playhead_s))
            self.forward_power_w = self.spike_w
            self.peak_power_w = max(self.peak_power_w, self.spike_w)

    def _soft_fault(self, kind: str, when_s: float) -> bool:
        if kind == "spike":
            self._spike_from_s = when_s
            log.warning("rf: amplifier runs away at %.6f s: %g W (injected)", when_s, self.spike_w)
            return True
        return super()._soft_fault(kind, when_s)

    def _transmit(self, rf: RFProgram) -> None:
        if rf.b1_hz.size == 0:
            self.forward_power_w = 0.0
            return
        b1_ut2 = (np.abs(rf.b1_hz) / self.gamma_hz_per_t * 1e6) ** 2
        energy_j = (float(rf.b1_squared_integrals().sum()) * (1e6 / self.gamma_hz_per_t) ** 2 * self.watts_per_ut2
                    * self.tx_scale ** 2)  # the amplifier's output: the program times the transmit scale
        self.forward_power_w = energy_j / max(rf.t1_s - rf.t0_s, 1e-12)
        self.peak_power_w = max(self.peak_power_w, float(b1_ut2.max()) * self.watts_per_ut2 * self.tx_scale ** 2)
        if self._spike_from_s is None:
            self.forward_energy_j += energy_j

    def _receive(self, rf: RFProgram, adc: ADCProgram) -> None:
        if self._spins is None:  # no physics: no gradients needed (what the world holds for it is dropped)
            self._world.take_gradient(rf.t0_s, wait_s=0)
            if adc.n_windows == 0:
                return
            signals = [np.zeros((self.channels, n), np.complex64) for n in adc.num_samples.tolist()]
        else:
            gradient = self._world.take_gradient(rf.t0_s)
            if gradient is None and self._world.heard:  # the sender went away: fail now, not wait a scan long
                self._trip(f"no gradient program for {rf.t0_s:.6f} s came from world {self._world.name} although "
                           "a gradient simulator sent there before: it stopped sending (restarted without "
                           "this world= option?)")
            if gradient is None:
                if not self._warned_no_gradient:
                    log.warning("rf: no simulated gradients in world %r: receiving without spatial encoding",
                                self._world.name)
                    self._warned_no_gradient = True
                empty = np.zeros(0)
                gradient = GradientProgram(rf.t0_s, rf.t1_s, (empty, empty, empty), (empty, empty, empty))
            signals = self._play(gradient, rf, adc)
        # The receiver delivers the windows in columns, all samples in one array (an AcquisitionBatch).
        windows = [np.asarray(signal, dtype=np.complex64).reshape(self.channels, -1) for signal in signals]
        data = np.concatenate(windows, axis=None) if windows else np.zeros(0, np.complex64)
        if self.noise_std > 0 and windows:
            data = data + self._noise_for(adc, windows)
        data = self._receive_chain(data)
        shape = np.array([w.shape for w in windows], dtype=np.int64).reshape(len(windows), 2)
        self._done.append(AcquisitionBatch({
            "index": adc.index.astype(np.int64), "block": adc.block.astype(np.int64),
            "start_s": adc.start_s.astype(np.float64), "dwell_s": adc.dwell_s.astype(np.float64),
            "shape": shape, "data": data,
            "labels": {name: column.astype(np.int64) for name, column in adc.labels.items()}, "unlabelled": {},
        }))

    def _make_safe(self) -> None:
        self._queue.clear()
        self.forward_power_w = 0.0
        self._spike_from_s = None
        self._loaded_until_s = self._playhead_s

    def _telemetry(self) -> dict[str, float]:
        return {"forward_power_w": self.forward_power_w,
                "reflected_power_w": self.forward_power_w * self.reflection,
                "peak_forward_power_w": self.peak_power_w,
                "forward_energy_j": self.forward_energy_j,
                "door_closed": float(self.inputs["door_closed"]), "coil_present": float(self.inputs["coil_present"]),
                "buffered_s": max(0.0, self._loaded_until_s - self._playhead_s),
                "adc_clipped_samples": float(self.clipped_samples),
                **({"adc_full_scale": self.adc_range} if np.isfinite(self.adc_range) else {})}
