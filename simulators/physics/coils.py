"""Receive coils for the Bloch simulator: the single-channel body coil and a ring array of circular loops.

Model, and why:

* **Sensitivities by Biot–Savart.** Each element is a circular loop of radius ``loop_radius_m``; the loops
  sit on a ring of radius ``ring_radius_m`` around the z axis of the coil frame, evenly spaced in angle,
  their planes tangent to the ring (normals radial), centred at ``z = 0``. The field of a unit current is
  summed over :data:`LOOP_SEGMENTS` straight segments of each loop, each segment's field in closed form
  (exact for the inscribed polygon, whose field differs from the circle's by 0.08 % at the loop's centre
  and well under 1 % beyond a few millimetres from the wire, closer than the object ever comes). By
  reciprocity the receive sensitivity of an element is its transverse field in the rotating frame,
  ``B1⁻ ∝ Bx - i By`` (Hoult 2000); it is normalised so that the root sum of squares over the elements
  is 1 at the ring's centre, so the array and the body coil (sensitivity 1 everywhere) see the same
  signal there.
* **Noise covariance from the loops' overlap.** Noise is partly the sample's (eddy currents that every
  loop sees through its own field, so two loops' noise is correlated by how much their fields overlap
  inside the object) and partly each loop's own (copper, preamplifier; uncorrelated). The sample part is
  ``Ψ_ij ∝ ∫_object B_i · B_j dV`` (reciprocity: the noise correlation of two coils is the overlap of
  their fields' losses in the sample), integrated over a cylinder that fills the ring to
  ``object_fraction`` of its radius and as long as its diameter, and normalised to a unit diagonal;
  ``sample_noise_fraction`` of the noise power is the sample's. With the defaults (8 loops, loops half the
  ring radius, 90% sample noise) neighbouring channels correlate by about 0.18 and the others by -0.03
  to -0.07 (printed by ``tests/test_coils.py``), within the 0.1-0.3 measured on head arrays between
  neighbours (Roemer et al. 1990; Kellman & McVeigh 2005).

The covariance is the correlation matrix times ``noise_std²``: every channel has the receiver noise the
body coil has, and :func:`correlated_noise` draws it (``L @ white`` with ``L`` the Cholesky factor).
Coordinates: metres, the coil frame is the patient's (the coil moves with the patient; the simulator maps
it to scanner coordinates with the patient position).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from scanctl.errors import ConfigError

from .phantom import Phantom

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

#: Straight segments per loop in the Biot–Savart sum.
LOOP_SEGMENTS = 64
#: Default channel count of the ring array.
DEFAULT_CHANNELS = 8
#: Loop radius as a fraction of the ring radius: on an 8-loop ring neighbouring centres are 2 sin(22.5°) =
#: 0.77 ring radii apart, about 1.5 loop radii -- the overlap at which two loops' mutual inductance
#: vanishes (Roemer et al. 1990), as arrays are built.
DEFAULT_LOOP_FRACTION = 0.5
#: The share of the noise power that comes from the sample (the rest: each loop's own, uncorrelated);
#: head arrays at 3 T are sample-noise dominated.
DEFAULT_SAMPLE_NOISE_FRACTION = 0.9
#: The conducting object the sample noise comes from: a cylinder of this fraction of the ring radius.
DEFAULT_OBJECT_FRACTION = 0.8
#: Field points per block of the Biot–Savart sum (bounds its (points, segments, 3) arrays to ~25 MB).
_POINTS_PER_BLOCK = 16384
#: Quadrature nodes in r and z of the overlap integral (4x as many in φ).
_OVERLAP_NODES = 6


@dataclass(frozen=True)
class ReceiveCoil:
    """A receive coil: ``name``, one name per channel, and the noise ``correlation`` between channels
    (``(N, N)`` real symmetric, unit diagonal; the covariance is it times ``noise_std²``). ``loops``: the
    array's elements (centre ``(N, 3)`` and unit normal ``(N, 3)`` in the coil frame, radius in m); none
    for the body coil, whose sensitivity is 1 everywhere."""

    name: str
    channel_names: tuple[str, ...]
    correlation: FloatArray
    centres_m: FloatArray = field(default_factory=lambda: np.zeros((0, 3)))
    normals: FloatArray = field(default_factory=lambda: np.zeros((0, 3)))
    loop_radius_m: float = 0.0
    norm: float = 1.0  # sensitivities are divided by it (RSS 1 at the centre)

    @property
    def channels(self) -> int:
        return len(self.channel_names)

    @property
    def is_body(self) -> bool:
        return self.centres_m.shape[0] == 0

    def sensitivities(self, points_m: FloatArray) -> ComplexArray:
        """The receive sensitivity ``(N, *points.shape[:-1])`` of each channel at ``points_m`` ``(..., 3)``
        (coil frame, m): complex, dimensionless (1 for the body coil)."""
        pts = np.asarray(points_m, np.float64)
        if self.is_body:
            return np.ones((1, *pts.shape[:-1]), np.complex128)
        b = loop_fields(self.centres_m, self.normals, self.loop_radius_m, pts.reshape(-1, 3))  # (N, P, 3)
        s = np.asarray((b[..., 0] - 1j * b[..., 1]) / self.norm, dtype=np.complex128)
        return s.reshape(self.channels, *pts.shape[:-1])

    def noise_cholesky(self) -> FloatArray:
        """``L`` with ``L Lᵀ`` = the correlation matrix (draws correlated noise from white)."""
        return np.asarray(np.linalg.cholesky(self.correlation), dtype=np.float64)

    def info(self, noise_std: float) -> dict[str, object]:
        """What a raw-data header records: the coil's name, its channels' names and the noise covariance
        (``noise_std²`` times the correlation; a plain nested list), in the signal's units squared."""
        cov = (noise_std**2) * self.correlation
        return {"name": self.name, "channels": self.channels, "channel_names": list(self.channel_names),
                "noise_covariance": cov.tolist(), "noise_correlation": self.correlation.tolist()}


