"""The static fields the spins see besides the phantom's own: second-order B0 terms (the magnet's error, and
the second-order shim coils' field, which adds to B0 everywhere), and the transmit coil's spatial B1
efficiency (docs/prescan.md). Positions are the scanner's (m); a posed grid's voxels are mapped there first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scanctl.errors import ConfigError
from scanctl.hw.program import SECOND_ORDER_TERMS

FloatArray = npt.NDArray[np.float64]

log = logging.getLogger("scanctl.simulators.physics.bloch")

#: Width of the off-resonance bins that split tissue classes (Hz): inside a bin the RF rotation uses the
#: bin's mean, a phase error below 2π x 2.5 Hz x 2 ms = 0.03 rad over half of a 4 ms pulse.
RF_B0_BIN_HZ = 5.0
#: Width of the transmit-efficiency bins that split tissue classes (relative B1): inside a bin the rotation
#: uses the bin's mean, a flip within 0.5 % of each voxel's own (a 0.1 % error of a small-flip signal at 5°,
#: 0.5 % at 90°).
RF_B1_BIN = 0.01
#: The most classes the off-resonance and B1 bins may make before the bins are widened (work grows with
#: classes).
MAX_B0_CLASSES = 512


def second_order_field_hz(terms_hz_per_m2: Mapping[str, float], x: FloatArray, y: FloatArray,
                          z: FloatArray) -> FloatArray:
    """The off-resonance (Hz) of second-order terms (channel -> Hz/m², channels of
    :data:`~scanctl.hw.program.SECOND_ORDER_TERMS`: ``z² − (x² + y²)/2``, ``zx``, ``zy``, ``x² − y²``, ``2xy``;
    a channel not given is 0) at positions ``x``, ``y``, ``z`` (m)."""
    get = terms_hz_per_m2.get
    return (get("z2", 0.0) * (z * z - 0.5 * (x * x + y * y)) + get("zx", 0.0) * z * x + get("zy", 0.0) * z * y
            + get("x2y2", 0.0) * (x * x - y * y) + get("xy", 0.0) * 2.0 * x * y)


def as_terms(values: Mapping[str, float] | tuple[float, ...] | None) -> dict[str, float]:
    """Second-order terms as a dict of the non-zero channels (a tuple is in :data:`SECOND_ORDER_TERMS` order).
    Raises ConfigError for an unknown channel, a tuple of the wrong length or a value that is not finite."""
    if values is None:
        return {}
    if isinstance(values, tuple):
        if len(values) != len(SECOND_ORDER_TERMS):
            raise ConfigError(f"second-order terms must be {len(SECOND_ORDER_TERMS)} numbers "
                              f"({','.join(SECOND_ORDER_TERMS)}), got {values!r}")
        values = dict(zip(SECOND_ORDER_TERMS, values, strict=True))
    unknown = sorted(set(values) - set(SECOND_ORDER_TERMS))
    if unknown:
        raise ConfigError(f"unknown second-order term {unknown[0]!r} (terms: {', '.join(SECOND_ORDER_TERMS)})")
    out = {k: float(v) for k, v in values.items() if v != 0}
    if not all(math.isfinite(v) for v in out.values()):
        raise ConfigError(f"second-order terms must be finite, got {values!r}")
    return out


#: The transmit-map models of the ``b1_map`` URL option (docs/prescan.md).
B1_MODELS = ("radial", "linear")


@dataclass(frozen=True)
class TransmitMap:
    """The transmit coil's relative B1 efficiency over the object, a factor on the global ``b1`` scale:

    - ``radial``: ``1 + a (1 − r²/R²)`` with ``r`` the distance from the bore's axis (z): a birdcage's centre
      brightening at 3 T (the wavelength in tissue is near the head's size), ``a`` the excess at the centre,
      1 at ``r = R``;
    - ``linear``: ``1 + gx x + gy y`` (``gx``, ``gy`` per m): a left-right (or anterior-posterior) asymmetry.

    A factor below 0 is clipped to 0 (a null: no coil reverses its field). The uniform map is ``radial`` with
    ``a = 0``."""

    model: str = "radial"
    a: float = 0.0
    radius_m: float = 0.1
    gx_per_m: float = 0.0
    gy_per_m: float = 0.0

    @property
    def uniform(self) -> bool:
        return self.a == 0 and self.gx_per_m == 0 and self.gy_per_m == 0

    def at(self, x: FloatArray, y: FloatArray, z: FloatArray) -> FloatArray:
        """The relative efficiency at scanner positions (m), the shape of ``x`` (dimensionless, >= 0)."""
        del z  # both models are uniform along the bore (a birdcage longer than the object)
        if self.model == "radial":
            factor = 1.0 + self.a * (1.0 - (x * x + y * y) / self.radius_m**2)
        else:
            factor = 1.0 + self.gx_per_m * x + self.gy_per_m * y
        return np.maximum(np.asarray(factor, np.float64), 0.0)


def transmit_map(text: str) -> TransmitMap:
    """The ``b1_map`` URL option: ``radial,A[,R_CM]`` (centre brightening ``A``, 1 at ``R_CM`` cm from the axis,
    default 10 cm) or ``linear,GX,GY`` (relative change per cm along x and y). Raises ValueError saying what is
    wrong (the registry reports it as a ConfigError)."""
    model, *rest = (p.strip() for p in text.split(","))
    try:
        values = [float(v) for v in rest]
    except ValueError:
        raise ValueError(f"{text!r}: the coefficients must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{text!r}: the coefficients must be finite")
    if model == "radial" and len(values) in (1, 2):
        radius_cm = values[1] if len(values) == 2 else 10.0
        if not radius_cm > 0:
            raise ValueError(f"{text!r}: the radius R_CM must be > 0")
        if not -1.0 < values[0] <= 10.0:
            raise ValueError(f"{text!r}: the centre brightening A must be in (-1, 10]")
        return TransmitMap("radial", a=values[0], radius_m=radius_cm / 100.0)
    if model == "linear" and len(values) == 2:
        if not all(abs(v) <= 1.0 for v in values):
            raise ValueError(f"{text!r}: GX, GY must be at most 1 per cm in size")
        return TransmitMap("linear", gx_per_m=100.0 * values[0], gy_per_m=100.0 * values[1])
    raise ValueError(f"{text!r} is not radial,A[,R_CM] or linear,GX,GY (models: {', '.join(B1_MODELS)})")


def class_labels(tissue: FloatArray, df_hz: FloatArray, b1: FloatArray) -> npt.NDArray[np.intp]:
    """Each voxel's class (0..n-1): the voxels of one ``tissue`` row (T1, T2, T2′, plane), in one off-resonance
    bin (:data:`RF_B0_BIN_HZ`) and one transmit-efficiency bin (:data:`RF_B1_BIN`). A wide B0 or B1 map in fine
    bins would multiply the classes: beyond :data:`MAX_B0_CLASSES` the bins are widened, with a warning."""
    scale = 1.0
    while True:
        key = np.column_stack((tissue, np.round(df_hz / (RF_B0_BIN_HZ * scale)), np.round(b1 / (RF_B1_BIN * scale))))
        _, label = np.unique(np.round(key, 12), axis=0, return_inverse=True)
        if label.size == 0 or int(label.max()) < MAX_B0_CLASSES or scale * RF_B0_BIN_HZ > 1e6:
            break
        scale *= 2.0
    if scale > 1.0:
        log.warning("the phantom's off-resonance and transmit maps spread over more than %d classes in %g Hz and "
                    "%g B1 bins: RF sees them in %g Hz and %g bins", MAX_B0_CLASSES, RF_B0_BIN_HZ, RF_B1_BIN,
                    RF_B0_BIN_HZ * scale, RF_B1_BIN * scale)
    return np.asarray(label, np.intp).reshape(-1)
