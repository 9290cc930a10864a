"""Exact gradient moments of a piecewise-linear :class:`~scanctl.hw.program.GradientProgram`.

The phase a spin at ``r`` gathers from the gradients between ``t_a`` and ``t_b`` is
``2π r · (m(t_b) - m(t_a))`` with ``m(t) = ∫ g dt`` (cycles per metre when ``g`` is in Hz/m). The
waveforms are linear between breakpoints, so the integral is exact: a quadratic inside each piece.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from scanctl.hw.program import GradientProgram

FloatArray = npt.NDArray[np.float64]


class Moments:
    """``m(t)``: the integral of each gradient axis from the segment start to ``t`` (1/m), for any ``t``
    (0 before an axis' first breakpoint, constant after its last)."""

    def __init__(self, program: GradientProgram) -> None:
        self._axes: list[tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None] = []
        for t, g in zip(program.t_s, program.g_hz_per_m, strict=True):
            t = np.asarray(t, dtype=np.float64)
            g = np.asarray(g, dtype=np.float64)
            if t.size == 0 or not np.any(g):
                self._axes.append(None)
                continue
            dt = np.diff(t)
            cum = np.concatenate(([0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * dt)))
            slope = np.divide(np.diff(g), dt, out=np.zeros_like(dt), where=dt > 0)
            self._axes.append((t, g, cum, np.append(slope, 0.0)))

    @property
    def active(self) -> tuple[bool, bool, bool]:
        """Which axes have any non-zero gradient in this program."""
        return tuple(a is not None for a in self._axes)  # type: ignore[return-value]

    def __call__(self, t_s: FloatArray | float) -> FloatArray:
        """The moments at ``t_s``: shape ``(3, *shape(t_s))``, 1/m."""
        tq = np.asarray(t_s, dtype=np.float64)
        out = np.zeros((3, *tq.shape))
        for axis in range(3):
            if self._axes[axis] is not None:
                out[axis] = self.axis(axis, tq)
        return out

    def axis(self, axis: int, t_s: FloatArray | float) -> FloatArray:
        """The moment of one axis at ``t_s`` (shape of ``t_s``), 1/m."""
        tq = np.asarray(t_s, dtype=np.float64)
        data = self._axes[axis]
        if data is None:
            return np.zeros(tq.shape)
        t, g, cum, slope = data
        i = np.searchsorted(t, tq, side="right") - 1
        before = i < 0
        i = np.maximum(i, 0)
        dt = tq - t[i]
        last = i == t.size - 1  # at or after the last breakpoint: the moment stays put
        m = cum[i] + np.where(last, 0.0, g[i] * dt + 0.5 * slope[i] * dt * dt)
        return np.where(before, 0.0, m)
