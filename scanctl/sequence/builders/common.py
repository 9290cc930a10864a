"""What the built-in sequence builders share: parameter declarations and their validation, the
excitation, the read-out dwell and the TE/TR bookkeeping.

Parameters are dataclass fields whose metadata declares unit, range and meaning: one declaration serves
the Python API (constructing the dataclass validates it), protocol files (``scanctl.config.protocol``) and the
documentation test. Every problem is a :class:`ParameterError` naming the parameter.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from scanctl.config.tomlcheck import Reader
from scanctl.errors import ConfigError
from scanctl.sequence.build import (
    RF,
    System,
    Trap,
    ceil_raster,
    dwell_step,
    round_raster,
    sinc_pulse,
    valid_dwell,
)

log = logging.getLogger(__name__)

#: Spoiler/crusher area along the slice axis, in cycles across the slice thickness (area = N / thickness).
SLICE_SPOILER_CYCLES = 4.0
#: Read spoiler area in units of the read-out's k-space extent (nx / fov).
READ_SPOILER_EXTENT = 2.0


class ParameterError(ConfigError):
    """A sequence parameter is wrong or cannot be met; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class _ParamReader(Reader):
    def __init__(self) -> None:
        super().__init__({}, "<parameters>")

    def fail(self, key: str, message: str) -> ConfigError:
        return ParameterError(key, message)


def param(default: Any, *, doc: str, unit: str = "", low: float | None = None, high: float | None = None,
          kind: str = "number", choices: tuple[str, ...] = ()) -> Any:
    """Declare a builder parameter (a dataclass field). ``kind``: number, integer, matrix (2D), matrix3 (3D)
    or choice;
    a ``None`` default makes the parameter optional."""
    return field(default=default, metadata={"doc": doc, "unit": unit, "low": low, "high": high, "kind": kind,
                                            "choices": choices})


P = TypeVar("P", bound="Params")


@dataclass(frozen=True, kw_only=True)
class Params:
    """Parameters shared by every 2D Cartesian builder (see docs/protocol.md)."""

    fov_m: float = param(0.256, unit="m", low=0.02, high=0.6,
                         doc="field of view along the read-out (and along phase unless fov_phase_m is given)")
    fov_phase_m: float | None = param(None, unit="m", low=0.02, high=0.6,
                                      doc="field of view along phase encoding (default: fov_m, a square FOV)")
    matrix: tuple[int, int] = param((128, 128), unit="samples, lines", low=8, high=512, kind="matrix",
                                    doc="[nx, ny]: read-out samples and phase-encoding lines, both even")
    slice_thickness_m: float = param(0.005, unit="m", low=0.0005, high=0.05, doc="slice thickness")
    tr_s: float = param(0.5, unit="s", low=0.001, high=20.0, doc="repetition time")
    te_s: float = param(0.015, unit="s", low=0.0005, high=2.0, doc="echo time")
    flip_angle_deg: float = param(90.0, unit="degree", low=1.0, high=180.0, doc="excitation flip angle")
    averages: int = param(1, low=1, high=64, kind="integer", doc="repetitions of the whole k-space (AVG label)")
    readout_bandwidth_hz_per_pixel: float | None = param(
        None, unit="Hz/pixel", low=10.0, high=200_000.0,
        doc="receiver bandwidth per pixel, 1 / (nx * dwell); default per sequence type")
    dwell_s: float | None = param(None, unit="s", low=1e-7, high=1e-3,
                                  doc="ADC dwell time (instead of the bandwidth)")
    dummy_scans: int = param(0, low=0, high=1000, kind="integer",
                             doc="repetitions played without ADC before the acquisition (steady state)")
    rf_duration_s: float = param(0.002, unit="s", low=0.0002, high=0.02, doc="duration of every RF pulse")
    time_bw_product: float = param(4.0, low=1.0, high=20.0, doc="time-bandwidth product of the sinc pulses")

    #: The default receiver bandwidth when neither it nor the dwell time is given, Hz/pixel.
    DEFAULT_BANDWIDTH: ClassVar[float] = 260.0

    @property
    def fov_phase(self) -> float:
        """The phase-encoding field of view, m."""
        return self.fov_m if self.fov_phase_m is None else self.fov_phase_m

    def __post_init__(self) -> None:
        r = _ParamReader()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = check_value(r, f, value, f.name)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        if self.dwell_s is not None and self.readout_bandwidth_hz_per_pixel is not None:
            raise ParameterError("dwell_s", "give readout_bandwidth_hz_per_pixel or dwell_s, not both")

    @classmethod
    def from_mapping(cls: type[P], values: Mapping[str, Any]) -> P:
        """Parameters from a mapping (a protocol's ``[sequence]`` table). Raises :class:`ParameterError`
        for an unknown key, a wrong type or a value out of range."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParameterError(unknown[0], f"unknown key (known: {', '.join(sorted(known))})")
        return cls(**values)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Every parameter: name, default, unit, range, kind and meaning (for docs and tests)."""
        return [{"name": f.name, "default": f.default, **f.metadata} for f in dataclasses.fields(cls)]


