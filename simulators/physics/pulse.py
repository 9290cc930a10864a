"""RF pulses as rotations: each RF raster sample is a hard pulse, composed over the pulse per spin class.

Convention (the Pulseq one): a spin whose frequency offset is ``f`` (Hz, ``f = g·r + Δf``) has transverse
magnetization ``Mxy = Mx + i My`` turning as ``exp(+2πi f t)``, and an RF sample ``b1`` (complex, Hz)
turns the magnetization right-handedly about ``(Re b1, Im b1, f)``. So an RF carrier offset ``f_rf``
(``b1 ∝ exp(+2πi f_rf t)``, as Pulseq writes it) is resonant with the spins at ``f = f_rf``, and a pulse
of phase ``φ`` tips ``+z`` to ``-i exp(iφ) sin(flip)``.

Rotations are SU(2) (Cayley–Klein) pairs ``(α, β)``: for a rotation by ``φ`` about the unit axis ``n``,
``α = cos(φ/2) - i n_z sin(φ/2)`` and ``β = -i (n_x + i n_y) sin(φ/2)`` (Pauly et al., IEEE TMI 1991).
A pulse is the product of its samples' rotations, computed for all classes at once by pairwise
(tree) reduction over the samples, so numpy's loop runs over log2(samples) levels, not samples.
A pulse whose samples are all equal (a hard pulse under a constant gradient) is one rotation by their sum.

Shifting every B1 sample's phase by ``φ`` leaves ``α`` and multiplies ``β`` by ``exp(iφ)``: a pulse
repeated with new phases (RF spoiling) is composed once and cached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.hw.program import RFProgram

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

#: Largest number of (sample, class) pairs composed at once (bounds memory to ~100 MB).
_CHUNK = 1 << 21


@dataclass(frozen=True)
class Rotation:
    """Cayley–Klein parameters of one rotation per class (arrays of the same shape)."""

    alpha: ComplexArray
    beta: ComplexArray

    def coefficients(self) -> tuple[ComplexArray, ComplexArray, ComplexArray, ComplexArray, FloatArray]:
        """``(a, b, c, d, e)`` with ``Mxy' = a Mxy + b conj(Mxy) + c Mz`` and ``Mz' = Re(d Mxy) + e Mz``."""
        ac: ComplexArray = np.conj(self.alpha)
        a = ac * ac
        b = -(self.beta * self.beta)
        c = 2.0 * ac * self.beta
        d = -2.0 * ac * np.conj(self.beta)
        e = np.asarray(np.abs(self.alpha) ** 2 - np.abs(self.beta) ** 2, dtype=np.float64)
        return a, b, c, np.asarray(d, dtype=np.complex128), e

    def matrix(self) -> FloatArray:
        """The 3x3 rotation matrices acting on ``(Mx, My, Mz)``, shape ``(*shape, 3, 3)`` (for tests)."""
        a, b, c, d, e = self.coefficients()
        out = np.zeros((*np.shape(self.alpha), 3, 3))
        # Columns: the images of x, y and z.
        for col, (mxy, mz) in enumerate(((1.0, 0.0), (1j, 0.0), (0.0, 1.0))):
            new_xy = a * mxy + b * np.conj(mxy) + c * mz
            new_z = (d * mxy).real + e * mz
            out[..., 0, col] = new_xy.real
            out[..., 1, col] = new_xy.imag
            out[..., 2, col] = new_z
        return out


def sample_rotations(nutation_rad: ComplexArray, precession_rad: FloatArray) -> tuple[ComplexArray, ComplexArray]:
    """Per-sample hard-pulse rotations: ``nutation_rad`` is ``2π b1 dt`` (complex, broadcast against
    ``precession_rad`` = ``2π f dt``, real). Returns ``(α, β)`` of the broadcast shape."""
    b = np.asarray(nutation_rad)
    theta = np.asarray(precession_rad, dtype=np.float64)
    phi = np.sqrt(np.abs(b) ** 2 + theta**2)
    half = 0.5 * phi
    s = 0.5 * np.sinc(half / np.pi)  # sin(φ/2) / φ, 1/2 at φ = 0
    alpha = np.cos(half) - 1j * theta * s
    beta = -1j * b * s
    return alpha, np.broadcast_to(beta, alpha.shape)


def compose(alpha: ComplexArray, beta: ComplexArray) -> tuple[ComplexArray, ComplexArray]:
    """The product of rotations ``0, 1, ..., n-1`` (applied in that order) along axis 0, by pairwise
    reduction. ``alpha``/``beta`` have shape ``(n, *classes)``; the result has shape ``classes``."""
    a = np.array(alpha, dtype=np.complex128)
    b = np.array(beta, dtype=np.complex128)
    while a.shape[0] > 1:
        if a.shape[0] % 2:
            a = np.concatenate((a, np.ones((1, *a.shape[1:]), np.complex128)))
            b = np.concatenate((b, np.zeros((1, *b.shape[1:]), np.complex128)))
        a1, a2 = a[0::2], a[1::2]  # a1 earlier, a2 later: product = later @ earlier
        b1, b2 = b[0::2], b[1::2]
        a, b = a2 * a1 - np.conj(b2) * b1, b2 * a1 + np.conj(a2) * b1
    return a[0], b[0]


def pulse_rotation(nutation_rad: ComplexArray, dm_per_m: FloatArray, dt_s: FloatArray, positions_m: FloatArray,
                   df_hz: FloatArray, b1_scale: FloatArray | None = None) -> Rotation:
    """The rotation of a whole pulse for ``K`` spin classes.

    ``nutation_rad``: ``2π b1 dt`` per interval (``n``, complex, carrier offset included); ``dm_per_m``:
    gradient moment of each interval (``n``, 3); ``dt_s``: interval durations (``n``); ``positions_m``:
    class positions (``K``, 3); ``df_hz``: class off-resonance (``K``); ``b1_scale``: each class's transmit
    efficiency (``K``, a factor on the B1; None: 1). Intervals are composed in order.
    """
    if _uniform(nutation_rad, dm_per_m, dt_s):
        # A hard pulse under a constant gradient: every interval turns each class by the same angle about the
        # same axis, and n such turns are one turn by n times the angle -- one interval, not n to compose.
        nutation_rad, dm_per_m, dt_s = (np.sum(v, axis=0, keepdims=True) for v in (nutation_rad, dm_per_m, dt_s))
    g = _constant_gradient(dm_per_m, dt_s, positions_m)
    if g is not None:
        rot = _on_frequency_grid(nutation_rad, dt_s, positions_m @ g + df_hz, b1_scale)
        if rot is not None:
            return rot
    return _exact(nutation_rad, dm_per_m, dt_s, positions_m, df_hz, b1_scale)


def _exact(nutation_rad: ComplexArray, dm_per_m: FloatArray, dt_s: FloatArray, positions_m: FloatArray,
           df_hz: FloatArray, b1_scale: FloatArray | None) -> Rotation:
    """:func:`pulse_rotation` composed class by class (in chunks bounding memory)."""
    k = positions_m.shape[0]
    n = nutation_rad.shape[0]
    alpha = np.empty(k, np.complex128)
    beta = np.empty(k, np.complex128)
    step = max(1, _CHUNK // max(n, 1))
    for lo in range(0, k, step):
        hi = min(k, lo + step)
        theta = 2.0 * np.pi * (dm_per_m @ positions_m[lo:hi].T + np.outer(dt_s, df_hz[lo:hi]))
        nutation = nutation_rad[:, None] if b1_scale is None else np.outer(nutation_rad, b1_scale[lo:hi])
        a, b = sample_rotations(nutation, theta)
        alpha[lo:hi], beta[lo:hi] = compose(a, b)
    return Rotation(alpha, beta)


#: Points of the local Lagrange interpolation in frequency (degree 9; the class lies in the middle interval).
_STENCIL = 10
#: Bound on the interpolation error of alpha and beta (at float rounding of a composed pulse; the tests ask for 1e-9).
_INTERP_TOL = 1e-12
#: Bound on what taking a constant gradient's rounding-noisy moments as constant may move a rotation (with
#: ``_INTERP_TOL``, the grid path stays within 1e-9 of the exact one).
_GRADIENT_TOL = 5e-10
#: The grid must have at most this fraction of the classes' count of points, or the classes are composed exactly.
_GRID_FRACTION = 0.25


def _grid_spacing_hz(duration_s: float) -> float:
    """The frequency spacing (Hz) whose ``_STENCIL``-point interpolation errs by at most ``_INTERP_TOL``.

    Why: the pulse is the propagator of ``H(t) = H_rf(t) + pi f sigma_z``; by the Dyson series in ``f`` its
    ``k``-th derivative in ``f`` has operator norm at most ``(pi T)^k`` (``T`` the pulse duration), so alpha and
    beta too. Lagrange interpolation on ``p`` equispaced nodes (spacing ``h``), used on the middle interval,
    errs by at most ``max|prod_j (u - j)| / p! * (pi T h)^p``."""
    u = _STENCIL / 2 - 0.5  # the middle of the middle interval, where |prod (u - j)| is largest
    peak = float(np.prod(np.abs(u - np.arange(_STENCIL))))
    factorial = float(np.prod(np.arange(1, _STENCIL + 1)))
    return float((_INTERP_TOL * factorial / peak) ** (1.0 / _STENCIL)) / (np.pi * duration_s)


def _constant_gradient(dm_per_m: FloatArray, dt_s: FloatArray, positions_m: FloatArray) -> FloatArray | None:
    """The gradient ``g`` (Hz/m, 3) if every interval's moment is ``g dt`` so nearly that taking it so moves no
    class's rotation by more than ``_GRADIENT_TOL``, else None.

    Why that test: the moments come from differences of a running moment, so a constant gradient's rows differ by
    rounding (1e-13 of 3e-4 /m late in a prescan); replacing row ``i`` by ``g dt_i`` turns a class at ``r`` by
    ``2 pi (dm_i - g dt_i) . r`` more, which moves its sample's rotation by at most half that (operator norm),
    and the pulse's by at most the sum over the samples."""
    total = float(np.sum(dt_s))
    if dm_per_m.shape[0] < 2 or not total > 0.0 or np.any(dt_s < 0.0) or positions_m.shape[0] == 0:
        return None
    g = np.sum(dm_per_m, axis=0) / total
    r_max = float(np.sqrt(np.max(np.sum(positions_m**2, axis=1))))
    deviation = float(np.sum(np.sqrt(np.sum((dm_per_m - np.outer(dt_s, g)) ** 2, axis=1))))
    if not np.pi * r_max * deviation <= _GRADIENT_TOL:
        return None
    return np.asarray(g, dtype=np.float64)


