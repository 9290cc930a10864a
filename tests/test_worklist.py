"""Orders in (docs/dicom.md, "Orders in"): a Modality Worklist C-FIND against a real Orthanc with its
ModalityWorklists plugin (orders written as .wl files → C-FIND → the same orders), worklist servers that
are down, refuse or fail (pynetdicom SCPs), and FHIR R4 ServiceRequest orders, good and malformed."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from scanctl.data.dicom import DicomError, Order
from scanctl.data.pacs import Pacs
from scanctl.data.worklist import (
    MWL_FIND,
    Scheduled,
    WorklistError,
    load_order_file,
    order_by_accession,
    order_from_fhir,
    query,
    worklist_dataset,
    write_worklist,
)
from scanctl.services.orthanc import Orthanc, free_port

TODAY = "20261203"
HEAD = Order(patient_id="P1", patient_name="Müller^Jürgen", birth_date="19700531", sex="M", weight_kg=82.5,
             accession_number="ACC1", requested_procedure="MR head", requested_procedure_code="MRHEAD",
             study_uid="1.2.826.0.1.3680043.8.498.1", referring_physician="Doe^Jane", procedure_step_id="SPS1")
KNEE = Order(patient_id="P2", patient_name="Smith^Anna", birth_date="19851112", sex="F", weight_kg=61.0,
             accession_number="ACC2", requested_procedure="MR knee left", requested_procedure_code="MRKNEE",
             study_uid="1.2.826.0.1.3680043.8.498.2", procedure_step_id="SPS2")
TOMORROW = Order(patient_id="P3", patient_name="Later^Lea", accession_number="ACC3", weight_kg=70.0,
                 study_uid="1.2.826.0.1.3680043.8.498.3")
OTHER_STATION = Order(patient_id="P4", patient_name="Elsewhere^Eli", accession_number="ACC4", weight_kg=90.0)
CT = Order(patient_id="P5", patient_name="Ct^Carl", accession_number="ACC5", weight_kg=75.0)


@pytest.fixture(scope="module")
def worklist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    root = tmp_path_factory.mktemp("worklist")
    folder = root / "wl"
    write_worklist([HEAD, KNEE], folder, Scheduled(date=TODAY, time="0930"))
    write_worklist([TOMORROW], folder, Scheduled(date="20261204"))  # files are named by accession number
    write_worklist([OTHER_STATION], folder, Scheduled(station_aet="MR2", date=TODAY))
    write_worklist([CT], folder, Scheduled(modality="CT", date=TODAY))
    with Orthanc(root / "orthanc", worklists=folder) as server:
        yield server


def test_orders_written_come_back_by_c_find_field_for_field(worklist: Orthanc) -> None:
    found = query(worklist.pacs, date=TODAY, station_aet="SCANCTL")
    assert sorted(found, key=lambda o: o.patient_id) == [HEAD, KNEE]


def test_an_order_without_a_study_uid_gets_one_the_same_each_time(worklist: Orthanc) -> None:
    (found,) = query(worklist.pacs, patient_id="P4")
    assert found.study_uid.startswith("2.25.") and found == replace(OTHER_STATION, study_uid=found.study_uid)
    assert worklist_dataset(OTHER_STATION).StudyInstanceUID == found.study_uid


@pytest.mark.parametrize(("keys", "expected"), [
    ({}, {"P1", "P2", "P3", "P4"}),  # MR only: not the CT entry
    ({"modality": "CT"}, {"P5"}),
    ({"modality": None}, {"P1", "P2", "P3", "P4", "P5"}),
    ({"station_aet": "MR2"}, {"P4"}),
    ({"date": "20261204"}, {"P3"}),
    ({"date": "20261201-20261203"}, {"P1", "P2", "P4"}),
    ({"patient_id": "P2"}, {"P2"}),
    ({"accession_number": "ACC3"}, {"P3"}),
    ({"patient_id": "NOBODY"}, set()),
])
def test_the_query_keys_select_the_entries(worklist: Orthanc, keys: dict[str, Any], expected: set[str]) -> None:
    assert {o.patient_id for o in query(worklist.pacs, **keys)} == expected


def test_one_order_by_accession_number(worklist: Orthanc) -> None:
    assert order_by_accession(worklist.pacs, "ACC2") == KNEE
    with pytest.raises(WorklistError, match="no orders with accession number 'NOPE'"):
        order_by_accession(worklist.pacs, "NOPE")


def test_an_unreachable_worklist_is_one_clear_error() -> None:
    server = Pacs("ORTHANC", "127.0.0.1", free_port())
    with pytest.raises(WorklistError, match=rf"worklist {server} cannot be reached"):
        query(server, timeout_s=2)


def test_a_wrong_called_ae_title_is_refused(worklist: Orthanc) -> None:
    server = Pacs("NOT-ORTHANC", worklist.host, worklist.dicom_port)
    with pytest.raises(WorklistError, match=r"refused the association \(.*Called AE title not recognised"):
        query(server)


def test_a_bad_date_key_is_refused_before_any_association() -> None:
    with pytest.raises(WorklistError, match="date '2026-12-03' is not YYYYMMDD"):
        query(Pacs("X", "127.0.0.1", 1), date="2026-12-03")


# -- worklist servers that misbehave: pynetdicom SCPs -----------------------------------------------------


def _damaged(order: Order, tag: int, value: str) -> Dataset:
    """The worklist entry of ``order`` with the element ``tag`` holding ``value`` as text (whatever its VR)."""
    from pydicom.dataelem import DataElement

    ds = worklist_dataset(order)
    ds[tag] = DataElement(tag, "LO", value)
    return ds


def _scp(answers: list[tuple[int, Dataset | None]]) -> tuple[Any, Pacs]:
    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield from answers

    ae = AE(ae_title="FAKEWL")
    ae.add_supported_context(MWL_FIND)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    return server, Pacs("FAKEWL", "127.0.0.1", port)


@pytest.mark.parametrize(("answers", "message"), [
    ([(0xC000, None)], r"failed the query with status 0xC000"),
    ([(0xFF00, worklist_dataset(HEAD)), (0xA700, None)], r"failed the query with status 0xA700"),
    ([(0xFF00, worklist_dataset(KNEE)), (0xFF00, _damaged(HEAD, 0x00101030, "heavy"))],
     r"entry 2 \(patient 'P1'\): .*Patient's Weight 'heavy' is not a number"),
    ([(0xFF00, _damaged(KNEE, 0x00100030, "19701399"))], r"entry 1 \(patient 'P2'\): order: birth_date '19701399'"),
    ([(0xFF00, _damaged(KNEE, 0x00100020, ""))], r"entry 1 .*patient_id is empty"),
])
def test_a_failing_or_malformed_worklist_answer_is_one_clear_error(answers: list[tuple[int, Dataset | None]],
                                                                   message: str) -> None:
    server, address = _scp(answers)
    try:
        with pytest.raises(WorklistError, match=message) as caught:
            query(address)
        assert "\n" not in str(caught.value) and str(address) in str(caught.value)
    finally:
        server.shutdown()


def test_a_server_without_the_worklist_model_is_named() -> None:
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="NOWL")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        with pytest.raises(WorklistError, match=r"NOWL@127\.0\.0\.1:\d+ (refused|does not offer)"):
            query(Pacs("NOWL", "127.0.0.1", port))
    finally:
        server.shutdown()


# -- FHIR R4 ServiceRequest -------------------------------------------------------------------------------

FHIR: dict[str, Any] = {
    "resourceType": "ServiceRequest",
    "id": "req1",
    "status": "active",
    "intent": "order",
    "contained": [
        {"resourceType": "Patient", "id": "pat",
         "identifier": [{"system": "urn:oid:1.2.3", "value": "INS-9"},
                        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                              "code": "MR"}]}, "value": "P1"}],
         "name": [{"use": "nickname", "given": ["Jo"]},
                  {"use": "official", "family": "Müller", "given": ["Jürgen", "K"]}],
         "gender": "male", "birthDate": "1970-05-31"},
        {"resourceType": "Observation", "id": "wt", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
         "valueQuantity": {"value": 82.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}},
    ],
    "identifier": [
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
         "value": "ACC1"},
        {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.8.498.1"},
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "24590-2", "display": "MR Brain"}],
             "text": "MR head"},
    "subject": {"reference": "#pat"},
    "supportingInfo": [{"reference": "#wt"}],
}


def test_a_fhir_service_request_maps_to_an_order() -> None:
    assert order_from_fhir(FHIR) == Order(
        patient_id="P1", patient_name="Müller^Jürgen K", birth_date="19700531", sex="M", weight_kg=82.5,
        accession_number="ACC1", requested_procedure="MR head", requested_procedure_code="24590-2",
        study_uid="1.2.826.0.1.3680043.8.498.1")


def test_a_fhir_bundle_with_the_patient_referenced() -> None:
    request = copy.deepcopy(FHIR)
    patient, weight = request.pop("contained")
    request["subject"] = {"reference": "Patient/pat"}
    request["supportingInfo"] = [{"reference": "Observation/wt"}]
    weight["valueQuantity"] = {"value": 150, "code": "[lb_av]"}
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in (patient, request, weight)]}
    order = order_from_fhir(bundle)
    assert order.patient_id == "P1" and order.weight_kg == pytest.approx(68.0388555)


def _edit(path: str, value: Any) -> dict[str, Any]:
    """FHIR with the element at ``path`` (dots; list indices as digits) set to ``value`` (None: removed)."""
    doc = copy.deepcopy(FHIR)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return doc


@pytest.mark.parametrize(("doc", "message"), [
    ([], "not a FHIR resource"),
    ({"resourceType": "Patient"}, "resourceType 'Patient': expected ServiceRequest"),
    ({"resourceType": "Bundle", "entry": []}, "Bundle holds 0 ServiceRequests"),
    (_edit("subject", None), r"ServiceRequest\.subject is missing"),
    (_edit("subject", "#pat"), r"ServiceRequest\.subject: expected a JSON object"),
    (_edit("subject.reference", "#nobody"), r"subject '#nobody': no such resource"),
    (_edit("subject.reference", "#wt"), r"subject '#wt' is a Observation, not a Patient"),
    (_edit("contained.0.identifier", []), r"Patient\.identifier: no identifier"),
    (_edit("contained.0.name", None), r"Patient\.name is missing"),
    (_edit("contained.0.name.1.given", "Jürgen"), r"Patient\.name\.given: expected an array"),
    (_edit("contained.0.gender", "m"), r"Patient\.gender 'm' is not one of"),
    (_edit("contained.0.birthDate", "1970-05"), r"Patient\.birthDate '1970-05' is not a full date"),
    (_edit("contained.0.birthDate", "1970-02-30"), r"birth_date '19700230' is not a date"),
    (_edit("contained.1.valueQuantity.code", "stone"), r"supportingInfo\[0\]: body weight unit 'stone'"),
    (_edit("contained.1.valueQuantity.value", "82"), r"valueQuantity\.value '82' is not a number"),
    (_edit("contained.1.valueQuantity.value", -3), r"weight_kg -3\.0 is not a weight"),
    (_edit("identifier.0.value", "A" * 17), r"accession_number 'A{17}' is not a DICOM string"),
    (_edit("identifier.1.value", "urn:oid:1.2.x"), r"study_uid '1\.2\.x' is not a valid DICOM UID"),
])
def test_a_malformed_fhir_order_is_one_line_naming_the_element(tmp_path: Path, doc: Any, message: str) -> None:
    path = tmp_path / "order.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(WorklistError, match=message) as caught:
        load_order_file(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("order.json", "{not json", "not a JSON file"),
    ("order.json", None, "cannot read the order"),
    ("order.toml", "[order]\npatient_id = 'P1'\n", r"\[order\] patient_name is missing"),
    ("order.toml", "[order]\npatient_id = 'P1'\npatient_name = 'A^B'\nweight_kg = 'heavy'\n",
     r"\[order\] weight_kg: expected a float"),
    ("order.toml", "[order]\npatient_id = 'P1'\npatient_name = 'A^B'\nprocedure_step_id = '" + "9" * 17 + "'\n",
     r"procedure_step_id '9{17}' is not a DICOM string"),
])
def test_a_malformed_order_file_is_one_line_naming_the_file(tmp_path: Path, name: str, text: str | None,
                                                            message: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(DicomError, match=message) as caught:
        load_order_file(path)
    assert str(path) in str(caught.value)


def test_a_toml_order_reads_the_new_fields(tmp_path: Path) -> None:
    path = tmp_path / "order.toml"
    path.write_text("[order]\npatient_id = 'P1'\npatient_name = 'A^B'\nrequested_procedure_code = 'MRHEAD'\n"
                    "procedure_step_id = 'SPS1'\nweight_kg = 70\n", encoding="utf-8")
    order = load_order_file(path)
    assert (order.requested_procedure_code, order.procedure_step_id, order.weight_kg) == ("MRHEAD", "SPS1", 70.0)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(["subject", "subject.reference", "contained", "contained.0", "contained.0.name",
                             "contained.0.identifier", "contained.0.gender", "contained.0.birthDate",
                             "contained.1.valueQuantity", "contained.1.code", "supportingInfo", "identifier",
                             "identifier.0", "identifier.0.type", "code", "code.coding", "code.text",
                             "contained.0.name.1", "contained.0.name.1.given", "supportingInfo.0", "contained.1"]),
       value=_json)
def test_any_fhir_damage_is_an_order_or_a_worklist_error(path: str, value: Any) -> None:
    doc = _edit(path, value)  # None removes the element
    try:
        order = order_from_fhir(doc)
    except DicomError as exc:
        assert "\n" not in str(exc)
    else:
        assert order.patient_id


# -- the command line: scanctl worklist query, scanctl run --order / --accession --worklist ---------------

ROOT = Path(__file__).resolve().parents[1]
GRE = ROOT / "protocols" / "gre_2d.toml"  # its [patient] weight_kg is 70


def scanctl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scanctl", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _fhir_file(tmp_path: Path, weight_kg: float) -> Path:
    path = tmp_path / f"order-{weight_kg:g}.json"
    path.write_text(json.dumps(_edit("contained.1.valueQuantity.value", weight_kg)), encoding="utf-8")
    return path


def _safety(run: Path) -> dict[str, Any]:
    sar: dict[str, Any] = json.loads((run / "report.json").read_text())["safety"]["sar"]
    return sar


def test_worklist_query_lists_the_orders_as_json(worklist: Orthanc) -> None:
    done = scanctl("worklist", "query", "--pacs", str(worklist.pacs), "--date", TODAY, "--station", "SCANCTL",
                   "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [Order(**o) for o in sorted(listed, key=lambda o: o["patient_id"])] == [HEAD, KNEE]
    text = scanctl("worklist", "query", "--pacs", str(worklist.pacs), "--patient", "P2")
    assert "ACC2" in text.stdout and "61 kg" in text.stdout and "1 order from" in text.stdout


def test_the_order_weight_judges_the_sar_and_reaches_the_dicom(tmp_path: Path) -> None:
    """The SAR of the same protocol predicted for the order's patient: twice the weight, half the W/kg (the
    same RF energy into twice the mass); the DICOM carries the order's patient and that weight."""
    import pydicom

    peaks = {}
    for weight in (50.0, 100.0):
        run, dicom = tmp_path / f"run{weight:g}", tmp_path / f"dicom{weight:g}"
        done = scanctl("run", GRE, "--order", _fhir_file(tmp_path, weight), "--out", run, "--dicom", dicom)
        assert done.returncode == 0, done.stderr
        sar = _safety(run)
        assert sar["patient_weight_kg"] == weight and not sar["weight_assumed"]
        peaks[weight] = sar["whole_body"]["6min"]["peak_w_per_kg"]
        ds = pydicom.dcmread(next(dicom.glob("*.dcm")))
        assert (ds.PatientID, ds.AccessionNumber, float(ds.PatientWeight)) == ("P1", "ACC1", weight)
        assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert peaks[50.0] == pytest.approx(2 * peaks[100.0], rel=1e-9) and peaks[100.0] > 0


