"""A run's report and outputs: what ``report.json`` holds (:class:`RunReport`), the image written beside the
raw data, the sequence a run plays (a protocol's, or a Pulseq file's) and the scene a simulated RF system
images for it, and Ctrl-C during a scan (:class:`Interrupt`). The run itself goes through the scan session
(:mod:`scanctl.engine.session`, ``run_scan``): every file new, in a directory of the run's own
(:mod:`scanctl.data.outputs`): nothing earlier is ever written over.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from scanctl.config.profile import SystemProfile
from scanctl.config.protocol import Protocol, load_protocol
from scanctl.data.outputs import write_new
from scanctl.errors import ScanctlError, WireProtocolError
from scanctl.hw.interfaces import Acquisition, Scene, SceneSystem
from scanctl.sequence.model import Sequence

if TYPE_CHECKING:  # (h5py and ismrmrd are imported when the image is written, not at every start-up)
    from scanctl.data.rawdata import RawData

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What ``report.json`` holds (see docs/run.md)."""

    outcome: str  # completed, stopped, aborted, fault, emergency_stop, refused
    message: str
    protocol: dict[str, Any]
    sequence: dict[str, Any]
    profile: str
    subsystems: dict[str, str]
    acquisitions: int
    timings: dict[str, float]
    journal: list[dict[str, Any]]
    telemetry: dict[str, dict[str, float]]
    outputs: dict[str, str]
    versions: dict[str, str] = field(default_factory=dict)
    #: The safety prediction the scan was judged by: ``sar``, ``pns``, ``heating`` (docs/safety.md).
    safety: dict[str, Any] = field(default_factory=dict)
    run: str = ""  # the control server's run id (a run in this process has none)
    scan_time_s: float = 0.0  # how far the sequence played
    duration_s: float = 0.0  # the whole sequence
    segments: int = 0  # programs played per subsystem
    prescan: dict[str, Any] = field(default_factory=dict)  # the calibrations run first (docs/prescan.md)

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"


class RunOutputError(ScanctlError):
    """A run ended (safe) but some of its files could not be written (a full disk): ``failures`` are the
    errors, each naming its file; ``report`` is the run's report (on disk too unless ``report.json`` is among
    the failures)."""

    def __init__(self, report: RunReport, failures: list[ScanctlError]) -> None:
        super().__init__("; ".join(map(str, failures)))
        self.report = report
        self.failures = failures


def load_source(path: str | os.PathLike[str], profile: SystemProfile) -> tuple[Sequence, Protocol | None]:
    """The sequence to run: a protocol's (built or read) or a Pulseq file's, with the protocol if any."""
    path = Path(path)
    if path.suffix.lower() == ".seq":
        from scanctl.sequence.pulseq_read import read

        return read(path), None
    protocol = load_protocol(path)
    return protocol.build_sequence(profile), protocol


def scene_for(seq: Sequence, protocol: Protocol | None) -> Scene:
    """The object a simulated RF system images for this scan: the phantom fills the sequence's field of
    view, at the protocol's phantom and noise settings (None where the protocol says nothing)."""
    fov = seq.definition_floats("FOV")
    phantom = protocol.phantom if protocol is not None else None
    return Scene(
        phantom=None if phantom is None else str(phantom.file) if phantom.file is not None else phantom.name,
        matrix=None if phantom is None else phantom.matrix,
        fov_m=max(fov[:2]) if fov else None,
        noise_std=protocol.noise_std if protocol is not None else None,
    )


def place_scene(rf: Any, scene: Scene) -> bool:
    """Give a simulated RF system — in this process, or served in another (``scanctl up``) through its
    driver service — the scene to image, by calling its ``place`` (:class:`scanctl.hw.interfaces.SceneSystem`).
    Returns True if it took it; a real RF system (no ``place``, or a driver service that offers none) is
    left alone. Raises ConfigError for a scene the simulator refuses (the old one stays)."""
    if not isinstance(rf, SceneSystem):
        return False
    try:
        rf.place(scene)
    except WireProtocolError as exc:  # no place on the other side: a real RF system, imaging what is there
        log.info("rf takes no scene (not a simulator): %s", exc)
        return False
    return True


