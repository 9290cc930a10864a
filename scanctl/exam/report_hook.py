"""The exam report: ``report.html`` in the exam directory.

The report proper is written by ``scanctl.report.write_exam_report(exam_dir) -> Path`` (another part of
issue 17, not merged yet); :func:`write_report` is the one place that calls it. Until it is wired, this
writes a minimal placeholder: the patient, each step's status and its image, marked as a placeholder.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from scanctl.exam import record


def write_report(exam_dir: str | os.PathLike[str]) -> Path:
    """Write ``exam_dir/report.html`` and return its path. Raises ExamError for a folder that is not an exam,
    OSError when it cannot be written."""
    folder = Path(exam_dir)
    doc = record.read(folder)
    order = doc["order"]
    rows = []
    for step in doc["steps"]:
        image = folder / str(step["run_dir"]) / "image.png" if step["run_dir"] else None
        img = ""
        if image is not None and image.is_file():
            data = base64.b64encode(image.read_bytes()).decode("ascii")
            img = f'<img alt="{html.escape(step["protocol"])}" width="128" src="data:image/png;base64,{data}">'
        rows.append(f"<tr><td>{step['n']}</td><td>{html.escape(step['protocol'])}</td>"
                    f"<td>{html.escape(step['status'])}</td><td>{html.escape(step['message'] or '')}</td>"
                    f"<td>{img}</td></tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Exam {html.escape(doc['exam_id'])}</title></head>
<body>
<p><strong>Placeholder report</strong> (scanctl.exam.report_hook): the exam report proper is not wired yet.</p>
<h1>Exam {html.escape(doc['exam_id'])}: {html.escape(doc['card']['name'])} ({html.escape(doc['state'])})</h1>
<p>Patient {html.escape(order['patient_name'])} ({html.escape(order['patient_id'])}), accession
{html.escape(order.get('accession_number') or '-')}, {html.escape(order.get('requested_procedure') or '')}</p>
<table border="1"><tr><th>#</th><th>protocol</th><th>status</th><th>message</th><th>image</th></tr>
{''.join(rows)}
</table>
</body></html>
"""
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
