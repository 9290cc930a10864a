"""Orders in: a DICOM Modality Worklist client (C-FIND, pynetdicom), worklist files for Orthanc's
ModalityWorklists plugin, and orders from a FHIR R4 ``ServiceRequest`` (docs/dicom.md, "Orders in").

* :func:`query` asks a worklist server (the Modality Worklist Information Model – FIND, PS3.4 K.6) for the
  scheduled procedure steps matching a modality (``MR``), a scheduled station AE title, a date and a patient
  ID, and returns them as :class:`~scanctl.data.orders.Order`\\ s;
* :func:`worklist_dataset` / :func:`write_worklist` turn an order into a worklist entry (a DICOM file, the
  ``.wl`` files Orthanc's plugin serves from a folder);
* :func:`load_order_file` reads an order from a file: the worklist's own fields in TOML
  (:func:`~scanctl.data.orders.load_order`) or a FHIR R4 ``ServiceRequest`` (JSON, :func:`order_from_fhir`).

Errors: :class:`WorklistError` (a :class:`~scanctl.data.dicom.DicomError`, so a
:class:`~scanctl.errors.ScanctlError`) naming the server, the file or the field at fault.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from scanctl.data.dicom import (
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    UID_NAMESPACE,
    UID_ROOT,
)
from scanctl.data.orders import Order, load_order
from scanctl.data.pacs import CALLING_AET, Pacs, check_aet, request_association
from scanctl.errors import DicomError

log = logging.getLogger(__name__)

#: Modality Worklist Information Model – FIND (PS3.4 K.6.1.2).
MWL_FIND = UID("1.2.840.10008.5.1.4.31")
#: C-FIND statuses with an identifier to come (PS3.4 C.4.1.1.4).
PENDING = frozenset({0xFF00, 0xFF01})
#: A code's scheme when an order gives none (DICOM's "local" designator, PS3.16 8.2).
LOCAL_SCHEME = "L"


class WorklistError(DicomError):
    """A worklist server cannot be reached, refuses or fails a query; or an order file is malformed."""


# --------------------------------------------------------------------------------------------------------
# Worklist entries (what the server holds; the files Orthanc's plugin serves)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheduled:
    """Where and when a procedure step is scheduled: modality, station AE title, date ``YYYYMMDD`` and
    time ``HHMMSS``."""

    modality: str = "MR"
    station_aet: str = "SCANCTL"
    date: str = ""
    time: str = ""


def worklist_dataset(order: Order, scheduled: Scheduled = Scheduled()) -> Dataset:
    """The Modality Worklist entry of ``order`` (PS3.4 K.6.1.2.2: patient, imaging service request,
    requested procedure, one scheduled procedure step). An empty ``scheduled.date`` is today's; an order
    without a Study Instance UID (required in a worklist entry) gets one derived from its patient ID and
    accession number, so writing the same order twice gives the same study."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names such as Müller^Jürgen
    ds.PatientName = order.patient_name
    ds.PatientID = order.patient_id
    ds.PatientBirthDate = order.birth_date
    ds.PatientSex = order.sex
    if order.weight_kg is not None:
        ds.PatientWeight = f"{order.weight_kg:.6g}"
    ds.AccessionNumber = order.accession_number
    ds.ReferringPhysicianName = order.referring_physician
    ds.StudyInstanceUID = order.study_uid or _study_uid(order)
    ds.RequestedProcedureID = order.procedure_step_id or order.accession_number
    ds.RequestedProcedureDescription = order.requested_procedure
    if order.requested_procedure_code:  # an empty sequence would match no query asking for the code (Orthanc)
        ds.RequestedProcedureCodeSequence = [_code(order)]
    step = Dataset()
    step.Modality = scheduled.modality
    step.ScheduledStationAETitle = scheduled.station_aet
    step.ScheduledProcedureStepStartDate = scheduled.date or dt.date.today().strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = scheduled.time
    step.ScheduledProcedureStepID = order.procedure_step_id
    step.ScheduledProcedureStepDescription = order.study_description or order.requested_procedure
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def _study_uid(order: Order) -> str:
    return UID_ROOT + str(uuid.uuid5(UID_NAMESPACE, f"worklist-study/{order.patient_id}/{order.accession_number}").int)


