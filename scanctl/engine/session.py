"""One scan session: load → check and predict → prepare → run → raw data → recon → report.

Every way a scan is run goes through :class:`ScanSession` — ``scanctl run`` in this process, ``scanctl run
--connect`` on a console, and the control server for its own copy of every run — over a **scanner port**
(:class:`ScannerPort`): :class:`LocalPort`, a scanner in this process, or ``scanctl.services.remote_run.RemotePort``,
one behind the control server. A port loads (raising :class:`Refused`, a typed outcome, when the safety
prediction or the sequence checks refuse before anything moved) and plays (streaming every acquisition
to the session's sink, returning how it :class:`Ended`); the session writes the files of a run into a
directory of its own (:mod:`scanctl.data.outputs`: every file new, nothing earlier written over) —
``sequence.seq``, ``raw.h5`` (ISMRMRD, written as the data arrive), ``image.npy``/``image.png``
(reconstructed from what ``raw.h5`` holds, not from a second copy in memory) and ``report.json``.

A raw data write that fails (a full disk) stops the scan safely; the image and report are still
attempted and :class:`~scanctl.engine.run.RunOutputError` names every file that could not be written.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from scanctl.config.profile import SystemProfile
from scanctl.data.outputs import OutputError, claim_dir, write_new
from scanctl.data.rawdata import RawHeader
from scanctl.engine.executor import RunResult, Scanner
from scanctl.engine.run import (
    Interrupt,
    RunOutputError,
    RunReport,
    load_source,
    place_scene,
    protocol_info,
    scene_for,
    sequence_info,
    subsystem_urls,
    versions,
    write_image,
    write_report,
)
from scanctl.errors import DriverError, SafetyLimitError, ScanctlError
from scanctl.hw.interfaces import Acquisitions
from scanctl.sequence import pulseq_write
from scanctl.sequence.model import Sequence

log = logging.getLogger(__name__)

#: ``progress(t_s, total_s, acquisitions)``: how far the scan has played and how many acquisitions are in.
Progress = Callable[[float, float, int], None]


@dataclass
class Loaded:
    """A sequence loaded, checked and prepared: the scanner is READY to play it."""

    seq: Sequence
    sequence_text: bytes  # the signed Pulseq file, as sequence.seq
    header: RawHeader  # of the raw data
    report: dict[str, Any]  # the report's entries known at load: protocol, sequence, profile, subsystems, safety
    check: dict[str, Any] = field(default_factory=dict)  # the sequence checks (as scanctl check --json)
    timings: dict[str, float] = field(default_factory=dict)  # prepare_s


@dataclass
class Ended:
    """How a scan ended, as the scanner tells it."""

    outcome: str  # completed, stopped, aborted, fault, emergency_stop, refused
    message: str
    acquisitions: int  # what the scanner produced (a console may have received fewer)
    scan_time_s: float
    duration_s: float
    segments: int
    telemetry: dict[str, dict[str, float]]
    journal: list[dict[str, Any]]
    timings: dict[str, float]  # scan_wall_s, real_time_factor
    run: str = ""


class Refused(ScanctlError):
    """A scan refused before anything moved (the safety prediction or the sequence checks); ``report`` holds
    the report's entries known (protocol, sequence, safety …), ``sequence_text`` the Pulseq file if built."""

    def __init__(self, message: str, report: dict[str, Any], sequence_text: bytes | None = None) -> None:
        super().__init__(message)
        self.report = report
        self.sequence_text = sequence_text


class ScannerPort(Protocol):
    """What a :class:`ScanSession` drives."""

    def load(self, source: str | os.PathLike[str], *, name: str | None = None,
             patient_weight_kg: float | None = None, mode: str = "normal", prescan: bool = True) -> Loaded:
        """Load, check, predict and prepare ``source`` (``name``: how the report names it), after the prescan
        calibrations the scan needs unless ``prescan`` is False (the report's ``prescan``). Raises Refused,
        ConfigError / SequenceFormatError for bad input."""

    def run(self, sink: Callable[[Acquisitions], None], progress: Callable[[float, float], None] | None) -> Ended:
        """Play what was loaded, giving ``sink`` every batch of acquisitions as it arrives."""


