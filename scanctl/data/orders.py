"""The order a scan is made for: patient and study (from a RIS worklist, a FHIR ServiceRequest or a TOML
file), validated as DICOM needs it. :data:`NO_ORDER` marks images made without one."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import RE_VALID_UID

from scanctl.errors import DicomError

_DATE = re.compile(r"\d{8}")
_SEXES = ("M", "F", "O")


@dataclass(frozen=True)
class Order:
    """Who and what a series belongs to, as a worklist entry brings it. ``patient_name`` is a DICOM person
    name (``Family^Given``); ``birth_date`` ``YYYYMMDD`` or empty; ``sex`` ``M``, ``F``, ``O`` or empty;
    ``weight_kg`` kg; ``study_uid`` empty: one is derived from the run; ``requested_procedure`` the requested
    procedure's description and ``requested_procedure_code`` its code (e.g. a LOINC or local code);
    ``procedure_step_id`` the worklist's Scheduled Procedure Step ID. ``placeholder`` marks the defaults
    used when no order is given (the images say so)."""

    patient_id: str
    patient_name: str
    birth_date: str = ""
    sex: str = ""
    weight_kg: float | None = None
    accession_number: str = ""
    requested_procedure: str = ""
    study_uid: str = ""
    study_description: str = ""
    referring_physician: str = ""
    requested_procedure_code: str = ""
    procedure_step_id: str = ""
    placeholder: bool = False

    def __post_init__(self) -> None:
        _check_order(self)


def _check_order(order: Order) -> None:
    """Raise DicomError naming the first field DICOM cannot hold (lengths per PS3.5 6.2)."""
    if not order.patient_id.strip():
        raise DicomError("order: patient_id is empty")
    for name, limit in (("patient_id", 64), ("accession_number", 16), ("requested_procedure", 64),
                        ("study_description", 64), ("requested_procedure_code", 16), ("procedure_step_id", 16)):
        value = getattr(order, name)
        if len(value) > limit or "\\" in value or any(ord(c) < 32 for c in value):
            raise DicomError(f"order: {name} {value!r} is not a DICOM string (at most {limit} characters, "
                             f"no backslash or control characters)")
    for name in ("patient_name", "referring_physician"):
        value = getattr(order, name)
        if any(len(group) > 64 for group in value.split("=")) or "\\" in value or any(ord(c) < 32 for c in value):
            raise DicomError(f"order: {name} {value!r} is not a DICOM person name (Family^Given, at most 64 "
                             f"characters, no backslash or control characters)")
    if order.birth_date and not (_DATE.fullmatch(order.birth_date) and _valid_date(order.birth_date)):
        raise DicomError(f"order: birth_date {order.birth_date!r} is not a date YYYYMMDD")
    if order.sex not in ("", *_SEXES):
        raise DicomError(f"order: sex {order.sex!r} is not one of M, F, O (or empty)")
    if order.weight_kg is not None and not (math.isfinite(order.weight_kg) and 0 < order.weight_kg < 1000):
        raise DicomError(f"order: weight_kg {order.weight_kg!r} is not a weight in kg (0 < w < 1000)")
    if order.study_uid and not (len(order.study_uid) <= 64 and re.fullmatch(RE_VALID_UID, order.study_uid)):
        raise DicomError(f"order: study_uid {order.study_uid!r} is not a valid DICOM UID")


def _valid_date(text: str) -> bool:
    try:
        dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


#: The patient and study of a series exported without an order: marked as such wherever a person looks.
NO_ORDER = Order(patient_id="SCANCTL-NO-ORDER", patient_name="NO ORDER^SCANCTL",
                 study_description="scanctl run without an order", placeholder=True)

_ORDER_KEYS = {"patient_id": str, "patient_name": str, "birth_date": str, "sex": str, "weight_kg": float,
               "accession_number": str, "requested_procedure": str, "study_uid": str, "study_description": str,
               "referring_physician": str, "requested_procedure_code": str, "procedure_step_id": str}


def load_order(path: str | os.PathLike[str]) -> Order:
    """An order from a TOML file: the worklist entry's fields in one ``[order]`` table (keys as
    :class:`Order`'s fields; ``birth_date`` may be a TOML date). Raises DicomError naming the file and the
    key at fault."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DicomError(f"{path}: cannot read the order: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DicomError(f"{path}: not a TOML file: {exc}") from exc
    table = doc.get("order")
    if not isinstance(table, dict):
        raise DicomError(f"{path}: no [order] table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        kind = _ORDER_KEYS.get(key)
        if kind is None:
            raise DicomError(f"{path}: [order] {key}: unknown key (known: {', '.join(_ORDER_KEYS)})")
        if key == "birth_date" and isinstance(value, dt.date):
            value = value.strftime("%Y%m%d")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DicomError(f"{path}: [order] {key}: expected a {kind.__name__}, got {value!r}")
        values[key] = value
    for key in ("patient_id", "patient_name"):
        if key not in values:
            raise DicomError(f"{path}: [order] {key} is missing")
    try:
        return Order(**values)
    except DicomError as exc:
        raise DicomError(f"{path}: {exc}") from None
