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

* **Off-resonance during RF is per voxel** to within :data:`RF_B0_BIN_HZ`: tissue classes are split by
  their off-resonance in bins of that width, so two voxels of one tissue at ±3 kHz are two classes, each
  rotated at its own frequency; what is left inside a bin (< half a bin) acts in free precession only.
* **T2′ (intravoxel dephasing)** from the phantom's optional ``t2prime_s`` map: a Lorentzian spread of
  frequencies inside the voxel, so a state of dephasing time ``τ`` carries ``exp(-|τ|/T2′)`` (PDG; a spin
  echo, where ``τ`` returns to 0, refocuses it) and an FID decays with 1/T2* = 1/T2 + 1/T2′.

Limits: RF pulses select along z only (gradients on x/y during a pulse act as free precession split
at the pulse centre); with off-resonance varying inside a class, samples use a Taylor series in time
(error < 1e-7).

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
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.errors import ConfigError
from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram

from .graph import DEFAULT_TOLERANCE, PhaseGraph
from .moments import Moments
from .noise import receiver_noise
from .phantom import Phantom
from .pulse import PulseCache, Rotation
from .signal import Readout

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

#: Isochromats through the slab of a 2D phantom (slice-profile resolution: 0.31 mm over 10 mm).
DEFAULT_ISOCHROMATS_2D = 32
#: Width of the off-resonance bins that split tissue classes (Hz): inside a bin the RF rotation uses the
#: bin's mean, a phase error below 2π x 2.5 Hz x 2 ms = 0.03 rad over half of a 4 ms pulse.
RF_B0_BIN_HZ = 5.0



@dataclass
class Stats:
    """Work done since the last :meth:`SpinSystem.reset` (for benchmarks)."""

    rf_pulses: int = 0
    rf_samples: int = 0
    adc_samples: int = 0
    windows: int = 0
    max_states: int = 0


