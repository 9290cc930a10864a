"""The exam report (scanctl/report/, docs/report.md): one self-contained page from an exam directory (written
here by hand as docs/examdir says, with real runs of a small GRE) or a run directory; every text from the
files escaped; safety figures against the limits, failing closed; series that look wrong marked; the CLI."""

from __future__ import annotations

import datetime as dt
import html.parser
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scanctl.config import profile as profiles
from scanctl.engine.session import run_scan
from scanctl.report import ReportError, write_exam_report, write_run_report
from scanctl.report.collect import load_run, measure_series
from scanctl.report.html import render

#: An untrusted patient name: markup that must be shown, never run.
HOSTILE_NAME = "Doe^<script>document.title='pwned'</script><b>Jane</b>"
#: Receiver noise that puts the small GRE's SNR under scanctl.data.quality.LOW_SNR (measured: ~2).
NOISY = 3000.0

GRE32 = """
[protocol]
name = "{name}"
description = "small GRE, matrix 32"

[sequence]
type = "gre_2d"
fov_m = 0.256
matrix = [32, 32]
slice_thickness_m = 0.005
tr_s = 0.010
te_s = 0.0045
flip_angle_deg = 15.0
averages = 1
readout_bandwidth_hz_per_pixel = 260.0
dummy_scans = 5

[patient]
weight_kg = 70.0
height_m = 1.75

[phantom]
name = "shepp_logan"

[acquisition]
noise_std = {noise}
"""


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_exam(root: Path, *, patient_name: str = HOSTILE_NAME) -> Path:
    """An exam directory as the exam helper writes one (docs/examdir): two real runs of a GRE of matrix 32
    through run_scan, the second one noisy (its series must be flagged), and exam.json by hand."""
    exam = root / "exam"
    protocols = root / "protocols"
    protocols.mkdir(parents=True)
    steps, journal = [], []
    t0 = dt.datetime(2026, 12, 3, 9, 0, 0, tzinfo=dt.UTC)
    for n, (name, noise) in enumerate([("gre_clean", 0.0), ("gre_noisy", NOISY)], start=1):
        source = protocols / f"{name}.toml"
        source.write_text(GRE32.format(name=name, noise=noise))
        rel = f"runs/{n:02d}-{name}"
        report = run_scan(source, profiles.load(None), exam / rel, patient_weight_kg=70.0)
        assert report.ok
        start, end = t0 + dt.timedelta(minutes=n), t0 + dt.timedelta(minutes=n, seconds=3)
        steps.append({"n": n, "protocol": name, "source": str(source), "status": "done", "run_dir": rel,
                      "started": _iso(start), "ended": _iso(end), "outcome": "completed", "message": None,
                      "dicom": {"series_uid": f"2.25.{n}", "files": 1, "stored": n == 1,
                                "store_message": None if n == 1 else "PACS down <again>"}})
        journal += [{"t": _iso(start), "event": "step_started", "n": n},
                    {"t": _iso(end), "event": "step_done", "n": n, "outcome": "completed"}]
    steps.append({"n": 3, "protocol": "tse_2d", "source": "protocols/tse_2d.toml", "status": "skipped",
                  "run_dir": None, "started": None, "ended": None, "outcome": None, "message": "skipped by the user",
                  "dicom": None})
    order = {"patient_id": "P<1>", "patient_name": patient_name, "birth_date": "19700531", "sex": "F",
             "weight_kg": 70.0, "accession_number": "ACC&42", "requested_procedure": "MR head",
             "study_uid": "1.2.3", "study_description": "", "referring_physician": "Who^Doctor",
             "requested_procedure_code": "MRHEAD", "procedure_step_id": "SPS1", "placeholder": False}
    (exam / "exam.json").write_text(json.dumps({
        "format": 1, "exam_id": "EX1", "state": "closed", "order": order,
        "card": {"name": "head", "procedure": "MR head", "source": "protocols/exams/head.toml"},
        "steps": steps, "journal": [{"t": _iso(t0), "event": "opened"}, *journal],
        "mpps": {"uid": "2.25.9", "state": "COMPLETED", "message": None},
        "opened": _iso(t0), "closed": _iso(t0 + dt.timedelta(minutes=5))}))
    return exam


@pytest.fixture(scope="module")
def exam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_exam(tmp_path_factory.mktemp("report"))