class Interrupt:
    """Ctrl-C (SIGINT) during a scan asks the scanner to abort at its next safe point (made safe, the data
    so far kept) instead of tearing the run apart; a second Ctrl-C interrupts at once (KeyboardInterrupt;
    closing the scanner makes every subsystem safe). The signal handler only sets a flag: the request is
    made from the run loop (:meth:`poll`, called with each progress step), because the scanner's request
    lock is not re-entrant and the handler runs on the thread that may hold it."""

    def __init__(self, scanner: Any) -> None:
        self.scanner = scanner
        self.signalled = False
        self.requested = False
        self._previous: Any = None

    @contextmanager
    def armed(self) -> Iterator[None]:
        """Catch SIGINT while the block runs, if this is the main thread and nobody else handles SIGINT."""
        usable = (threading.current_thread() is threading.main_thread()
                  and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if usable:
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        try:
            yield
        finally:
            if usable:
                signal.signal(signal.SIGINT, self._previous)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signalled = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C: at once

    def poll(self) -> None:
        """Make the abort request once a signal came (called on the run loop's thread)."""
        if self.signalled and not self.requested:
            self.requested = True
            log.warning("interrupted: aborting the scan (Ctrl-C again to stop at once)")
            self.scanner.request("abort")


def subsystem_urls(profile: SystemProfile, overrides: dict[str, str] | None) -> dict[str, str]:
    """The URL of each subsystem: the profile's, replaced by ``overrides``. (What a scan images is no URL
    option: it is placed at run time, :func:`place_scene`.)"""
    return {**profile.subsystems, **(overrides or {})}


def protocol_info(source: str | os.PathLike[str], protocol: Protocol | None) -> dict[str, Any]:
    """The report's ``protocol`` entry."""
    return protocol.as_dict() if protocol is not None else {"source": str(source)}


def sequence_info(seq: Sequence, md5: str, file: str) -> dict[str, Any]:
    """The report's ``sequence`` entry: ``md5`` of the written Pulseq file named ``file``."""
    return {"md5": md5, "blocks": len(seq.blocks), "duration_s": seq.duration_s,
            "name": seq.definitions.get("Name", ""), "file": file}


def write_image(out: Path, acquisitions: list[Acquisition] | RawData, seq: Sequence,
                timings: dict[str, float]) -> dict[str, str]:
    """Reconstruct ``acquisitions`` — the raw data file read back (its flags and geometry go into
    ``image.json``), or acquisitions in memory — and write ``image.npy``, ``image.png`` and ``image.json``
    (docs/recon.md) into ``out``; adds ``recon_s`` to ``timings`` and returns the report's output entries."""
    from scanctl.data.rawdata import RawData as Raw
    from scanctl.data.recon import Reconstruction, json_bytes, png_bytes, reconstruct_file, reconstruct_indexed

    t0 = time.perf_counter()
    if isinstance(acquisitions, Raw):
        result = reconstruct_file(acquisitions, seq)
    else:
        images, index = reconstruct_indexed(acquisitions, seq)
        result = Reconstruction(images, index)  # no geometry without the file: no image.json
    npy = io.BytesIO()  # (numpy writing into the file itself would say neither which file nor why it failed)
    np.save(npy, result.images)
    write_new(out / "image.npy", npy.getvalue())
    write_new(out / "image.png", png_bytes(result.images))
    outputs = {"image_npy": "image.npy", "image_png": "image.png"}
    if result.meta:
        write_new(out / "image.json", json_bytes(result.meta))
        outputs["image_json"] = "image.json"
    timings["recon_s"] = time.perf_counter() - t0
    return outputs


def write_report(out: Path, report: RunReport) -> None:
    """Write ``report.json`` into ``out`` as a new file (and list it in ``report.outputs``). Raises
    OutputError."""
    write_new(out / "report.json", (json.dumps(asdict(report), indent=2, default=_plain) + "\n").encode())
    report.outputs["report"] = "report.json"


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a run depends on (for the report)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("scanctl", "numpy", "transitions", "ismrmrd"):
        try:
            out[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing distribution is reported, not fatal
            out[package] = "unknown"
    return out


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class ProgressBar:
    """A one-line progress bar on a terminal (nothing when the stream is not a terminal)."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.enabled = stream.isatty()
        self._last = 0.0

    def __call__(self, t_s: float, total_s: float, acquisitions: int) -> None:
        now = time.monotonic()
        done = total_s <= 0 or t_s >= total_s
        if not self.enabled or (now - self._last < 0.1 and not done):
            return
        self._last = now
        frac = 1.0 if total_s <= 0 else min(t_s / total_s, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r  [{bar}] {frac:6.1%}  {t_s:8.2f}/{total_s:.2f} s  {acquisitions} acquisitions")
        if done:
            self.stream.write("\n")
        self.stream.flush()
