"""The exam: an order, an exam card's protocols as a queue of steps, each run through the one scan
pipeline (:class:`scanctl.engine.session.ScanSession`), journaled step by step in ``exam.json``
(:mod:`scanctl.exam.record`), with MPPS to the worklist side (:mod:`scanctl.exam.mpps`). docs/exam.md.

The order's patient weight judges SAR for every run; an order without one is refused before anything
moves. The state machine and the safety checks rule every run as for ``scanctl run``: the exam only
chooses what runs next and where its files go (``runs/NN-NAME``, its DICOM in ``dicom/NN-NAME``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanctl.data.orders import Order
from scanctl.data.outputs import claim_dir, remove_if_empty
from scanctl.data.pacs import Pacs, parse_pacs
from scanctl.engine.run import RunOutputError
from scanctl.engine.session import Progress, ScanSession
from scanctl.errors import ConfigError, InvalidTransitionError, ScanctlError
from scanctl.exam import record
from scanctl.exam.cards import ExamCard, check_protocol, step_name
from scanctl.exam.record import ExamError, now

log = logging.getLogger(__name__)

#: ``listener(event, details)``: every journal entry as it is made (the control server publishes them).
Listener = Callable[[str, dict[str, Any]], None]


def order_json(order: Order) -> dict[str, Any]:
    """The order as plain JSON (its fields, without ``placeholder``)."""
    return {k: v for k, v in dataclasses.asdict(order).items() if k != "placeholder"}


def order_from_json(fields: Any) -> Order:
    """The :class:`Order` of ``fields`` (an object of its fields as :func:`order_json` gives, from the wire or
    exam.json): every field checked for its type before the order checks its values. Raises DicomError
    naming the field (``order: weight_kg: expected a number, got 'x'``)."""
    from scanctl.errors import DicomError

    if not isinstance(fields, dict):
        raise DicomError(f"order: expected an object of the order's fields, got {fields!r}")
    known = {f.name: f for f in dataclasses.fields(Order) if f.name != "placeholder"}
    values: dict[str, Any] = {}
    for key, value in fields.items():
        if key not in known:
            raise DicomError(f"order: {key}: unknown field (fields: {', '.join(known)})")
        if key == "weight_kg":
            if not (value is None or (isinstance(value, int | float) and not isinstance(value, bool))):
                raise DicomError(f"order: weight_kg: expected a number (kg) or null, got {value!r}")
            value = None if value is None else float(value)
        elif not isinstance(value, str):
            raise DicomError(f"order: {key}: expected a string, got {value!r}")
        values[key] = value
    for key in ("patient_id", "patient_name"):
        if key not in values:
            raise DicomError(f"order: {key}: missing")
    return Order(**values)  # (its own errors name the field: "order: sex 'X' is not one of …")


class Exam:
    """One exam directory, held by this process (``exam.lock``) until :meth:`release`. Make one with
    :meth:`open` (a new exam) or :meth:`resume` (an existing one); every method that changes it journals
    the change and rewrites ``exam.json`` before it returns."""

    def __init__(self, exam_dir: Path, doc: dict[str, Any], lock_fd: int,
                 listener: Listener | None = None) -> None:
        self.dir = exam_dir
        self.doc = doc
        self._lock_fd = lock_fd
        self.listener = listener

    # -- making and finding one -------------------------------------------------------------------------------
    @classmethod
    def open(cls, exam_dir: str | os.PathLike[str], order: Order, card: ExamCard, *, source: str = "",
             mpps: Pacs | None = None, listener: Listener | None = None, exam_id: str | None = None) -> Exam:
        """A new exam of ``order`` with ``card``'s protocols in ``exam_dir`` (new or empty); ``source`` says
        where the order came from; ``mpps`` is the MPPS peer (None: no MPPS); ``exam_id`` (default: made from
        the time). Raises OutputError, ExamError."""
        if order.placeholder:
            raise ExamError("an exam needs a real order (a worklist entry, a FHIR ServiceRequest or a TOML file)")
        if (Path(exam_dir) / record.FILE).exists():
            raise ExamError(f"{exam_dir} holds an exam already (scanctl exam status {exam_dir}): a new exam opens in "
                            f"a new or empty directory")
        folder = claim_dir(exam_dir)
        doc: dict[str, Any] = {
            "format": record.FORMAT, "exam_id": exam_id or new_exam_id(), "state": "open",
            "order": order_json(order),
            "card": {"name": card.name, "procedure": order.requested_procedure or order.requested_procedure_code,
                     "source": str(card.source)},
            "steps": [], "journal": [],
            "mpps": {"uid": None, "state": None, "message": None, "peer": str(mpps) if mpps else None},
            "opened": now(), "closed": None,
        }
        for protocol in card.protocols:
            doc["steps"].append(_step(len(doc["steps"]) + 1, protocol.name, protocol.path))
        exam = cls(folder, doc, _lock(folder), listener)
        exam._journal("opened", exam_id=doc["exam_id"], patient_id=order.patient_id, card=card.name,
                      order_source=source, steps=len(doc["steps"]))
        log.info("exam %s opened in %s: %s, %d steps", doc["exam_id"], folder, card.name, len(doc["steps"]))
        return exam

    @classmethod
    def resume(cls, exam_dir: str | os.PathLike[str], listener: Listener | None = None) -> Exam:
        """The exam in ``exam_dir`` as it was left. A step left ``running`` (its process was killed) is
        marked ``interrupted``: what it acquired stays in its run directory. Raises ExamError."""
        folder = Path(exam_dir)
        record.read(folder)  # an exam directory at all, before a lock file is made in it
        fd = _lock(folder)
        exam = cls(folder, record.read(folder), fd, listener)
        for step in exam.doc["steps"]:
            if step["status"] == "running":
                step.update(status="interrupted", ended=now(), message=_interrupted(folder, step))
                exam._journal("interrupted", step=step["n"], protocol=step["protocol"], run_dir=step["run_dir"],
                              message=step["message"])
            elif step["status"] == "done" and step["dicom"] is None and not any(exam._series_dir(step).glob("*")):
                exam.export(step)  # killed between the run and its DICOM (or the export failed): again
        return exam

    def release(self) -> None:
        """Let another process hold the exam (safe to call twice)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Exam:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- what it is ---------------------------------------------------------------------------------------------
    @property
    def exam_id(self) -> str:
        return str(self.doc["exam_id"])

    @property
    def state(self) -> str:
        return str(self.doc["state"])

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list(self.doc["steps"])

    @property
    def order(self) -> Order:
        return order_from_json(self.doc["order"])

    def pending(self) -> dict[str, Any] | None:
        """The step that runs next (None: none left)."""
        return next((s for s in self.doc["steps"] if s["status"] == "pending"), None)

    # -- the queue ----------------------------------------------------------------------------------------------
    def skip(self, n: int) -> dict[str, Any]:
        """Skip pending step ``n``. Raises ExamError."""
        step = self._step(n, "skip")
        if step["status"] != "pending":
            raise ExamError(f"exam {self.exam_id}: step {n} ({step['protocol']}) is {step['status']}, not pending: "
                            f"only a pending step can be skipped")
        step.update(status="skipped", ended=now(), message="skipped by the operator")
        self._journal("skipped", step=n, protocol=step["protocol"])
        return step

    def repeat(self, n: int) -> dict[str, Any]:
        """Queue step ``n``'s protocol again, to run next (a new step; its run gets a new NN). Raises ExamError."""
        step = self._step(n, "repeat")
        new = _step(self._next_n(), step["protocol"], Path(step["source"]))
        steps = self.doc["steps"]
        first = next((i for i, s in enumerate(steps) if s["status"] == "pending"), len(steps))
        steps.insert(first, new)
        self._journal("repeated", step=new["n"], of=n, protocol=new["protocol"])
        return new

    def append(self, source: str | os.PathLike[str], name: str | None = None) -> dict[str, Any]:
        """Add the protocol (or Pulseq file) ``source`` at the end of the queue, as step ``name`` (default its
        file name). Raises ConfigError for a bad protocol, ExamError for a closed exam."""
        self._open_or_fail("append")
        if "\x00" in str(source):
            raise ConfigError(f"append: {str(source)!r} is not a path")
        path = Path(source).resolve()
        check_protocol(path)
        new = _step(self._next_n(), step_name(name or path.stem, "append: name"), path)
        self.doc["steps"].append(new)
        self._journal("appended", step=new["n"], protocol=new["protocol"], source=str(path))
        return new

    # -- running ------------------------------------------------------------------------------------------------
    def run_next(self, session: ScanSession, *, progress: Progress | None = None, dicom: bool = True,
                 weight_kg: float | None = None) -> dict[str, Any]:
        """Run the next pending step through ``session`` into ``runs/NN-NAME``, then (when it completed and
        ``dicom``) write its DICOM series into ``dicom/NN-NAME``. ``weight_kg``: the patient weight when the
        order has none (else it must agree with the order's). Returns the step. Raises ExamError (the exam is
        not open, nothing is pending, no patient weight: nothing moved)."""
        self._open_or_fail("run")
        step = self.pending()
        if step is None:
            raise ExamError(f"exam {self.exam_id}: no pending step (close the exam, or append or repeat a protocol)")
        weight = self._weight(step, weight_kg)
        self._mpps_create()
        nn = 1 + sum(1 for s in self.doc["steps"] if s["run_dir"] is not None)
        run_dir = f"runs/{nn:02d}-{step['protocol']}"
        step.update(status="running", run_dir=run_dir, started=now())
        self._journal("step_started", step=step["n"], protocol=step["protocol"], run_dir=run_dir, weight_kg=weight)
        t0 = time.perf_counter()
        try:
            report = session.scan(step["source"], self.dir / run_dir, progress=progress, patient_weight_kg=weight)
            outcome, message = report.outcome, report.message
        except InvalidTransitionError as exc:  # the scanner cannot scan now (FAULT, EMERGENCY_STOP): nothing moved
            remove_if_empty(self.dir / run_dir)
            step.update(status="pending", run_dir=None, started=None)
            self._journal("not_started", step=step["n"], protocol=step["protocol"], message=str(exc))
            raise ExamError(f"exam {self.exam_id}: step {step['n']} ({step['protocol']}) not started: {exc}") from None
        except RunOutputError as exc:  # the scan ended safe; some of its files could not be written
            outcome, message = "failed", str(exc)
        except ScanctlError as exc:  # bad protocol, a scanner that cannot load it: nothing played
            outcome, message = "failed", f"{type(exc).__name__}: {exc}"
        scan_s = time.perf_counter() - t0
        status = {"completed": "done", "refused": "refused"}.get(outcome, "failed")
        step.update(status=status, ended=now(), outcome=outcome, message=message or None)
        self._journal("step_ended", step=step["n"], protocol=step["protocol"], status=status, outcome=outcome,
                      message=message or None, wall_s=round(scan_s, 3))
        if status == "done" and dicom:
            self.export(step)
        return step

    def run_all(self, session: ScanSession, **options: Any) -> list[dict[str, Any]]:
        """Run every pending step in turn (stopping at the first that does not complete). Returns them."""
        done = []
        while self.pending() is not None:
            step = self.run_next(session, **options)
            done.append(step)
            if step["status"] != "done":
                break
        return done

    def _series_dir(self, step: dict[str, Any]) -> Path:
        """``dicom/NN-NAME`` of a step that ran."""
        return self.dir / "dicom" / Path(step["run_dir"]).name

    def export(self, step: dict[str, Any]) -> None:
        """Write ``step``'s run as a DICOM series into ``dicom/NN-NAME`` (the order's patient and study).
        A series that cannot be written is journaled (the run stays); nothing is raised."""
        from scanctl.data.dicom import export_run

        try:
            done = export_run(self.dir / step["run_dir"], self._series_dir(step), self.order)
        except ScanctlError as exc:
            self._journal("dicom_failed", step=step["n"], message=str(exc))
            return
        step["dicom"] = {"series_uid": done.series_uid, "files": len(done.files), "stored": False,
                         "store_message": None}
        self._journal("dicom_written", step=step["n"], series_uid=done.series_uid, files=len(done.files),
                      wall_s=round(done.seconds, 3))

    def store(self, pacs: Pacs, **options: Any) -> tuple[int, float]:
        """C-STORE every series written and not yet stored to ``pacs``, over one association
        (:func:`scanctl.data.pacs.store`; ``options`` its own). Returns (objects stored, seconds). A series
        the PACS did not take whole is marked with why (its files are kept); nothing is raised for it."""
        from scanctl.data.pacs import PacsError
        from scanctl.data.pacs import store as c_store

        files = {step["n"]: sorted(self._series_dir(step).glob("*.dcm"))
                 for step in self.doc["steps"] if step["dicom"] is not None and not step["dicom"]["stored"]}
        if not files:
            return 0, 0.0
        t0 = time.perf_counter()
        try:
            stored, problem = set(c_store([f for fs in files.values() for f in fs], pacs, **options).stored), None
        except PacsError as exc:
            stored, problem = set(exc.stored), str(exc)
        seconds = time.perf_counter() - t0
        for step in self.doc["steps"]:
            if step["n"] in files:
                taken = all(f in stored for f in files[step["n"]])
                step["dicom"].update(stored=taken, store_message=None if taken else problem)
        self._journal("stored" if problem is None else "store_failed", pacs=str(pacs), files=len(stored),
                      steps=sorted(files), message=problem, wall_s=round(seconds, 3))
        return len(stored), seconds

    # -- ending -------------------------------------------------------------------------------------------------
    def close(self) -> dict[str, Any]:
        """Close the exam as performed (MPPS COMPLETED); steps still pending are marked skipped. Returns the
        ``mpps`` entry (its ``message`` says when the peer did not take it). Raises ExamError."""
        return self._end("closed", "COMPLETED", "not run: the exam was closed")

    def discontinue(self, reason: str = "") -> dict[str, Any]:
        """End the exam as discontinued (MPPS DISCONTINUED). Raises ExamError."""
        return self._end("discontinued", "DISCONTINUED",
                         f"not run: the exam was discontinued{f' ({reason})' if reason else ''}")

    def _end(self, state: str, mpps_state: str, why: str) -> dict[str, Any]:
        self._open_or_fail("close")
        for step in self.doc["steps"]:
            if step["status"] == "pending":
                step.update(status="skipped", ended=now(), message=why)
        self._mpps_set(mpps_state)
        self.doc.update(state=state, closed=now())
        self._journal(state, mpps=self.doc["mpps"]["state"], mpps_message=self.doc["mpps"]["message"])
        return dict(self.doc["mpps"])

    # -- MPPS ---------------------------------------------------------------------------------------------------
    def _peer(self) -> Pacs | None:
        peer = self.doc["mpps"].get("peer")
        return parse_pacs(peer) if peer else None

    def _mpps_create(self, *, again: bool = False) -> None:
        """N-CREATE IN PROGRESS before the first run (once: ``again`` at close); a peer that fails is
        journaled, the exam goes on."""
        from scanctl.exam import mpps

        entry, peer = self.doc["mpps"], self._peer()
        if peer is None or entry["state"] is not None or (entry["uid"] is not None and not again):
            return
        uid = entry["uid"] or mpps.new_uid()
        entry["uid"] = uid
        ds = mpps.create_dataset(self.order, station_aet="SCANCTL", description=self.doc["card"]["name"],
                                 started=dt.datetime.now())
        try:
            mpps.n_create(peer, uid, ds)
        except mpps.MppsError as exc:
            entry["message"] = f"{exc}; the exam goes on, MPPS is tried again at close"
            self._journal("mpps_failed", action="N-CREATE", message=str(exc))
            return
        entry.update(state="IN PROGRESS", message=None)
        self._journal("mpps", action="N-CREATE", state="IN PROGRESS", uid=uid)

    def _mpps_set(self, status: str) -> None:
        from scanctl.exam import mpps

        entry, peer = self.doc["mpps"], self._peer()
        if peer is None:
            return
        if not any(s["run_dir"] for s in self.doc["steps"]):
            entry["message"] = "nothing was performed: no MPPS sent"
            return
        if entry["state"] is None:  # the N-CREATE failed at the first run: once more now
            self._mpps_create(again=True)
            if entry["state"] is None:
                entry["message"] = f"MPPS not sent ({status}): {entry['message']}"
                return
        ds = mpps.set_dataset(status, dt.datetime.now(), self._performed_series())
        try:
            mpps.n_set(peer, entry["uid"], ds)
        except mpps.MppsError as exc:
            entry["message"] = f"MPPS {status} not sent: {exc}"
            self._journal("mpps_failed", action="N-SET", message=str(exc))
            return
        entry.update(state=status, message=None)
        self._journal("mpps", action="N-SET", state=status, uid=entry["uid"])

    def _performed_series(self) -> list[dict[str, Any]]:
        from pydicom import dcmread

        series = []
        for step in self.doc["steps"]:
            if step["dicom"] is None:
                continue
            images = []
            for path in sorted(self._series_dir(step).glob("*.dcm")):
                ds = dcmread(path, stop_before_pixels=True)
                images.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
            series.append({"series_uid": step["dicom"]["series_uid"], "protocol": step["protocol"],
                           "description": step["protocol"], "images": images})
        return series

    # -- helpers ------------------------------------------------------------------------------------------------
    def _weight(self, step: dict[str, Any], given: float | None) -> float:
        ordered = self.doc["order"].get("weight_kg")
        if ordered is not None and given is not None and abs(float(ordered) - given) > 1e-9:
            raise ExamError(f"exam {self.exam_id}: patient weight {given:g} kg differs from the order's "
                            f"{ordered:g} kg: give one")
        weight = ordered if ordered is not None else given
        if weight is None:
            message = (f"exam {self.exam_id}: the order (patient {self.doc['order']['patient_id']}) has no patient "
                       f"weight: SAR cannot be judged for this patient; step {step['n']} ({step['protocol']}) not "
                       f"scanned (give the weight)")
            self._journal("weight_missing", step=step["n"], message=message)
            raise ExamError(message)
        return float(weight)

    def _step(self, n: int, what: str) -> dict[str, Any]:
        self._open_or_fail(what)
        for step in self.doc["steps"]:
            if step["n"] == n:
                return step
        raise ExamError(f"exam {self.exam_id}: no step {n} (steps: "
                        f"{', '.join(str(s['n']) for s in self.doc['steps'])})")

    def _next_n(self) -> int:
        return 1 + max((s["n"] for s in self.doc["steps"]), default=0)

    def _open_or_fail(self, what: str) -> None:
        if self.state != "open":
            raise ExamError(f"exam {self.exam_id} is {self.state}: cannot {what}")

    def _journal(self, event: str, **details: Any) -> None:
        """Journal ``event`` and rewrite exam.json (atomically) with everything changed so far."""
        self.doc["journal"].append({"t": now(), "event": event, **details})
        record.write(self.dir, self.doc)
        if self.listener is not None:
            try:
                self.listener(event, details)
            except Exception:  # noqa: BLE001 - a listener's bug must not lose the exam's record
                log.exception("exam listener failed")


def new_exam_id() -> str:
    """``exam-YYYYMMDD-HHMMSS-xxxxxx`` (UTC; also a folder name)."""
    return f"exam-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _step(n: int, protocol: str, source: Path) -> dict[str, Any]:
    return {"n": n, "protocol": protocol, "source": str(source), "status": "pending", "run_dir": None,
            "started": None, "ended": None, "outcome": None, "message": None, "dicom": None}


def _interrupted(folder: Path, step: dict[str, Any]) -> str:
    kept = sorted(p.name for p in (folder / str(step["run_dir"])).glob("*")) if step["run_dir"] else []
    return ("interrupted: the process ended during the run; kept: " + (", ".join(kept) or "nothing")
            + " (repeat the step to scan it again)")


def _lock(folder: Path) -> int:
    """The exam's lock (``exam.lock``, held until closed; a killed process releases it). Raises ExamError."""
    fd = os.open(folder / "exam.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ExamError(f"{folder}: the exam is in use by another process") from None
    return fd
