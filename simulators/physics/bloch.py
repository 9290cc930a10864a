"""Bloch simulation of a phantom under the gradient, RF and ADC programs a scan plays.

Method, and why:

* **Dephasing is a phase graph** (``graph.py``; PDG, Endres et al. MRM 2024 / EPG, Weigel JMRI 2015):
  gradients move states in moment space exactly, whatever the moments, so spoiler gradients and RF
  spoiling come out right with no aliasing of dephased magnetization -- which isochromats cannot
  promise for long-T2 tissue (CSF's 2 s T2 keeps hundreds of TRs of echo pathways alive: with tens of
  isochromats per voxel they fold back and ghost).
* **Voxels of one tissue share amplitudes.** A voxel's magnetization is the class amplitudes times
  ``exp(2πi k·r)``: voxels differ only in where they are, which enters when a sample is computed, as
  the Fourier transform of the class's proton-density map at the state's moment. Work per event grows
  with tissue classes x isochromats x states, not with voxels. Voxels are band-limited (sinc-shaped, as
  MRzero recommends): a state contributes only while its moment is within ``±1/(2 voxel)``.
* **Slice profiles are resolved** by isochromats through the slab of a 2D phantom (along z). RF is a hard
  pulse per RF raster sample (B1 with its carrier offset, precession in the slice gradient and the class
  off-resonance during the sample), composed per isochromat and class (``pulse.py``, cached and
  phase-normalised so RF spoiling does not recompose). The gradient moment and off-resonance before and
  after the pulse centre are factored out of the rotation and played as free evolution instead, so
  what is left varies smoothly along z and the states carry all fast phase; relaxation is applied up
  to the centre, then from it (second order in the pulse length).
* **Free precession and relaxation are exact** between events: piecewise-linear gradients integrate in
  closed form (``moments.py``), ``exp(-t/T2)``, ``exp(-t/T1)``, class off-resonance as a phase, and
  the off-resonance of each voxel relative to its class through the states' dephasing times.

* **Off-resonance and B1 during RF are per voxel** to within ``field.RF_B0_BIN_HZ`` and ``field.RF_B1_BIN``:
  tissue classes are split by their off-resonance and transmit efficiency (``b1_map``) in bins of that width,
  so two voxels of one tissue at ±3 kHz, or at the centre and the edge of a birdcage's B1 map, are two classes,
  each rotated at its own frequency and B1; what is left inside a bin (< half a bin) acts in free precession
  only (off-resonance) or not at all (B1: a flip within 0.5 % of the voxel's own). The static fields (the
  magnet's second-order terms, the shim coils' field a program carries) are evaluated at each voxel's scanner
  position (``field.py``).
* **T2′ (intravoxel dephasing)** from the phantom's optional ``t2prime_s`` map: a Lorentzian spread of
  frequencies inside the voxel, so a state of dephasing time ``τ`` carries ``exp(-|τ|/T2′)`` (PDG; a spin
  echo, where ``τ`` returns to 0, refocuses it) and an FID decays with 1/T2* = 1/T2 + 1/T2′.

* **Selection along any axis.** A pulse played with gradients in the phantom's plane (a sagittal or
  coronal slice of an axial phantom, an oblique slice, a 3D slab along x) first splits the tissue
  classes into the parts of each at one position, a voxel wide, along the in-plane gradient (along both
  axes for a curved in-plane path): a split is exact, the parts start with their class's magnetization.
  The pulse's rotation is then evaluated at each class's position (x, y and the isochromats or plane in
  z). The profile along an in-plane axis is thus sampled at the phantom's voxels (through the slab of a
  2D phantom, at its isochromats); the classes return to the tissue classes at the next reset. Work
  grows with the number of classes (at most :data:`MAX_SPLIT_CLASSES`; beyond, a warning and the class
  centre).

* **A phantom posed anywhere** (``Phantom.axes``/``origin_m``: a grid laid on an oblique or off-centre
  slice): the simulation runs in the grid's own axes -- the gradient moments are rotated into them
  (``axesᵀ m``) and the positions carry the grid's offset (``axesᵀ origin``), so ``k·r`` is the scanner's.
* **Receive coils** (``coil``, ``coils.py``): each channel's sensitivity at each voxel weights that voxel in
  the read-out's plane sums (``signal.py``); the magnetization is simulated once for all channels.

Limits: with off-resonance varying inside a class, samples use a Taylor series in time (error < 1e-7).

Conventions (ISMRMRD's and MRzero's): protons precess as ``exp(-iωt)``, so a voxel at off-resonance
``Δf`` (Hz) gives a demodulated FID turning as ``exp(-2πi Δf t)``, and a Cartesian k-space is
``s(k) = Σ ρ(r) exp(-2πi k·r)`` with ``k`` the gradient moment (1/m): an inverse FFT reconstructs the
phantom the right way round (row = y, column = x). RF and ADC keep Pulseq's meaning: a carrier offset
``f`` is resonant with the spins at ``Δf = f`` (``freq_offset = γ G z`` selects +z), and RF spoiling
works with ADC phase = RF phase. (Internally the phase graph runs in the mirror convention, where
magnetization turns as ``exp(+2πi f t)``, and the samples are conjugated on output: the mirror of a
consistent model with both the transmitter's and the receiver's phases mirrored is the same physics.)
A sample at ``t`` of a window with ``phase_rad`` φ and ``freq_hz`` f is therefore the conjugate of
the internal signal times ``exp(-i (φ + 2π f (t - start)))``.

Units: a voxel of proton density 1 and volume 1 mm³ (µL), fully transverse and in phase, contributes 1
to a sample, so the signal of an object does not depend on how finely its phantom is gridded. Receiver
noise is white: complex Gaussian of standard deviation ``noise_std`` per sample at a dwell of
:data:`~.noise.NOISE_REFERENCE_DWELL_S` (10 µs, 100 kHz bandwidth), scaling as ``1/sqrt(dwell)`` (the noise
power grows with the bandwidth), real and imaginary parts each ``σ/sqrt(2)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.errors import ConfigError
from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram

from .coils import ReceiveCoil, correlated_noise, grid_sensitivities
from .field import TransmitMap, as_terms, class_labels, second_order_field_hz
from .graph import DEFAULT_TOLERANCE, PhaseGraph
from .moments import FrameMoments, Moments, with_static_gradient
from .noise import NOISE_REFERENCE_DWELL_S, receiver_noise
from .phantom import Phantom
from .pulse import PulseCache, Rotation, pulse_intervals
from .signal import Readout

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

#: Isochromats through the slab of a 2D phantom (slice-profile resolution: 0.31 mm over 10 mm).
DEFAULT_ISOCHROMATS_2D = 32
#: In-plane gradient moment across the object during a pulse (cycles) above which the pulse's rotation is
#: resolved in the plane (the classes split along the gradient) rather than taken at the class centre.
IN_PLANE_CYCLES = 0.05
#: The most classes a split for in-plane selection may make (the read-out keeps a map per class).
MAX_SPLIT_CLASSES = 4096


@dataclass
class Stats:
    """Work done since the last :meth:`SpinSystem.reset` (for benchmarks)."""

    rf_pulses: int = 0
    rf_samples: int = 0
    adc_samples: int = 0
    windows: int = 0
    max_states: int = 0


def _finite3(value: tuple[float, float, float] | FloatArray, name: str) -> tuple[float, float, float]:
    v = np.asarray(value, np.float64).reshape(-1)
    if v.size != 3 or not np.isfinite(v).all():
        raise ConfigError(f"{name} must be three finite numbers (x, y, z), got {value!r}")
    return float(v[0]), float(v[1]), float(v[2])


class SpinSystem:
    """A phantom's magnetization, played through segment after segment of a scan.

    ``isochromats``: samples through the slab of a 2D phantom at which RF rotations are evaluated
    (default 32; a 3D phantom is resolved in z by its voxels and takes 1 by default; more make it a stack
    of 2D slabs, each plane a slab as thick as its voxels with that many isochromats through it: the
    planes of a multi-slice scan, far apart, each with its slice profile); ``noise_std``: standard
    deviation of the complex Gaussian noise added to a sample of 10 µs dwell, scaled by
    ``sqrt(10 µs / dwell)`` for other dwells (real and imaginary parts each ``σ / sqrt(2)``; units of the
    signal: see the module docstring), seeded by ``seed``; ``b0_offset_hz``: an off-resonance added to the
    phantom's map everywhere; ``tolerance``: phase-graph states whose effect on a voxel's signal is at most
    this are dropped (``graph.signal_weight``; default ``graph.DEFAULT_TOLERANCE``); ``coil``: the receive
    coil (``coils.py``; None: the body coil, one channel of sensitivity 1), its frame mapped to scanner
    coordinates by ``coil_to_scanner`` (3x3; the patient position's matrix, the identity for HFS): with
    ``N`` channels every window comes out ``(N, samples)`` and the noise is correlated as the coil says.
    ``second_order_hz_per_m2``: second-order B0 terms (the magnet's error: channel -> Hz/m², or five numbers in
    ``SECOND_ORDER_TERMS`` order) added to the phantom's map at each voxel's scanner position, to which a
    program's ``shim_hz_per_m2`` (the shim coils' field) adds while it plays; ``b1_map``: the transmit coil's
    relative efficiency (``field.TransmitMap``), every voxel's flip scaled by it at its position.
    Raises :class:`ConfigError` for invalid options.

    :meth:`play` must get the segments in time order; magnetization persists between calls until
    :meth:`reset` (which also restarts the noise generator).
    """

    def __init__(self, phantom: Phantom, *, isochromats: int | None = None, noise_std: float = 0.0,
                 b0_offset_hz: float = 0.0, seed: int = 0, tolerance: float = DEFAULT_TOLERANCE,
                 static_gradient_hz_per_m: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 coil: ReceiveCoil | None = None, coil_to_scanner: FloatArray | None = None,
                 second_order_hz_per_m2: Mapping[str, float] | tuple[float, ...] | None = None,
                 b1_map: TransmitMap | None = None) -> None:
        if isochromats is None:
            isochromats = DEFAULT_ISOCHROMATS_2D if phantom.ndim == 2 else 1
        if int(isochromats) != isochromats or isochromats < 1:
            raise ConfigError(f"isochromats must be a positive integer, got {isochromats!r}")
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ConfigError(f"noise_std must be >= 0, got {noise_std!r}")
        if not math.isfinite(b0_offset_hz):
            raise ConfigError(f"b0_offset_hz must be finite, got {b0_offset_hz!r}")
        if not 0 < tolerance < 1:
            raise ConfigError(f"tolerance must be in (0, 1), got {tolerance!r}")
        self.phantom = phantom
        self.isochromats = int(isochromats)
        self.noise_std = float(noise_std)
        self.b0_offset_hz = float(b0_offset_hz)
        self.static_gradient_hz_per_m = _finite3(static_gradient_hz_per_m, "static_gradient_hz_per_m")
        self.second_order_hz_per_m2 = as_terms(second_order_hz_per_m2)
        self.shim_hz_per_m2: dict[str, float] = {}  # the shim's second-order field the classes were built with
        self.b1_map = b1_map
        self.seed = seed
        self.coil = coil
        self.channels = 1 if coil is None else coil.channels
        self._sens_grid = grid_sensitivities(phantom, coil, coil_to_scanner)
        self._noise_l = None if coil is None or coil.channels == 1 else coil.noise_cholesky()
        # The grid's axes (None: the scanner's): moments are rotated into them (module docstring).
        self._axes_t = None if phantom.axes is None else np.ascontiguousarray(np.asarray(phantom.axes).T)
        self._setup_classes(phantom)
        self._cache = PulseCache()
        self._tolerance = tolerance
        self._graph = self._new_graph()
        self.stats = Stats()
        self.reset()

    def _new_graph(self) -> PhaseGraph:
        return PhaseGraph(self.n_classes, self.isochromats, tolerance=self._tolerance,
                          track_time=self._dfr_max > 0 or bool(self._r2p.any()))

    def _setup_classes(self, phantom: Phantom) -> None:
        """Tissue classes: voxels with equal T1, T2 and T2′, in one off-resonance bin (and, in 3D, the same
        plane)."""
        nz, ny, nx = phantom.shape3d
        dx, dy, dz = phantom.voxel_size_m
        offset = phantom.frame_offset_m()  # the grid's centre in its own axes
        xs, ys, zs = (axis + o for axis, o in zip(phantom.axis_positions_m(), offset, strict=True))
        pd = phantom.pd.reshape(nz, ny, nx)
        active = np.flatnonzero(pd.reshape(-1) > 0)
        iz, iy, ix = np.unravel_index(active, (nz, ny, nx))
        t1 = phantom.t1_s.reshape(-1)[active]
        t2 = phantom.t2_s.reshape(-1)[active]
        t2p = phantom.t2prime_s.reshape(-1)[active] if phantom.t2prime_s is not None else np.full(t1.size, np.inf)
        r2p = 1.0 / t2p  # 0 where T2′ is infinite
        # Each voxel's scanner position: where the static fields and the transmit map are evaluated.
        sx, sy, sz = (np.column_stack((xs[ix], ys[iy], zs[iz])) @ phantom.rotation.T).T
        df = (phantom.b0_offset_hz.reshape(-1)[active] + self.b0_offset_hz
              + second_order_field_hz({c: self.second_order_hz_per_m2.get(c, 0.0) + self.shim_hz_per_m2.get(c, 0.0)
                                       for c in {*self.second_order_hz_per_m2, *self.shim_hz_per_m2}}, sx, sy, sz))
        b1 = np.ones(active.size) if self.b1_map is None else np.asarray(self.b1_map.at(sx, sy, sz), np.float64)
        tissue = np.column_stack((t1, t2, r2p, iz if phantom.ndim == 3 else np.zeros_like(iz))).astype(np.float64)
        label = class_labels(tissue, df, b1)
        self.n_voxels = int(active.size)
        self._x, self._y = xs, ys
        self._voxel = (dx, dy, dz)
        self._volume_mm3 = dx * dy * dz * 1e9  # the signal of a voxel of proton density 1
        # Every voxel with proton density, as columns: the classes are built (and refined) from these.
        self._vox = {"ix": ix, "iy": iy, "iz": iz, "pd": pd.reshape(-1)[active], "r1": 1.0 / t1, "r2": 1.0 / t2,
                     "r2p": r2p, "df": df, "b1": b1, "x": xs[ix], "y": ys[iy], "z": zs[iz]}
        self._resolved: set[bytes] = set()  # in-plane directions the classes are already split along
        # Isochromats: evenly through the slab (2D; midpoint rule) or the plane centre (3D).
        s = self.isochromats
        self._iso_z = ((np.arange(s) + 0.5) / s - 0.5) * dz  # 3D with one isochromat: the plane centre
        # Slabs (a 2D phantom, or a stack of them): z resolved by isochromats, as 2D in the read-out.
        self._slabs = phantom.ndim == 2 or s > 1
        self._label0 = label.reshape(-1)
        self._build_classes(self._label0)

    def _build_classes(self, label: npt.NDArray[np.intp], df_class: FloatArray | None = None) -> None:
        """Class parameters and maps from each voxel's class ``label`` (0..n-1), and the read-out for them.
        ``df_class``: each class's off-resonance (Hz; default: the mean of its voxels')."""
        v = self._vox
        _, first = np.unique(label, return_index=True)  # a voxel of each class
        n = first.size
        counts = np.maximum(np.bincount(label, minlength=n), 1)
        weight = np.bincount(label, weights=v["pd"], minlength=n)
        self.n_classes = n
        self._label = label
        self._r1, self._r2, self._r2p = (np.asarray(v[key][first], np.float64) for key in ("r1", "r2", "r2p"))
        self._df = np.bincount(label, weights=v["df"], minlength=n) / counts if df_class is None else df_class
        self._b1 = np.bincount(label, weights=v["b1"], minlength=n) / counts  # the class's transmit efficiency
        self._z_class = np.asarray(v["z"][first], np.float64)
        # In-plane centre of each class (proton-density weighted): where its RF rotation is evaluated
        # when a pulse plays gradients in the plane (the classes are then split along them, _resolve).
        self._xy_class = np.column_stack([np.bincount(label, weights=v["pd"] * v[a], minlength=n)
                                          / np.maximum(weight, 1e-300) for a in ("x", "y")])
        ny, nx = self._y.size, self._x.size
        pd_map = np.zeros((n, ny, nx))
        pd_map[label, v["iy"], v["ix"]] = v["pd"]
        dfr = v["df"] - self._df[label]
        dfr_map = np.zeros((n, ny, nx))
        dfr_map[label, v["iy"], v["ix"]] = dfr
        self._dfr_max = float(np.abs(dfr).max()) if dfr.size and np.ptp(v["df"]) > 0 else 0.0
        sens = None
        if self._sens_grid is not None:  # each class's plane of each channel's sensitivity
            plane = v["iz"][first] if self.phantom.ndim == 3 else np.zeros(n, np.intp)
            sens = self._sens_grid[:, plane]  # (N, C, ny, nx)
        self._readout = Readout(pd_map, dfr_map, self._dfr_max, self._r2p, self._x, self._y, self._voxel,
                                self._iso_z, self._z_class, 2 if self._slabs else 3, sens=sens)
        if n > 200:
            log.info("phantom has %d tissue classes: the simulation slows down in proportion", n)

    # ------------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------------

    @property
    def n_spins(self) -> int:
        """Equivalent isochromats: voxels with proton density x isochromats per voxel."""
        return self.n_voxels * self.isochromats

    def sensitivities(self) -> ComplexArray:
        """Each channel's receive sensitivity on the phantom's grid as the output carries it, ``(channels, nz,
        ny, nx)`` (dimensionless; ones for the body coil)."""
        if self._sens_grid is None:
            return np.ones((1, *self.phantom.shape3d), np.complex128)
        return np.conj(self._sens_grid)

    @property
    def n_states(self) -> int:
        """Phase-graph states now held (transverse + longitudinal)."""
        return self._graph.n_states

    def reset(self) -> None:
        """Back to equilibrium (``Mz`` = 1 everywhere) before the next scan; restarts the noise and empties
        the read-out's caches (``signal.Readout.reset``: a scan's data must not depend on the scans before it)."""
        if self._resolved:  # classes split by the last scan's pulses: back to the tissue classes
            self._resolved.clear()
            self._build_classes(self._label0)
            self._graph = self._new_graph()
        self._readout.reset()
        self._graph.reset()
        self._t: float | None = None  # time the states refer to
        self._m_pending = np.zeros(3)  # gradient moment from _t to the end of the last segment
        self._m_base = np.zeros(3)
        self._rng = np.random.default_rng(self.seed)
        self.stats = Stats()

    def shift_off_resonance(self, delta_hz: float) -> None:
        """Add ``delta_hz`` to every voxel's off-resonance (a B0 shift, or the synthesiser moving the other way):
        exact and cheap -- a uniform shift keeps the classes (each class's mean moves with its voxels, the
        maps relative to it stay). Takes effect from the next :meth:`play`. Raises ConfigError if not finite."""
        if not math.isfinite(delta_hz):
            raise ConfigError(f"off-resonance shift must be finite, got {delta_hz!r}")
        self.b0_offset_hz += float(delta_hz)
        self._vox["df"] = np.asarray(self._vox["df"] + float(delta_hz), np.float64)
        self._df = np.asarray(self._df + float(delta_hz), np.float64)

    def play(self, gradient: GradientProgram, rf: RFProgram, adc: ADCProgram) -> list[npt.NDArray[np.complex64]]:
        """Play one segment; return each ADC window's samples, complex64 ``(channels, num_samples)``, in
        order. A static gradient (``static_gradient_hz_per_m``: a linear B0 inhomogeneity, scanner axes) plays
        on top of the program's, all through the segment, and the program's second-order shim field adds to the
        off-resonance (from the scan's first segment: a shim changes between scans)."""
        if gradient.shim_hz_per_m2 != self.shim_hz_per_m2:
            self._set_shim_field(gradient.shim_hz_per_m2)
        gradient = with_static_gradient(gradient, self.static_gradient_hz_per_m)
        t0 = float(gradient.t0_s)
        if self._t is None:
            self._t = t0
        scanner_mom = Moments(gradient)
        mom: Moments | FrameMoments = scanner_mom
        if self._axes_t is not None:
            mom = FrameMoments(scanner_mom, self._axes_t)
        # The moment from the states' time to any t of this segment is _m_base + mom(t).
        self._m_base = self._m_pending - mom(t0)

        pulses = [iv for iv in (pulse_intervals(rf, p) for p in range(rf.n_pulses)) if iv is not None]
        pulses.sort(key=lambda iv: iv[3])
        centres = np.array([iv[3] for iv in pulses])
        counts = adc.num_samples.astype(np.int64).tolist()
        times = [adc.start_s[w] + (np.arange(n) + 0.5) * adc.dwell_s[w] for w, n in enumerate(counts)]
        out = [np.zeros((self.channels, n), np.complex128) for n in counts]
        # Samples before pulse p's centre (and after the previous one's) are taken before it plays.
        todo: list[list[tuple[int, slice]]] = [[] for _ in range(len(pulses) + 1)]
        for w, t in enumerate(times):
            cuts = np.searchsorted(t, centres, side="left")
            bounds = np.concatenate(([0], cuts, [t.size]))
            for p in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
                todo[p].append((w, slice(int(bounds[p]), int(bounds[p + 1]))))
        for p in range(len(pulses) + 1):
            for w, sel in todo[p]:
                out[w][:, sel] = self._acquire(times[w][sel], mom)
            if p < len(pulses):
                self._pulse(pulses[p], mom)
        self._m_pending = self._m_base + mom(float(gradient.t1_s))
        self._m_base = np.zeros(3)

        result = []
        for w, samples in enumerate(out):
            demod = np.exp(-1j * (adc.phase_rad[w] + 2.0 * np.pi * adc.freq_hz[w] * (times[w] - adc.start_s[w])))
            data = np.conj(samples * demod[None, :]) * self._volume_mm3  # the mirror convention, undone
            if self.noise_std > 0 and data.size:
                data = data + self._noise(adc.dwell_s[w], data.shape[1])
            result.append(data.astype(np.complex64))
        self.stats.adc_samples += int(sum(counts))
        self.stats.windows += adc.n_windows
        return result

    def _set_shim_field(self, terms: Mapping[str, float]) -> None:
        """Rebuild the classes with the second-order shim ``terms`` (Hz/m²) in the off-resonance, at equilibrium
        (every voxel's off-resonance changes, so the classes do); during a scan the change waits for the next
        :meth:`reset` (a shim is set between scans; the field that played stays until then), with a warning."""
        if self._t is not None:
            log.warning("a second-order shim field changed during a scan: it takes effect at the next one")
            return
        self.shim_hz_per_m2 = dict(terms)
        self._resolved.clear()
        self._setup_classes(self.phantom)
        self._graph = self._new_graph()
        self.reset()

    def _noise(self, dwell_s: float, samples: int) -> ComplexArray:
        """Receiver noise for one window, ``(channels, samples)``: white (body coil), or correlated between
        channels as the coil says."""
        if self._noise_l is None:
            return receiver_noise(self._rng, self.noise_std, dwell_s, samples).reshape(1, -1)
        sigma = np.full(samples, self.noise_std * math.sqrt(NOISE_REFERENCE_DWELL_S / dwell_s))
        return correlated_noise(self._rng, self._noise_l, sigma)

    # ------------------------------------------------------------------------------------------------------
    # Free evolution
    # ------------------------------------------------------------------------------------------------------

    def _evolve(self, t: float, mom: Moments | FrameMoments) -> None:
        """Bring the states from their time to ``t`` (within the current segment)."""
        assert self._t is not None
        dt = t - self._t
        dm = self._m_base + mom(t)
        transverse = np.exp((2j * np.pi * self._df - self._r2) * dt)
        self._graph.evolve(dm, dt, transverse, np.exp(-self._r1 * dt))
        self._t = t
        self._m_base = -mom(t)

    # ------------------------------------------------------------------------------------------------------
    # RF
    # ------------------------------------------------------------------------------------------------------

    def _pulse(self, intervals: tuple[FloatArray, ComplexArray, int, float, FloatArray],
               mom: Moments | FrameMoments) -> None:
        edges, iv_b1, n_samples, centre, dt = intervals
        m_edges = mom(edges)  # (3, intervals + 1)
        in_plane = self._in_plane_selection(m_edges[:2])
        dm = np.diff(m_edges, axis=1).T  # (intervals, 3)
        if not in_plane:
            dm[:, :2] = 0.0  # no in-plane gradient worth resolving: x/y act as free precession only
        self._evolve(centre, mom)

        # Rotation classes: every (tissue class, isochromat) pair, deduplicated by position and off-resonance.
        shape = (self.n_classes, self.isochromats)
        xy = self._xy_class if in_plane else np.zeros((self.n_classes, 2))
        columns = (np.broadcast_to(xy[:, None, 0], shape), np.broadcast_to(xy[:, None, 1], shape),
                   self._z_class[:, None] + self._iso_z[None, :], np.broadcast_to(self._df[:, None], shape),
                   np.broadcast_to(self._b1[:, None], shape))
        pairs, inverse = np.unique(np.column_stack([np.reshape(c, -1) for c in columns]), axis=0,
                                   return_inverse=True)
        inverse = inverse.reshape(-1)
        positions, df, b1 = pairs[:, :3], pairs[:, 3], pairs[:, 4]
        rot = self._cache.rotation(pairs.tobytes(), 2.0 * np.pi * iv_b1 * dt, dm, dt, positions, df,
                                   None if self.b1_map is None else b1)
        # Factor out the free precession before and after the centre (played by _evolve instead).
        ts, te = float(edges[0]), float(edges[-1])
        mc = mom(centre) if in_plane else np.array([0.0, 0.0, float(mom.axis(2, centre))])
        m0, m1 = m_edges[:, 0].copy(), m_edges[:, -1].copy()
        if not in_plane:
            m0[:2] = m1[:2] = 0.0
        phi_pre = 2.0 * np.pi * (positions @ (mc - m0) + df * (centre - ts))
        phi_post = 2.0 * np.pi * (positions @ (m1 - mc) + df * (te - centre))
        refocused = Rotation(rot.alpha * np.exp(0.5j * (phi_pre + phi_post)),
                             rot.beta * np.exp(0.5j * (phi_pre - phi_post)))
        a, b, c, d, e = refocused.coefficients()
        self._graph.rotate(a[inverse].reshape(shape), b[inverse].reshape(shape), c[inverse].reshape(shape),
                           d[inverse].reshape(shape), e[inverse].reshape(shape))
        self.stats.rf_pulses += 1
        self.stats.rf_samples += n_samples
        self.stats.max_states = max(self.stats.max_states, self._graph.n_states)

    def _in_plane_selection(self, m_xy: FloatArray) -> bool:
        """Whether the in-plane gradient moments ``m_xy`` (2, edges) during a pulse make its rotation vary
        across the object (more than :data:`IN_PLANE_CYCLES` over the phantom's extent); if they do, split
        the classes along them first (:meth:`_split_along`), so each class sits at one place along them."""
        extent = np.array([self._x.size * self._voxel[0], self._y.size * self._voxel[1]])
        path = m_xy - m_xy.mean(axis=1, keepdims=True)
        if not np.any(np.abs(path).max(axis=1) * extent > IN_PLANE_CYCLES):
            return False
        # The path's main direction; a path that also spreads across it (a curved in-plane trajectory)
        # needs the classes split along both axes.
        u, sv, _ = np.linalg.svd(path, full_matrices=False)
        across = sv[1] / math.sqrt(path.shape[1]) * 2.0 * float(extent.max()) if sv.size > 1 else 0.0
        directions = [np.array([1.0, 0.0]), np.array([0.0, 1.0])] if across > IN_PLANE_CYCLES else [u[:, 0]]
        for direction in directions:
            self._split_along(direction)
        return True

    def _split_along(self, direction: FloatArray) -> None:
        """Split every class into the parts of it at one position (a voxel wide) along the in-plane
        ``direction``; the magnetization of each part is its class's (splitting a class is exact)."""
        direction = direction * (1.0 if direction[np.argmax(np.abs(direction))] > 0 else -1.0)
        key = np.round(direction, 3).tobytes()
        if key in self._resolved:
            return
        v = self._vox
        width = min(self._voxel[0], self._voxel[1])
        along = np.round((v["x"] * direction[0] + v["y"] * direction[1]) / width).astype(np.int64)
        _, first, label = np.unique(np.column_stack((self._label, along)), axis=0, return_index=True,
                                    return_inverse=True)
        self._resolved.add(key)
        if first.size == self.n_classes:
            return
        if first.size > MAX_SPLIT_CLASSES:
            log.warning("an RF pulse with in-plane gradients would need %d classes (more than %d): its rotation "
                        "is evaluated at each tissue class's centre instead", first.size, MAX_SPLIT_CLASSES)
            return
        parent = self._label[first]
        self._graph.split(parent)
        # The parts keep their class's off-resonance: the amplitudes carry the phase it gathered, and
        # each voxel's own offset from it stays in the read-out's relative map.
        self._build_classes(label.reshape(-1), df_class=self._df[parent])

    # ------------------------------------------------------------------------------------------------------
    # ADC
    # ------------------------------------------------------------------------------------------------------

    def _acquire(self, t: FloatArray, mom: Moments | FrameMoments) -> ComplexArray:
        """The (not yet demodulated) signal at times ``t`` (sorted, none before the states' time)."""
        assert self._t is not None
        g = self._graph
        if g.f.shape[0] == 0 or self.n_classes == 0:
            return np.zeros((self.channels, t.size), np.complex128)
        dt = np.maximum(t - self._t, 0.0)
        dm = self._m_base[:, None] + mom(t)  # (3, T): moment since the states' time
        decay = np.exp((2j * np.pi * self._df[:, None] - self._r2[:, None]) * dt[None, :])  # (C, T)
        return self._readout.signal(g.f_k, g.f_tau, g.f, dm, dt, decay)