class ScanSession:
    """Scans through ``port``, writing each run's files (see the module docstring)."""

    def __init__(self, port: ScannerPort) -> None:
        self.port = port
        self.loaded: Loaded | None = None

    def load(self, source: str | os.PathLike[str], *, name: str | None = None,
             patient_weight_kg: float | None = None, mode: str = "normal", prescan: bool = True) -> Loaded:
        """Load ``source`` for the next :meth:`run`, prescanning first unless ``prescan`` is False (where the
        port has a prescan: :class:`ScannerPort`). Raises Refused (nothing moved) or the port's errors."""
        self.loaded = None
        self.loaded = self.port.load(source, name=name, patient_weight_kg=patient_weight_kg, mode=mode,
                                     prescan=prescan)
        return self.loaded

    def scan(self, source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, reconstruct: bool = True,
             progress: Progress | None = None, patient_weight_kg: float | None = None,
             mode: str = "normal", prescan: bool = True) -> RunReport:
        """Load and run ``source`` into ``out_dir`` (new or empty); ``prescan`` as in :meth:`load`. A refused
        scan writes its report (and sequence) and returns it (outcome ``refused``). Raises OutputError before
        anything moved when ``out_dir`` holds files, RunOutputError when some file of the run could not be
        written."""
        t_start = time.perf_counter()
        out = claim_dir(out_dir)
        try:
            self.load(source, patient_weight_kg=patient_weight_kg, mode=mode, prescan=prescan)
        except Refused as exc:
            return self.unplayed(out, "refused", exc, source, t_start, exc.report, exc.sequence_text)
        except DriverError as exc:  # a subsystem could not be reached or connected: nothing played, made safe
            return self.unplayed(out, "fault", exc, source, t_start)
        return self.run(out, reconstruct=reconstruct, progress=progress, t_start=t_start)

    def unplayed(self, out: Path, outcome: str, exc: ScanctlError, source: str | os.PathLike[str], t_start: float,
                 entries: dict[str, Any] | None = None, sequence_text: bytes | None = None) -> RunReport:
        """The report (and sequence, if built) of a scan that ended before anything played — refused by the
        checks, or a subsystem that could not be reached — written into ``out``."""
        outputs: dict[str, str] = {}
        if sequence_text is not None:
            write_new(out / "sequence.seq", sequence_text)
            outputs["sequence"] = "sequence.seq"
        known = {"protocol": {"source": str(source)}, "sequence": {}, "profile": "", "subsystems": {},
                 "journal": [], **(entries or {})}
        message = str(exc) if outcome == "refused" else f"{type(exc).__name__}: {exc}"
        report = RunReport(outcome=outcome, message=message, acquisitions=0, telemetry={}, outputs=outputs,
                           timings={"total_wall_s": time.perf_counter() - t_start}, versions=versions(), **known)
        write_report(out, report)
        return report

    def run(self, out_dir: str | os.PathLike[str], *, reconstruct: bool = True, progress: Progress | None = None,
            also: Callable[[Acquisitions], None] | None = None, t_start: float | None = None) -> RunReport:
        """Play what was loaded, writing the run's files into ``out_dir`` (new or empty); ``also`` gets every
        batch too (the control server publishes them), before it is written. Returns the report (written as
        report.json). Raises OutputError before anything moved when ``out_dir`` cannot be had, RunOutputError
        when some file of the run could not be written (the scan itself ended safe)."""
        from scanctl.data.rawdata import RawDataError, RawDataWriter, read_acquisitions
        from scanctl.data.recon import ReconError

        loaded = self.loaded
        if loaded is None:
            raise ScanctlError("nothing loaded: load a protocol or Pulseq file first")
        self.loaded = None  # one run per load, as the executor needs a new prepare
        t_start = time.perf_counter() if t_start is None else t_start
        out = claim_dir(out_dir)
        write_new(out / "sequence.seq", loaded.sequence_text)
        outputs = {"sequence": "sequence.seq"}
        writer = RawDataWriter.open(out / "raw.h5", loaded.header, seq=loaded.seq)
        outputs["raw"] = "raw.h5"
        failures: list[ScanctlError] = []
        count = 0

        def sink(batch: Acquisitions) -> None:
            nonlocal count
            if also is not None:
                also(batch)
            if failures:
                return
            try:
                writer.extend(batch)
            except RawDataError as exc:  # raised on: the scanner stops the scan (safe), keeping what it has
                failures.append(exc)
                raise
            count += len(batch)

        def played(t_s: float, total_s: float) -> None:
            if progress is not None:
                progress(t_s, total_s, count)

        try:
            ended = self.port.run(sink, played)
        finally:
            try:
                writer.close()
            except RawDataError as exc:
                if not failures:  # (after a failed write its close fails too: the first error says it)
                    failures.append(exc)
        timings = {**loaded.timings, **ended.timings}
        message = ended.message
        if ended.acquisitions != count and not failures:
            message = (f"{message}; " if message else "") + (f"received {count} of the {ended.acquisitions} "
                                                             "acquisitions the scanner sent")
        if reconstruct and count and not failures:
            try:
                raw = read_acquisitions(out / "raw.h5")  # what was streamed to disk: no second copy in memory
                outputs.update(write_image(out, raw, loaded.seq, timings))
            except KeyboardInterrupt:  # Ctrl-C while reconstructing: the report is still written
                message = (f"{message}; " if message else "") + "image not reconstructed (interrupted)"
            except ReconError as exc:  # data the recon cannot image (3D non-Cartesian): the raw data stand
                log.warning("image not reconstructed: %s", exc)
                message = (f"{message}; " if message else "") + f"image not reconstructed: {exc}"
            except (OutputError, RawDataError) as exc:
                failures.append(exc)
        timings["total_wall_s"] = time.perf_counter() - t_start
        if failures:  # the report says what is missing, as the error does
            message = "; ".join([message, *map(str, failures)] if message else map(str, failures))
        report = RunReport(outcome=ended.outcome, message=message, acquisitions=count, timings=timings,
                           journal=ended.journal, telemetry=ended.telemetry, outputs=outputs, versions=versions(),
                           run=ended.run, scan_time_s=ended.scan_time_s, duration_s=ended.duration_s,
                           segments=ended.segments, **loaded.report)
        try:
            write_report(out, report)
        except OutputError as exc:
            failures.append(exc)
        if failures:
            raise RunOutputError(report, failures)
        return report


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
    prescan: Callable[..., dict[str, Any]] | None = None,
) -> RunReport:
    """Run ``source`` (a protocol TOML or a Pulseq file) on the profile's subsystems in this process
    (``overrides`` replacing URLs), through one :class:`scanctl.engine.session.ScanSession`, and write the outputs
    into ``out_dir``, which must be new or empty (:func:`scanctl.data.outputs.claim_dir`): ``raw.h5`` (ISMRMRD),
    ``image.npy`` and ``image.png`` (when reconstructed), ``sequence.seq``, ``report.json``. Raises
    ConfigError / SequenceFormatError for bad input (nothing has moved), OutputError if ``out_dir`` holds
    files already or ``sequence.seq`` cannot be written (nothing has moved), RunOutputError if the scan ran
    but some of its files could not be written (a full disk: a raw data write that fails stops the scan,
    safe).

    SAR, PNS and heating are predicted first for the patient (``patient_weight_kg``, else the protocol's)
    in ``mode``; a sequence that would break a limit is refused before anything connects or moves.
    Ctrl-C (SIGINT, when called in the main thread) during the scan aborts it (made safe, outcome
    ``aborted``) and the outputs are written as for any run that ends early. ``prescan``: see LocalPort."""
    with LocalPort(profile, overrides, prescan=prescan) as port:
        return ScanSession(port).scan(source, out_dir, reconstruct=reconstruct, progress=progress,
                                      patient_weight_kg=patient_weight_kg, mode=mode)