def _code(order: Order) -> Dataset:
    item = Dataset()
    item.CodeValue = order.requested_procedure_code
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodeMeaning = order.requested_procedure or order.requested_procedure_code
    return item


def write_worklist(orders: Sequence[Order], folder: str | os.PathLike[str],
                   scheduled: Scheduled = Scheduled()) -> list[Path]:
    """Write each order as a worklist file ``folder/<accession or patient ID>-<n>.wl`` (DICOM Part 10, what
    Orthanc's ModalityWorklists plugin reads); returns the paths. Never writes over a file: raises
    WorklistError naming it."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, order in enumerate(orders, 1):
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", order.accession_number or order.patient_id)
        path = out / f"{stem}-{n}.wl"
        ds = worklist_dataset(order, scheduled)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MWL_FIND
        ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{IMPLEMENTATION_UID}.{n}")
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
        ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        try:
            with path.open("xb") as fh:
                ds.save_as(fh, enforce_file_format=True)
        except FileExistsError as exc:
            raise WorklistError(f"{path}: exists; a worklist file is never written over") from exc
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------------
# The C-FIND client
# --------------------------------------------------------------------------------------------------------


def query_dataset(*, modality: str | None = "MR", station_aet: str | None = None, date: str | None = None,
                  patient_id: str | None = None, accession_number: str | None = None) -> Dataset:
    """The C-FIND identifier: the keys to match (None: any) and every attribute an :class:`Order` takes,
    empty, to be returned. ``date``: ``YYYYMMDD`` or a range ``YYYYMMDD-YYYYMMDD``."""
    ds = Dataset()
    ds.SpecificCharacterSet = ""
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "PatientWeight", "ReferringPhysicianName",
                    "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription"):
        setattr(ds, keyword, "")
    ds.PatientID = patient_id or ""
    ds.AccessionNumber = accession_number or ""
    code = Dataset()
    code.CodeValue = code.CodingSchemeDesignator = code.CodeMeaning = ""
    ds.RequestedProcedureCodeSequence = [code]
    step = Dataset()
    step.Modality = modality or ""
    step.ScheduledStationAETitle = station_aet or ""
    step.ScheduledProcedureStepStartDate = date or ""
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledProcedureStepID = ""
    step.ScheduledProcedureStepDescription = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def query(server: Pacs, *, modality: str | None = "MR", station_aet: str | None = None, date: str | None = None,
          patient_id: str | None = None, accession_number: str | None = None, calling_aet: str = CALLING_AET,
          timeout_s: float = 10.0) -> list[Order]:
    """The orders ``server``'s worklist holds for the keys given (None: any), by C-FIND. Raises
    WorklistError when the server cannot be reached, refuses the association or the query, answers with a
    failure status or an entry that is not a valid order (naming the server and the entry)."""
    check_aet(calling_aet, "calling AE title")
    if date is not None and not re.fullmatch(r"\d{8}(-\d{8})?", date):
        raise WorklistError(f"worklist date {date!r} is not YYYYMMDD or YYYYMMDD-YYYYMMDD")
    identifier = query_dataset(modality=modality, station_aet=station_aet, date=date, patient_id=patient_id,
                               accession_number=accession_number)
    assoc = request_association(server, [(MWL_FIND, None)], calling_aet=calling_aet, timeout_s=timeout_s)
    if assoc.is_rejected:
        from scanctl.data.pacs import _rejection

        raise WorklistError(f"worklist {server} refused the association ({_rejection(assoc)})")
    if not assoc.is_established and assoc.rejected_contexts:  # it answered, but not to the worklist model
        raise WorklistError(f"worklist {server} does not offer the Modality Worklist (C-FIND {MWL_FIND} "
                            f"not accepted): is it a worklist server, with its worklist plugin enabled?")
    if not assoc.is_established:
        raise WorklistError(f"worklist {server} cannot be reached (no DICOM association: is it running, and is "
                            f"the address right?)")
    try:
        answers = _find(assoc, identifier, server)
    finally:
        if assoc.is_established:
            assoc.release()
    orders = []
    for n, answer in enumerate(answers, 1):
        try:
            orders.append(order_from_dataset(answer))
        except DicomError as exc:
            raise WorklistError(f"worklist {server}: entry {n} (patient {answer.get('PatientID', '?')!r}): "
                                f"{exc}") from None
    log.info("worklist: %d orders from %s", len(orders), server)
    return orders


def _find(assoc: Any, identifier: Dataset, server: Pacs) -> list[Dataset]:
    """Every identifier the C-FIND returns; raises WorklistError on a failure status or a lost answer."""
    answers = []
    for status, found in assoc.send_c_find(identifier, MWL_FIND):
        code = getattr(status, "Status", None)
        if code is None:
            raise WorklistError(f"worklist {server}: no answer to the query (the server aborted the association "
                                f"or it timed out: does it allow our calling AE title {assoc.local.ae_title!r}?)")
        if int(code) in PENDING:
            if found is not None:
                answers.append(found)
        elif int(code) != 0x0000:
            comment = getattr(status, "ErrorComment", "")
            raise WorklistError(f"worklist {server} failed the query with status 0x{int(code):04X}"
                                f"{f' ({comment})' if comment else ''}")
    return answers


def order_from_dataset(ds: Dataset) -> Order:
    """The :class:`Order` of one worklist entry (the first scheduled procedure step and requested procedure
    code). Raises DicomError naming the field at fault."""
    step = ds.ScheduledProcedureStepSequence[0] if ds.get("ScheduledProcedureStepSequence") else Dataset()
    code = ds.RequestedProcedureCodeSequence[0] if ds.get("RequestedProcedureCodeSequence") else Dataset()
    try:  # pydicom converts a DS on access: a malformed one raises there
        weight = ds.get("PatientWeight")
        weight_kg = float(weight) if weight not in (None, "") else None
    except (TypeError, ValueError):
        weight = ds["PatientWeight"].value if "PatientWeight" in ds else None
        raise DicomError(f"order: Patient's Weight {weight!r} is not a number") from None

    def text(source: Dataset, keyword: str) -> str:
        return str(source.get(keyword) or "").strip()

    return Order(patient_id=text(ds, "PatientID"), patient_name=text(ds, "PatientName"),
                 birth_date=text(ds, "PatientBirthDate"), sex=text(ds, "PatientSex"), weight_kg=weight_kg,
                 accession_number=text(ds, "AccessionNumber"),
                 requested_procedure=text(ds, "RequestedProcedureDescription"),
                 requested_procedure_code=text(code, "CodeValue"), study_uid=text(ds, "StudyInstanceUID"),
                 referring_physician=text(ds, "ReferringPhysicianName"),
                 procedure_step_id=text(step, "ScheduledProcedureStepID"))


def order_by_accession(server: Pacs, accession_number: str, **keys: Any) -> Order:
    """The one order ``server``'s worklist holds under ``accession_number``; raises WorklistError when it
    holds none or more than one."""
    found = query(server, accession_number=accession_number, **keys)
    if len(found) != 1:
        raise WorklistError(f"worklist {server}: {len(found) or 'no'} orders with accession number "
                            f"{accession_number!r}{' (expected one)' if found else ''}")
    return found[0]


# --------------------------------------------------------------------------------------------------------
# Orders from a file: TOML or FHIR R4 ServiceRequest
# --------------------------------------------------------------------------------------------------------

#: FHIR administrative gender → DICOM Patient's Sex.
_GENDER = {"male": "M", "female": "F", "other": "O", "unknown": ""}
#: LOINC body weight (29463-7) and the body weight panel code (3141-9).
_WEIGHT_CODES = {"29463-7", "3141-9"}
_KG_PER_UNIT = {"kg": 1.0, "g": 1e-3, "[lb_av]": 0.45359237, "lb": 0.45359237}
#: The identifier system of a DICOM UID in FHIR (RFC 3986 URN, values ``urn:oid:…``).
DICOM_UID_SYSTEM = "urn:dicom:uid"


def load_order_file(path: str | os.PathLike[str]) -> Order:
    """An order from ``path``: a FHIR R4 ``ServiceRequest`` (or a Bundle holding one) if it ends in
    ``.json``, else a TOML ``[order]`` table. Raises DicomError naming the file and the field at fault."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return load_order(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorklistError(f"{path}: cannot read the order: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise WorklistError(f"{path}: not a JSON file: {exc}") from exc
    try:
        return order_from_fhir(doc)
    except DicomError as exc:
        raise WorklistError(f"{path}: {exc}") from None


