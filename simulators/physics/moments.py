"""Exact gradient moments of a piecewise-linear :class:`~scanctl.hw.program.GradientProgram`.

The phase a spin at ``r`` gathers from the gradients between ``t_a`` and ``t_b`` is
``2π r · (m(t_b) - m(t_a))`` with ``m(t) = ∫ g dt`` (cycles per metre when ``g`` is in Hz/m). The
waveforms are linear between breakpoints, so the integral is exact: a quadratic inside each piece.
"""

from __future__ import annotations

from dataclasses import replace

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


class FrameMoments:
    """:class:`Moments` seen in a phantom grid's own axes: ``axesᵀ m(t)`` (the grid is rotated in the
    scanner by ``axes``; ``k·r`` is the same in either frame)."""

    def __init__(self, moments: Moments, axes_t: FloatArray) -> None:
        self._moments = moments
        self._axes_t = axes_t

    def __call__(self, t_s: FloatArray | float) -> FloatArray:
        m = self._moments(t_s)
        return np.tensordot(self._axes_t, m, axes=(1, 0))

    def axis(self, axis: int, t_s: FloatArray | float) -> FloatArray:
        return np.tensordot(self._axes_t[axis], self._moments(t_s), axes=(0, 0))


def with_static_gradient(program: GradientProgram, offset_hz_per_m: tuple[float, float, float]) -> GradientProgram:
    """``program`` with a constant ``offset_hz_per_m`` added on each axis over its whole span ``[t0_s, t1_s]``
    (a shim current in the gradient coil, or a linear B0 inhomogeneity, which is the same field): breakpoints
    are added at the span's ends where an axis has none, so the offset holds where the program plays nothing.
    The program itself when every offset is 0."""
    if not any(offset_hz_per_m):
        return program
    t_out, g_out = [], []
    for t, g, off in zip(program.t_s, program.g_hz_per_m, offset_hz_per_m, strict=True):
        if off == 0:
            t_out.append(t)
            g_out.append(g)
            continue
        ends = np.array([program.t0_s, program.t1_s])
        if t.size:  # the waveform is 0 outside its breakpoints: hold 0 up to the span's ends, stepping (two
            # breakpoints at one time) where it does not start or end at 0, as the program's own waveform does
            lead = np.array([program.t0_s] + ([t[0]] if g[0] else []))[:2 if program.t0_s < t[0] else 0]
            tail = np.array(([t[-1]] if g[-1] else []) + [program.t1_s])[:2 if program.t1_s > t[-1] else 0]
            tt = np.concatenate((lead, t, tail))
            gg = np.concatenate((np.zeros(lead.size), g, np.zeros(tail.size)))
        else:
            tt, gg = ends, np.zeros(2)
        t_out.append(tt)
        g_out.append(gg + off)
    t3 = (t_out[0], t_out[1], t_out[2])
    g3 = (g_out[0], g_out[1], g_out[2])
    return replace(program, t_s=t3, g_hz_per_m=g3)  # the rest (the shim's field) as it was
