"""One point of a sweep: its inputs resolved (:class:`Task`, keyed by the content hash of what determines its
result) and its run (:func:`run_point`, on a Dask worker): the point's protocol written out and run through
the one scan session every run goes through (:func:`scanctl.engine.session.run_scan`), then measured.

A point that cannot run — a TE below the sequence's minimum at this TR, a refused scan, a bug — is a result
too (outcome ``invalid``, ``refused``, ``error`` …, with the reason): the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanctl.config import profile as profiles
from scanctl.config.profile import SystemProfile
from scanctl.errors import ConfigError, ScanctlError, SequenceFormatError
from scanctl.sweep.measure import check_figures, image_figures, minimum_figures
from scanctl.sweep.spec import KEEPABLE, PROTOCOL_TABLES, URL_KINDS, Spec, dumps, with_options

log = logging.getLogger(__name__)

#: Bumped when what a point computes changes: a new format is new points, never a stale result.
FORMAT = 2  # 2: tissue masks placed by the image's geometry; image.json kept


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to run one point (picklable; no paths but the base's referenced files)."""

    index: int
    key: str  # the content hash
    values: dict[str, Any]  # axis -> value
    protocol_text: str | None  # the resolved protocol (None: a Pulseq file, ``seq_path``)
    seq_path: str | None
    profile: SystemProfile
    urls: dict[str, str]
    patient_weight_kg: float | None
    mode: str
    phantom: str | None
    contrast: tuple[tuple[str, str], ...]
    keep: tuple[str, ...]  # file names to return besides image.npy and image.json


def tasks(spec: Spec) -> list[Task]:
    """The tasks of every point of ``spec``, in order. Raises SweepError for a point that cannot be written."""
    from scanctl.engine.run import versions

    version = versions().get("scanctl", "unknown")
    loaded: dict[str | None, SystemProfile] = {}
    out = []
    for index, values in enumerate(spec.points()):
        ref = values.get("profile", spec.profile)
        if ref not in loaded:
            loaded[ref] = profiles.load(ref)
        profile = loaded[ref]
        urls = {}
        for kind in URL_KINDS:
            opts = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f"{kind}.")}
            if opts:
                urls[kind] = with_options(profile.subsystems[kind], opts)
        text, files, phantom = _protocol(spec, values)
        if "rf.phantom" in values:  # the RF URL's phantom wins over the protocol's (SimulatedRF.place)
            phantom = str(values["rf.phantom"])
        keep = tuple(KEEPABLE[k] for k in spec.keep) if spec.keep_points is None or index in spec.keep_points else ()
        inputs = {"format": FORMAT, "scanctl": version, "protocol": text, "files": files,
                  "profile": _profile_content(profile), "urls": {**profile.subsystems, **urls},
                  "patient_weight_kg": values.get("patient.weight_kg"), "mode": spec.mode,
                  "contrast": [list(p) for p in spec.contrast]}
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:24]
        out.append(Task(index, key, values, text, None if text is not None else str(spec.base), profile, urls,
                        values.get("patient.weight_kg"), spec.mode, phantom, spec.contrast, keep))
    return out


def _protocol(spec: Spec, values: dict[str, Any]) -> tuple[str | None, dict[str, str], str | None]:
    """The point's protocol text (relative file names made absolute), the content hashes of the files it
    names, and its phantom's name."""
    if spec.base_data is None:
        return None, {str(spec.base): _file_hash(spec.base)}, None
    data = {t: dict(v) if isinstance(v, dict) else v for t, v in spec.base_data.items()}
    for name, value in values.items():
        table, _, key = name.partition(".")
        if table == "sequence" or table in PROTOCOL_TABLES:
            data.setdefault(table, {})[key] = value
            if table == "phantom" and key in ("name", "file"):
                data["phantom"].pop("file" if key == "name" else "name", None)
    files = {}
    for table, key in (("sequence", "file"), ("phantom", "file")):
        if key in data.get(table, {}):
            path = Path(data[table][key])
            path = path if path.is_absolute() else spec.base.parent / path
            data[table][key] = str(path.resolve())
            files[f"{table}.{key}"] = _file_hash(path)
    phantom = data.get("phantom", {}).get("name") or data.get("phantom", {}).get("file")
    return dumps(data), files, phantom


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _profile_content(profile: SystemProfile) -> dict[str, Any]:
    """What the profile says, without where it was read from (the same limits are the same point)."""
    content = dataclasses.asdict(profile)
    content.pop("source", None)
    return content


