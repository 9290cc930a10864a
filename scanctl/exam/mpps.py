"""Modality Performed Procedure Step (DICOM PS3.4 F.7) to the worklist side, with pynetdicom: N-CREATE
(IN PROGRESS) when an exam's first protocol runs, N-SET (COMPLETED or DISCONTINUED, with the series
performed) when it is closed. A peer that cannot be reached or refuses raises :class:`MppsError`: the
exam goes on and says so (docs/exam.md)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from scanctl.data.orders import Order
from scanctl.data.pacs import CALLING_AET, Pacs, request_association
from scanctl.errors import ScanctlError

log = logging.getLogger(__name__)

#: Modality Performed Procedure Step SOP Class.
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
#: N-CREATE / N-SET statuses that mean the peer took it (success, and "attribute list error" warnings).
ACCEPTED = frozenset({0x0000, 0x0107, 0x0116})


class MppsError(ScanctlError):
    """The MPPS peer could not be reached, refused the association or answered with a failure."""


def new_uid() -> str:
    """A new SOP Instance UID for a performed procedure step (``2.25.`` + a random UUID)."""
    return f"2.25.{uuid.uuid4().int}"


def _stamp(when: dt.datetime) -> tuple[str, str]:
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


def create_dataset(order: Order, *, station_aet: str, description: str, started: dt.datetime) -> Any:
    """The N-CREATE attribute list: patient, the scheduled step it performs, status IN PROGRESS."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = order.patient_name
    ds.PatientID = order.patient_id
    ds.PatientBirthDate = order.birth_date
    ds.PatientSex = order.sex
    ds.ReferencedPatientSequence = []
    item = Dataset()
    item.StudyInstanceUID = order.study_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = order.accession_number
    item.RequestedProcedureID = order.accession_number
    item.RequestedProcedureDescription = order.requested_procedure
    item.ScheduledProcedureStepID = order.procedure_step_id
    item.ScheduledProcedureStepDescription = order.requested_procedure
    item.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [item]
    date, time = _stamp(started)
    ds.PerformedProcedureStepID = order.procedure_step_id or order.accession_number or "SCANCTL"
    ds.PerformedStationAETitle = station_aet
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = date
    ds.PerformedProcedureStepStartTime = time
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = description
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "MR"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def set_dataset(status: str, ended: dt.datetime, series: Sequence[Mapping[str, Any]]) -> Any:
    """The N-SET modification list: ``status`` (COMPLETED or DISCONTINUED), the end time and one Performed
    Series Sequence item per series (``series_uid``, ``protocol``, ``description``, ``images``: SOP
    Instance UIDs with their SOP Class UID)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    date, time = _stamp(ended)
    ds.PerformedProcedureStepEndDate = date
    ds.PerformedProcedureStepEndTime = time
    items = []
    for s in series:
        item = Dataset()
        item.PerformingPhysicianName = ""
        item.OperatorsName = ""
        item.ProtocolName = s["protocol"]
        item.SeriesInstanceUID = s["series_uid"]
        item.SeriesDescription = s.get("description", "")
        item.RetrieveAETitle = ""
        refs = []
        for sop_class, sop_uid in s.get("images", []):
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = sop_uid
            refs.append(ref)
        item.ReferencedImageSequence = refs
        item.ReferencedNonImageCompositeSOPInstanceSequence = []
        items.append(item)
    ds.PerformedSeriesSequence = items
    return ds


def n_create(peer: Pacs, uid: str, ds: Any, *, calling_aet: str = CALLING_AET, timeout_s: float = 5.0) -> None:
    """Send the N-CREATE of MPPS ``uid``. Raises MppsError."""
    _send(peer, calling_aet, timeout_s, "N-CREATE", lambda a: a.send_n_create(ds, MPPS_SOP_CLASS, uid))


def n_set(peer: Pacs, uid: str, ds: Any, *, calling_aet: str = CALLING_AET, timeout_s: float = 5.0) -> None:
    """Send the N-SET of MPPS ``uid``. Raises MppsError."""
    _send(peer, calling_aet, timeout_s, "N-SET", lambda a: a.send_n_set(ds, MPPS_SOP_CLASS, uid))


def _send(peer: Pacs, calling_aet: str, timeout_s: float, what: str, call: Any) -> None:
    assoc = request_association(peer, [(MPPS_SOP_CLASS, None)], calling_aet=calling_aet, timeout_s=timeout_s)
    if assoc.is_rejected:
        raise MppsError(f"MPPS {peer} refused the association")
    if not assoc.is_established:
        raise MppsError(f"MPPS {peer} cannot be reached (no DICOM association)")
    try:
        status, _ = call(assoc)
    except (ValueError, RuntimeError) as exc:  # MPPS not among the accepted contexts, or the link went away
        raise MppsError(f"MPPS {peer}: {what} not sent: {exc}") from exc
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise MppsError(f"MPPS {peer}: no answer to the {what} (aborted or timed out)")
    if int(code) not in ACCEPTED:
        raise MppsError(f"MPPS {peer}: {what} failed with status 0x{int(code):04X}")
    log.info("mpps: %s accepted by %s", what, peer)
