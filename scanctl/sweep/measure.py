"""The figures of one finished run: check results (timing, SAR, PNS, heating), image quality (SNR, N/2
ghosting, contrast between phantom tissues) — from the run's own files, measured with
:mod:`scanctl.data.quality`.

Tissue masks come from the phantom, not from the image: a phantom that ships a label map registers a
function in the entry point group ``scanctl.phantom_labels`` (the Shepp–Logan phantom:
``scanctl.simulators.physics.phantom:tissue_labels``) that gives, for an ``n`` x ``n`` image over the
field of view the phantom fills, the tissue of each pixel. The core reaches it through the entry point,
as it reaches every simulator, so it imports none. Masks are eroded by one pixel (each keeps only
pixels whose eight neighbours are the same tissue) so that partial-volume edges do not blur the contrast.
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
    ``scanctl check``) of the sequence it played."""
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
    if seq_path is not None and seq_path.is_file():
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
                  contrast: tuple[tuple[str, str], ...], channels: int = 1) -> tuple[dict[str, Any], list[str]]:
    """SNR, ghosting and the asked tissue contrasts of a reconstructed image (``[y, x]`` or a stack, whose
    middle slice is measured; the root sum of squares of ``channels`` receive channels, as the recon combines
    them by default); returns the figures and notes saying what could not be measured."""
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
        labels, names = tissue_labels(phantom, img.shape, fov_m)
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


def tissue_labels(phantom: str | None, shape: tuple[int, ...], fov_m: float | None) -> tuple[Any, tuple[str, ...]]:
    """The tissue-label map of ``phantom`` (a shipped phantom's name) for an image of ``shape`` over
    ``fov_m``. Raises ScanctlError when the phantom has no label map or the image is not square."""
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ScanctlError(f"tissue labels need a square image, got {shape[1]} x {shape[0]}")
    if fov_m is None or not math.isfinite(fov_m) or fov_m <= 0:
        raise ScanctlError("the sequence gives no field of view")
    return _labels(phantom or "shepp_logan", shape[0], fov_m)


@functools.lru_cache(maxsize=16)
def _labels(name: str, n: int, fov_m: float) -> tuple[Any, tuple[str, ...]]:
    """(A worker runs many points of the same matrix: the map and the entry point lookup once.)"""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=LABELS_GROUP) if ep.name == name]
    if not found:
        raise ScanctlError(f"the phantom {name!r} has no tissue labels")
    labels, names = found[0].load()(n, fov_m)
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
