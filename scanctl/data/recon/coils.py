"""Coil combination: root sum of squares (the default) or adaptive combination (Walsh, Gmitro & Marcellin,
MRM 2000), with prewhitening by the noise covariance when there is one.

Adaptive: at every pixel the channels' correlation matrix over a neighbourhood (``KERNEL`` pixels square)
is formed, its dominant eigenvector ``v`` is the local coil sensitivity profile (up to scale) and the pixel
is ``|v^H c|``: the combination of best signal-to-noise ratio for white noise — hence the prewhitening
first, with ``L^-1`` (``L L^H`` the noise covariance, scaled to a mean diagonal of 1 so that the image keeps
its scale). With one channel both combinations are the magnitude.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from scanctl.data.recon.common import COMBINES, ComplexArray, FloatArray, ReconError

log = logging.getLogger(__name__)

#: The neighbourhood of the adaptive combination, pixels per side (odd).
KERNEL = 7


def combine(images: ComplexArray, how: str = "rss", noise_covariance: npt.ArrayLike | None = None) -> FloatArray:
    """Magnitude of ``images`` ``(channels, ..., ny, nx)`` combined over channels (axis 0): ``rss`` or
    ``adaptive`` (whitened by ``noise_covariance`` ``(channels, channels)`` when given). Raises ReconError
    for an unknown combination or a covariance that does not fit or is not positive definite."""
    if how not in COMBINES:
        raise ReconError(f"unknown coil combination {how!r}: one of {', '.join(COMBINES)}")
    if how == "rss":
        return np.sqrt(np.sum(np.abs(images) ** 2, axis=0))
    if noise_covariance is not None:
        images = prewhiten(images, noise_covariance)
    if images.shape[0] == 1:
        return np.abs(images[0])
    return adaptive(images)


def noise_covariance(noise: list[npt.NDArray[np.complexfloating]]) -> ComplexArray | None:
    """The channels' noise covariance ``E[n n^H]`` from noise acquisitions (each ``(channels, samples)``),
    None without any (or with channel counts that differ)."""
    if not noise or len({n.shape[0] for n in noise}) != 1:
        return None
    samples = np.concatenate([np.asarray(n, dtype=np.complex128) for n in noise], axis=1)
    if samples.shape[1] < 2:
        return None
    return np.asarray(samples @ samples.conj().T / samples.shape[1])


def prewhiten(images: ComplexArray, covariance: npt.ArrayLike) -> ComplexArray:
    """``L^-1 images`` over the channel axis (0), ``L`` the Cholesky factor of ``covariance`` scaled to a
    mean diagonal of 1. Raises ReconError if the covariance does not fit or is not positive definite."""
    psi = np.asarray(covariance, dtype=np.complex128)
    c = images.shape[0]
    if psi.shape != (c, c) or not np.all(np.isfinite(psi)):
        raise ReconError(f"a noise covariance of shape {psi.shape} for {c} channels (or not finite)")
    scale = float(np.mean(np.real(np.diag(psi))))
    try:
        lower = np.linalg.cholesky(psi / scale) if scale > 0 else None
    except np.linalg.LinAlgError:
        lower = None
    if lower is None:
        raise ReconError("the noise covariance is not positive definite: cannot prewhiten")
    whitening = np.linalg.inv(lower)
    flat = images.reshape(c, -1)
    return np.asarray((whitening @ flat).reshape(images.shape))


def adaptive(images: ComplexArray, kernel: int = KERNEL) -> FloatArray:
    """Walsh's adaptive combination of ``images`` ``(channels, ..., ny, nx)`` (see the module)."""
    c = images.shape[0]
    rest = images.shape[1:]
    planes = images.reshape(c, -1, *rest[-2:])  # (channels, planes, ny, nx): one neighbourhood per plane
    out = np.empty(planes.shape[1:], dtype=np.float64)
    for p in range(planes.shape[1]):
        pix = planes[:, p]  # (c, ny, nx)
        corr = pix[:, None] * np.conj(pix[None, :])  # (c, c, ny, nx)
        smooth = _box(corr, kernel)
        matrices = np.moveaxis(smooth, (0, 1), (-2, -1))  # (ny, nx, c, c), Hermitian
        _, vectors = np.linalg.eigh(matrices)
        v = vectors[..., -1]  # the dominant eigenvector (unit norm) at each pixel: (ny, nx, c)
        out[p] = np.abs(np.einsum("yxc,cyx->yx", np.conj(v), pix))
    return out.reshape(rest)


def _box(values: ComplexArray, kernel: int) -> ComplexArray:
    """The sum over a ``kernel`` x ``kernel`` neighbourhood (clipped at the edges) along the last two axes,
    by cumulative sums."""
    half = kernel // 2
    out = values
    for axis in (-2, -1):
        n = out.shape[axis]
        cum = np.cumsum(out, axis=axis)
        cum = np.concatenate([np.zeros_like(np.take(cum, [0], axis=axis)), cum], axis=axis)
        hi = np.minimum(np.arange(n) + half + 1, n)
        lo = np.maximum(np.arange(n) - half, 0)
        out = np.take(cum, hi, axis=axis) - np.take(cum, lo, axis=axis)
    return out
