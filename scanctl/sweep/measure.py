"""The figures of one finished run: check results (timing, SAR, PNS, heating), image quality (SNR, N/2
ghosting, contrast between phantom tissues) — from the run's own files, measured with
:mod:`scanctl.data.quality`.

Tissue masks come from the phantom, not from the image: a phantom that ships a label map registers a
function in the entry point group ``scanctl.phantom_labels`` (the Shepp–Logan phantom:
``scanctl.simulators.physics.phantom:tissue_labels``) that gives the tissue at points in patient coordinates
(DICOM LPS, m) for a phantom as wide as the scan's field of view (the simulator makes it fill it). The points
are the measured image's pixel centres, from its geometry in ``image.json`` (position, read and phase
directions, field of view: docs/recon.md), so a slice anywhere, at any orientation, gets the tissues it
cuts; an image without geometry is taken as a square transverse slice through the isocentre. The core
reaches the function through the entry point, as it reaches every simulator, so it imports none. Masks are
eroded by one pixel (each keeps only pixels whose eight neighbours are the same tissue) so that
partial-volume edges do not blur the contrast.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.config.profile import SystemProfile
from scanctl.data import quality
from scanctl.errors import ScanctlError

log = logging.getLogger(__name__)

LABELS_GROUP = "scanctl.phantom_labels"
#: A builder's "shorter than the minimum" message ends "(te_s = 0.0031)": the minimum, for the table.
_MINIMUM = re.compile(r"\((te_s|tr_s|echo_spacing_s) = ([0-9.eE+-]+)\)")


def check_figures(report: dict[str, Any], seq_path: Path | None, profile: SystemProfile) -> dict[str, Any]:
    """SAR, PNS and heating peaks from the run's safety prediction, and the sequence checks (as
    ``scanctl check``) of the sequence it played. A completed run passed those checks before anything moved
    (the scanner refuses to prepare a sequence that fails them), so its report says them and the sequence is
    not checked a second time; any other run's sequence is checked here."""
    out: dict[str, Any] = {}
    safety = report.get("safety") or {}
    if safety:
        sar, pns, heat = safety["sar"], safety["pns"], safety["heating"]
        out.update({
            "sar_wb_6min_w_per_kg": sar["whole_body"]["6min"]["peak_w_per_kg"],
            "sar_wb_10s_w_per_kg": sar["whole_body"]["10s"]["peak_w_per_kg"],
            "sar_head_6min_w_per_kg": sar["head"]["6min"]["peak_w_per_kg"],
            "pns_percent": pns["peak_percent"],
            "coil_peak_c": heat["gradient_coil"]["peak_temperature_c"],
            "rf_duty_cycle": heat["rf_amplifier"]["duty_cycle_peak"],
        })
    if report.get("outcome") == "completed" and report.get("duration_s"):
        out.update(check_ok=True, check_violations=0, duration_s=report["duration_s"])
    elif seq_path is not None and seq_path.is_file():
        from scanctl.sequence.checks import check
        from scanctl.sequence.pulseq_read import read

        checked = check(read(seq_path), profile)
        out["check_ok"] = checked.ok
        out["check_violations"] = sum(checked.violation_counts.values())
        out["duration_s"] = checked.duration_s
    return out


def minimum_figures(message: str) -> dict[str, float]:
    """``min_te_s`` / ``min_tr_s`` from a point refused for a TE or TR below the sequence's minimum."""
    return {f"min_{key}": float(value) for key, value in _MINIMUM.findall(message)}


