"""Non-Cartesian 2D k-space to images: an adjoint (type-1) non-uniform FFT with density compensation.

The image of ``n x n`` pixels over the FOV is

    image(x) = Σ_m  w_m s_m exp(+2πi k_m · x),     x = (j - n//2) · FOV / n

for samples ``s_m`` at ``k_m`` (in units of 1/FOV: a Cartesian grid's points are integers) with density
compensation weights ``w_m`` — the adjoint of the signal model ``s(k) = Σ ρ(r) exp(-2πi k·r)`` of
docs/rawdata.md, so a Cartesian grid with ``w = 1/n²`` gives the inverse FFT of the Cartesian recon.

The transform (:func:`adjoint`, used by :func:`grid_image` and the recon) is FINUFFT's type 1 (Barnett,
Magland & af Klinteberg, SIAM J Sci Comput 2019; the Flatiron Institute's ``finufft`` package) at a
requested relative accuracy of :data:`EPSILON`. It was chosen over PyNUFFT and over this module's own
Kaiser–Bessel gridder by measurement (``benchmarks/bench_recon.py``, docs/recon.md): it is the most
accurate against the direct sum and the fastest (a compiled, vectorised spreader; the plan costs nothing
for one transform), and is maintained, with wheels for every platform scanctl runs on.

:class:`Gridder` is the classic gridding (Jackson et al., IEEE TMI 1991; Beatty, Nishimura & Pauly, IEEE
TMI 2005): each sample spread onto a twice-oversampled grid with a separable Kaiser–Bessel kernel of
``width`` grid points. Its spreading and interpolation give the density compensation
(:func:`density_weights`): Pipe & Menon (MRM 1999) — ``w ← w / (C w)`` where ``C`` spreads the weights
onto the grid and interpolates them back with the same kernel; it converges to weights under which the
samples cover k-space evenly, for any trajectory (radial, spiral, ...). The weights are then scaled to the
k-space area each sample stands for (units of 1/FOV², over ``n²``), the scale of the Cartesian recon: a
voxel of density ρ comes back as ρ. (:meth:`Gridder.image`, its own complete gridding, is kept as the
reference the benchmark measures FINUFFT against; the recon does not use it.)
"""

from __future__ import annotations

import math

import finufft
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

#: Kernel width in (oversampled) grid points.
WIDTH = 6
#: Grid oversampling.
OVERSAMPLING = 2
#: Pipe–Menon iterations of the density compensation.
DENSITY_ITERATIONS = 12
#: FINUFFT's requested relative accuracy (measured: ~5e-6 of the maximum against the direct sum).
EPSILON = 1e-6
#: FINUFFT's threads. One: its OpenMP threads wait for each other, and on a loaded machine (the run's
#: other processes, 2 cores) that made the radial example's transform take 190 ms instead of 10 ms; on a
#: quiet one, one thread costs about a millisecond (2.6 ms against 1.4 ms, docs/recon.md).
THREADS = 1


class Gridder:
    """Spreads samples at fixed k-space positions onto the oversampled grid of an ``n x n`` image.

    ``k``: ``(M, 2)`` sample positions (k_x, k_y) in units of 1/FOV. Raises ValueError for a
    non-positive ``n``, a ``k`` not of shape ``(M, 2)`` or non-finite positions.
    """

    def __init__(self, k: npt.ArrayLike, n: int, width: int = WIDTH) -> None:
        k = np.asarray(k, dtype=np.float64)
        if n < 1:
            raise ValueError(f"image size must be positive, got {n}")
        if k.ndim != 2 or k.shape[1] != 2:
            raise ValueError(f"k-space positions must be (samples, 2), got shape {k.shape}")
        if not np.all(np.isfinite(k)):
            raise ValueError("k-space positions must be finite")
        self.n, self.width = n, width
        self.m = OVERSAMPLING * n  # grid points per axis; a grid step is 1/(OVERSAMPLING FOV)
        sigma = OVERSAMPLING
        self.beta = math.pi * math.sqrt((width / sigma) ** 2 * (sigma - 0.5) ** 2 - 0.8)
        ix, wx = self._axis(k[:, 0])
        iy, wy = self._axis(k[:, 1])
        # (M, width, width): flattened grid index and kernel weight of every neighbour of every sample.
        self.index = (iy[:, :, None] * self.m + ix[:, None, :]).reshape(k.shape[0], -1)
        self.weight = (wy[:, :, None] * wx[:, None, :]).reshape(k.shape[0], -1)
        self._deapodize = self._kernel_image()
        x = np.linspace(-0.5 * width, 0.5 * width, 4001)
        #: the kernel's integral over its support, in grid steps (the area one weight spreads over, per axis)
        self.kernel_integral = float(np.trapezoid(self._kernel(x), x))

    def _axis(self, k: FloatArray) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Grid indices (wrapped) and Kaiser–Bessel weights ``(M, width)`` along one axis."""
        u = k * OVERSAMPLING  # in grid steps, 0 at the grid's centre
        first = np.ceil(u - 0.5 * self.width).astype(np.int64)
        idx = first[:, None] + np.arange(self.width)[None, :]
        return (idx + self.m // 2) % self.m, self._kernel(u[:, None] - idx)

    def _kernel(self, offset: npt.ArrayLike) -> FloatArray:
        """The Kaiser–Bessel kernel at ``offset`` grid steps from its centre (1 there, 0 beyond width/2)."""
        x = np.asarray(offset, dtype=np.float64) / (0.5 * self.width)
        return np.i0(self.beta * np.sqrt(np.clip(1.0 - x * x, 0.0, None))) / np.i0(self.beta)

    def spread(self, values: npt.ArrayLike) -> ComplexArray:
        """The ``(m, m)`` oversampled grid of ``values`` (one per sample) convolved with the kernel."""
        v = np.asarray(values)
        flat = self.index.ravel()
        contrib = (self.weight * v[:, None]).ravel()
        size = self.m * self.m
        grid = np.bincount(flat, weights=contrib.real, minlength=size).astype(np.complex128)
        if np.iscomplexobj(contrib):
            grid += 1j * np.bincount(flat, weights=contrib.imag, minlength=size)
        return grid.reshape(self.m, self.m)

    def interpolate(self, grid: npt.ArrayLike) -> npt.NDArray[np.generic]:
        """The kernel-weighted sum of the grid around every sample (the adjoint of :meth:`spread`)."""
        g = np.asarray(grid).ravel()
        return np.sum(g[self.index] * self.weight, axis=1)

    def image(self, values: npt.ArrayLike) -> ComplexArray:
        """``(n, n)`` image ``[y, x]``: Σ values_m exp(+2πi k_m · x) at the pixels (see the module)."""
        return self._to_image(self.spread(values)) / self._deapodize

    def _to_image(self, grid: ComplexArray) -> ComplexArray:
        full = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(grid))) * (self.m * self.m)
        lo = self.m // 2 - self.n // 2
        return full[lo : lo + self.n, lo : lo + self.n]

    def _kernel_image(self) -> FloatArray:
        """The image of one sample at k = 0 through the same grid: the kernel's apodization, to divide by."""
        one = Gridder.__new__(Gridder)
        one.n, one.m, one.width, one.beta = self.n, self.m, self.width, self.beta
        ix, wx = one._axis(np.zeros(1))
        grid = np.zeros((self.m, self.m), dtype=np.complex128)
        grid[np.ix_(ix[0], ix[0])] = np.outer(wx[0], wx[0])
        return np.real(one._to_image(grid))


