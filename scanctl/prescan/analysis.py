"""What each calibration's data say: pure functions of the acquired samples (numpy only), each returning the
estimate with its uncertainty (one standard deviation, from the data's own noise).

Sign convention (ISMRMRD's, the simulator's and a real receiver's once demodulated): a spin ``Δf`` Hz above
the centre frequency gives a signal turning as ``exp(-2πi Δf t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.config.profile import AXES, SECOND_ORDER

ComplexArray = npt.NDArray[np.complexfloating]
FloatArray = npt.NDArray[np.float64]

#: The least signal-to-noise ratio (mean magnitude of the FID's strong part over the noise) a frequency is
#: measured at; below it the FID is taken as absent.
MIN_SNR = 5.0
#: Voxels above this fraction of the largest magnitude are the object (where the shim is fitted).
OBJECT_THRESHOLD = 0.2


@dataclass(frozen=True)
class Estimate:
    """A value and its standard uncertainty."""

    value: float
    sigma: float


def _noise_sigma(samples: ComplexArray) -> float:
    """The noise per sample of a smooth (demodulated) FID, from its sample-to-sample differences: white noise
    gives differences of ``sqrt(2) σ``, while the FID itself changes little from one sample to the next (an
    upper bound, then: it errs towards a lower signal-to-noise ratio)."""
    s = np.asarray(samples, np.complex128).reshape(-1)
    return float(np.std(np.diff(s)) / math.sqrt(2)) if s.size > 2 else math.inf


def fid_frequency(samples: ComplexArray, dwell_s: float) -> Estimate:
    """The off-resonance of an FID (Hz): the peak of its zero-filled spectrum, refined by the phase slope over
    the samples before the signal has decayed to a tenth (the maximum-likelihood frequency of one line,
    Kay 1989), with the Cramér–Rao bound of that slope as its uncertainty. NaN when there is no FID above the
    noise (:data:`MIN_SNR`)."""
    s = np.asarray(samples, np.complex128).reshape(-1)
    n = s.size
    spectrum = np.fft.fftshift(np.fft.fft(s, 8 * n))
    freqs = np.fft.fftshift(np.fft.fftfreq(8 * n, dwell_s))
    coarse = -float(freqs[int(np.argmax(np.abs(spectrum)))])  # exp(-2πi Δf t): the peak sits at -Δf
    # Demodulate by the coarse estimate, then fit the residual phase slope over the strong part of the FID.
    t = np.arange(n) * dwell_s
    d = s * np.exp(2j * np.pi * coarse * t)
    mag = np.abs(d)
    strong = int(np.argmax(mag < 0.1 * mag.max())) or n
    strong = max(strong, 8)
    lag = d[1:strong] * np.conj(d[:strong - 1])
    residual = -float(np.angle(lag.sum())) / (2 * np.pi * dwell_s)
    noise = _noise_sigma(d)
    signal = float(mag[:strong].mean())
    snr = signal / noise if noise > 0 else math.inf if signal > 0 else 0.0
    if not snr >= MIN_SNR:  # no FID above the noise (no object, no RF): nothing to measure
        return Estimate(math.nan, math.inf)
    m = max(strong, 3)
    sigma = math.sqrt(6.0 / (snr**2 * m * (m * m - 1))) / (2 * np.pi * dwell_s) if math.isfinite(snr) else 0.0
    return Estimate(coarse + residual, sigma)


def bloch_siegert_phase(scale: float, b1_hz: FloatArray, raster_s: float, offset_hz: float) -> float:
    """The Bloch–Siegert phase (rad) of a pulse of samples ``scale * b1_hz`` (one per ``raster_s``) played
    ``offset_hz`` off resonance: ``2π Σ (sqrt(f² + b1²) - |f|) dt``, the extra precession about the effective
    field (exact for a pulse far enough off resonance to leave the spins along it; Sacolick et al., MRM 2010,
    whose ``ω1² / 2ω`` is its first term)."""
    b1 = scale * np.asarray(b1_hz, np.float64)
    return float(2 * np.pi * np.sum(np.sqrt(offset_hz**2 + b1**2) - abs(offset_hz)) * raster_s)


def bloch_siegert_scale(plus: ComplexArray, minus: ComplexArray, b1_hz: FloatArray, raster_s: float,
                        offset_hz: float) -> Estimate:
    """The B1 scale ``s`` (actual over programmed) from the FIDs after the ``+f`` and ``-f`` Bloch–Siegert
    pulses: ``arg(plus / minus)`` is twice :func:`bloch_siegert_phase` (taken on ``[0, 2π)``: ``s`` up to where
    that reaches 2π), solved for ``s`` by bisection. NaN when the phase difference is not measurable."""
    a = np.asarray(plus, np.complex128).reshape(-1)
    b = np.asarray(minus, np.complex128).reshape(-1)
    phi = float(np.angle(np.sum(a * np.conj(b))))
    if phi < 0:
        phi += 2 * np.pi
    if not math.isfinite(phi) or phi <= 0:
        return Estimate(math.nan, math.inf)
    lo, hi = 0.0, 1.0
    while 2 * bloch_siegert_phase(hi, b1_hz, raster_s, offset_hz) < phi and hi < 1e3:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 2 * bloch_siegert_phase(mid, b1_hz, raster_s, offset_hz) < phi else (lo, mid)
    scale = 0.5 * (lo + hi)
    noise = math.hypot(_noise_sigma(a), _noise_sigma(b))
    signal = float(np.sqrt(np.abs(a).mean() * np.abs(b).mean()))
    sigma_phi = noise / (signal * math.sqrt(a.size)) if signal > 0 else math.inf
    return Estimate(scale, scale * 0.5 * sigma_phi / phi)  # phase ∝ s² near the small-B1 limit


def bloch_siegert_map(plus: ComplexArray, minus: ComplexArray, b1_hz: FloatArray, raster_s: float,
                      offset_hz: float) -> FloatArray:
    """The B1 scale per voxel (actual over programmed) from the images after the ``+f`` and ``-f`` Bloch–Siegert
    pulses, as :func:`bloch_siegert_scale` per voxel (``arg(plus / minus)`` on ``[0, 2π)`` is twice the
    pulse's Bloch–Siegert phase, monotonic in the scale: inverted by interpolation in a table of it); NaN
    outside the object (voxels below :data:`OBJECT_THRESHOLD` of the largest magnitude)."""
    a, b = np.asarray(plus, np.complex128), np.asarray(minus, np.complex128)
    phi = np.mod(np.angle(a * np.conj(b)), 2 * np.pi)
    scales = np.linspace(0.0, 4.0, 2001)
    table = np.array([2 * bloch_siegert_phase(s, b1_hz, raster_s, offset_hz) for s in scales])
    usable = table < 2 * np.pi  # up to where the phase difference wraps
    scale = np.interp(phi, table[usable], scales[usable], right=np.nan)
    mag = np.sqrt(np.abs(a * b))
    inside = mag > OBJECT_THRESHOLD * mag.max() if mag.size and mag.max() > 0 else np.zeros(mag.shape, bool)
    return np.where(inside, scale, np.nan)


def image_2d(lines: list[ComplexArray]) -> ComplexArray:
    """Cartesian k-space lines ky = -n/2 … n/2-1 (each kx = -n/2 … n/2-1) to the image (row y, column x),
    ISMRMRD's convention ``s(k) = Σ ρ(r) exp(-2πi k·r)``: voxel ``i`` at ``(i - n/2) * fov / n``."""
    k = np.asarray(lines, np.complex128)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k)))