def _on_frequency_grid(nutation_rad: ComplexArray, dt_s: FloatArray, f_hz: FloatArray,
                       b1_scale: FloatArray | None) -> Rotation | None:
    """:func:`pulse_rotation` under a constant gradient, where a class's rotation depends only on its total
    off-resonance ``f_hz`` (Hz) and its B1 factor: composed exactly on a grid of ``f`` per distinct B1 factor and
    interpolated to the classes (error <= ``_INTERP_TOL``, see :func:`_grid_spacing_hz`). None (compose the
    classes instead) when that grid would not be much smaller than the number of classes."""
    k = f_hz.shape[0]
    if not np.all(np.isfinite(f_hz)):
        return None
    scales, which = np.unique(np.ones(k) if b1_scale is None else b1_scale, return_inverse=True)
    h = _grid_spacing_hz(float(np.sum(dt_s)))
    lo, hi = float(f_hz.min()), float(f_hz.max())
    half = _STENCIL // 2 - 1  # nodes before the class's interval
    count = int(np.floor((hi - lo) / h)) + _STENCIL + 1
    if scales.size * count > _GRID_FRACTION * k:
        return None
    nodes = lo + (np.arange(count) - half) * h
    grid = _exact(nutation_rad, np.zeros((dt_s.size, 3)), dt_s, np.zeros((scales.size * count, 3)),
                  np.tile(nodes, scales.size), np.repeat(scales, count))
    u = (f_hz - nodes[0]) / h
    first = np.clip(np.floor(u).astype(np.int64) - half, 0, count - _STENCIL)
    t = u - first  # position within the stencil, in node spacings (between half and half + 1)
    base = which.reshape(-1) * count + first
    alpha = np.zeros(k, np.complex128)
    beta = np.zeros(k, np.complex128)
    for j in range(_STENCIL):
        w = np.ones(k)
        for m in range(_STENCIL):
            if m != j:
                w *= (t - m) / (j - m)
        alpha += w * grid.alpha[base + j]
        beta += w * grid.beta[base + j]
    return Rotation(alpha, beta)