def order_from_fhir(doc: Any) -> Order:
    """The :class:`Order` of a FHIR R4 ``ServiceRequest`` (its Patient contained, or in the same Bundle);
    the mapping is in docs/dicom.md. Raises WorklistError naming the FHIR element at fault."""
    request, resources = _service_request(doc)
    patient = _resolve(_get(request, "subject", dict, "ServiceRequest"), request, resources, "Patient",
                       "ServiceRequest.subject")
    code = _get(request, "code", dict, "ServiceRequest", required=False) or {}
    codings = _get(code, "coding", list, "ServiceRequest.code", required=False) or []
    first = codings[0] if codings and isinstance(codings[0], dict) else {}
    values: dict[str, Any] = {
        "patient_id": _patient_id(patient),
        "patient_name": _person_name(patient),
        "birth_date": _birth_date(patient),
        "sex": _sex(patient),
        "weight_kg": _weight(request, resources),
        "accession_number": _identifier(request, lambda i: _has_code(i.get("type"), "ACSN")),
        "study_uid": _identifier(request, lambda i: i.get("system") == DICOM_UID_SYSTEM).removeprefix("urn:oid:"),
        "requested_procedure": _string(code, "text", "ServiceRequest.code") or _string(first, "display",
                                                                                        "ServiceRequest.code.coding"),
        "requested_procedure_code": _string(first, "code", "ServiceRequest.code.coding"),
    }
    try:
        return Order(**values)
    except DicomError as exc:
        raise WorklistError(f"FHIR {exc}") from None