def density_weights(gridder: Gridder, iterations: int = DENSITY_ITERATIONS) -> FloatArray:
    """Density compensation weights (Pipe & Menon) for ``gridder``'s samples: the k-space area (units of
    1/FOV squared) each sample stands for, over ``n²`` — the Cartesian recon's scale, where every grid point
    stands for 1 and the inverse FFT divides by ``n²``.

    The iteration makes ``C w`` 1 at every sample, ``C`` spreading onto the grid and interpolating back
    (a convolution with the kernel's autocorrelation, whose integral is ``c²`` per axis for a kernel of
    integral ``c`` grid steps). Where samples lie ``OVERSAMPLING`` grid steps apart (one per 1/FOV²), that
    makes ``w = OVERSAMPLING² / c⁴``: the weights are scaled by ``c⁴ / (OVERSAMPLING² n²)``."""
    w = np.ones(gridder.index.shape[0])
    for _ in range(iterations):
        covered = np.real(gridder.interpolate(gridder.spread(w)))
        w = np.divide(w, covered, out=np.zeros_like(w), where=covered > 0)
    return w * gridder.kernel_integral**4 / (OVERSAMPLING * gridder.n) ** 2


def adjoint(k: npt.ArrayLike, values: npt.ArrayLike, n: int) -> ComplexArray:
    """``(channels, n, n)`` images ``[y, x]``: Σ_m values_m exp(+2πi k_m · x) (see the module) of ``values``
    ``(channels, M)`` (or ``(M,)``) at ``k`` ``(M, 2)`` (units of 1/FOV), by FINUFFT's type 1. Raises
    ValueError for shapes that do not agree or non-finite positions."""
    k = np.asarray(k, dtype=np.float64)
    samples = np.atleast_2d(np.asarray(values, dtype=np.complex128))
    if n < 1 or k.ndim != 2 or k.shape[1] != 2 or samples.shape[1] != k.shape[0]:
        raise ValueError(f"k-space positions must be (samples, 2) for (channels, samples) values and a positive "
                         f"size, got {k.shape}, {samples.shape}, {n}")
    if not np.all(np.isfinite(k)):
        raise ValueError("k-space positions must be finite")
    # FINUFFT's modes -n/2 .. n/2-1 (modeord 0) are the pixels j - n//2; its phase is k . x in radians.
    omega = 2 * np.pi * k / n
    images = finufft.nufft2d1(np.ascontiguousarray(omega[:, 1]), np.ascontiguousarray(omega[:, 0]),
                              np.ascontiguousarray(samples), (n, n), eps=EPSILON, isign=1, nthreads=THREADS)
    return np.asarray(images).reshape(samples.shape[0], n, n)


def grid_image(k: npt.ArrayLike, data: npt.ArrayLike, n: int, *, weights: FloatArray | None = None) -> ComplexArray:
    """Non-Cartesian reconstruction: ``(channels, n, n)`` complex images ``[y, x]`` of ``data``
    ``(channels, M)`` sampled at ``k`` ``(M, 2)`` (units of 1/FOV), with density compensation ``weights``
    (default: :func:`density_weights`), transformed by :func:`adjoint`. Raises ValueError for shapes that do
    not agree."""
    samples = np.atleast_2d(np.asarray(data))
    k = np.asarray(k, dtype=np.float64)
    if samples.shape[1] != len(k):
        raise ValueError(f"{samples.shape[1]} samples per channel for {len(k)} k-space positions")
    w = density_weights(Gridder(k, n)) if weights is None else np.asarray(weights, dtype=np.float64)
    return adjoint(k, samples * w, n)


__all__ = ["DENSITY_ITERATIONS", "EPSILON", "OVERSAMPLING", "WIDTH", "Gridder", "adjoint", "density_weights",
           "grid_image"]
