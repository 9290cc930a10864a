"""``scanctl exam demo --out DIR`` end to end: a local Orthanc with the worklist plugin, a worklist entry,
the C-FIND, the head card on the simulators, DICOM into DIR/dicom, C-STORE to that Orthanc, DIR/report.html,
Orthanc stopped, exit 0, the wall time of every step printed."""

from __future__ import annotations

import re

from pydicom import dcmread

from scanctl.cli import main
from scanctl.exam import record


def test_the_demo_runs_the_head_exam_from_worklist_to_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["exam", "demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for step in ("start Orthanc", "worklist query (C-FIND)", "protocol 1 localizer", "protocol 2 t1_gre",
                 "protocol 3 t2_tse", "DICOM conversion", "store (C-STORE)", "report",
                 "end to end (worklist query to report)", "stop Orthanc"):
        assert re.search(rf"^  {re.escape(step)} +\d+\.\d{{3}} s$", printed, re.M), (step, printed)
    doc = record.read(out)
    assert doc["state"] == "closed" and doc["order"]["patient_id"] == "DEMO-0001"
    assert doc["order"]["weight_kg"] == 70.0  # from the worklist entry, through the C-FIND
    assert [s["status"] for s in doc["steps"]] == ["done", "done", "done"]
    assert all(s["dicom"]["stored"] and s["dicom"]["store_message"] is None for s in doc["steps"])
    files = sorted((out / "dicom").glob("*/*.dcm"))
    series = [f.parent.name for f in files]
    assert sorted(set(series)) == ["01-localizer", "02-t1_gre", "03-t2_tse"]
    # one instance per slice: the localizer's three planes of three, the multi-slice T1's slices, one TSE slice
    assert (series.count("01-localizer"), series.count("03-t2_tse")) == (9, 1) and series.count("02-t1_gre") > 1
    orientations = {tuple(round(float(v)) for v in dcmread(f).ImageOrientationPatient) for f in files[:9]}
    assert len(orientations) == 3  # transverse, sagittal, coronal
    studies = {dcmread(f).StudyInstanceUID for f in files}
    assert len(studies) == 1 and str(dcmread(files[0]).PatientName) == "Demo^Patient"
    assert "Demo^Patient" in (out / "report.html").read_text()
    assert "Orthanc" not in " ".join(p.name for p in out.iterdir())  # its storage was temporary
