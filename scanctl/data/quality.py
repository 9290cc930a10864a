"""Automatic image-quality measures a technologist looks at: SNR from the background noise, the
Nyquist (N/2) ghosting ratio, tissue contrast by masks, similarity to a reference, and a flag when an
image looks wrong. Used by the exam report and by protocol sweeps (docs/quality.md).

All functions take magnitude images ``[y, x]`` (rows = phase encoding, columns = read-out, as
:mod:`scanctl.data.recon` writes them) or stacks ``[n, y, x]`` where said. Noise in a magnitude image is
not Gaussian: the background of a root-sum-of-squares image of ``channels`` coils follows a chi
distribution with ``2 * channels`` degrees of freedom, so the Gaussian sigma of each channel's real and
imaginary parts is the background mean over :func:`background_mean_factor` (Constantinides et al. 1997;
NEMA MS 1). A non-finite image or one with no object is a :class:`QualityError`, never a NaN figure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from scanctl.errors import ScanctlError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: An image whose SNR is below this is flagged (a technologist would repeat it).
LOW_SNR = 5.0
#: An image whose N/2 ghost is above this fraction of the object signal is flagged.
HIGH_GHOSTING = 0.05
#: Pixels this close to the object are not counted as ghost (truncation ringing of sharp edges decays
#: over a few pixels: a clean 128 x 128 Shepp–Logan image measures about 3 % with this margin).
GHOST_MARGIN = 4
#: The fraction of the object's robust maximum above which a pixel is taken as object.
OBJECT_THRESHOLD = 0.1


class QualityError(ScanctlError):
    """An image cannot be measured: not finite, empty, no object or no background."""


@dataclass(frozen=True)
class Quality:
    """The measures of one image: SNR, N/2 ghosting ratio, mean object signal, noise sigma (per channel,
    Gaussian), the object's share of the image, and the reasons it looks wrong (empty: looks right)."""

    snr: float
    ghosting_ratio: float
    signal_mean: float
    noise_sigma: float
    object_fraction: float
    flags: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["flags"] = list(self.flags)
        return out


def background_mean_factor(channels: int = 1) -> float:
    """Mean of the background of a ``channels``-coil RSS magnitude image per unit Gaussian sigma:
    ``sqrt(2) Γ(N + 1/2) / Γ(N)`` (N = 1: sqrt(pi/2), Rayleigh)."""
    if channels < 1:
        raise QualityError(f"channels must be at least 1, got {channels}")
    n = float(channels)
    return math.sqrt(2.0) * math.exp(math.lgamma(n + 0.5) - math.lgamma(n))


def object_mask(image: npt.ArrayLike) -> BoolArray:
    """The object: pixels above Otsu's threshold of the image (and above :data:`OBJECT_THRESHOLD` of its
    99th percentile), kept where most of their 3 x 3 neighbours agree (lone noise pixels dropped), with
    holes inside each row's and column's extent filled (a head's ventricles are object, not background)."""
    img = _checked(image)
    top = float(np.percentile(img, 99.0))
    if top <= 0:
        raise QualityError("the image is empty (no signal)")
    mask = img > max(_otsu(img), OBJECT_THRESHOLD * top)
    votes = np.zeros(mask.shape, dtype=np.int8)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            votes += np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    mask = votes >= 5
    if not mask.any():
        raise QualityError("no object found in the image")
    return _fill(mask)