def test_run_by_accession_asks_the_worklist(worklist: Orthanc, tmp_path: Path) -> None:
    done = scanctl("run", GRE, "--accession", "ACC2", "--worklist", str(worklist.pacs), "--out", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    assert _safety(tmp_path / "r")["patient_weight_kg"] == KNEE.weight_kg


@pytest.mark.parametrize(("args", "message"), [
    (["--order", "{tmp}/missing.json"], r"missing\.json: cannot read the order"),
    (["--order", "{tmp}/bad.json"], r"bad\.json: Patient\.gender 'm' is not one of"),
    (["--order", "{tmp}/noweight.toml"], r"order for patient P9 has no weight: SAR cannot be judged"),
    (["--order", "{tmp}/order-80.json", "--patient-weight", "60"], r"--patient-weight 60 kg and the order's 80 kg"),
    (["--accession", "ACC1"], r"--accession N and --worklist AET@HOST:PORT go together"),
    (["--accession", "ACC1", "--worklist", "nowhere"], r"--worklist: PACS address 'nowhere' is not AET@HOST:PORT"),
    (["--accession", "ACC1", "--worklist", "WL@127.0.0.1:{port}"], r"worklist WL@127\.0\.0\.1:\d+ cannot be reached"),
    (["--accession", "NOPE", "--worklist", "{wl}"], r"no orders with accession number 'NOPE'"),
    (["--accession", "ACC1", "--worklist", "{wrong_aet}"], r"refused the association"),
    (["--order", "{tmp}/order-80.json", "--accession", "ACC1", "--worklist", "{wl}"], r"give one"),
])
def test_a_bad_order_on_the_command_line_is_one_line_and_nothing_moves(worklist: Orthanc, tmp_path: Path,
                                                                       args: list[str], message: str) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(_edit("contained.0.gender", "m")), encoding="utf-8")
    (tmp_path / "noweight.toml").write_text("[order]\npatient_id = 'P9'\npatient_name = 'No^Weight'\n")
    _fhir_file(tmp_path, 80.0)
    fill = {"tmp": str(tmp_path), "port": str(free_port()), "wl": str(worklist.pacs),
            "wrong_aet": f"WRONG@{worklist.host}:{worklist.dicom_port}"}
    done = scanctl("run", GRE, *[a.format(**fill) for a in args], cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scanctl: error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()  # no run directory: nothing moved


def test_pacs_serve_with_worklists_answers_the_orders_worklist_add_wrote(tmp_path: Path) -> None:
    """The documented commands: scanctl worklist add (a FHIR order) → scanctl pacs serve --worklists →
    scanctl worklist query."""
    import signal

    added = scanctl("worklist", "add", _fhir_file(tmp_path, 77.0), tmp_path / "wl", "--date", TODAY)
    assert added.returncode == 0 and "ACC1-1.wl" in added.stdout, added.stderr
    again = scanctl("worklist", "add", _fhir_file(tmp_path, 77.0), tmp_path / "wl")
    assert again.returncode == 2 and "is never written over" in again.stderr
    serve = subprocess.Popen([sys.executable, "-m", "scanctl", "pacs", "serve", str(tmp_path / "pacs"), "--port", "0",
                              "--http-port", "0", "--worklists", str(tmp_path / "wl")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        match = re.match(r"Orthanc (\S+@127\.0\.0\.1:\d+) .*worklist from ", line)
        assert match, line + (serve.stderr.read() if serve.poll() is not None and serve.stderr else "")
        done = scanctl("worklist", "query", "--pacs", match[1], "--json")
        assert done.returncode == 0, done.stderr
        (order,) = json.loads(done.stdout)
        assert (order["patient_id"], order["weight_kg"], order["accession_number"]) == ("P1", 77.0, "ACC1")
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