def image_figures(image: npt.ArrayLike, *, phantom: str | None, fov_m: float | None,
                  contrast: tuple[tuple[str, str], ...], channels: int = 1,
                  geometry: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """SNR, ghosting and the asked tissue contrasts of a reconstructed image (``[y, x]`` or a stack, whose
    middle image is measured; the root sum of squares of ``channels`` receive channels, as the recon combines
    them by default); ``geometry``: the measured image's entry of ``image.json`` (else a transverse slice
    through the isocentre over ``fov_m``). Returns the figures and notes saying what could not be measured."""
    img = np.abs(np.asarray(image, dtype=np.float64))
    if img.ndim == 3:
        img = img[img.shape[0] // 2]
    notes: list[str] = []
    out: dict[str, Any] = {}
    try:
        q = quality.measure(img, channels=channels)
        out.update(snr=q.snr, ghosting_ratio=q.ghosting_ratio, signal_mean=q.signal_mean,
                   noise_sigma=q.noise_sigma)
        notes.extend(q.flags)
    except quality.QualityError as exc:
        notes.append(f"image: {exc}")
    if not contrast:
        return out, notes
    try:
        labels, names = tissue_labels(phantom, img.shape, fov_m, geometry)
    except ScanctlError as exc:
        return out, [*notes, f"contrast: {exc}"]
    masks = {name: _interior(labels == k) for k, name in enumerate(names, start=1)}
    for a, b in contrast:
        key = f"contrast_{a}_{b}"
        if a not in masks or b not in masks:
            notes.append(f"{key}: the phantom has no tissue {a if a not in masks else b!r} "
                         f"(tissues: {', '.join(names)})")
            continue
        try:
            out[key] = quality.contrast(img, masks[a], masks[b])
        except quality.QualityError:
            notes.append(f"{key}: a tissue has no pixel inside it at this resolution")
    return out, notes


def tissue_labels(phantom: str | None, shape: tuple[int, ...], fov_m: float | None,
                  geometry: dict[str, Any] | None = None) -> tuple[Any, tuple[str, ...]]:
    """The tissue-label map of ``phantom`` (a shipped phantom's name) for an image of ``shape`` placed by
    ``geometry`` (an ``image.json`` entry), or over ``fov_m`` through the isocentre (a square image). Raises
    ScanctlError when the phantom has no label map or the image cannot be placed."""
    if len(shape) != 2:
        raise ScanctlError(f"tissue labels need a 2D image, got shape {shape}")
    if geometry is not None:
        placed = _placement(geometry, shape)
    else:
        if shape[0] != shape[1]:
            raise ScanctlError(f"tissue labels of an image without geometry need a square image, got "
                               f"{shape[1]} x {shape[0]}")
        if fov_m is None or not math.isfinite(fov_m) or fov_m <= 0:
            raise ScanctlError("the sequence gives no field of view")
        mm = 1e3 * fov_m
        placed = ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), mm, mm)
    return _labels(phantom or "shepp_logan", shape, placed)


def _placement(geometry: dict[str, Any], shape: tuple[int, ...]) -> tuple[Any, ...]:
    """``(position mm, read_dir, phase_dir, read FOV mm, phase FOV mm)`` of an ``image.json`` entry, checked."""
    try:
        position, read, phase = (tuple(float(v) for v in geometry[k]) for k in ("position_mm", "read_dir",
                                                                               "phase_dir"))
        fov_read, fov_phase = (float(v) for v in geometry["fov_mm"][:2])
        nx, ny = (int(v) for v in geometry["matrix"][:2])
    except (KeyError, TypeError, ValueError) as exc:
        raise ScanctlError(f"image.json: the image's geometry is incomplete ({type(exc).__name__}: {exc})") from None
    values = (*position, *read, *phase, fov_read, fov_phase)
    if len(position) != 3 or len(read) != 3 or len(phase) != 3 or not all(map(math.isfinite, values)) \
            or fov_read <= 0 or fov_phase <= 0:
        raise ScanctlError("image.json: the image's position, directions or field of view are not finite 3-vectors "
                           "and positive sizes")
    if (ny, nx) != tuple(shape):
        raise ScanctlError(f"image.json: the geometry is for {nx} x {ny} pixels, the image has {shape[1]} x {shape[0]}")
    return position, read, phase, fov_read, fov_phase


@functools.lru_cache(maxsize=16)
def _labels(name: str, shape: tuple[int, int], placed: tuple[Any, ...]) -> tuple[Any, tuple[str, ...]]:
    """The labels at the pixel centres (a worker runs many points of the same geometry: once each).

    Pixel ``[j, i]`` lies at ``position + (i - nx//2)·Δread·read_dir + (j - ny//2)·Δphase·phase_dir``
    (``image.json``'s convention); the phantom is as wide as the larger side of the field of view."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=LABELS_GROUP) if ep.name == name]
    if not found:
        raise ScanctlError(f"the phantom {name!r} has no tissue labels")
    position, read, phase, fov_read, fov_phase = placed
    ny, nx = shape
    i = (np.arange(nx) - nx // 2) * (fov_read / nx)
    j = (np.arange(ny) - ny // 2) * (fov_phase / ny)
    points_mm = (np.asarray(position) + i[None, :, None] * np.asarray(read)
                 + j[:, None, None] * np.asarray(phase))
    labels, names = found[0].load()(points_mm * 1e-3, 1e-3 * max(fov_read, fov_phase))
    labels = np.asarray(labels)
    labels.setflags(write=False)
    return labels, tuple(names)


def _interior(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Pixels whose eight neighbours are in ``mask`` too (the edge of an image counts as outside)."""
    padded = np.pad(mask, 1)
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out &= padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
    return out
