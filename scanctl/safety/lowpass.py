"""The first-order low-pass filter the heating and PNS models run: ``y[n] = gain·x[n] + decay·y[n-1]``.

scipy.signal is imported on the first call, not with the models: it takes about a second to import, and a
``scanctl check`` that stops at a parse error, or a server that never predicts, should not pay for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanctl.sequence.model import FloatArray


def low_pass(x: FloatArray, gain: float, decay: float, state: Any) -> tuple[FloatArray, Any]:
    """Filter ``x`` from the filter ``state`` (a one-element array: ``decay`` times the output before
    ``x[0]``); returns the output and the state to continue from."""
    from scipy.signal import lfilter

    y, state = lfilter([gain], [1.0, -decay], x, zi=state)
    return np.asarray(y, dtype=np.float64), state
