"""Image files: ``image.npy`` (float32 ``(images, ny, nx)``), ``image.png`` (an 8-bit grayscale mosaic,
written with the standard library only: zlib and struct) and ``image.json`` (where each image lies, see
:func:`image_json` and docs/recon.md)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.data.recon.common import ReconError

#: The version of ``image.json``'s layout.
IMAGE_JSON_FORMAT = 1


def to_uint8(image: npt.ArrayLike, *, vmin: float | None = None, vmax: float | None = None) -> npt.NDArray[np.uint8]:
    """Scale ``image`` linearly so that ``vmin`` -> 0 and ``vmax`` -> 255 (defaults: 0, or the minimum if
    negative, and the maximum), clipping outside. NaN maps to 0; if ``vmax <= vmin`` every pixel is 0."""
    a = np.asarray(image, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo = float(vmin) if vmin is not None else min(0.0, float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 0.0)
    if not hi > lo:
        return np.zeros(a.shape, dtype=np.uint8)
    scaled = np.nan_to_num((a - lo) * (255.0 / (hi - lo)), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def png_bytes(image: npt.ArrayLike, *, vmin: float | None = None, vmax: float | None = None) -> bytes:
    """An 8-bit grayscale PNG of a 2D image (row 0 at the top; a stack ``(n, ny, nx)`` is tiled with
    :func:`mosaic`), scaled as :func:`to_uint8`."""
    pixels = np.asarray(image)
    if pixels.ndim == 3:
        pixels = mosaic(pixels)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ReconError(f"a PNG needs a non-empty 2D image or (n, ny, nx) stack, got shape {pixels.shape}")
    pixels = pixels if pixels.dtype == np.uint8 and vmin is None and vmax is None else to_uint8(pixels, vmin=vmin,
                                                                                                   vmax=vmax)
    height, width = pixels.shape
    # Each scanline starts with its filter type (0: none).
    raw = np.hstack([np.zeros((height, 1), np.uint8), pixels]).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def save_png(image: npt.ArrayLike, path: str | Path, *, vmin: float | None = None, vmax: float | None = None) -> Path:
    """Write ``image`` (2D, or a stack ``(n, ny, nx)`` tiled by :func:`mosaic`) as an 8-bit grayscale
    PNG. Raises :class:`ReconError`."""
    path = Path(path)
    data = png_bytes(image, vmin=vmin, vmax=vmax)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise ReconError(f"cannot write PNG: {exc.strerror or exc}", path) from exc
    return path


def save_npy(images: npt.ArrayLike, path: str | Path) -> Path:
    """Write the image array as ``.npy`` (exactly at ``path``). Raises :class:`ReconError`."""
    path = Path(path)
    try:
        with path.open("wb") as f:
            np.save(f, np.asarray(images))
    except OSError as exc:
        raise ReconError(f"cannot write array: {exc.strerror or exc}", path) from exc
    return path


def mosaic(images: npt.ArrayLike, columns: int | None = None) -> npt.NDArray[np.float32]:
    """Tile a stack ``(n, ny, nx)`` into one 2D image, ``columns`` wide (default: a near-square grid);
    a 2D image is returned as is."""
    stack = np.asarray(images, dtype=np.float32)
    if stack.ndim == 2:
        return stack
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ReconError(f"a mosaic needs (n, ny, nx) images, got shape {stack.shape}")
    n, ny, nx = stack.shape
    cols = columns if columns is not None else int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.zeros((rows * ny, cols * nx), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx] = stack[i]
    return out


def json_bytes(meta: dict[str, Any]) -> bytes:
    """``image.json``'s text (see :func:`scanctl.data.recon.Reconstruction.meta`)."""
    return (json.dumps(meta, indent=1, allow_nan=False) + "\n").encode()  # NaN is no JSON: refused


def save_json(meta: dict[str, Any], path: str | Path) -> Path:
    """Write ``image.json`` (exactly at ``path``). Raises :class:`ReconError`."""
    path = Path(path)
    try:
        path.write_bytes(json_bytes(meta))
    except OSError as exc:
        raise ReconError(f"cannot write image description: {exc.strerror or exc}", path) from exc
    return path


__all__ = ["IMAGE_JSON_FORMAT", "json_bytes", "mosaic", "png_bytes", "save_json", "save_npy", "save_png", "to_uint8"]
