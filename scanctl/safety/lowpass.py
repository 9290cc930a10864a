"""First-order recursive filters in numpy, with no Python loop over samples and no scipy.

:func:`decay_scan` solves the linear recurrence ``y[r] = exp(-gap[r])·y[r-1] + b[r]`` for many filters at
once (the SAFE PNS model's filters over runs of constant slew, docs/safety.md#pns); :func:`low_pass` is the
constant-coefficient case ``y[n] = gain·x[n] + decay·y[n-1]`` (the coil heating model).

How: the elements are cut into rows of :data:`ROW` consecutive elements. Within a row the recurrence is
``y_r = e^{-v_r}·(y_before + Σ_{i≤r} b_i·e^{v_i})`` with ``v`` the row's cumulative gap — a cumulative sum
per row, so rows never cancel against each other. Each gap is first capped at :data:`GAP_CAP` (a state
decayed by ``e^{-36}`` (2e-16) no longer matters: the error is below 2e-16 of the largest ``|y|``), which
keeps ``e^{v}`` ≤ ``e^{16·36}`` finite. The state each row starts from is the same recurrence one level up
(a row's end value and its total gap), solved recursively over 16× fewer elements.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanctl.sequence.model import FloatArray

#: Elements per row of the scan, and the largest gap (decay exponent) one step keeps.
ROW = 16
GAP_CAP = 36.0
_FLOOR = float(np.exp(-GAP_CAP))


def decay_scan(gap: FloatArray, b: FloatArray, y0: FloatArray) -> FloatArray:
    """Solve ``y[f, r] = exp(-gap[f, r])·y[f, r-1] + b[f, r]`` from ``y[f, -1] = y0[f]`` for each filter
    ``f``. ``gap`` (≥ 0) and ``b`` have shape ``(F, R)``, ``y0`` shape ``(F,)``; returns ``(F, R)``. Exact up
    to rounding and to 2e-16 of the largest ``|y|`` (:data:`GAP_CAP`)."""
    filters, n = b.shape
    rows = -(-n // ROW)
    if n == 0:
        return np.zeros((filters, 0))
    order = lane_order(n)
    pad = order >= n  # padding: zero gap and input, it holds the last value
    order[pad] = n - 1
    g = np.take(gap, order, axis=1)
    g[:, pad] = 0.0
    x = np.take(b, order, axis=1)
    x[:, pad] = 0.0
    g, x = g.reshape(filters, ROW, rows), x.reshape(filters, ROW, rows)
    y = scan_lanes(g, x, y0)
    return y.transpose(0, 2, 1).reshape(filters, rows * ROW)[:, :n]


def lane_order(n: int) -> Any:
    """The element held at each place of the lane layout ``(ROW, rows)`` (flattened) of ``n`` elements:
    row ``i`` of the recurrence (elements ``i·ROW .. i·ROW + ROW - 1``) is column ``i``; places past the
    end hold ``n`` or more (padding)."""
    rows = -(-n // ROW)
    return np.arange(rows * ROW).reshape(rows, ROW).T.ravel()


def scan_lanes(gap: FloatArray, b: FloatArray, y0: FloatArray) -> FloatArray:
    """:func:`decay_scan` on arrays already in the lane layout ``(F, ROW, rows)`` (see :func:`lane_order`):
    element ``i·ROW + j`` of filter ``f`` at ``[f, j, i]``, so each step of a row is one vector operation
    over all rows at once. ``gap`` is not modified; returns the values in the same layout."""
    filters, _, rows = b.shape
    v = np.minimum(gap, GAP_CAP)
    for j in range(1, ROW):  # each element's decay exponent from its row's start
        v[:, j] += v[:, j - 1]
    grow = np.exp(v)
    acc = b * grow
    for j in range(1, ROW):
        acc[:, j] += acc[:, j - 1]
    shrink = np.reciprocal(grow, out=grow)
    acc *= shrink  # each element's value had its row started from zero
    start = np.asarray(y0, dtype=np.float64).reshape(filters, 1)
    if rows > 1:  # the state before each row: the same recurrence over the rows' ends
        ends = decay_scan(v[:, -1, :], acc[:, -1, :], start[:, 0])
        before = np.concatenate((start, ends[:, :-1]), axis=1)
    else:
        before = start
    acc += shrink * before[:, None, :]
    return acc


def product_scan(decay: FloatArray, b: FloatArray, y0: FloatArray) -> FloatArray:
    """Solve ``y[f, r] = decay[f, r]·y[f, r-1] + b[f, r]`` from ``y[f, -1] = y0[f]`` on arrays in the lane
    layout ``(F, ROW, rows)`` (:func:`lane_order`), with the decay given as a factor in ``[0, 1]`` (floored
    at ``exp(-GAP_CAP)``, as :func:`scan_lanes` caps the gap) rather than an exponent: no exponential is
    taken. Within a row ``y_r = P_r·(y_before + Σ_{i≤r} b_i/P_i)`` with ``P`` the row's running product of
    the decays; the rows' starting states by the same recurrence over the rows' ends. Returns the values in
    the same layout."""
    filters, _, rows = b.shape
    p = np.maximum(decay, _FLOOR)
    for j in range(1, ROW):  # the running products: vector steps over all rows
        p[:, j] *= p[:, j - 1]
    acc = np.divide(b, p)
    for j in range(1, ROW):
        acc[:, j] += acc[:, j - 1]
    start = np.asarray(y0, dtype=np.float64).reshape(filters, 1)
    if rows > 1:
        last = p[:, -1, :]
        ends = _product_scan_flat(last, last * acc[:, -1, :], start[:, 0])
        before = np.concatenate((start, ends[:, :-1]), axis=1)
    else:
        before = start
    acc += before[:, None, :]
    acc *= p
    return acc


def _product_scan_flat(decay: FloatArray, b: FloatArray, y0: FloatArray) -> FloatArray:
    """:func:`product_scan` on ``(F, R)`` arrays in their natural order."""
    filters, n = b.shape
    rows = -(-n // ROW)
    order = lane_order(n)
    pad = order >= n
    order[pad] = n - 1
    d = np.take(decay, order, axis=1)
    d[:, pad] = 1.0
    x = np.take(b, order, axis=1)
    x[:, pad] = 0.0
    y = product_scan(d.reshape(filters, ROW, rows), x.reshape(filters, ROW, rows), y0)
    return y.transpose(0, 2, 1).reshape(filters, rows * ROW)[:, :n]


def low_pass(x: FloatArray, gain: float, decay: float, state: Any) -> tuple[FloatArray, Any]:
    """Filter ``x`` by ``y[n] = gain·x[n] + decay·y[n-1]`` from the filter ``state`` (a one-element
    sequence: ``decay`` times the output before ``x[0]``, as scipy's ``lfilter`` ``zi``); returns the output
    and the state to continue from. ``0 < decay < 1``."""
    x = np.asarray(x, dtype=np.float64)
    before = float(np.asarray(state, dtype=np.float64).reshape(-1)[0]) / decay
    y = decay_scan(np.full((1, x.size), -np.log(decay)), gain * x[None, :], np.array([before]))[0]
    return y, np.array([decay * (y[-1] if y.size else before)])