def body_coil() -> ReceiveCoil:
    """The single-channel body coil: sensitivity 1 everywhere, one noise channel."""
    return ReceiveCoil(name="body", channel_names=("body",), correlation=np.ones((1, 1)))


def loop_ring(channels: int = DEFAULT_CHANNELS, ring_radius_m: float = 0.15, *,
              loop_radius_m: float | None = None, sample_noise_fraction: float = DEFAULT_SAMPLE_NOISE_FRACTION,
              object_fraction: float = DEFAULT_OBJECT_FRACTION) -> ReceiveCoil:
    """A ring array of ``channels`` circular loops (see the module docstring); ``loop_radius_m`` defaults to
    :data:`DEFAULT_LOOP_FRACTION` of the ring radius. Raises :class:`ConfigError` for a channel count
    below 1, non-positive or non-finite radii, a loop wider than the ring, or fractions outside (0, 1]."""
    if int(channels) != channels or channels < 1:
        raise ConfigError(f"coils: channels must be a positive integer, got {channels!r}")
    if loop_radius_m is None:
        loop_radius_m = DEFAULT_LOOP_FRACTION * ring_radius_m
    for name, value in (("ring_radius_m", ring_radius_m), ("loop_radius_m", loop_radius_m)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"coils: {name} must be positive and finite, got {value!r}")
    if loop_radius_m >= ring_radius_m:
        raise ConfigError(f"coils: loop_radius_m ({loop_radius_m:g}) must be smaller than ring_radius_m "
                          f"({ring_radius_m:g})")
    for name, value in (("sample_noise_fraction", sample_noise_fraction), ("object_fraction", object_fraction)):
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ConfigError(f"coils: {name} must be in (0, 1], got {value!r}")
    n = int(channels)
    phi = 2.0 * np.pi * np.arange(n) / n
    normals = np.column_stack((np.cos(phi), np.sin(phi), np.zeros(n)))
    centres = ring_radius_m * normals
    names = tuple(f"loop{i + 1}" for i in range(n))
    probe = ReceiveCoil("ring", names, np.eye(n), centres, normals, float(loop_radius_m))
    norm = float(np.sqrt(np.sum(np.abs(probe.sensitivities(np.zeros((1, 3)))) ** 2)))
    sample = _overlap(centres, normals, float(loop_radius_m), object_fraction * ring_radius_m)
    correlation = sample_noise_fraction * sample + (1.0 - sample_noise_fraction) * np.eye(n)
    return ReceiveCoil(name=f"ring{n}", channel_names=names, correlation=correlation, centres_m=centres,
                       normals=normals, loop_radius_m=float(loop_radius_m), norm=norm)


def loop_fields(centres: FloatArray, normals: FloatArray, radius: float, points: FloatArray) -> FloatArray:
    """The magnetic field ``(N, P, 3)`` of a unit current in each loop at ``points`` ``(P, 3)`` (Biot–Savart
    over :data:`LOOP_SEGMENTS` straight segments, each in closed form; units of µ0·I/4π per metre: only
    ratios are used)."""
    theta = 2.0 * np.pi * np.arange(LOOP_SEGMENTS + 1) / LOOP_SEGMENTS
    out = np.zeros((centres.shape[0], points.shape[0], 3))
    for i, (c, n) in enumerate(zip(centres, normals, strict=True)):
        u = np.cross(n, [0.0, 0.0, 1.0])  # in the loop's plane: tangential to the ring, and z
        u = u / np.linalg.norm(u) if np.linalg.norm(u) > 1e-12 else np.array([1.0, 0.0, 0.0])
        v = np.cross(n, u)
        wire = c + radius * (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * v)  # (S+1, 3)
        for lo in range(0, points.shape[0], _POINTS_PER_BLOCK):
            p = points[lo:lo + _POINTS_PER_BLOCK, None, :]
            # The exact field of each straight segment a -> b (r1 = p - a, r2 = p - b):
            # (r1 x r2) (|r1| + |r2|) / (|r1| |r2| (|r1| |r2| + r1 . r2)).
            r1, r2 = p - wire[None, :-1], p - wire[None, 1:]
            n1, n2 = np.linalg.norm(r1, axis=-1), np.linalg.norm(r2, axis=-1)
            denom = np.maximum(n1 * n2 * (n1 * n2 + np.einsum("psk,psk->ps", r1, r2)), 1e-30)
            out[i, lo:lo + _POINTS_PER_BLOCK] = np.sum(np.cross(r1, r2) * ((n1 + n2) / denom)[..., None], axis=1)
    return out