def run_point(task: Task) -> dict[str, Any]:
    """Run one point (on a worker): returns ``{"result": …, "files": {name: bytes}}``. Never raises for the
    point itself: a point that cannot run is a result with its outcome and reason."""
    from scanctl.engine.run import RunOutputError
    from scanctl.engine.session import run_scan

    t0, cpu0 = time.perf_counter(), time.process_time()
    result: dict[str, Any] = {"index": task.index, "key": task.key, "values": task.values, "outcome": "",
                              "message": "", "figures": {}, "notes": [], "outputs": []}
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="scanctl-sweep-") as tmp:
        source = Path(task.seq_path) if task.seq_path is not None else Path(tmp) / "protocol.toml"
        if task.protocol_text is not None:
            source.write_text(task.protocol_text, encoding="utf-8")
        run_dir = Path(tmp) / "run"
        report = None
        try:
            report = run_scan(source, task.profile, run_dir, overrides=task.urls,
                              patient_weight_kg=task.patient_weight_kg, mode=task.mode)
        except RunOutputError as exc:  # ran, but a file could not be written: measured as far as it goes
            report = exc.report
            result["outcome"], result["message"] = "error", str(exc)
        except (ConfigError, SequenceFormatError) as exc:  # this point's inputs: e.g. TE below the minimum
            result["outcome"], result["message"] = "invalid", str(exc).replace(str(source), "protocol")
            result["figures"] = minimum_figures(str(exc))
        except ScanctlError as exc:
            result["outcome"], result["message"] = "error", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug on one point is that point's result; the sweep goes on
            log.exception("point %d failed", task.index)
            result["outcome"], result["message"] = "error", f"internal error: {type(exc).__name__}: {exc}"
        if report is not None:
            _measured(task, report, run_dir, result, files)
    result["wall_s"] = time.perf_counter() - t0
    # The worker process's CPU time meanwhile: the point's, and the worker's own housekeeping (with one thread
    # per worker, as the local cluster has; with more it counts the other points' too).
    result["cpu_s"] = time.process_time() - cpu0
    return {"result": result, "files": files}


def _measured(task: Task, report: Any, run_dir: Path, result: dict[str, Any], files: dict[str, bytes]) -> None:
    """The run's outcome, figures and the files the point keeps."""
    import numpy as np

    result["outcome"] = result["outcome"] or report.outcome
    result["message"] = result["message"] or report.message
    result["outputs"] = sorted(report.outputs.values())
    report_json = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    figures = result["figures"]
    figures["acquisitions"] = report.acquisitions
    figures.update({k: v for k, v in report.timings.items() if k in ("scan_wall_s", "real_time_factor")})
    try:
        figures.update(check_figures(report_json, run_dir / "sequence.seq", task.profile))
    except ScanctlError as exc:
        result["notes"].append(f"check: {exc}")
    if (run_dir / "image.npy").is_file():
        image = np.load(run_dir / "image.npy")
        fov = report.protocol.get("sequence", {}).get("parameters") or {}
        fov_m = fov.get("fov_m") or _seq_fov(run_dir / "sequence.seq")
        measured, notes = image_figures(image, phantom=task.phantom, fov_m=fov_m, contrast=task.contrast,
                                        channels=_channels(task), geometry=_geometry(run_dir, image.shape))
        figures.update(measured)
        result["notes"].extend(notes)
        files["image.npy"] = (run_dir / "image.npy").read_bytes()
        if (run_dir / "image.json").is_file():  # where the image lies (the masks above came from it)
            files["image.json"] = (run_dir / "image.json").read_bytes()
    for name in task.keep:
        if (run_dir / name).is_file():
            files[name] = (run_dir / name).read_bytes()


def _geometry(run_dir: Path, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The ``image.json`` entry of the image the figures measure (the middle one of a stack), or None when
    the run has none (the image is then taken as a transverse slice through the isocentre)."""
    try:
        images = json.loads((run_dir / "image.json").read_text(encoding="utf-8"))["images"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    row = shape[0] // 2 if len(shape) == 3 else 0
    found = [entry for entry in images if isinstance(entry, dict) and entry.get("row") == row]
    return found[0] if found else None


def _channels(task: Task) -> int:
    """Receive channels of the point's RF system: its URL's ``coils`` (a simulated array), else one."""
    from urllib.parse import parse_qsl

    url = task.urls.get("rf", task.profile.subsystems.get("rf", ""))
    coils = dict(parse_qsl(url.partition("?")[2])).get("coils", "1")
    return int(coils) if coils.isdigit() and int(coils) > 0 else 1


def _seq_fov(path: Path) -> float | None:
    from scanctl.sequence.pulseq_read import read

    fov = read(path).definition_floats("FOV")
    return max(fov[:2]) if fov else None