class _Page(html.parser.HTMLParser):
    """The elements and the text of a page, as a parser (not a regex) sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_the_exam_report_is_one_self_contained_page(exam_dir: Path) -> None:
    path = write_exam_report(exam_dir)
    assert path == exam_dir / "report.html"
    page = parse(path)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == 2  # one key image per series that has images (the skipped step has none)
    assert all((a.get("src") or "").startswith("data:image/png;base64,") for a in images)
    # Nothing is fetched: no URL in any attribute but data: ones, and a CSP that forbids every fetch.
    for _, attrs in page.tags:
        for key in ("src", "href"):
            assert attrs.get(key) is None or str(attrs[key]).startswith("data:")
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in str(csp[0]["content"])


def test_every_text_from_the_files_is_escaped(exam_dir: Path) -> None:
    source = write_exam_report(exam_dir).read_text(encoding="utf-8")
    assert "<script>" not in source and "<b>Jane</b>" not in source
    assert "Doe^&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;&lt;b&gt;Jane&lt;/b&gt;" in source
    text = "".join(parse(exam_dir / "report.html").text)
    assert HOSTILE_NAME in text and "P<1>" in text and "ACC&42" in text and "PACS down <again>" in text


def test_the_report_shows_order_protocols_safety_journal_timings(exam_dir: Path) -> None:
    text = " ".join(parse(write_exam_report(exam_dir)).text)
    for shown in ("MR head", "ACC&42", "19700531", "Series 01 gre_clean", "Series 02 gre_noisy",
                  "SAR whole body (6 min)", "SAR head (10 s)", "PNS", "Gradient coil temperature",
                  "flip_angle_deg", "32 × 32", "step_done", "skipped by the user", "COMPLETED", "3.0 s",
                  "State journal", "connected", "NOT stored in the PACS"):
        assert shown in text, shown


def test_a_noisy_series_is_flagged_and_a_clean_one_is_not(exam_dir: Path) -> None:
    clean = load_run(exam_dir / "runs" / "01-gre_clean")
    noisy = load_run(exam_dir / "runs" / "02-gre_noisy")
    assert clean.quality is not None and not clean.quality.flagged and clean.quality.snr > 20
    assert noisy.quality is not None and noisy.quality.flagged
    assert any("low SNR" in f for f in noisy.quality.flags)
    source = write_exam_report(exam_dir).read_text(encoding="utf-8")
    sections = re.findall(r'<section class="series( flagged)?" id="series-(\d)">', source)
    assert sections == [("", "1"), (" flagged", "2"), ("", "3")]
    assert "Series 02 gre_noisy: image quality: image: low SNR" in source
    assert "Series 02 gre_noisy: DICOM not stored in the PACS (PACS down &lt;again&gt;)" in source
    assert "Series 01 gre_clean: DICOM" not in source


def _safety_report(value: object) -> dict[str, object]:
    return {"outcome": "completed", "safety": {"pns": {"peak_percent": value, "limit_percent": 80.0}}}


@pytest.mark.parametrize(("peak", "verdict"), [(50.0, "ok"), (90.0, "over"), (float("nan"), "not finite"),
                                               (float("inf"), "not finite"), ("12", "not finite")])
def test_safety_figures_against_their_limits_fail_closed(tmp_path: Path, peak: object, verdict: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(_safety_report(peak)))  # json writes NaN and Infinity
    page = write_run_report(run).read_text(encoding="utf-8")
    row = re.search(r'<tr class="safety-row (\w+)"><td>PNS</td>.*?<td>([\w ]+)</td></tr>', page)
    assert row is not None and row.group(2) == verdict and row.group(1) == ("ok" if verdict == "ok" else "over")
    assert ("safety: PNS over the limit" in page) == (verdict != "ok")


def test_a_series_that_cannot_be_measured_is_flagged_not_a_traceback(tmp_path: Path) -> None:
    q = measure_series(np.zeros((2, 32, 32)))
    assert q.flagged and q.snr is None and all("cannot be measured" in f for f in q.flags)
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "image.npy", np.full((1, 16, 16), np.nan, np.float32))
    page = write_run_report(run).read_text(encoding="utf-8")
    assert "NaN or infinite" in page and "report.json: missing" in page


def test_an_exam_json_run_dir_outside_the_exam_is_not_read(tmp_path: Path) -> None:
    exam = tmp_path / "exam"
    exam.mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "report.json").write_text(json.dumps({"outcome": "SECRET-OUTCOME"}))
    (exam / "exam.json").write_text(json.dumps({"exam_id": "E", "steps": [
        {"n": 1, "protocol": "x", "run_dir": "../secret", "status": "done"}]}))
    page = write_exam_report(exam).read_text(encoding="utf-8")
    assert "SECRET-OUTCOME" not in page and "outside the exam directory" in page


@pytest.mark.parametrize("content", ["{", "[1, 2]"])
def test_a_broken_exam_json_is_one_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "exam.json").write_text(content)
    with pytest.raises(ReportError, match=r"exam\.json"):
        write_exam_report(tmp_path)


def test_exam_json_of_the_wrong_types_still_renders(tmp_path: Path) -> None:
    """Every key of the wrong type (a hand-edited or damaged file) is shown as missing, not a traceback."""
    from scanctl.report.collect import ExamView

    odd = {"exam_id": ["x"], "order": {"patient_name": {"a": 1}, "weight_kg": "heavy"}, "card": 3,
           "steps": [1, None, {"n": "one", "dicom": [], "run_dir": 5}], "journal": "nope", "mpps": []}
    page = render(ExamView(tmp_path, odd, []))
    assert "Patient and order" in page


def test_the_command_line(exam_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    done = subprocess.run([sys.executable, "-m", "scanctl", "report", str(exam_dir), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and str(out) in done.stdout
    bad = subprocess.run([sys.executable, "-m", "scanctl", "report", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "not a run directory" in bad.stderr


def test_a_run_report_and_its_pdf(exam_dir: Path, tmp_path: Path) -> None:
    from scanctl.report.pdf import print_pdf

    html_path = write_run_report(exam_dir / "runs" / "01-gre_clean", tmp_path / "run.html")
    assert "No order" in html_path.read_text(encoding="utf-8")
    pdf = print_pdf(html_path, tmp_path / "run.pdf")
    assert pdf.read_bytes().startswith(b"%PDF-")
