"""Numerical phantoms for the Bloch simulator: tissue maps on a voxel grid centred on the isocentre.

Axes and positions (the same convention everywhere in :mod:`scanctl.simulators.physics`):

* a 2D map has shape ``(ny, nx)``, a 3D map ``(nz, ny, nx)``: columns are **x** (the readout axis of a
  Cartesian scan), rows are **y**, planes are **z** (slices);
* voxel ``[k, j, i]`` is centred at ``x = (i - nx // 2) * dx``, ``y = (j - ny // 2) * dy``,
  ``z = (k - nz // 2) * dz`` (metres, scanner coordinates): the isocentre is the centre of voxel
  ``n // 2`` on every axis, as on the grid a centred FFT reconstructs;
* a 2D phantom is a **slab** of thickness ``dz`` centred on ``z = 0`` and uniform through it, so
  slice-selective pulses excite whatever part of the slab their slice profile covers.

Units: ``pd`` is relative proton density (dimensionless, >= 0), ``t1_s``/``t2_s`` seconds (> 0 where
``pd`` > 0; anything >= 0 elsewhere), ``b0_offset_hz`` the local off-resonance in Hz (any sign),
``t2prime_s`` (optional) the reversible intravoxel dephasing time T2′ in seconds (> 0, ``inf`` for none;
1/T2* = 1/T2 + 1/T2′), ``voxel_size_m`` metres.

:func:`shepp_logan` builds the MR Shepp–Logan phantom of Gach et al. (2008); :func:`load_phantom` reads
one from ``.npz`` or ``.h5`` (format in ``docs/phantom.md``). Every problem with a phantom is a
:class:`~scanctl.errors.ConfigError` that names the file (if any) and the key.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.config.files import require_regular
from scanctl.errors import ConfigError

FloatArray = npt.NDArray[np.float64]

#: Slab thickness of a 2D phantom when none is given (m): covers the whole slice profile of the usual
#: 2-5 mm slices (a time-bandwidth-4 sinc for 5 mm still excites ~1% at +-5 mm).
DEFAULT_SLAB_M = 10e-3

#: The most a phantom file may hold, or expand to (bytes): four float64 maps of 256^3 voxels are 512 MiB.
MAX_PHANTOM_BYTES = 1 << 30
MAPS = ("pd", "t1_s", "t2_s", "b0_offset_hz")


@dataclass(frozen=True, eq=False)
class Phantom:
    """Tissue maps of one object; see the module docstring for axes, positions and units.

    ``voxel_size_m`` is ``(dx, dy, dz)``; for a 2D phantom ``dz`` is the slab thickness (a 2-tuple
    ``(dx, dy)`` is accepted and gets :data:`DEFAULT_SLAB_M`). The maps are stored as float64 and
    validated on construction (:class:`ConfigError` names ``source`` and the offending key).
    """

    pd: FloatArray
    t1_s: FloatArray
    t2_s: FloatArray
    b0_offset_hz: FloatArray
    voxel_size_m: tuple[float, float, float]
    source: str = "<phantom>"
    t2prime_s: FloatArray | None = None
    #: Where the grid sits in the scanner (its pose): ``axes`` ``(3, 3)``, columns the grid's x, y and z
    #: axes in scanner coordinates (orthonormal, right-handed; None: the scanner's own), ``origin_m`` the
    #: scanner position of the centre of voxel ``n // 2`` (m). A voxel at grid offset ``u`` (the positions
    #: of :meth:`axis_positions_m`) is at ``origin_m + axes @ u`` in the scanner.
    axes: FloatArray | None = None
    origin_m: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        self._validate_pose()
        maps = {name: _as_map(self.source, name, getattr(self, name)) for name in MAPS}
        if self.t2prime_s is not None:
            maps["t2prime_s"] = _as_map(self.source, "t2prime_s", self.t2prime_s, allow_inf=True)
        shape = maps["pd"].shape
        for name, value in maps.items():
            if value.shape != shape:
                raise ConfigError(f"{self.source}: {name} has shape {value.shape}, expected {shape} (the shape of pd)")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "voxel_size_m", _voxel_size(self.source, self.voxel_size_m, len(shape)))
        for name in ("pd", "t1_s", "t2_s"):
            if (maps[name] < 0).any():
                raise ConfigError(f"{self.source}: {name} has negative values (min {maps[name].min():g})")
        if "t2prime_s" in maps and (maps["t2prime_s"] <= 0).any():
            raise ConfigError(f"{self.source}: t2prime_s must be > 0 (inf for no intravoxel dephasing), "
                              f"min {maps['t2prime_s'].min():g}")
        for name in ("t1_s", "t2_s"):
            bad = (maps["pd"] > 0) & (maps[name] <= 0)
            if bad.any():
                raise ConfigError(
                    f"{self.source}: {name} must be > 0 wherever pd > 0 ({int(bad.sum())} voxels are not)")

    def _validate_pose(self) -> None:
        try:
            origin = np.asarray(self.origin_m, np.float64).reshape(3)
            axes = None if self.axes is None else np.asarray(self.axes, np.float64).reshape(3, 3)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.source}: origin_m must be 3 numbers and axes a 3x3 matrix ({exc})") from None
        if not np.isfinite(origin).all() or (axes is not None and not np.isfinite(axes).all()):
            raise ConfigError(f"{self.source}: origin_m and axes must be finite")
        if axes is not None and (not np.allclose(axes.T @ axes, np.eye(3), atol=1e-9)
                                 or np.linalg.det(axes) < 0):
            raise ConfigError(f"{self.source}: axes must be a rotation (orthonormal columns, right-handed), "
                              f"got {axes.tolist()}")
        object.__setattr__(self, "origin_m", (float(origin[0]), float(origin[1]), float(origin[2])))
        object.__setattr__(self, "axes", axes)

    @property
    def rotation(self) -> FloatArray:
        """``axes``, the identity when the grid is the scanner's."""
        return np.eye(3) if self.axes is None else np.asarray(self.axes)

    def frame_offset_m(self) -> FloatArray:
        """The grid centre in the grid's own axes: ``axesᵀ @ origin_m`` (m)."""
        return self.rotation.T @ np.asarray(self.origin_m)

    def scanner_positions_m(self) -> FloatArray:
        """Every voxel centre in scanner coordinates, ``(nz, ny, nx, 3)`` (m; a 2D phantom: its mid-plane)."""
        x, y, z = self.axis_positions_m()
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        local = np.stack((xx, yy, zz), axis=-1)
        return local @ self.rotation.T + np.asarray(self.origin_m)

    @property
    def ndim(self) -> int:
        return int(self.pd.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pd.shape)

    @property
    def shape3d(self) -> tuple[int, int, int]:
        """``(nz, ny, nx)``; ``nz`` is 1 for a 2D phantom."""
        s = self.pd.shape
        return (1, s[0], s[1]) if len(s) == 2 else (s[0], s[1], s[2])

    @property
    def fov_m(self) -> tuple[float, float, float]:
        """Extent ``(x, y, z)`` in metres (z: the slab thickness of a 2D phantom)."""
        nz, ny, nx = self.shape3d
        dx, dy, dz = self.voxel_size_m
        return (nx * dx, ny * dy, nz * dz)

    def axis_positions_m(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Voxel centres along x, y and z (m); z is ``[0.0]`` for a 2D phantom."""
        nz, ny, nx = self.shape3d
        dx, dy, dz = self.voxel_size_m
        z = np.zeros(1) if self.ndim == 2 else (np.arange(nz) - nz // 2) * dz
        x = (np.arange(nx) - nx // 2) * dx
        y = (np.arange(ny) - ny // 2) * dy
        return x.astype(np.float64), y.astype(np.float64), np.asarray(z, dtype=np.float64)


def _as_map(source: str, name: str, value: Any, *, allow_inf: bool = False) -> FloatArray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name} is not a numeric array ({exc})") from exc
    if arr.ndim not in (2, 3):
        raise ConfigError(f"{source}: {name} must be 2D (ny, nx) or 3D (nz, ny, nx), got shape {arr.shape}")
    if 0 in arr.shape:
        raise ConfigError(f"{source}: {name} is empty (shape {arr.shape})")
    if np.isnan(arr).any() or (not allow_inf and np.isinf(arr).any()):
        raise ConfigError(f"{source}: {name} contains NaN or infinite values")
    return np.ascontiguousarray(arr)


def _voxel_size(source: str, value: Any, ndim: int) -> tuple[float, float, float]:
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: voxel_size_m is not numeric ({exc})") from exc
    if arr.ndim != 1 or arr.size not in ((2, 3) if ndim == 2 else (3,)):
        want = "(dx, dy) or (dx, dy, slab thickness)" if ndim == 2 else "(dx, dy, dz)"
        raise ConfigError(f"{source}: voxel_size_m must be {want} for a {ndim}D phantom, got {arr.tolist()}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ConfigError(f"{source}: voxel_size_m must be positive and finite, got {arr.tolist()}")
    if arr.size == 2:
        arr = np.append(arr, DEFAULT_SLAB_M)
    return (float(arr[0]), float(arr[1]), float(arr[2]))


# ----------------------------------------------------------------------------------------------------------
# MR Shepp–Logan (Gach, Tanase & Boada 2008)
# ----------------------------------------------------------------------------------------------------------
#
# The table is written out here from the paper's values rather than taken from the ``phantominator``
# package: that package is GPL-3.0 (this project is MIT), and the table is 14 rows. Each tissue has its
# proton density and T2, and T1 either explicitly or from the field-strength model T1 = A * B0**C
# (B0 in tesla). Each region of the phantom holds one tissue: ellipsoids are painted in table order,
# a later one replacing what is inside it (the paper's "subtracted" ellipsoids do exactly this for nested
# regions; where two inner ellipsoids only overlap -- the white matter and the tumour at (0, 0.1) --
# the later one wins, so every voxel has a real tissue's T1/T2 instead of a sum).

#: tissue -> (proton density, A, C, explicit T1 in s or nan, T2 in s)
TISSUES: dict[str, tuple[float, float, float, float, float]] = {
    "scalp": (0.80, 0.324, 0.137, math.nan, 0.070),
    "marrow": (0.12, 0.533, 0.088, math.nan, 0.050),
    "csf": (0.98, math.nan, math.nan, 4.2, 1.99),
    "gray_matter": (0.745, 0.857, 0.376, math.nan, 0.100),
    "white_matter": (0.617, 0.583, 0.382, math.nan, 0.080),
    "tumor": (0.95, 0.926, 0.217, math.nan, 0.100),
}

#: (x, y, z) centre, (a, b, c) semi-axes, in-plane rotation (degrees), tissue; unit cube [-1, 1]^3.
ELLIPSOIDS: tuple[tuple[float, float, float, float, float, float, float, str], ...] = (
    (0.0, 0.0, 0.0, 0.72, 0.95, 0.93, 0.0, "scalp"),
    (0.0, 0.0, 0.0, 0.69, 0.92, 0.90, 0.0, "marrow"),
    (0.0, -0.0184, 0.0, 0.6624, 0.874, 0.88, 0.0, "csf"),
    (0.0, -0.0184, 0.0, 0.6524, 0.864, 0.87, 0.0, "gray_matter"),
    (-0.22, 0.0, -0.25, 0.41, 0.16, 0.21, -72.0, "csf"),
    (0.22, 0.0, -0.25, 0.31, 0.11, 0.22, 72.0, "csf"),
    (0.0, 0.35, -0.25, 0.21, 0.25, 0.35, 0.0, "white_matter"),
    (0.0, 0.1, -0.25, 0.046, 0.046, 0.046, 0.0, "tumor"),
    (-0.08, -0.605, -0.25, 0.046, 0.023, 0.02, 0.0, "tumor"),
    (0.06, -0.605, -0.25, 0.046, 0.023, 0.02, -90.0, "tumor"),
    (0.0, -0.1, -0.25, 0.046, 0.046, 0.046, 0.0, "tumor"),
    (0.0, -0.605, -0.25, 0.023, 0.023, 0.023, 0.0, "tumor"),
    (0.06, -0.105, 0.0625, 0.056, 0.04, 0.1, -90.0, "tumor"),
    (0.0, 0.1, 0.625, 0.056, 0.056, 0.1, 0.0, "csf"),
)

#: The plane of the 3D phantom that a 2D phantom shows (unit-cube z): the one through the ventricles
#: and the small "tumours", i.e. the classic 2D Shepp–Logan picture.
SLICE_Z_2D = -0.25


def tissue_values(b0_t: float) -> dict[str, tuple[float, float, float]]:
    """``tissue -> (pd, T1 s, T2 s)`` at field strength ``b0_t`` (tesla)."""
    out = {}
    for name, (pd, a, c, t1, t2) in TISSUES.items():
        out[name] = (pd, t1 if not math.isnan(t1) else a * b0_t**c, t2)
    return out


def shepp_logan(n: int = 128, *, nz: int | None = None, fov_m: float = 0.256, b0_t: float = 3.0,
                slab_thickness_m: float = DEFAULT_SLAB_M, b0_offset_hz: float = 0.0) -> Phantom:
    """The MR Shepp–Logan phantom (Gach et al. 2008) on an ``n`` x ``n`` grid over ``fov_m`` (m).

    2D (``nz`` None): the plane z = -0.25 of the 3D phantom, as a slab ``slab_thickness_m`` thick.
    3D: ``nz`` planes over the same extent in z as in x and y (voxel ``fov_m / nz`` thick), centred on
    that plane, as the phantom sits in the patient (:func:`shepp_logan_at`): its mid-plane (``nz // 2``)
    is the 2D phantom.
    T1 follows the paper's field model at ``b0_t`` tesla; ``b0_offset_hz`` fills the off-resonance map.
    Raises :class:`ConfigError` for a non-positive size or field of view.
    """
    if n < 1 or (nz is not None and nz < 1):
        raise ConfigError(f"shepp_logan: matrix sizes must be positive, got n={n}, nz={nz}")
    if not (fov_m > 0 and slab_thickness_m > 0 and b0_t > 0):
        raise ConfigError("shepp_logan: fov_m, slab_thickness_m and b0_t must be positive")
    u = 2.0 * (np.arange(n) - n // 2) / n  # voxel centres in the unit cube, isocentre at n // 2
    if nz is None:
        zu = np.array([SLICE_Z_2D])
        voxel = (fov_m / n, fov_m / n, slab_thickness_m)
    else:
        zu = SLICE_Z_2D + 2.0 * (np.arange(nz) - nz // 2) / nz
        voxel = (fov_m / n, fov_m / n, fov_m / nz)
    z, y, x = np.meshgrid(zu, u, u, indexing="ij")
    pd, t1, t2 = _paint(x, y, z, b0_t)
    if nz is None:
        pd, t1, t2 = pd[0], t1[0], t2[0]
    return Phantom(pd=pd, t1_s=t1, t2_s=t2, b0_offset_hz=np.full(pd.shape, float(b0_offset_hz)),
                   voxel_size_m=voxel, source=f"shepp_logan({n}{'' if nz is None else f', nz={nz}'})")


def shepp_logan_at(points_m: npt.ArrayLike, *, fov_m: float = 0.256,
                   b0_t: float = 3.0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The 3D MR Shepp–Logan phantom's ``(pd, T1 s, T2 s)`` at ``points_m`` ``(..., 3)``: patient coordinates
    (DICOM LPS, m), each of shape ``points.shape[:-1]``. The phantom is ``fov_m`` wide in x and y, as tall
    in z, and placed so that its plane z = -0.25 (the 2D phantom, through the ventricles) is at z = 0: the
    isocentre plane shows what the 2D default shows, and the top of the head is at z ≈ +0.59 ``fov_m``.
    Evaluated exactly (the ellipsoids are analytic, nothing is interpolated). Raises :class:`ConfigError`
    for a non-positive ``fov_m`` or ``b0_t``, or points that are not ``(..., 3)`` finite numbers."""
    if not (fov_m > 0 and b0_t > 0):
        raise ConfigError("shepp_logan_at: fov_m and b0_t must be positive")
    pts = np.asarray(points_m, np.float64)
    if pts.ndim < 1 or pts.shape[-1] != 3 or not np.isfinite(pts).all():
        raise ConfigError(f"shepp_logan_at: points must be finite (..., 3) positions, got shape {pts.shape}")
    scale = 2.0 / fov_m
    return _paint(pts[..., 0] * scale, pts[..., 1] * scale, SLICE_Z_2D + pts[..., 2] * scale, b0_t)


def _paint(x: FloatArray, y: FloatArray, z: FloatArray,
           b0_t: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(pd, T1, T2)`` at unit-cube positions ``x``, ``y``, ``z``: the ellipsoids painted in table order."""
    values = tissue_values(b0_t)
    pd, t1, t2 = (np.zeros(np.shape(x)) for _ in range(3))
    for xc, yc, zc, a, b, c, theta_deg, tissue in ELLIPSOIDS:
        ct, st = math.cos(math.radians(theta_deg)), math.sin(math.radians(theta_deg))
        dx, dy, dz = x - xc, y - yc, z - zc
        inside = ((dx * ct + dy * st) / a) ** 2 + ((dy * ct - dx * st) / b) ** 2 + (dz / c) ** 2 <= 1.0
        pd[inside], t1[inside], t2[inside] = values[tissue]
    return pd, t1, t2


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------


def load_phantom(path: str | Path) -> Phantom:
    """Read a phantom from ``.npz`` (numpy) or ``.h5``/``.hdf5`` (HDF5, needs h5py); see docs/phantom.md.

    Keys: ``pd``, ``t1_s``, ``t2_s`` (required), ``b0_offset_hz`` (optional, 0 Hz), ``t2prime_s``
    (optional, none), ``voxel_size_m``
    (required; in HDF5 a dataset or an attribute of the root group). Raises :class:`ConfigError` naming
    the file and the key for a missing file or key, a wrong shape, negative, NaN or infinite values.
    """
    p = Path(path)
    source = str(p)
    try:
        require_regular(p, MAX_PHANTOM_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{source}: phantom file not found") from None
    except ValueError as exc:  # a FIFO or a device (/dev/zero) would be read forever
        raise ConfigError(f"{source}: cannot read phantom: it {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read phantom: {exc.strerror or exc}") from None
    suffix = p.suffix.lower()
    if suffix == ".npz":
        raw = _read_npz(p)
    elif suffix in (".h5", ".hdf5"):
        raw = _read_h5(p)
    else:
        raise ConfigError(f"{source}: unknown phantom format {suffix!r} (use .npz or .h5)")
    for key in ("pd", "t1_s", "t2_s", "voxel_size_m"):
        if key not in raw:
            raise ConfigError(f"{source}: missing key {key!r} (have: {', '.join(sorted(raw)) or 'none'})")
    pd = _as_map(source, "pd", raw["pd"])
    b0 = raw.get("b0_offset_hz")
    return Phantom(pd=pd, t1_s=raw["t1_s"], t2_s=raw["t2_s"],
                   b0_offset_hz=np.zeros(pd.shape) if b0 is None else b0,
                   voxel_size_m=raw["voxel_size_m"], source=source, t2prime_s=raw.get("t2prime_s"))


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:  # what it expands to, before expanding anything
            expanded = sum(max(member.file_size, _declared_bytes(archive, member)) for member in archive.infolist())
        if expanded > MAX_PHANTOM_BYTES:
            raise ConfigError(f"{path}: cannot read as .npz: it expands to {expanded} bytes, more than the "
                              f"{MAX_PHANTOM_BYTES} accepted")
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        # a corrupt or truncated archive, a member that is no array (pickled objects are never loaded)
        raise ConfigError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None


def _declared_bytes(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> int:
    """The bytes the array in ``member`` says it holds (its .npy header's shape and dtype): numpy allocates
    that much whatever the archive's own sizes say. Raises ValueError for a header that is no .npy's."""
    if not member.filename.endswith(".npy"):
        return 0
    with archive.open(member) as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    return int(np.prod(shape, dtype=object)) * dtype.itemsize


def _read_h5(path: Path) -> dict[str, Any]:
    try:
        import h5py  # comes with the ismrmrd package
    except ImportError as exc:
        raise ConfigError(f"{path}: reading .h5 phantoms needs h5py (pip install h5py, or ismrmrd which brings "
                          "it); or save the phantom as .npz") from exc
    try:
        with h5py.File(path, "r") as f:
            datasets = [key for key in f if isinstance(f[key], h5py.Dataset)]
            expanded = sum(f[key].size * f[key].dtype.itemsize for key in datasets)
            if expanded > MAX_PHANTOM_BYTES:  # a small compressed file can expand to any size
                raise ConfigError(f"{path}: cannot read as HDF5: its datasets hold {expanded} bytes, more than "
                                  f"the {MAX_PHANTOM_BYTES} accepted")
            out: dict[str, Any] = {key: np.asarray(f[key]) for key in datasets}
            if "voxel_size_m" not in out and "voxel_size_m" in f.attrs:
                out["voxel_size_m"] = np.asarray(f.attrs["voxel_size_m"])
            return out
    except (OSError, ValueError, TypeError) as exc:  # corrupt, or datasets of no numeric type
        raise ConfigError(f"{path}: cannot read as HDF5 ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------------------------
# Tissue labels (scanctl sweep: contrast between tissues by their masks)
# ----------------------------------------------------------------------------------------------------------


def tissue_labels(points_m: npt.ArrayLike, fov_m: float = 0.256) -> tuple[npt.NDArray[np.int16], tuple[str, ...]]:
    """Which tissue of the 3D MR Shepp–Logan phantom (``fov_m`` wide, as :func:`shepp_logan_at` places it) lies
    at each of ``points_m`` ``(..., 3)`` (patient coordinates, DICOM LPS, m): e.g. the pixel centres of an
    image, from its geometry. Returns ``(labels, names)``: ``labels`` of shape ``points.shape[:-1]``, 0 for
    background, else ``k`` for tissue ``names[k - 1]`` (the keys of :data:`TISSUES`). Derived from the
    phantom's own values — every tissue has its own (proton density, T2) — so the labels are those of the
    voxels the simulator images. Raises :class:`ConfigError` as :func:`shepp_logan_at`."""
    pd, _, t2 = shepp_logan_at(points_m, fov_m=fov_m)
    names = tuple(TISSUES)
    labels = np.zeros(pd.shape, dtype=np.int16)
    for k, name in enumerate(names, start=1):
        tissue_pd, _, _, _, tissue_t2 = TISSUES[name]
        labels[(pd == tissue_pd) & (t2 == tissue_t2)] = k
    return labels, names
