"""DICOM files to a PACS by C-STORE (pynetdicom), verified per object, with retry while the PACS is down.

:func:`store` sends files over one association and checks the status of every C-STORE: an object counts
as stored only when the PACS answered Success (0x0000) or a warning (0xB000, 0xB007, 0xB006: kept, with
a remark). It never deletes or changes the local files: an object the PACS did not take is still on disk
and the error says which and why. An association that cannot be had (the PACS down or unreachable) is
tried again ``retries`` times, ``retry_wait_s`` apart; a PACS that refuses the association (a wrong called
AE title, a calling AE it does not know) is not: retrying would not change its mind. docs/dicom.md.
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
    """What :func:`store` did: the files the PACS kept, the warnings it gave, tries and seconds."""

    stored: list[Path] = field(default_factory=list)
    warnings: list[tuple[Path, int]] = field(default_factory=list)  # (file, status) of objects kept with a remark
    associations: int = 0  # association attempts
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        """Objects stored per second (0 when none)."""
        return len(self.stored) / self.seconds if self.seconds > 0 else 0.0


def store(files: Sequence[str | os.PathLike[str]], pacs: Pacs, *, calling_aet: str = CALLING_AET,
          timeout_s: float = 10.0, retries: int = 0, retry_wait_s: float = 2.0,
          sleep: Callable[[float], None] = time.sleep) -> StoreResult:
    """C-STORE every DICOM file of ``files`` to ``pacs`` over one association (its presentation contexts
    from the files' SOP classes and transfer syntaxes). Returns what was stored; raises PacsError when the
    PACS cannot be reached (after ``retries`` more tries, ``retry_wait_s`` apart), refuses the association,
    or does not keep every object — naming the PACS and each object not stored. Local files are never
    touched. ``timeout_s``: for the connection, each answer and the whole association's network silence."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    t0 = time.perf_counter()
    check_aet(calling_aet, "calling AE title")
    paths = [Path(f) for f in files]
    datasets = []
    for path in paths:
        try:
            datasets.append(dcmread(path))
        except (OSError, InvalidDicomError) as exc:
            raise PacsError(f"{path}: not a DICOM file to store ({exc})") from exc
    result = StoreResult()
    if not datasets:
        return result
    assoc = _associate(pacs, datasets, calling_aet, timeout_s, retries, retry_wait_s, sleep, result)
    failed: list[tuple[Path, str]] = []
    try:
        for path, ds in zip(paths, datasets, strict=True):
            if not assoc.is_established:  # the association dropped mid-store: the rest cannot be sent
                failed.append((path, "not sent: the association was lost"))
                continue
            failed.extend(_send(assoc, path, ds, result))
    finally:
        if assoc.is_established:
            assoc.release()
    result.seconds = time.perf_counter() - t0
    if failed:
        first_path, first_reason = failed[0]
        raise PacsError(f"PACS {pacs}: {len(failed)} of {len(paths)} objects not stored (first: {first_path.name}: "
                        f"{first_reason}); the files are kept", result.stored, failed)
    log.info("pacs: %d objects stored to %s in %.3f s", len(result.stored), pacs, result.seconds)
    return result


def _send(assoc: Any, path: Path, ds: Any, result: StoreResult) -> list[tuple[Path, str]]:
    """C-STORE one object; records it in ``result`` when kept, else returns ``[(path, reason)]``."""
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, RuntimeError) as exc:  # no presentation context accepted for it, or the link went away
        return [(path, str(exc))]
    code = getattr(status, "Status", None)
    if code is None:  # no answer: aborted, timed out, or the connection dropped
        return [(path, "no answer (the association was aborted or timed out)")]
    if int(code) not in KEPT:
        comment = getattr(status, "ErrorComment", "")
        return [(path, f"refused with status 0x{int(code):04X}{f' ({comment})' if comment else ''}")]
    result.stored.append(path)
    if int(code) != 0:
        result.warnings.append((path, int(code)))
    return []


def _associate(pacs: Pacs, datasets: Sequence[Any], calling_aet: str, timeout_s: float, retries: int,
               retry_wait_s: float, sleep: Callable[[float], None], result: StoreResult) -> Any:
    """An established association to ``pacs`` with a context for each (SOP class, transfer syntax) of
    ``datasets``; raises PacsError when refused, or unreachable after every try."""
    from pynetdicom import AE

    quiet_dropped_sockets()
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(sop_class, syntax)
    for attempt in range(retries + 1):
        result.associations += 1
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.aet)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            reason = _rejection(assoc)
            raise PacsError(f"PACS {pacs} refused the association ({reason}); nothing stored, the files are kept")
        if attempt < retries:
            log.info("pacs: %s not reachable (try %d of %d); again in %g s", pacs, attempt + 1, retries + 1,
                        retry_wait_s)
            sleep(retry_wait_s)
    tries = f" after {retries + 1} tries" if retries else ""
    raise PacsError(f"PACS {pacs} cannot be reached{tries} (no DICOM association: is it running, and is the "
                    f"address right?); nothing stored, the files are kept")


def _rejection(assoc: Any) -> str:
    """Why the association was rejected, from the A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    rj = getattr(assoc.acceptor, "primitive", None)
    diagnostic = getattr(rj, "result_str", None), getattr(rj, "reason_str", None)
    text = ", ".join(str(d) for d in diagnostic if d)
    return text or "rejected"


__all__ = ["CALLING_AET", "KEPT", "Pacs", "PacsError", "StoreResult", "check_aet", "parse_pacs", "store"]