def projection(samples: ComplexArray) -> ComplexArray:
    """One read-out line (k = -n/2 … n/2-1) to its projection (sample ``i`` at ``(i - n/2) * fov / n``)."""
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(np.asarray(samples, np.complex128))))


def positions(n: int, fov_m: float) -> FloatArray:
    """Voxel centres of ``n`` over ``fov_m`` (m), as :func:`image_2d` and :func:`projection` place them."""
    return (np.arange(n) - n // 2) * fov_m / n


@dataclass(frozen=True)
class FieldFit:
    """A B0 map fitted over the object: ``terms`` (``offset`` Hz, ``x``/``y``/``z`` Hz/m, second-order Hz/m²),
    their uncertainties, the RMS of the map over the object before (``rms_hz``) and of what the fit leaves
    (``residual_rms_hz``), and the voxels fitted."""

    terms: dict[str, float]
    sigma: dict[str, float]
    rms_hz: float
    residual_rms_hz: float
    voxels: int


def _basis(name: str, x: FloatArray, y: FloatArray, z: FloatArray) -> FloatArray:
    return {"offset": np.ones_like(x), "x": x, "y": y, "z": z, "z2": z * z - 0.5 * (x * x + y * y),
            "zx": z * x, "zy": z * y, "x2y2": x * x - y * y, "xy": 2 * x * y}[name]


def field_map(first: ComplexArray, second: ComplexArray, delta_te_s: float) -> tuple[FloatArray, FloatArray]:
    """``(Δf in Hz, weight)`` per voxel from two echoes ``delta_te_s`` apart: ``Δf = -arg(second / first) /
    (2π ΔTE)``; the weight is the mean magnitude (0 outside the object)."""
    z = np.asarray(second) * np.conj(np.asarray(first))
    df = -np.angle(z) / (2 * np.pi * delta_te_s)
    mag = np.sqrt(np.abs(z))
    weight = np.where(mag > OBJECT_THRESHOLD * mag.max(), mag, 0.0) if mag.size and mag.max() > 0 else mag * 0
    return np.asarray(df, np.float64), np.asarray(weight, np.float64)


def fit_field(df: FloatArray, weight: FloatArray, coords: tuple[FloatArray, FloatArray, FloatArray],
              terms: tuple[str, ...]) -> FieldFit | None:
    """Weighted least squares of ``df`` over the voxels of non-zero ``weight`` by ``terms`` (of ``offset``,
    ``AXES``, ``SECOND_ORDER``) at ``coords`` (x, y, z in m). None when the voxels cannot determine them (too
    few, or all on a line)."""
    for name in terms:
        if name not in ("offset", *AXES, *SECOND_ORDER):
            raise ValueError(f"unknown field term {name!r}")
    inside = weight.reshape(-1) > 0
    if inside.sum() < 3 * len(terms):
        return None
    x, y, z = (np.broadcast_to(c, df.shape).reshape(-1)[inside] for c in coords)
    a = np.column_stack([_basis(t, x, y, z) for t in terms])
    w = weight.reshape(-1)[inside]
    f = df.reshape(-1)[inside]
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    aw = a / scale * w[:, None]
    if np.linalg.matrix_rank(aw) < len(terms):
        return None
    coef, *_ = np.linalg.lstsq(aw, f * w, rcond=None)
    coef = coef / scale
    residual = f - a @ coef
    dof = max(1, f.size - len(terms))
    s2 = float(np.sum((w * residual) ** 2) / dof)
    cov = s2 * np.linalg.pinv((a * w[:, None]).T @ (a * w[:, None]))
    mean = float(np.average(f, weights=w))
    return FieldFit(dict(zip(terms, coef.tolist(), strict=True)),
                    dict(zip(terms, np.sqrt(np.abs(np.diag(cov))).tolist(), strict=True)),
                    float(np.sqrt(np.average(f**2, weights=w))), float(np.sqrt(np.average(residual**2, weights=w))),
                    int(f.size)) if math.isfinite(mean) else None


def peak_amplitude(samples: ComplexArray) -> float:
    """The largest real or imaginary part of any sample (what must stay inside the ADC's range)."""
    s = np.asarray(samples)
    return float(max(np.abs(s.real).max(initial=0.0), np.abs(s.imag).max(initial=0.0)))


def noise_covariance(windows: list[ComplexArray]) -> npt.NDArray[np.complex128]:
    """The receive channels' noise covariance ``(channels, channels)`` from windows ``(channels, samples)``
    acquired with no RF (ISMRMRD's noise-prewhitening input)."""
    data = np.concatenate([np.asarray(w, np.complex128) for w in windows], axis=1)
    data = data - data.mean(axis=1, keepdims=True)
    return (data @ data.conj().T) / max(1, data.shape[1] - 1)