def _service_request(doc: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ServiceRequest and the resources a reference may name (its contained ones, a Bundle's entries)."""
    if not isinstance(doc, dict):
        raise WorklistError("not a FHIR resource (a JSON object with resourceType)")
    kind = doc.get("resourceType")
    if kind == "ServiceRequest":
        return doc, []
    if kind != "Bundle":
        raise WorklistError(f"resourceType {kind!r}: expected ServiceRequest (or a Bundle holding one)")
    entries = [e.get("resource") for e in _get(doc, "entry", list, "Bundle") if isinstance(e, dict)]
    resources = [r for r in entries if isinstance(r, dict)]
    requests = [r for r in resources if r.get("resourceType") == "ServiceRequest"]
    if len(requests) != 1:
        raise WorklistError(f"Bundle holds {len(requests)} ServiceRequests (expected one)")
    return requests[0], resources


def _get(obj: Mapping[str, Any], key: str, kind: type, where: str, *, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise WorklistError(f"{where}.{key} is missing")
        return None
    if not isinstance(value, kind):
        raise WorklistError(f"{where}.{key}: expected a JSON {'object' if kind is dict else 'array'}, "
                            f"got {value!r:.60}")
    return value


def _items(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """``obj[key]``, a JSON array (empty when absent); raises WorklistError when it is something else."""
    value = _get(obj, key, list, where, required=False)
    return value or []


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    """``obj[key]``, a string ("" when absent); raises WorklistError when it is something else."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WorklistError(f"{where}.{key} {value!r:.40}: expected a string")
    return value


def _resolve(reference: Mapping[str, Any], request: Mapping[str, Any], resources: Sequence[Mapping[str, Any]],
             kind: str | None, where: str) -> dict[str, Any]:
    """The resource ``reference`` names: ``#id`` among ``request``'s contained ones, ``Kind/id`` or a
    fullUrl-less id among the Bundle's. Raises WorklistError when it is not there or not a ``kind`` (None:
    any kind)."""
    ref = reference.get("reference")
    if not isinstance(ref, str) or not ref:
        raise WorklistError(f"{where}.reference is missing")
    if ref.startswith("#"):
        pool = [r for r in _items(request, "contained", "ServiceRequest") if isinstance(r, dict)]
        wanted = ref[1:]
    else:
        pool = [r for r in resources if isinstance(r, dict)]
        wanted = ref.rsplit("/", 1)[-1]
    for resource in pool:
        if resource.get("id") == wanted:
            if kind is not None and resource.get("resourceType") != kind:
                raise WorklistError(f"{where} {ref!r} is a {resource.get('resourceType')}, not a {kind}")
            return dict(resource)
    raise WorklistError(f"{where} {ref!r}: no such resource in the file (contained or in the Bundle)")


def _patient_id(patient: Mapping[str, Any]) -> str:
    """Patient.identifier: the one typed ``MR`` (medical record number), else the first with a value."""
    ids = [i for i in _items(patient, "identifier", "Patient") if isinstance(i, dict) and i.get("value")]
    if not ids:
        raise WorklistError("Patient.identifier: no identifier with a value (the patient ID)")
    typed = [i for i in ids if _has_code(i.get("type"), "MR")]
    value = (typed or ids)[0]["value"]
    if not isinstance(value, str):
        raise WorklistError(f"Patient.identifier.value {value!r:.40}: expected a string")
    return value


def _person_name(patient: Mapping[str, Any]) -> str:
    """Patient.name (the ``official`` one, else the first) as ``Family^Given Middle``."""
    names = [n for n in _items(patient, "name", "Patient") if isinstance(n, dict)]
    if not names:
        raise WorklistError("Patient.name is missing")
    name = next((n for n in names if n.get("use") == "official"), names[0])
    given = name.get("given") or []
    if not isinstance(given, list) or not all(isinstance(g, str) for g in given):
        raise WorklistError(f"Patient.name.given: expected an array of strings, got {given!r:.60}")
    family = name.get("family") or ""
    if not isinstance(family, str) or not (family or given):
        raise WorklistError(f"Patient.name: no family or given name ({name!r:.80})")
    return f"{family}^{' '.join(given)}".rstrip("^")


def _birth_date(patient: Mapping[str, Any]) -> str:
    value = patient.get("birthDate")
    if value is None:
        return ""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise WorklistError(f"Patient.birthDate {value!r} is not a full date YYYY-MM-DD (DICOM needs the day)")
    return value.replace("-", "")


def _sex(patient: Mapping[str, Any]) -> str:
    gender = patient.get("gender")
    if gender is None:
        return ""
    if not isinstance(gender, str) or gender not in _GENDER:
        raise WorklistError(f"Patient.gender {gender!r} is not one of {', '.join(_GENDER)}")
    return _GENDER[gender]


def _weight(request: Mapping[str, Any], resources: Sequence[Mapping[str, Any]]) -> float | None:
    """The body weight (kg) of the Observation (LOINC 29463-7) ``ServiceRequest.supportingInfo`` names."""
    for n, info in enumerate(_items(request, "supportingInfo", "ServiceRequest")):
        if not isinstance(info, dict):
            continue
        where = f"ServiceRequest.supportingInfo[{n}]"
        resource = _resolve(info, request, resources, None, where)  # other supporting information: not ours
        if resource.get("resourceType") != "Observation" or not _has_code(resource.get("code"), *_WEIGHT_CODES):
            continue
        quantity = resource.get("valueQuantity")
        if not isinstance(quantity, dict):
            raise WorklistError(f"{where}: the body weight Observation has no valueQuantity")
        value, unit = quantity.get("value"), str(quantity.get("code") or quantity.get("unit"))
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise WorklistError(f"{where}: body weight valueQuantity.value {value!r} is not a number")
        if unit not in _KG_PER_UNIT:
            raise WorklistError(f"{where}: body weight unit {unit!r} is not one of {', '.join(_KG_PER_UNIT)}")
        return float(value) * _KG_PER_UNIT[unit]
    return None


def _has_code(concept: Any, *codes: str) -> bool:
    """Whether a FHIR CodeableConcept has a coding with one of ``codes``."""
    if not isinstance(concept, dict):
        return False
    return any(isinstance(c, dict) and c.get("code") in codes for c in _items(concept, "coding", "CodeableConcept"))


def _identifier(request: Mapping[str, Any], match: Any) -> str:
    for ident in _items(request, "identifier", "ServiceRequest"):
        if isinstance(ident, dict) and match(ident) and isinstance(ident.get("value"), str):
            return str(ident["value"])
    return ""


__all__ = ["DICOM_UID_SYSTEM", "MWL_FIND", "Scheduled", "WorklistError", "load_order_file", "order_by_accession",
           "order_from_dataset", "order_from_fhir", "query", "query_dataset", "worklist_dataset", "write_worklist"]