def _overlap(centres: FloatArray, normals: FloatArray, radius: float, object_radius: float) -> FloatArray:
    """``∫ B_i · B_j dV`` over a cylinder of ``object_radius`` and length ``2·object_radius`` centred on the
    ring, normalised to a unit diagonal (the sample-noise correlation, module docstring). Quadrature in
    cylindrical coordinates: Gauss–Legendre in r and z, uniform in φ (periodic: spectrally accurate);
    :data:`_OVERLAP_NODES` nodes in r and z and 4x as many in φ (the correlations move by < 1e-3 from 6
    to 20 nodes)."""
    x, w = np.polynomial.legendre.leggauss(_OVERLAP_NODES)  # on [-1, 1]
    r = 0.5 * object_radius * (x + 1.0)
    w_r = 0.5 * object_radius * w * r  # r dr
    z, w_z = object_radius * x, object_radius * w
    phi = 2.0 * np.pi * np.arange(4 * _OVERLAP_NODES) / (4 * _OVERLAP_NODES)
    rr, pp, zz = np.meshgrid(r, phi, z, indexing="ij")
    weight = (w_r[:, None, None] * w_z[None, None, :]) * np.ones_like(pp)
    pts = np.column_stack((rr.ravel() * np.cos(pp.ravel()), rr.ravel() * np.sin(pp.ravel()), zz.ravel()))
    b = loop_fields(centres, normals, radius, pts)  # (N, P, 3)
    gram = np.einsum("ipk,jpk,p->ij", b, b, weight.ravel())
    d = np.sqrt(np.diag(gram))
    return gram / np.outer(d, d)


def correlated_noise(rng: np.random.Generator, cholesky: FloatArray, sigma: FloatArray) -> ComplexArray:
    """Complex Gaussian noise ``(N, S)`` with covariance ``L Lᵀ · sigma[s]²`` between channels at each sample
    (``sigma`` ``(S,)``: each sample's standard deviation; real and imaginary parts each ``σ/sqrt(2)``)."""
    n = cholesky.shape[0]
    draw = rng.standard_normal((2, n, sigma.size)) * (sigma / np.sqrt(2.0))
    return cholesky @ (draw[0] + 1j * draw[1])


#: Nodes per grid axis at which receive sensitivities are computed (interpolated linearly between).
SENSITIVITY_NODES = 33


def grid_sensitivities(phantom: Phantom, coil: ReceiveCoil | None,
                       coil_to_scanner: FloatArray | None) -> ComplexArray | None:
    """Each channel's sensitivity on the phantom's grid, ``(N, nz, ny, nx)``, in the internal (mirror)
    convention (conjugated: the output is conjugated back); None for the body coil. Evaluated by
    Biot–Savart on at most :data:`SENSITIVITY_NODES` nodes per axis and interpolated linearly between
    them (the fields vary over centimetres; a 128³ grid evaluated point by point would take minutes)."""
    if coil is None or coil.is_body:
        return None
    rot = np.eye(3) if coil_to_scanner is None else np.asarray(coil_to_scanner, np.float64)
    local = phantom.axis_positions_m()  # x, y, z offsets on the grid's own axes
    nodes = [np.linspace(0, a.size - 1, min(a.size, SENSITIVITY_NODES)) for a in local]
    coarse = [np.interp(n, np.arange(a.size), a) for n, a in zip(nodes, local, strict=True)]
    zz, yy, xx = np.meshgrid(coarse[2], coarse[1], coarse[0], indexing="ij")
    scanner = np.stack((xx, yy, zz), axis=-1) @ phantom.rotation.T + np.asarray(phantom.origin_m)
    sens = coil.sensitivities(scanner @ rot)  # scanner -> coil frame: rotᵀ r, row by row
    for axis, (n, a) in enumerate(zip(nodes, local, strict=True)):  # x, y, z: array axes 3, 2, 1
        sens = np.moveaxis(np.tensordot(_linear_weights(n, a.size), sens, axes=(1, 3 - axis)), 0, 3 - axis)
    return np.conj(sens)


def _linear_weights(nodes: FloatArray, n: int) -> FloatArray:
    """``(n, len(nodes))``: linear interpolation from values at fractional indices ``nodes`` (ascending,
    first 0, last ``n - 1``) to the indices ``0..n-1``."""
    w = np.zeros((n, nodes.size))
    if nodes.size == 1:
        w[:, 0] = 1.0
        return w
    idx = np.arange(n, dtype=np.float64)
    j = np.clip(np.searchsorted(nodes, idx, side="right") - 1, 0, nodes.size - 2)
    frac = (idx - nodes[j]) / (nodes[j + 1] - nodes[j])
    w[np.arange(n), j] = 1.0 - frac
    w[np.arange(n), j + 1] = frac
    return w