def check_value(r: Reader, f: dataclasses.Field[Any], value: Any, key: str) -> Any:
    """One parameter value checked against its declaration (returned normalised: floats, tuples)."""
    m = f.metadata
    if value is None and f.default is None:
        return None
    kind = m["kind"]
    if kind == "number":
        return r.check_number(value, key, m["low"], m["high"])
    if kind == "integer":
        return r.check_integer(value, key, int(m["low"]), int(m["high"]))
    if kind == "choice":
        if not isinstance(value, str) or value not in m["choices"]:
            raise r.fail(key, f"must be one of {', '.join(m['choices'])}, got {value!r}")
        return value
    if kind in ("matrix", "matrix3"):
        size = 2 if kind == "matrix" else 3
        if kind == "matrix" and isinstance(value, list | tuple) and len(value) == 3:
            raise r.fail(key, f"{value!r} is a 3D matrix [nx, ny, nz], but this is a 2D sequence: give [nx, ny] "
                              f"(3D: the gre_3d type)")
        if not isinstance(value, list | tuple) or len(value) != size:
            what = "two integers [nx, ny]" if size == 2 else "three integers [nx, ny, nz]"
            raise r.fail(key, f"must be a list of {what}, got {value!r}")
        sizes = tuple(r.check_integer(v, f"{key}[{i}]", int(m["low"]), int(m["high"])) for i, v in enumerate(value))
        for i, v in enumerate(sizes):
            if v % 2:
                raise r.fail(f"{key}[{i}]", f"must be even, got {v}")
        return value if isinstance(value, tuple) else sizes
    raise AssertionError(f"unknown parameter kind {kind}")


def resolve(cls: type[P], params: P | None, overrides: Mapping[str, Any]) -> P:
    """``params`` (or the defaults) with ``overrides`` applied, validated."""
    if params is None:
        return cls.from_mapping(overrides)
    if not overrides:
        return params
    return cls.from_mapping({**{f.name: getattr(params, f.name) for f in dataclasses.fields(params)}, **overrides})


# ----------------------------------------------------------------------------------------------------------
# Shared pieces of the 2D builders
# ----------------------------------------------------------------------------------------------------------


def dwell_time(system: System, p: Params, *, reversible: bool = False) -> float:
    """The read-out dwell from the parameters, on the raster :func:`valid_dwell` requires; the read-out
    gradient must stay within the limit (else :class:`ParameterError` with the largest bandwidth)."""
    nx = p.matrix[0]
    max_g = system.limits("x")[0]
    step = dwell_step(system, nx, reversible=reversible)
    shortest = math.ceil(1.0 / (p.fov_m * max_g) / step - 1e-9) * step
    if p.dwell_s is not None:
        dwell, key = valid_dwell(system, nx, p.dwell_s, reversible=reversible), "dwell_s"
        if dwell < shortest:
            raise ParameterError(key, f"{p.dwell_s * 1e6:.4g} µs needs a read-out gradient beyond the limit: "
                                      f"the shortest dwell for this FOV is {shortest * 1e6:.4g} µs")
    else:
        bw = p.readout_bandwidth_hz_per_pixel or p.DEFAULT_BANDWIDTH
        dwell, key = valid_dwell(system, nx, 1.0 / (bw * nx), reversible=reversible), "readout_bandwidth_hz_per_pixel"
        if dwell < shortest and p.readout_bandwidth_hz_per_pixel is None:
            # The bandwidth is the type's default: the matrix asked for is what the gradients cannot encode.
            largest = _largest_samples(system, p, bw, max_g, reversible)
            raise ParameterError("matrix[0]", f"{nx} samples at the default {bw:g} Hz/pixel need a read-out "
                                              f"gradient beyond the limit: the largest for this FOV is {largest} "
                                              f"(or give a lower readout_bandwidth_hz_per_pixel)")
        if dwell < shortest:
            raise ParameterError(key, f"{bw:g} Hz/pixel needs a read-out gradient beyond the limit: the largest "
                                      f"bandwidth for this FOV and matrix is {1 / (shortest * nx):.4g} Hz/pixel")
    return dwell


