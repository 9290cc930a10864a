"""``scanctl run``: a protocol (or a Pulseq file) through the scanner, to raw data, image and report.

The steps, each in its own module: load the protocol and build its sequence (:mod:`scanctl.protocol`),
open the subsystems the system profile names (:mod:`scanctl.registry`), check and prepare
(:mod:`scanctl.executor`), play while streaming every acquisition into the ISMRMRD file
(:mod:`scanctl.rawdata`), reconstruct (:mod:`scanctl.recon`) and write the report. An aborted or
faulted run still leaves a valid raw data file with everything acquired, and its report. Ctrl-C (SIGINT)
during the scan aborts it the same way. Every file is new, in a directory of the run's own
(:mod:`scanctl.outputs`): nothing earlier is ever written over.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from scanctl.errors import SafetyLimitError, ScanctlError, WireProtocolError
from scanctl.executor import RunResult, Scanner
from scanctl.interfaces import Acquisition, Acquisitions, Scene, SceneSystem
from scanctl.outputs import OutputError, claim_dir, created, write_new
from scanctl.profile import SystemProfile
from scanctl.protocol import Protocol, load_protocol
from scanctl.sequence import pulseq_write
from scanctl.sequence.model import Sequence

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
    driver service — the scene to image, by calling its ``place`` (:class:`scanctl.interfaces.SceneSystem`).
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


def run_scan(
    source: str | os.PathLike[str],
    profile: SystemProfile,
    out_dir: str | os.PathLike[str],
    *,
    overrides: dict[str, str] | None = None,
    progress: Callable[[float, float, int], None] | None = None,
    reconstruct: bool = True,
    patient_weight_kg: float | None = None,
    mode: str = "normal",
) -> RunReport:
    """Run ``source`` (a protocol TOML or a Pulseq file) and write the outputs into ``out_dir``, which must
    be new or empty (:func:`scanctl.outputs.claim_dir`): ``raw.h5`` (ISMRMRD), ``image.npy`` and
    ``image.png`` (when reconstructed), ``sequence.seq``, ``report.json``. Raises ConfigError /
    SequenceFormatError for bad input (nothing has moved), OutputError if ``out_dir`` holds files already or
    ``sequence.seq`` cannot be written (nothing has moved), RunOutputError if the scan ran but some of its
    files could not be written (a full disk: a raw data write that fails stops the scan, safe).

    SAR, PNS and heating are predicted first for the patient (``patient_weight_kg``, else the protocol's)
    in ``mode``; a sequence that would break a limit is refused before anything connects or moves.
    Ctrl-C (SIGINT, when called in the main thread) during the scan aborts it (made safe, outcome
    ``aborted``) and the outputs are written as for any run that ends early."""
    from scanctl.rawdata import RawDataError, RawDataWriter, header_for
    from scanctl.safety.predict import predict

    t_start = time.perf_counter()
    out = claim_dir(out_dir)
    seq, protocol = load_source(source, profile)
    if patient_weight_kg is None and protocol is not None:
        patient_weight_kg = protocol.patient.weight_kg
    safety = predict(seq, profile, patient_weight_kg, mode)
    urls = subsystem_urls(profile, overrides)
    scanner = Scanner.from_profile(profile, urls)
    seq_path = out / "sequence.seq"
    md5 = write_sequence(seq, seq_path)
    outputs = {"sequence": seq_path.name}
    acquisitions: list[Acquisition] = []
    failures: list[ScanctlError] = []  # files that could not be written, each error naming its file
    timings: dict[str, float] = {}
    result: RunResult | None = None
    outcome, message = "refused", "; ".join(v.message for v in safety.violations[:5])
    if not message:  # refused by the prediction: nothing is connected, nothing moves
        scanner.connect()
    try:
        if not message:
            place_scene(scanner.rf, scene_for(seq, protocol))
        t0 = time.perf_counter()
        try:
            if not message:
                scanner.prepare(seq)
        except SafetyLimitError as exc:
            message = str(exc)
        timings["prepare_s"] = time.perf_counter() - t0
        if not message:
            raw_path = out / "raw.h5"
            writer = RawDataWriter.open(raw_path, header_for(seq, profile, protocol, channels=scanner.rf.channels),
                                        seq=seq)
            outputs["raw"] = raw_path.name

            def keep(batch: Acquisitions) -> None:
                acquisitions.extend(batch)
                if failures:  # the file failed already: the batch is kept for the image only
                    return
                try:
                    writer.extend(batch)
                except RawDataError as exc:  # raised on: the executor stops the scan (safe), keeping what it has
                    failures.append(exc)
                    raise

            interrupt = _Interrupt(scanner)

            def on_progress(t_s: float, total_s: float) -> None:
                interrupt.poll()
                if progress is not None:
                    progress(t_s, total_s, len(acquisitions))

            t0 = time.perf_counter()
            try:
                position = protocol.table_position_mm if protocol is not None else 0.0
                with interrupt.armed():
                    result = scanner.run(table_position_mm=position, on_acquisitions=keep, on_progress=on_progress,
                                         patient_weight_kg=patient_weight_kg, mode=safety.mode)
            finally:
                try:
                    writer.close()
                except RawDataError as exc:
                    if not failures:  # (after a failed write its close fails too: the first error says it)
                        failures.append(exc)
            timings["scan_wall_s"] = time.perf_counter() - t0
            outcome, message = result.outcome, result.message
            if interrupt.requested and outcome == "aborted":
                message = message or "interrupted (Ctrl-C): aborted, the data acquired so far is kept"
            if reconstruct and acquisitions:
                try:
                    outputs.update(write_image(out, acquisitions, seq, timings))
                except KeyboardInterrupt:  # Ctrl-C while reconstructing: the report is still written
                    message = (f"{message}; " if message else "") + "image not reconstructed (interrupted)"
                except OutputError as exc:
                    failures.append(exc)
    finally:
        scanner.close()
    timings["total_wall_s"] = time.perf_counter() - t_start
    if result is not None and timings.get("scan_wall_s"):
        timings["real_time_factor"] = result.scan_time_s / timings["scan_wall_s"]  # of what played
    if failures:  # the report says what is missing, as the error does
        message = "; ".join([message, *map(str, failures)] if message else map(str, failures))
    report = RunReport(
        outcome=outcome,
        message=message,
        protocol=protocol_info(source, protocol),
        sequence=sequence_info(seq, md5, seq_path.name),
        profile=profile.name,
        subsystems=urls,
        acquisitions=len(acquisitions),
        timings=timings,
        journal=[asdict(e) for e in scanner.journal],
        telemetry=result.telemetry if result is not None else {},
        outputs=outputs,
        versions=versions(),
        safety=safety.to_json(),
    )
    try:
        write_report(out, report)
    except OutputError as exc:
        failures.append(exc)
    if failures:
        raise RunOutputError(report, failures)
    return report


class _Interrupt:
    """Ctrl-C (SIGINT) during a scan asks the scanner to abort at its next safe point (made safe, the data
    so far kept) instead of tearing the run apart; a second Ctrl-C interrupts at once (KeyboardInterrupt;
    closing the scanner makes every subsystem safe). The signal handler only sets a flag: the request is
    made from the run loop (:meth:`poll`, called with each progress step), because the scanner's request
    lock is not re-entrant and the handler runs on the thread that may hold it."""

    def __init__(self, scanner: Scanner) -> None:
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


def write_sequence(seq: Sequence, path: Path) -> str:
    """Write ``seq`` as the new Pulseq file ``path``; returns its MD5 signature. Raises OutputError."""
    with created(path):  # claimed exclusively first (nothing at the path is followed or truncated) ...
        pass
    try:  # ... then filled: the file is ours, in the run's own directory
        return pulseq_write.write(seq, path)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise OutputError(path, exc.strerror or str(exc)) from exc


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


def write_image(out: Path, acquisitions: list[Acquisition], seq: Sequence, timings: dict[str, float]) -> dict[str, str]:
    """Reconstruct ``acquisitions`` and write ``image.npy`` and ``image.png`` into ``out``; adds
    ``recon_s`` to ``timings`` and returns the report's output entries."""
    from scanctl.recon import png_bytes
    from scanctl.recon import reconstruct as recon

    t0 = time.perf_counter()
    image = recon(acquisitions, seq)
    npy = io.BytesIO()  # (numpy writing into the file itself would say neither which file nor why it failed)
    np.save(npy, image)
    write_new(out / "image.npy", npy.getvalue())
    write_new(out / "image.png", png_bytes(image))
    timings["recon_s"] = time.perf_counter() - t0
    return {"image_npy": "image.npy", "image_png": "image.png"}


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
