"""DICOM files to a PACS by C-STORE (pynetdicom), verified per object, with retry while the PACS is down.

:func:`store` sends files over one association and checks the status of every C-STORE: an object counts
as stored only when the PACS answered Success (0x0000) or a warning (0xB000, 0xB007, 0xB006: kept, with
a remark), and then, unless ``verify=False``, only once the PACS lists it again (C-FIND per series: Orthanc
offers no Storage Commitment a modality can use without being configured in it). It never deletes or changes
the local files: an object the PACS did not take is still on disk and the error says which and why. An
association that cannot be had (the PACS down or unreachable) or that drops mid-store is tried again
``retries`` times with a doubling wait, sending only what was not yet acknowledged; a PACS that refuses the
association (a wrong called AE title, a calling AE it does not know) is not: retrying would not change its
mind. docs/dicom.md.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanctl.errors import ScanctlError

log = logging.getLogger(__name__)


def quiet_dropped_sockets() -> None:
    """pynetdicom 3.0 drops the socket of a connection that failed without closing it: a ResourceWarning
    about its own socket for every unreachable server, which is not ours to act on (the error we raise
    says it all). Called before each association, not once at import: importing ``ismrmrd.image`` resets
    the warning filters to ``default`` for the whole process."""
    warnings.filterwarnings("ignore", message=r"unclosed <socket", category=ResourceWarning)

#: Our AE title when none is given.
CALLING_AET = "SCANCTL"
#: C-STORE statuses that mean the PACS kept the object (PS3.4 B.2.3: success, and the warnings).
KEPT = frozenset({0x0000, 0xB000, 0xB006, 0xB007})

_AET = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE: 16 characters, no backslash or control
_ADDRESS = re.compile(r"(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d+)")


class PacsError(ScanctlError):
    """A PACS address is malformed, the PACS cannot be reached or refused, or some objects were not
    stored (``stored``: what it took, ``failed``: ``(path, reason)`` of each object it did not)."""

    def __init__(self, message: str, stored: Sequence[Path] = (), failed: Sequence[tuple[Path, str]] = ()) -> None:
        super().__init__(message)
        self.stored = list(stored)
        self.failed = list(failed)


@dataclass(frozen=True)
class Pacs:
    """Where a PACS listens: its (called) AE title, host and TCP port."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def check_aet(aet: str, what: str = "AE title") -> str:
    """``aet`` if it is a DICOM AE title (1-16 printable ASCII characters, no backslash, not all spaces);
    raises PacsError naming it otherwise."""
    if not _AET.fullmatch(aet) or not aet.strip():
        raise PacsError(f"{what} {aet!r} is not a DICOM AE title (1 to 16 printable ASCII characters, no backslash)")
    return aet


