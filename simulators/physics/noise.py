"""Receiver noise: white, complex Gaussian, its standard deviation set at a reference dwell.

The noise power in a sample grows with the receiver bandwidth (1/dwell), so the standard deviation of a
sample of dwell ``dt`` is ``noise_std * sqrt(NOISE_REFERENCE_DWELL_S / dt)``; real and imaginary parts each
carry ``σ / sqrt(2)``. ``noise_std`` is in the signal's units (docs/phantom.md: 1 = a voxel of proton
density 1 and 1 mm³, fully transverse).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: The dwell at which ``noise_std`` is the per-sample standard deviation (s): 10 µs, 100 kHz bandwidth.
NOISE_REFERENCE_DWELL_S = 10e-6


def receiver_noise(rng: np.random.Generator, noise_std: float, dwell_s: npt.ArrayLike,
                   samples: npt.ArrayLike) -> npt.NDArray[np.complex128]:
    """Noise for consecutive windows of ``samples[w]`` samples at ``dwell_s[w]`` each, concatenated
    (complex128, one draw of ``2 * sum(samples)`` normals from ``rng``)."""
    counts = np.asarray(samples, dtype=np.int64).reshape(-1)
    dwell = np.asarray(dwell_s, dtype=np.float64).reshape(-1)
    sigma = np.repeat(noise_std * np.sqrt(NOISE_REFERENCE_DWELL_S / dwell), counts)
    draw = rng.standard_normal((2, int(counts.sum()))) * (sigma / np.sqrt(2.0))
    return draw[0] + 1j * draw[1]