def _largest_samples(system: System, p: Params, bw: float, max_g: float, reversible: bool) -> int:
    """The largest even read-out matrix whose dwell at bandwidth ``bw`` the read-out gradient can play."""
    n = 2 * int(max_g * p.fov_m / bw / 2) + 40  # above the estimate: the dwell's raster rounds both ways
    while n > 2:
        step = dwell_step(system, n, reversible=reversible)
        if valid_dwell(system, n, 1.0 / (bw * n), reversible=reversible) >= math.ceil(
                1.0 / (p.fov_m * max_g) / step - 1e-9) * step:
            return n
        n -= 2
    return n


def selective_pulse(system: System, p: Params, flip_deg: float, *, use: str, phase_rad: float = 0.0) -> tuple[RF, Trap]:
    """A sinc pulse with its slice-select gradient; a slice too thin for the gradient limit is a
    :class:`ParameterError` on ``slice_thickness_m`` naming the thinnest possible."""
    max_g = system.limits("z")[0]
    duration = ceil_raster(p.rf_duration_s, 2 * system.rasters.gradient_s)
    thinnest = p.time_bw_product / duration / max_g
    if p.slice_thickness_m < thinnest:
        raise ParameterError("slice_thickness_m", f"{p.slice_thickness_m * 1e3:.4g} mm needs a slice-select "
                                                  f"gradient beyond the limit: the thinnest slice with this pulse "
                                                  f"is {thinnest * 1e3:.4g} mm")
    return sinc_pulse(system, flip_angle_rad=math.radians(flip_deg), duration_s=duration,
                      slice_thickness_m=p.slice_thickness_m, time_bw_product=p.time_bw_product, use=use,
                      phase_rad=phase_rad)


def quantise(system: System, key: str, value_s: float, steps: int = 1) -> float:
    """``value_s`` on ``steps`` block rasters (the timing grid the builders realise exactly)."""
    q = steps * system.rasters.block_duration_s
    out = round_raster(value_s, q)
    if abs(out - value_s) > 1e-9:
        log.info("%s %.6f ms realised as %.6f ms (timing grid %.0f µs)", key, value_s * 1e3, out * 1e3, q * 1e6)
    return out


def require_at_least(key: str, value_s: float, minimum_s: float, system: System, steps: int = 1,
                     note: str = "", requested_s: float | None = None) -> None:
    """:class:`ParameterError` naming ``key`` and the minimum (rounded up to ``steps`` block rasters) if the
    realised ``value_s`` is shorter; the message quotes ``requested_s`` (default: ``value_s``)."""
    if value_s < minimum_s - 1e-9:
        q = steps * system.rasters.block_duration_s
        least = ceil_raster(minimum_s, q)
        shown = value_s if requested_s is None else requested_s
        raise ParameterError(key, f"{shown * 1e3:.4g} ms is shorter than the minimum {least * 1e3:.4g} ms"
                                  f"{note} ({key} = {least:.6g})")


def repetition_time(system: System, p: Params, te_s: float, per_slice_min_s: float, slices: int,
                    note: str = "") -> float:
    """TR on a grid of ``slices`` block rasters (each slice gets TR / slices), at least ``slices`` times the
    shortest time one slice needs; else :class:`ParameterError` on ``tr_s`` naming the minimum."""
    tr = quantise(system, "tr_s", p.tr_s, steps=slices)
    note = f" at TE {te_s * 1e3:.4g} ms{note}" + (f" with {slices} slices" if slices > 1 else "")
    require_at_least("tr_s", tr, slices * per_slice_min_s, system, steps=slices, note=note, requested_s=p.tr_s)
    return tr


def phase_areas(ny: int, fov_m: float) -> np.ndarray:
    """ky of each phase-encoding line index 0..ny-1: ``(j - ny/2) / fov`` (1/m)."""
    return (np.arange(ny) - ny // 2) / fov_m


def definitions(name: str, p: Params, te_s: float, tr_s: float, **extra: object) -> dict[str, object]:
    """The file's definitions: ``Name``, ``FOV`` (read, phase, slice or slab; m), ``TE``, ``TR`` and ``extra``."""
    return {"Name": name, "FOV": (p.fov_m, p.fov_phase, p.slice_thickness_m), "TE": te_s, "TR": tr_s, **extra}
