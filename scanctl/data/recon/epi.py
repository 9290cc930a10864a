"""EPI odd/even phase correction.

Lines read towards -k_x (an EPI's every other line) are mirrored into place (:mod:`.cartesian`), but a
delay between the sampling and the gradient, or eddy currents, shift them along k_x against the others: in
hybrid space (x, k_y) — after the inverse FFT along the readout — a phase ``phi(x) = a + b x`` on the
reversed lines, which puts an N/2 ghost into the image. The correction estimates ``phi`` and takes it off
the reversed lines:

- from **reference lines** when the volume has them (``ACQ_IS_PHASECORR_DATA`` or navigator lines, ``NAV``:
  the same k_y read in both directions): ``phi`` = the phase of (reversed references) x conj(forward
  references), summed over channels;
- else by a **linear phase fit between odd and even lines**: over every pair of neighbouring lines, the
  product ``H(x, k_y + 1) conj H(x, k_y)`` summed separately over forward->reversed and reversed->forward
  pairs holds ``exp(i(theta + phi))`` and ``exp(i(theta - phi))``, ``theta`` the object's own phase step
  between lines (its position along y): their ratio is ``exp(2 i phi)`` whatever the object is. The
  zeroth-order term ``a`` is then known modulo pi and taken within +-pi/2 (without a reference an odd/even
  phase of pi cannot be told from an object moved by half the field of view).

Both fits are weighted by the signal: the slope ``b`` from the phase of the product's autocorrelation
(no unwrapping), ``a`` from its mean after the slope is taken off.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from scanctl.data.recon.cartesian import KSpace, Line
from scanctl.data.recon.common import ComplexArray

log = logging.getLogger(__name__)


def to_hybrid(kspace: ComplexArray) -> ComplexArray:
    """Inverse FFT along the readout (last axis), pixel ``j`` at ``(j - n // 2)``."""
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(kspace, axes=-1), axis=-1), axes=-1)


def to_kspace(hybrid: ComplexArray) -> ComplexArray:
    """The inverse of :func:`to_hybrid`."""
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(hybrid, axes=-1), axis=-1), axes=-1)


def correct(kspace: KSpace) -> list[str]:
    """Correct every volume of ``kspace`` (in place) that holds both forward and reversed lines; returns
    per volume how: ``"reference"``, ``"fit"`` or ``""`` (nothing to correct)."""
    how = []
    for v in range(len(kspace.keys)):
        data = kspace.data[v]  # (channels, nz, ny, nx)
        reverse = kspace.reversed_rows[v]
        acquired = np.any(data != 0, axis=(0, 3))
        if not np.any(reverse & acquired) or not np.any(~reverse & acquired):
            how.append("")
            continue
        hybrid = to_hybrid(data)
        phase = reference_phase(kspace.references[v], data.shape[-1])
        method = "reference"
        if phase is None:
            phase, method = fitted_phase(hybrid, reverse, acquired), "fit"
        x = np.arange(data.shape[-1]) - data.shape[-1] // 2
        log.info("recon: EPI odd/even phase %.3f rad + %.4f rad/pixel (%s)", phase[0], phase[1], method)
        hybrid[:, reverse] *= np.exp(-1j * (phase[0] + phase[1] * x))
        kspace.data[v] = to_kspace(hybrid)
        how.append(method)
    return how


def reference_phase(references: list[Line], nx: int) -> tuple[float, float] | None:
    """``(a, b)`` from reference lines read both ways (None unless there are some of each)."""
    sums = {}
    for reverse in (False, True):
        rows = [line for line in references if line.reverse == reverse]
        if not rows:
            return None
        full = np.zeros((max(line.data.shape[0] for line in rows), nx), dtype=np.complex128)
        for line in rows:
            full[: line.data.shape[0], line.cols] += line.data
        sums[reverse] = to_hybrid(full)
    return linear_phase(np.sum(sums[True] * np.conj(sums[False]), axis=0))


def fitted_phase(hybrid: ComplexArray, reverse: npt.NDArray[np.bool_],
                 acquired: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """``(a, b)`` from neighbouring lines of opposite directions (see the module): ``hybrid``
    ``(channels, nz, ny, nx)``, ``reverse`` and ``acquired`` ``(nz, ny)``."""
    step = hybrid[:, :, 1:] * np.conj(hybrid[:, :, :-1])  # H(k_y + 1) conj H(k_y): (channels, nz, ny-1, nx)
    both = acquired[:, 1:] & acquired[:, :-1]
    to_reversed = both & ~reverse[:, :-1] & reverse[:, 1:]
    to_forward = both & reverse[:, :-1] & ~reverse[:, 1:]
    forward = np.sum(step[:, to_reversed], axis=(0, 1))  # (nx,)
    backward = np.sum(step[:, to_forward], axis=(0, 1))
    a2, b2 = linear_phase(forward * np.conj(backward))  # 2 phi
    a = (a2 / 2 + np.pi / 2) % np.pi - np.pi / 2  # phi's zeroth order, modulo pi, within +-pi/2
    return float(a), b2 / 2


def linear_phase(product: npt.NDArray[np.complexfloating]) -> tuple[float, float]:
    """``(a, b)`` with ``product(x) ~ w(x) exp(i (a + b x))``, x = pixel - n // 2: the slope from the phase
    of the autocorrelation at lag 1, then the offset from the mean with the slope taken off."""
    x = np.arange(product.size, dtype=np.float64) - product.size // 2
    b = float(np.angle(np.sum(product[1:] * np.conj(product[:-1]))))
    a = float(np.angle(np.sum(product * np.exp(-1j * b * x))))
    return a, b