def _uniform(*columns: FloatArray | ComplexArray) -> bool:
    """Whether every interval's values (axis 0 of each column) are the same, to float rounding (1e-12 of the
    largest: the moments of a constant gradient differ from interval to interval in the last digits)."""
    for values in columns:
        if values.shape[0] < 2:
            return False
        scale = float(np.abs(values).max())
        if np.abs(values - values[:1]).max(initial=0.0) > 1e-12 * scale:
            return False
    return True


class PulseCache:
    """Pulse rotations by content, phase-normalised: a pulse that differs from a cached one only by a
    constant B1 phase (RF spoiling, phase cycling) is looked up, not recomposed."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._items: OrderedDict[bytes, Rotation] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def rotation(self, classes_key: bytes, nutation_rad: ComplexArray, dm_per_m: FloatArray, dt_s: FloatArray,
                 positions_m: FloatArray, df_hz: FloatArray, b1_scale: FloatArray | None = None) -> Rotation:
        """:func:`pulse_rotation`, cached; ``classes_key`` identifies ``positions_m``/``df_hz``/``b1_scale``."""
        peak = int(np.argmax(np.abs(nutation_rad)))
        phase = float(np.angle(nutation_rad[peak]))
        unit = nutation_rad * np.exp(-1j * phase)
        h = hashlib.blake2b(classes_key, digest_size=20)
        # Rounded so that the same shape at another phase hashes the same (rounding noise ~1e-16).
        # (+ 0.0 turns -0.0 into 0.0, whose bytes differ.)
        for arr in (np.round(unit, 12), np.round(dm_per_m, 9), np.round(dt_s, 13)):
            h.update(np.ascontiguousarray(arr + 0.0).tobytes())
        key = h.digest()
        rot = self._items.get(key)
        if rot is None:
            self.misses += 1
            rot = pulse_rotation(unit, dm_per_m, dt_s, positions_m, df_hz, b1_scale)
            self._items[key] = rot
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self.hits += 1
            self._items.move_to_end(key)
        return Rotation(rot.alpha, rot.beta * np.exp(1j * phase))


#: An RF pulse's sample times are taken relative to its start on this grid (s): absolute times late in a scan
#: carry float noise (2e-16 s at 1.5 s, 2e-10 of a 1 µs raster) that made a repeated pulse's intervals and
#: carrier phase differ in the last digits, so the pulse cache composed it again (0.2x real time for
#: protocols/gre_oblique.toml).
RF_TIME_GRID_S = 1e-12


def pulse_intervals(rf: RFProgram, p: int) -> tuple[FloatArray, ComplexArray, int, float, FloatArray] | None:
    """``(edges, b1, n_samples, centre, dt)`` of pulse ``p``: each sample lasts one raster around its time
    (clipped halfway to a closer neighbour); gaps between samples are intervals without B1; ``b1``
    includes the carrier offset; ``dt`` the intervals' durations (s, from the times relative to the
    pulse's start on :data:`RF_TIME_GRID_S`). None for a pulse without B1 (nothing but free precession)."""
    lo, hi = int(rf.offsets[p]), int(rf.offsets[p + 1])
    b1 = rf.b1_hz[lo:hi]
    if hi == lo or not np.any(b1):
        return None
    t0 = float(rf.start_s[p])
    t = np.round((rf.t_s[lo:hi] - t0) / RF_TIME_GRID_S) * RF_TIME_GRID_S  # from the start: the same each repeat
    half = 0.5 * rf.raster_s
    mid = 0.5 * (t[1:] + t[:-1])
    start = np.maximum(t - half, np.concatenate(([-np.inf], mid)))
    end = np.minimum(t + half, np.concatenate((mid, [np.inf])))
    b1 = b1 * np.exp(2j * np.pi * rf.freq_hz[p] * t)
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
    centre = t0 + 0.5 * (float(peak[0]) + float(peak[-1]))
    return t0 + edges, iv_b1, hi - lo, centre, np.diff(edges)