class SpinSystem:
    """A phantom's magnetization, played through segment after segment of a scan.

    ``isochromats``: samples through the slab of a 2D phantom at which RF rotations are evaluated
    (default 32; a 3D phantom is resolved in z by its voxels and takes only 1); ``noise_std``: standard
    deviation of the complex Gaussian noise added to a sample of 10 µs dwell, scaled by
    ``sqrt(10 µs / dwell)`` for other dwells (real and imaginary parts each ``σ / sqrt(2)``; units of the
    signal: see the module docstring), seeded by ``seed``; ``b0_offset_hz``: an off-resonance added to the
    phantom's map everywhere; ``tolerance``: phase-graph states whose effect on a voxel's signal is at most
    this are dropped (``graph.signal_weight``; default ``graph.DEFAULT_TOLERANCE``).
    Raises :class:`ConfigError` for invalid options.

    :meth:`play` must get the segments in time order; magnetization persists between calls until
    :meth:`reset` (which also restarts the noise generator).
    """

    def __init__(self, phantom: Phantom, *, isochromats: int | None = None, noise_std: float = 0.0,
                 b0_offset_hz: float = 0.0, seed: int = 0, tolerance: float = DEFAULT_TOLERANCE) -> None:
        if isochromats is None:
            isochromats = DEFAULT_ISOCHROMATS_2D if phantom.ndim == 2 else 1
        if int(isochromats) != isochromats or isochromats < 1:
            raise ConfigError(f"isochromats must be a positive integer, got {isochromats!r}")
        if phantom.ndim == 3 and isochromats != 1:
            raise ConfigError("isochromats: a 3D phantom is resolved in z by its voxels; use 1")
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
        self.seed = seed
        self._setup_classes(phantom)
        self._readout = Readout(self._pd_map, self._dfr_map, self._dfr_max, self._r2p, self._x, self._y,
                                self._voxel, self._iso_z, self._z_class, phantom.ndim)
        self._cache = PulseCache()
        self._graph = PhaseGraph(self.n_classes, self.isochromats, tolerance=tolerance,
                                 track_time=self._dfr_max > 0 or bool(self._r2p.any()))
        self.stats = Stats()
        self.reset()

    def _setup_classes(self, phantom: Phantom) -> None:
        """Tissue classes: voxels with equal T1, T2 and T2′, in one off-resonance bin (and, in 3D, the same
        plane)."""
        nz, ny, nx = phantom.shape3d
        dx, dy, dz = phantom.voxel_size_m
        xs, ys, zs = phantom.axis_positions_m()
        pd = phantom.pd.reshape(nz, ny, nx)
        active = np.flatnonzero(pd.reshape(-1) > 0)
        iz, iy, ix = np.unravel_index(active, (nz, ny, nx))
        t1 = phantom.t1_s.reshape(-1)[active]
        t2 = phantom.t2_s.reshape(-1)[active]
        t2p = phantom.t2prime_s.reshape(-1)[active] if phantom.t2prime_s is not None else np.full(t1.size, np.inf)
        r2p = 1.0 / t2p  # 0 where T2′ is infinite
        df = phantom.b0_offset_hz.reshape(-1)[active] + self.b0_offset_hz
        table = np.column_stack((t1, t2, r2p, iz if phantom.ndim == 3 else np.zeros_like(iz),
                                 np.round(df / RF_B0_BIN_HZ)))
        _, first, label = np.unique(np.round(table, 12), axis=0, return_index=True, return_inverse=True)
        label = label.reshape(-1)
        n = first.size
        counts = np.bincount(label, minlength=n)
        df_class = np.bincount(label, weights=df, minlength=n) / np.maximum(counts, 1)
        self.n_classes = n
        self.n_voxels = int(active.size)
        self._r1 = 1.0 / t1[first] if n else np.zeros(0)
        self._r2 = 1.0 / t2[first] if n else np.zeros(0)
        self._r2p = r2p[first] if n else np.zeros(0)
        self._df = df_class
        self._z_class = zs[iz[first]] if n else np.zeros(0)
        # Proton density and off-resonance (relative to the class) of each class on the in-plane grid.
        self._pd_map = np.zeros((n, ny, nx))
        self._pd_map[label, iy, ix] = pd.reshape(-1)[active]
        self._pd_map_c = self._pd_map.astype(np.complex128)  # complex once: products below stay BLAS
        dfr = df - df_class[label]
        self._dfr_map = np.zeros((n, ny, nx))
        self._dfr_map[label, iy, ix] = dfr
        self._dfr_max = float(np.abs(dfr).max()) if dfr.size and np.ptp(df) > 0 else 0.0
        self._x, self._y = xs, ys
        self._voxel = (dx, dy, dz)
        self._volume_mm3 = dx * dy * dz * 1e9  # the signal of a voxel of proton density 1
        # Isochromats: evenly through the slab (2D; midpoint rule) or the plane centre (3D).
        s = self.isochromats
        self._iso_z = ((np.arange(s) + 0.5) / s - 0.5) * dz if phantom.ndim == 2 else np.zeros(1)
        self._iso_step = dz / s
        if n > 200:
            log.info("phantom has %d tissue classes: the simulation slows down in proportion", n)

    # ------------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------------

    @property
    def n_spins(self) -> int:
        """Equivalent isochromats: voxels with proton density x isochromats per voxel."""
        return self.n_voxels * self.isochromats

    @property
    def n_states(self) -> int:
        """Phase-graph states now held (transverse + longitudinal)."""
        return self._graph.n_states

    def reset(self) -> None:
        """Back to equilibrium (``Mz`` = 1 everywhere) before the next scan; restarts the noise and empties
        the read-out's caches (``signal.Readout.reset``: a scan's data must not depend on the scans before it)."""
        self._readout.reset()
        self._graph.reset()
        self._t: float | None = None  # time the states refer to
        self._m_pending = np.zeros(3)  # gradient moment from _t to the end of the last segment
        self._m_base = np.zeros(3)
        self._rng = np.random.default_rng(self.seed)
        self.stats = Stats()

    def play(self, gradient: GradientProgram, rf: RFProgram, adc: ADCProgram) -> list[npt.NDArray[np.complex64]]:
        """Play one segment; return each ADC window's samples, complex64 ``(1, num_samples)``, in order."""
        t0 = float(gradient.t0_s)
        if self._t is None:
            self._t = t0
        mom = Moments(gradient)
        # The moment from the states' time to any t of this segment is _m_base + mom(t).
        self._m_base = self._m_pending - mom(t0)

        pulses = [iv for iv in (self._pulse_intervals(rf, p) for p in range(rf.n_pulses)) if iv is not None]
        pulses.sort(key=lambda iv: iv[3])
        centres = np.array([iv[3] for iv in pulses])
        counts = adc.num_samples.astype(np.int64).tolist()
        times = [adc.start_s[w] + (np.arange(n) + 0.5) * adc.dwell_s[w] for w, n in enumerate(counts)]
        out = [np.zeros(n, np.complex128) for n in counts]
        # Samples before pulse p's centre (and after the previous one's) are taken before it plays.
        todo: list[list[tuple[int, slice]]] = [[] for _ in range(len(pulses) + 1)]
        for w, t in enumerate(times):
            cuts = np.searchsorted(t, centres, side="left")
            bounds = np.concatenate(([0], cuts, [t.size]))
            for p in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
                todo[p].append((w, slice(int(bounds[p]), int(bounds[p + 1]))))
        for p in range(len(pulses) + 1):
            for w, sel in todo[p]:
                out[w][sel] = self._acquire(times[w][sel], mom)
            if p < len(pulses):
                self._pulse(pulses[p], mom)
        self._m_pending = self._m_base + mom(float(gradient.t1_s))
        self._m_base = np.zeros(3)

        result = []
        for w, samples in enumerate(out):
            demod = np.exp(-1j * (adc.phase_rad[w] + 2.0 * np.pi * adc.freq_hz[w] * (times[w] - adc.start_s[w])))
            data = np.conj(samples * demod) * self._volume_mm3  # the mirror convention, undone (module doc)
            if self.noise_std > 0 and data.size:
                data = data + receiver_noise(self._rng, self.noise_std, adc.dwell_s[w], data.size)
            result.append(data.astype(np.complex64).reshape(1, -1))
        self.stats.adc_samples += int(sum(counts))
        self.stats.windows += adc.n_windows
        return result

    # ------------------------------------------------------------------------------------------------------
    # Free evolution
    # ------------------------------------------------------------------------------------------------------

    def _evolve(self, t: float, mom: Moments) -> None:
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

    @staticmethod
    def _pulse_intervals(rf: RFProgram, p: int) -> tuple[FloatArray, ComplexArray, int, float] | None:
        """``(edges, b1, n_samples, centre)`` of pulse ``p``: each sample lasts one raster around its time
        (clipped halfway to a closer neighbour); gaps between samples are intervals without B1; ``b1``
        includes the carrier offset. None for a pulse without B1 (nothing but free precession)."""
        lo, hi = int(rf.offsets[p]), int(rf.offsets[p + 1])
        b1 = rf.b1_hz[lo:hi]
        if hi == lo or not np.any(b1):
            return None
        t = rf.t_s[lo:hi]
        half = 0.5 * rf.raster_s
        mid = 0.5 * (t[1:] + t[:-1])
        start = np.maximum(t - half, np.concatenate(([-np.inf], mid)))
        end = np.minimum(t + half, np.concatenate((mid, [np.inf])))
        b1 = b1 * np.exp(2j * np.pi * rf.freq_hz[p] * (t - rf.start_s[p]))
        gap = start[1:] > end[:-1] + 1e-12
        if gap.any():
            edges = np.sort(np.concatenate((start, end[-1:], end[:-1][gap])))
            iv_b1 = np.zeros(edges.size - 1, np.complex128)
            iv_b1[np.searchsorted(edges, start)] = b1
        else:
            edges = np.concatenate((start, end[-1:]))
            iv_b1 = b1
        # The centre: where |B1| peaks (the middle of a plateau), as Pulseq defines an RF pulse's centre.
        mag = np.abs(b1)
        peak = t[mag >= 0.999 * mag.max()]
        centre = 0.5 * (float(peak[0]) + float(peak[-1]))
        return edges, iv_b1, hi - lo, centre

    def _pulse(self, intervals: tuple[FloatArray, ComplexArray, int, float], mom: Moments) -> None:
        edges, iv_b1, n_samples, centre = intervals
        dt = np.diff(edges)
        mz_edges = mom.axis(2, edges)
        dm = np.zeros((dt.size, 3))
        dm[:, 2] = np.diff(mz_edges)  # only z selects; x/y during the pulse act as free precession
        self._evolve(centre, mom)

        # Rotation classes: every (tissue class, isochromat) pair, deduplicated by (z, off-resonance).
        z = (self._z_class[:, None] + self._iso_z[None, :]).reshape(-1)
        df = np.broadcast_to(self._df[:, None], (self.n_classes, self.isochromats)).reshape(-1)
        pairs, inverse = np.unique(np.column_stack((z, df)), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        positions = np.zeros((pairs.shape[0], 3))
        positions[:, 2] = pairs[:, 0]
        rot = self._cache.rotation(pairs.tobytes(), 2.0 * np.pi * iv_b1 * dt, dm, dt, positions, pairs[:, 1])
        # Factor out the free precession before and after the centre (played by _evolve instead).
        ts, te = float(edges[0]), float(edges[-1])
        mc = float(mom.axis(2, centre))
        phi_pre = 2.0 * np.pi * ((mc - mz_edges[0]) * pairs[:, 0] + pairs[:, 1] * (centre - ts))
        phi_post = 2.0 * np.pi * ((mz_edges[-1] - mc) * pairs[:, 0] + pairs[:, 1] * (te - centre))
        refocused = Rotation(rot.alpha * np.exp(0.5j * (phi_pre + phi_post)),
                             rot.beta * np.exp(0.5j * (phi_pre - phi_post)))
        shape = (self.n_classes, self.isochromats)
        a, b, c, d, e = refocused.coefficients()
        self._graph.rotate(a[inverse].reshape(shape), b[inverse].reshape(shape), c[inverse].reshape(shape),
                           d[inverse].reshape(shape), e[inverse].reshape(shape))
        self.stats.rf_pulses += 1
        self.stats.rf_samples += n_samples
        self.stats.max_states = max(self.stats.max_states, self._graph.n_states)

    # ------------------------------------------------------------------------------------------------------
    # ADC
    # ------------------------------------------------------------------------------------------------------

    def _acquire(self, t: FloatArray, mom: Moments) -> ComplexArray:
        """The (not yet demodulated) signal at times ``t`` (sorted, none before the states' time)."""
        assert self._t is not None
        g = self._graph
        if g.f.shape[0] == 0 or self.n_classes == 0:
            return np.zeros(t.size, np.complex128)
        dt = np.maximum(t - self._t, 0.0)
        dm = self._m_base[:, None] + mom(t)  # (3, T): moment since the states' time
        decay = np.exp((2j * np.pi * self._df[:, None] - self._r2[:, None]) * dt[None, :])  # (C, T)
        return self._readout.signal(g.f_k, g.f_tau, g.f, dm, dt, decay)