def _otsu(img: FloatArray, bins: int = 256) -> float:
    """Otsu's threshold: the grey level that maximises the between-class variance."""
    hist, edges = np.histogram(img, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def noise_sigma(image: npt.ArrayLike, mask: BoolArray | None = None, *, channels: int = 1) -> float:
    """The per-channel Gaussian noise sigma from the background: every pixel outside the object, its
    ghosts along the phase direction (the columns the object covers) and a two-pixel margin."""
    img = _checked(image)
    mask = object_mask(img) if mask is None else mask
    background = _background(mask)
    if background.sum() < 16:
        raise QualityError("too little background to measure noise (the object fills the field of view)")
    return float(img[background].mean()) / background_mean_factor(channels)


def snr(image: npt.ArrayLike, mask: BoolArray | None = None, *, channels: int = 1,
        sigma: float | None = None) -> float:
    """Mean object signal over the Gaussian noise sigma (from ``sigma`` if known, e.g. a noise scan,
    else the background)."""
    img = _checked(image)
    mask = object_mask(img) if mask is None else mask
    s = noise_sigma(img, mask, channels=channels) if sigma is None else float(sigma)
    if not (math.isfinite(s) and s > 0):
        return math.inf
    return float(img[mask].mean()) / s


def ghosting_ratio(image: npt.ArrayLike, mask: BoolArray | None = None, *, phase_axis: int = 0,
                   channels: int = 1) -> float:
    """The N/2 ghost's signal over the object's: the root-mean-square signal where the object's ghost
    falls (the object mask shifted by half the field of view along the phase axis, outside the object)
    over the object's, each with the noise power taken out (a magnitude pixel's mean square is the signal
    squared plus ``2 * channels`` sigma squared), so a clean image gives about 0."""
    img = _checked(image)
    mask = object_mask(img) if mask is None else mask
    n = img.shape[phase_axis]
    ghost = np.roll(mask, n // 2, axis=phase_axis) & ~_dilate(mask, GHOST_MARGIN)
    if ghost.sum() == 0:
        return 0.0
    try:
        noise_power = 2 * channels * noise_sigma(img, mask, channels=channels) ** 2
    except QualityError:
        noise_power = 0.0

    def amplitude(region: BoolArray) -> float:
        return math.sqrt(max(float((img[region] ** 2).mean()) - noise_power, 0.0))

    return amplitude(ghost) / amplitude(mask)


def contrast(image: npt.ArrayLike, a: BoolArray, b: BoolArray) -> float:
    """Michelson contrast ``(mean_a - mean_b) / (mean_a + mean_b)`` of two regions (e.g. two tissues'
    masks)."""
    img = _checked(image)
    if a.shape != img.shape or b.shape != img.shape or not a.any() or not b.any():
        raise QualityError("contrast: both masks must have the image's shape and hold at least one pixel")
    ma, mb = float(img[a].mean()), float(img[b].mean())
    return 0.0 if ma + mb == 0 else (ma - mb) / (ma + mb)


def nrmse(image: npt.ArrayLike, reference: npt.ArrayLike) -> float:
    """Root-mean-square difference over the reference's RMS, after scaling the image to the reference by
    least squares (so a global gain does not count)."""
    img, ref = _checked(image), _checked(reference)
    if img.shape != ref.shape:
        raise QualityError(f"nrmse: shapes differ {img.shape} vs {ref.shape}")
    norm = float(np.sqrt((ref**2).mean()))
    if norm == 0:
        raise QualityError("nrmse: the reference is empty")
    scale = float((img * ref).sum() / max((img * img).sum(), 1e-300))
    return float(np.sqrt(((scale * img - ref) ** 2).mean())) / norm


def measure(image: npt.ArrayLike, *, channels: int = 1, sigma: float | None = None) -> Quality:
    """Every measure of one 2D image, and its flags."""
    img = _checked(image)
    mask = object_mask(img)
    flags = []
    try:
        s = noise_sigma(img, mask, channels=channels) if sigma is None else float(sigma)
    except QualityError as exc:
        s, flags = math.nan, [str(exc)]
    value = float(img[mask].mean()) / s if s > 0 else math.inf
    ghost = ghosting_ratio(img, mask, channels=channels)
    fraction = float(mask.mean())
    if math.isfinite(value) and value < LOW_SNR:
        flags.append(f"low SNR ({value:.1f} < {LOW_SNR:g})")
    if ghost > HIGH_GHOSTING:
        flags.append(f"N/2 ghosting {100 * ghost:.1f} % of the object signal (> {100 * HIGH_GHOSTING:g} %)")
    if fraction < 0.01:
        flags.append("almost no object in the image")
    return Quality(snr=value, ghosting_ratio=ghost, signal_mean=float(img[mask].mean()), noise_sigma=s,
                   object_fraction=fraction, flags=tuple(flags))


def _checked(image: npt.ArrayLike) -> FloatArray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 4:
        raise QualityError(f"expected a 2D image of at least 4 x 4 pixels, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise QualityError("the image holds NaN or infinite values")
    return np.abs(img)


def _fill(mask: BoolArray) -> BoolArray:
    """Fill each row and column between its first and last object pixel; keep pixels filled both ways."""
    def span(m: BoolArray) -> BoolArray:
        idx = np.arange(m.shape[1])
        any_ = m.any(axis=1)
        first = np.where(any_, m.argmax(axis=1), m.shape[1])
        last = np.where(any_, m.shape[1] - 1 - m[:, ::-1].argmax(axis=1), -1)
        return (idx[None, :] >= first[:, None]) & (idx[None, :] <= last[:, None])
    return mask | (span(mask) & span(mask.T).T)


def _dilate(mask: BoolArray, r: int) -> BoolArray:
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        for s in range(1, r + 1):
            grown |= np.roll(out, s, axis=axis) | np.roll(out, -s, axis=axis)
        out = grown
    return out


def _background(mask: BoolArray) -> BoolArray:
    """Away from the object (two-pixel margin) and from every column the object covers (where phase
    encoding ghosts and motion artefacts spread)."""
    columns: BoolArray = np.asarray(mask.any(axis=0), dtype=bool)
    covered = np.repeat(columns[None, :], mask.shape[0], axis=0)
    return ~_dilate(mask, 2) & ~_dilate(covered, 2)