def parse_pacs(text: str) -> Pacs:
    """``AET@HOST:PORT`` (an IPv6 host in brackets) as a :class:`Pacs`. Raises PacsError naming the part
    at fault."""
    match = _ADDRESS.fullmatch(text.strip())
    if match is None:
        raise PacsError(f"PACS address {text!r} is not AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise PacsError(f"PACS address {text!r}: port {port} is not 1..65535")
    return Pacs(check_aet(match["aet"], "PACS AE title"), match["host"].strip("[]"), port)


@dataclass
class StoreResult:
    """What :func:`store` did: the files the PACS kept (``verified``: and lists them when asked, C-FIND),
    the warnings it gave, association attempts, and seconds."""

    stored: list[Path] = field(default_factory=list)
    warnings: list[tuple[Path, int]] = field(default_factory=list)  # (file, status) of objects kept with a remark
    associations: int = 0  # association attempts (the stores and the verification)
    seconds: float = 0.0
    verified: bool = False  # every stored object was found again by C-FIND
    resent: int = 0  # objects sent again after an association was lost

    @property
    def per_second(self) -> float:
        """Objects stored per second (0 when none)."""
        return len(self.stored) / self.seconds if self.seconds > 0 else 0.0


#: The longest wait between two tries (s): the wait doubles from ``retry_wait_s`` up to this.
MAX_RETRY_WAIT_S = 60.0


class _Unreachable(Exception):
    """No association could be had this time (the PACS down, unreachable or aborting): worth a retry."""


@dataclass
class _Store:
    """One call of :func:`store`: its settings and what is still to send."""

    pacs: Pacs
    calling_aet: str
    timeout_s: float
    retries: int
    retry_wait_s: float
    sleep: Callable[[float], None]
    progress: Callable[[Path], None] | None
    result: StoreResult = field(default_factory=StoreResult)
    refused: list[tuple[Path, str]] = field(default_factory=list)  # answered with a failure status: not retried
    tries: int = 0  # retries used so far

    def wait(self) -> None:
        """Sleep before the next try: ``retry_wait_s``, doubled each try, at most MAX_RETRY_WAIT_S."""
        self.sleep(min(self.retry_wait_s * 2 ** self.tries, max(MAX_RETRY_WAIT_S, self.retry_wait_s)))
        self.tries += 1


def store(files: Sequence[str | os.PathLike[str]], pacs: Pacs, *, calling_aet: str = CALLING_AET,
          timeout_s: float = 10.0, retries: int = 0, retry_wait_s: float = 2.0, verify: bool = True,
          sleep: Callable[[float], None] = time.sleep, progress: Callable[[Path], None] | None = None,
          ) -> StoreResult:
    """C-STORE every DICOM file of ``files`` to ``pacs`` (presentation contexts from the files' SOP classes
    and transfer syntaxes), check each answer, and with ``verify`` find every object again by C-FIND
    (Study Root, IMAGE level, per series) before anything counts as stored: a PACS that answers Success
    and loses the object is caught. While the PACS cannot be reached or the association drops mid-store,
    tries again ``retries`` times, waiting ``retry_wait_s`` then twice as long each time (at most
    MAX_RETRY_WAIT_S), sending only what was not yet acknowledged. ``progress(path)`` after each object
    acknowledged. Returns what was stored; raises PacsError when the PACS cannot be reached after every try,
    refuses the association, answers an object with a failure status, cannot verify, or does not list an
    object it acknowledged — naming the PACS and each object not stored. Local files are never touched.
    ``timeout_s``: for the connection, each answer and the association's network silence."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    t0 = time.perf_counter()
    check_aet(calling_aet, "calling AE title")
    pending = []
    for f in files:
        path = Path(f)
        try:
            pending.append((path, dcmread(path)))
        except (OSError, InvalidDicomError) as exc:
            raise PacsError(f"{path}: not a DICOM file to store ({exc})") from exc
    job = _Store(pacs, calling_aet, timeout_s, retries, retry_wait_s, sleep, progress)
    total = len(pending)
    while pending:
        try:
            pending = _send_all(job, pending)
        except _Unreachable as exc:
            if job.tries >= retries:
                _give_up(job, total, pending, exc)
            log.info("pacs: %s: %s (try %d of %d); again", pacs, exc, job.tries + 1, retries + 1)
            job.wait()
            continue
        if pending:  # the association dropped: the rest (and the object whose answer was lost) again
            if job.tries >= retries:
                _give_up(job, total, pending, _Unreachable("the association was lost mid-store"))
            log.info("pacs: %s: association lost with %d objects to go; again", pacs, len(pending))
            job.result.resent += len(pending)
            job.wait()
    result = job.result
    if job.refused:
        first_path, first_reason = job.refused[0]
        raise PacsError(f"PACS {pacs}: {len(job.refused)} of {total} objects not stored (first: {first_path.name}: "
                        f"{first_reason}); the files are kept", result.stored, job.refused)
    if verify and result.stored:
        _verify(job, [dcmread(p, stop_before_pixels=True) for p in result.stored])
    result.seconds = time.perf_counter() - t0
    log.info("pacs: %d objects stored to %s in %.3f s%s", len(result.stored), pacs, result.seconds,
             " (verified by C-FIND)" if result.verified else "")
    return result


def _give_up(job: _Store, total: int, pending: Sequence[tuple[Path, Any]], why: Exception) -> None:
    done = len(job.result.stored)
    tries = f" after {job.tries + 1} tries" if job.retries else ""
    kept = "nothing stored" if not done else f"{done} of {total} objects stored, {len(pending)} not"
    failed = [(p, str(why)) for p, _ in pending]
    if isinstance(why, _Unreachable) and str(why).startswith("no DICOM association"):
        raise PacsError(f"PACS {job.pacs} cannot be reached{tries} ({why}: is it running, and is the address "
                        f"right?); {kept}, the files are kept", job.result.stored, failed)
    raise PacsError(f"PACS {job.pacs}: {why}{tries}; {kept}, the files are kept", job.result.stored, failed)


def _send_all(job: _Store, pending: Sequence[tuple[Path, Any]]) -> list[tuple[Path, Any]]:
    """Send ``pending`` over one association; returns what is still to send (the association dropped).
    Raises _Unreachable (no association), PacsError (refused)."""
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in pending})
    assoc = _associate(job, contexts)
    try:
        for n, (path, ds) in enumerate(pending):
            if not assoc.is_established:  # dropped between two objects
                return list(pending[n:])
            outcome = _send(assoc, path, ds, job.result)
            if outcome is None:
                if job.progress is not None:
                    job.progress(path)
            elif outcome.startswith("refused"):
                job.refused.append((path, outcome))
            else:  # no answer: the association went away under this object; it may or may not have arrived
                return list(pending[n:])
        return []
    finally:
        if assoc.is_established:
            assoc.release()


def _send(assoc: Any, path: Path, ds: Any, result: StoreResult) -> str | None:
    """C-STORE one object: None when kept (recorded in ``result``), else why not (``refused …`` for a
    failure status or no presentation context, anything else for a lost association)."""
    try:
        status = assoc.send_c_store(ds)
    except ValueError as exc:  # no presentation context accepted for it: the PACS will not take it
        return f"refused: {exc}"
    except RuntimeError as exc:  # the link went away
        return str(exc)
    code = getattr(status, "Status", None)
    if code is None:  # no answer: aborted, timed out, or the connection dropped
        return "no answer (the association was aborted or timed out)"
    if int(code) not in KEPT:
        comment = getattr(status, "ErrorComment", "")
        return f"refused with status 0x{int(code):04X}{f' ({comment})' if comment else ''}"
    result.stored.append(path)
    if int(code) != 0:
        result.warnings.append((path, int(code)))
    return None


def _verify(job: _Store, datasets: Sequence[Any]) -> None:
    """Find every stored object again (C-FIND, Study Root, IMAGE level, one query per series); sets
    ``job.result.verified``. Raises PacsError naming what the PACS does not list, or why it could not be
    asked."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # type: ignore[attr-defined]

    result = job.result
    try:
        assoc = _associate(job, [(str(FIND), None)])
    except _Unreachable:  # pynetdicom aborts an association in which no context was accepted: the same
        raise PacsError(_no_find(job.pacs, "no association for it"), [],
                        [(p, "not verified") for p in result.stored]) from None
    try:
        missing = []
        for (study, series), uids in _by_series(datasets).items():
            found = _find_series(assoc, FIND, study, series, job.pacs)
            missing += [p for uid, p in uids.items() if uid not in found]
    finally:
        if assoc.is_established:
            assoc.release()
    if missing:
        result.stored = [p for p in result.stored if p not in missing]
        raise PacsError(f"PACS {job.pacs}: {len(missing)} objects acknowledged but not found again by C-FIND "
                        f"(first: {missing[0].name}); the files are kept", result.stored,
                        [(p, "acknowledged, not found by C-FIND") for p in missing])
    result.verified = True


def _by_series(datasets: Sequence[Any]) -> dict[tuple[str, str], dict[str, Path]]:
    out: dict[tuple[str, str], dict[str, Path]] = {}
    for ds in datasets:
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        out.setdefault(key, {})[str(ds.SOPInstanceUID)] = Path(ds.filename)
    return out


def _find_series(assoc: Any, model: Any, study: str, series: str, pacs: Pacs) -> set[str]:
    """The SOP Instance UIDs ``pacs`` lists for one series. Raises PacsError."""
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study, series, ""
    found = set()
    try:
        for status, identifier in assoc.send_c_find(query, model):
            code = getattr(status, "Status", None)
            if code is None:
                raise PacsError(f"PACS {pacs}: no answer to the verifying C-FIND (aborted or timed out); the "
                                f"files are kept")
            if int(code) in (0xFF00, 0xFF01) and identifier is not None:
                found.add(str(identifier.get("SOPInstanceUID", "")))
            elif int(code) != 0:
                raise PacsError(f"PACS {pacs}: the verifying C-FIND failed with status 0x{int(code):04X}; the "
                                f"files are kept")
    except (ValueError, RuntimeError) as exc:  # no FIND context accepted, or the link went away
        raise PacsError(_no_find(pacs, str(exc))) from None
    return found


def _no_find(pacs: Pacs, why: str) -> str:
    return (f"PACS {pacs} cannot verify the store: it does not answer C-FIND (Study Root) ({why}); the objects "
            f"were sent, use --no-verify to trust the C-STORE answers alone; the files are kept")


def request_association(peer: Pacs, contexts: Sequence[tuple[str, str | None]], *, calling_aet: str,
                        timeout_s: float) -> Any:
    """Ask ``peer`` for an association with the presentation ``contexts`` (SOP class, transfer syntax or None
    for the defaults), every timeout ``timeout_s``: pynetdicom's association, established or not (the caller
    says what a refusal means). The one place the project opens a DICOM association (store, worklist, MPPS)."""
    from pynetdicom import AE

    quiet_dropped_sockets()
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    for sop_class, syntax in contexts:
        if syntax is None:
            ae.add_requested_context(sop_class)
        else:
            ae.add_requested_context(sop_class, syntax)
    return ae.associate(peer.host, peer.port, ae_title=peer.aet)


def _associate(job: _Store, contexts: Sequence[tuple[str, str | None]]) -> Any:
    """An established association to the PACS with the presentation ``contexts``. Raises PacsError when
    refused, _Unreachable when it cannot be had."""
    job.result.associations += 1
    assoc = request_association(job.pacs, contexts, calling_aet=job.calling_aet, timeout_s=job.timeout_s)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise PacsError(f"PACS {job.pacs} refused the association ({_rejection(assoc)}); nothing stored, the files "
                        f"are kept", job.result.stored)
    raise _Unreachable("no DICOM association")


def _rejection(assoc: Any) -> str:
    """Why the association was rejected, from the A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    rj = getattr(assoc.acceptor, "primitive", None)
    diagnostic = getattr(rj, "result_str", None), getattr(rj, "reason_str", None)
    text = ", ".join(str(d) for d in diagnostic if d)
    return text or "rejected"


__all__ = ["CALLING_AET", "KEPT", "MAX_RETRY_WAIT_S", "Pacs", "PacsError", "StoreResult", "check_aet", "parse_pacs",
           "store"]