class LocalPort:
    """A scanner in this process. Given a connected ``scanner`` it uses that one for every scan (the control
    server's, long-lived: loading never reconnects or re-homes anything); without one it builds the
    profile's subsystems (``overrides`` replacing URLs) at the first load and closes them in :meth:`close`."""

    def __init__(self, profile: SystemProfile, overrides: dict[str, str] | None = None, *,
                 scanner: Scanner | None = None, run_id: Callable[[], str] | None = None,
                 prescan: Callable[..., dict[str, Any]] | None = None) -> None:
        self.profile = profile
        self.urls = subsystem_urls(profile, overrides)
        self.scanner = scanner
        self._owned = scanner is None
        self._run_id = run_id or (lambda: "")
        self._journal_start = 0
        self._plan: dict[str, Any] = {}
        #: ``prescan(scanner, seq, protocol, patient_weight_kg, mode)`` before each scan is prepared: its calibrations
        #: (scanctl.prescan.plan.before_run) are applied to the scan, its result is the report's ``prescan``.
        self.prescan = prescan

    def __enter__(self) -> LocalPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the subsystems this port built (safe to call twice)."""
        if self._owned and self.scanner is not None:
            self.scanner.close()

    def load(self, source: str | os.PathLike[str], *, name: str | None = None,
             patient_weight_kg: float | None = None, mode: str = "normal", prescan: bool = True) -> Loaded:
        """See :class:`ScannerPort`: ``prescan`` False skips this port's prescan (if it has one) for this load."""
        from scanctl.data.rawdata import header_for
        from scanctl.safety.predict import predict

        t0 = time.perf_counter()
        seq, protocol = load_source(source, self.profile)
        if patient_weight_kg is None and protocol is not None:
            patient_weight_kg = protocol.patient.weight_kg
        safety = predict(seq, self.profile, patient_weight_kg, mode)
        text, md5 = pulseq_write.dumps(seq)
        report: dict[str, Any] = {"protocol": protocol_info(name or source, protocol),
                  "sequence": sequence_info(seq, md5, "sequence.seq"), "profile": self.profile.name,
                  "subsystems": dict(self.urls), "safety": safety.to_json()}
        if not safety.ok:  # nothing is connected, nothing moves
            raise Refused("sequence refused before anything moved (safety prediction): "
                          + "; ".join(v.message for v in safety.violations[:5]), report, text)
        fresh = self.scanner is None
        if self.scanner is None:
            self.scanner = Scanner.from_profile(self.profile, self.urls)
            self.scanner.connect()
        scanner = self.scanner
        # A run's journal is its own, from its load on (the first one's with the connect it made), not the
        # earlier runs' of a port that scans several times (an exam): a run's DICOM takes its start from it.
        self._journal_start = 0 if fresh else len(scanner.journal)
        place_scene(scanner.rf, scene_for(seq, protocol))  # what a simulated RF system images
        if self.prescan is not None and prescan:
            report["prescan"] = self.prescan(scanner, seq, protocol, patient_weight_kg, safety.mode)
        try:
            check = scanner.prepare(seq)
        except SafetyLimitError as exc:
            report["journal"] = self._journal()
            raise Refused(str(exc), report, text) from None
        self._plan = {"table_position_mm": protocol.table_position_mm if protocol is not None else 0.0,
                      "patient_weight_kg": patient_weight_kg, "mode": safety.mode, "duration_s": seq.duration_s}
        # The raw data (and the DICOM from them) record the weight SAR was judged with, not the protocol's.
        coil_info = getattr(scanner.rf, "coil_info", None)  # a simulated array says its channels and noise
        header = replace(header_for(seq, self.profile, protocol, channels=scanner.rf.channels,
                                    coil_info=coil_info() if callable(coil_info) else None),
                         patient_weight_kg=patient_weight_kg)
        return Loaded(seq, text, header, report, check.to_json(), {"prepare_s": time.perf_counter() - t0})

    @property
    def plan(self) -> dict[str, Any]:
        """The loaded scan's table position, patient weight and SAR mode."""
        return dict(self._plan)

    def _journal(self) -> list[dict[str, Any]]:
        assert self.scanner is not None
        return [asdict(e) for e in self.scanner.journal[self._journal_start:]]

    def run(self, sink: Callable[[Acquisitions], None], progress: Callable[[float, float], None] | None) -> Ended:
        """Play; Ctrl-C (in the main thread) aborts at the next safe point. Never raises for the scan itself:
        a run refused up front ends ``refused``, a bug in it ``emergency_stop`` (every subsystem made safe)."""
        scanner, plan = self.scanner, self._plan
        assert scanner is not None and plan, "load first"
        interrupt = Interrupt(scanner)

        def on_progress(t_s: float, total_s: float) -> None:
            interrupt.poll()
            if progress is not None:
                progress(t_s, total_s)

        t0 = time.perf_counter()
        try:
            with interrupt.armed():
                result = scanner.run(table_position_mm=float(plan["table_position_mm"]), on_acquisitions=sink,
                                     on_progress=on_progress, patient_weight_kg=plan["patient_weight_kg"],
                                     mode=plan["mode"])
        except ScanctlError as exc:  # refused before anything played (the table's state unknown, …)
            result = RunResult("refused", 0, 0.0, plan["duration_s"], 0.0, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in the run: nothing may be left playing
            log.exception("run failed")
            scanner.emergency_stop(f"internal error in the run: {type(exc).__name__}: {exc}")
            result = RunResult("emergency_stop", 0, 0.0, plan["duration_s"], 0.0,
                               f"internal error: {type(exc).__name__}: {exc}")
        wall_s = time.perf_counter() - t0
        self._plan = {}
        message = result.message
        if interrupt.requested and result.outcome == "aborted":
            message = message or "interrupted (Ctrl-C): aborted, the data acquired so far is kept"
        timings = {"scan_wall_s": wall_s}
        if wall_s > 0 and result.outcome != "refused":
            timings["real_time_factor"] = result.scan_time_s / wall_s  # of what played
        return Ended(result.outcome, message, result.acquisitions, result.scan_time_s, result.duration_s,
                     result.segments, result.telemetry, self._journal(), timings, self._run_id())
