"""The report as one self-contained HTML page (docs/report.md): CSS inline, images as ``data:`` URIs, no
script, and a Content-Security-Policy that forbids any fetch, so the page shows the same offline, from a
USB stick or attached to a message. Every text that comes from a file (an order's patient name included)
is escaped: it is shown as text, never run.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scanctl.report.collect import ExamView, RunView, SeriesQuality

#: No fetch of any kind, no script: images only from data: URIs, style only from the page itself.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; color: #111; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; border-bottom: 1px solid #999; }
h3 { font-size: 1em; margin: 1em 0 .3em; }
table { border-collapse: collapse; margin: .3em 0 .8em; } td, th { border: 1px solid #bbb; padding: .15em .5em;
  text-align: left; vertical-align: top; } th { background: #eee; } td.num { text-align: right; }
.series { margin: 1.5em 0; padding: .5em 1em; border: 1px solid #ccc; border-radius: 4px; }
.series.flagged { border: 2px solid #c00; }
.warning { background: #fee; border-left: 5px solid #c00; padding: .4em .8em; font-weight: bold; }
.note { color: #555; }
.over { background: #fcc; font-weight: bold; } .ok { color: #060; }
img.key { width: 256px; height: auto; image-rendering: pixelated; background: #000; display: block; }
figure { margin: .5em 0; } figcaption { color: #555; font-size: .9em; }
.cols { display: flex; gap: 2em; flex-wrap: wrap; }
"""

SAR_LABELS = {("whole_body", "6min"): "SAR whole body (6 min)", ("whole_body", "10s"): "SAR whole body (10 s)",
              ("head", "6min"): "SAR head (6 min)", ("head", "10s"): "SAR head (10 s)"}


def e(value: Any) -> str:
    """``value`` as HTML text, escaped (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def render(view: ExamView, *, generated: dt.datetime | None = None) -> str:
    """The page for ``view`` (an exam, or a lone run when ``view.exam`` is empty)."""
    now = generated or dt.datetime.now(dt.UTC)
    exam = view.exam
    title = f"MR exam {_s(exam.get('exam_id'))}" if exam else f"MR run {view.runs[0].title if view.runs else ''}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        _summary(view),
        _patient(exam.get("order") if exam else None),
    ]
    if exam:
        parts.append(_exam_state(exam))
    parts.extend(_series(run, i) for i, run in enumerate(view.runs, start=1))
    if exam:
        parts.append(_exam_journal(exam.get("journal")))
    parts.append(f'<p class="note">Written {e(now.strftime("%Y-%m-%d %H:%M:%S UTC"))} by scanctl from '
                 f"{e(view.source)}.</p></body></html>")
    return "\n".join(parts) + "\n"


# -- the top ---------------------------------------------------------------------------------------------


def _summary(view: ExamView) -> str:
    """One warning line per series that looks wrong or broke a limit, first thing on the page."""
    lines = []
    for run in view.runs:
        if run.quality is not None and run.quality.flagged:
            lines.append(f"Series {run.title}: image quality: {'; '.join(_quality_reasons(run.quality))}")
        over = [label for label, *_rest, verdict in _safety_rows(run.report.get("safety")) if verdict != "ok"]
        if over:
            lines.append(f"Series {run.title}: safety: {', '.join(over)} over the limit or not finite")
        if run.problems:
            lines.append(f"Series {run.title}: {'; '.join(run.problems)}")
        if _s(run.step.get("status")) in ("failed", "refused", "interrupted"):
            lines.append(f"Series {run.title}: step {_s(run.step.get('status'))}: {_s(run.step.get('message'))}")
        dicom = _map(run.step.get("dicom"))
        if dicom and dicom.get("stored") is not True:
            lines.append(f"Series {run.title}: DICOM not stored in the PACS ({_s(dicom.get('store_message'))}); "
                         f"the files are kept")
    if not lines:
        return '<p class="ok">No series flagged: every image measured within the quality thresholds and every ' \
               "safety figure within its limit.</p>"
    return '<div class="warning" id="flags" role="alert"><p>Look at these:</p><ul>' + \
        "".join(f"<li>{e(line)}</li>" for line in lines) + "</ul></div>"


def _patient(order: Any) -> str:
    if not isinstance(order, Mapping):
        return '<h2>Patient and order</h2><p class="note">No order: a run on its own (patient and study are ' \
               "not known to this report).</p>"
    fields = [("Patient's name", "patient_name"), ("Patient ID", "patient_id"), ("Birth date", "birth_date"),
              ("Sex", "sex"), ("Weight (kg)", "weight_kg"), ("Accession number", "accession_number"),
              ("Requested procedure", "requested_procedure"), ("Procedure code", "requested_procedure_code"),
              ("Referring physician", "referring_physician"), ("Study Instance UID", "study_uid"),
              ("Procedure step", "procedure_step_id")]
    rows = [(label, _s(order.get(key))) for label, key in fields]
    warning = ('<p class="warning">NO ORDER: the patient and study are placeholders, not a real patient.</p>'
               if order.get("placeholder") else "")
    return "<h2>Patient and order</h2>" + warning + _table(("", ""), rows, header=False, id_="patient")


def _exam_state(exam: Mapping[str, Any]) -> str:
    card = _map(exam.get("card"))
    mpps = _map(exam.get("mpps"))
    rows = [("Exam", _s(exam.get("exam_id"))), ("State", _s(exam.get("state"))),
            ("Exam card", f"{_s(card.get('name'))} ({_s(card.get('procedure'))})"),
            ("Opened", _s(exam.get("opened"))), ("Closed", _s(exam.get("closed"))),
            ("MPPS", " ".join(_s(mpps.get(k)) for k in ("state", "uid", "message") if mpps.get(k)))]
    steps = _list(exam.get("steps"))
    step_rows = [(_s(s.get("n")), _s(s.get("protocol")), _s(s.get("status")), _s(s.get("started")),
                  _s(s.get("ended")), _duration(s.get("started"), s.get("ended")), _s(s.get("outcome")),
                  _s(s.get("message"))) for s in steps if isinstance(s, Mapping)]
    return ("<h2>Exam</h2>" + _table(("", ""), rows, header=False, id_="exam") + "<h3>Steps and timings</h3>"
            + _table(("#", "protocol", "status", "started", "ended", "wall time", "outcome", "message"), step_rows,
                     id_="steps"))


# -- one series ------------------------------------------------------------------------------------------


def _series(run: RunView, index: int) -> str:
    report, step = run.report, run.step
    flagged = run.quality is not None and run.quality.flagged
    out = [f'<section class="series{" flagged" if flagged else ""}" id="series-{index}">',
           f"<h2>Series {e(run.title)}</h2>"]
    protocol = _map(report.get("protocol"))
    outcome = _s(report.get("outcome")) or _s(step.get("outcome")) or _s(step.get("status")) or "not run"
    message = _s(report.get("message")) or _s(step.get("message"))
    out.append(f"<p>{e(_s(protocol.get('description')))}</p>" if protocol.get("description") else "")
    out.append(f"<p>Outcome: <b>{e(outcome)}</b>{' — ' + e(message) if message else ''}</p>")
    out.extend(f'<p class="warning">{e(p)}</p>' for p in run.problems)
    out.append('<div class="cols"><div>')
    out.append(_key_image(run))
    out.append(_quality(run.quality))
    out.append("</div><div>")
    out.append(_parameters(protocol))
    out.append("</div></div>")
    out.append(_safety(report.get("safety")))
    out.append(_timings(report))
    out.append(_dicom(step.get("dicom")))
    out.append(_run_journal(report.get("journal")))
    out.append("</section>")
    return "\n".join(part for part in out if part)


def _key_image(run: RunView) -> str:
    if run.key_png is None:
        return f'<p class="warning">No image: {e(run.key_caption or "nothing reconstructed")}</p>'
    data = base64.b64encode(run.key_png).decode("ascii")
    return (f'<figure><img class="key" alt="{e("key image of series " + run.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{e(run.key_caption)}</figcaption></figure>')


def _quality(q: SeriesQuality | None) -> str:
    if q is None:
        return ""
    rows = [("SNR (median over the images)", _num(q.snr, ".1f")),
            ("N/2 ghosting (worst image)", _num(None if q.ghosting_ratio is None else 100 * q.ghosting_ratio,
                                                ".1f", " %")),
            ("Images measured", str(q.images))]
    table = "<h3>Image quality</h3>" + _table(("", ""), rows, header=False, cls="quality")
    if not q.flagged:
        return table + '<p class="ok">Looks right (no flag).</p>'
    reasons = "".join(f"<li>{e(r)}</li>" for r in _quality_reasons(q))
    return table + f'<div class="warning quality-flag" role="alert">This series looks wrong:<ul>{reasons}</ul></div>'


def _quality_reasons(q: SeriesQuality) -> list[str]:
    return [*q.flags, *([q.error] if q.error else [])]


def _parameters(protocol: Mapping[str, Any]) -> str:
    sequence = _map(protocol.get("sequence"))
    params = _map(sequence.get("parameters"))
    rows = [("protocol", _s(protocol.get("name"))), ("sequence type", _s(sequence.get("type")))]
    rows += [(str(k), _value(v)) for k, v in params.items() if v is not None]
    for section in ("geometry", "patient", "table"):
        block = protocol.get(section)
        if isinstance(block, Mapping):
            rows += [(f"{section}.{k}", _value(v)) for k, v in block.items() if v is not None]
    return "<h3>Protocol parameters</h3>" + _table(("parameter", "value"), rows, cls="parameters")


def _safety_rows(safety: Any) -> list[tuple[str, str, str, str, str]]:
    """(measure, predicted, limit, % of limit, verdict) of the run's safety prediction (docs/safety.md);
    verdict ``ok``, ``over`` or ``not finite`` (fail closed: NaN or inf is never a pass)."""
    if not isinstance(safety, Mapping):
        return []
    rows = []
    sar = _map(safety.get("sar"))
    for (region, window), label in SAR_LABELS.items():
        entry = _dig(sar, region, window)
        if isinstance(entry, Mapping):
            rows.append(_row(label, entry.get("peak_w_per_kg"), entry.get("limit_w_per_kg"), " W/kg"))
    pns = safety.get("pns")
    if isinstance(pns, Mapping):
        rows.append(_row("PNS", pns.get("peak_percent"), pns.get("limit_percent"), " % of threshold"))
    coil = _dig(safety, "heating", "gradient_coil")
    if isinstance(coil, Mapping):
        rows.append(_row("Gradient coil temperature", coil.get("peak_temperature_c"), coil.get("limit_c"), " °C"))
    amp = _dig(safety, "heating", "rf_amplifier")
    if isinstance(amp, Mapping):
        rows.append(_row("RF amplifier duty cycle", amp.get("duty_cycle_peak"), amp.get("duty_cycle_limit"), ""))
        rows.append(_row("RF amplifier peak power", amp.get("peak_power_w"), amp.get("peak_power_limit_w"), " W"))
    return rows


def _row(label: str, peak: Any, limit: Any, unit: str) -> tuple[str, str, str, str, str]:
    p, lim = _float(peak), _float(limit)
    if p is None or lim is None or not (math.isfinite(p) and math.isfinite(lim)):
        return label, _num(p, ".4g", unit), _num(lim, ".4g", unit), "—", "not finite"
    share = f"{100 * p / lim:.1f} %" if lim > 0 else "—"
    return label, _num(p, ".4g", unit), _num(lim, ".4g", unit), share, "ok" if p <= lim else "over"


def _safety(safety: Any) -> str:
    rows = _safety_rows(safety)
    if not rows:
        return '<h3>Safety</h3><p class="warning">No safety prediction in report.json.</p>'
    weight = _dig(safety, "sar", "patient_weight_kg")
    mode = _dig(safety, "sar", "mode")
    head = (f"<h3>Safety: SAR, PNS and heating against the limits</h3><p>Predicted for a patient of "
            f"{e(_num(_float(weight), '.1f', ' kg'))}, operating mode {e(_s(mode) or '—')}.</p>")
    cells = []
    for label, peak, limit, share, verdict in rows:
        cls = "ok" if verdict == "ok" else "over"
        cells.append(f'<tr class="safety-row {cls}"><td>{e(label)}</td><td class="num">{e(peak)}</td>'
                     f'<td class="num">{e(limit)}</td><td class="num">{e(share)}</td><td>{e(verdict)}</td></tr>')
    return (head + '<table class="safety"><tr><th>measure</th><th>predicted peak</th><th>limit</th>'
            "<th>of the limit</th><th>verdict</th></tr>" + "".join(cells) + "</table>")


def _timings(report: Mapping[str, Any]) -> str:
    timings = _map(report.get("timings"))
    labels = {"prepare_s": "prepare (s)", "scan_wall_s": "scan, wall (s)", "recon_s": "reconstruction (s)",
              "total_wall_s": "total, wall (s)", "real_time_factor": "sequence time / wall time"}
    rows = [("sequence played (s)", _num(_float(report.get("scan_time_s")), ".3f")),
            ("sequence length (s)", _num(_float(report.get("duration_s")), ".3f"))]
    rows += [(label, _num(_float(timings.get(key)), ".3f")) for key, label in labels.items() if key in timings]
    return "<h3>Timings</h3>" + _table(("", ""), rows, header=False, cls="timings")


def _dicom(dicom: Any) -> str:
    if not isinstance(dicom, Mapping):
        return ""
    stored = dicom.get("stored")
    state = "stored in the PACS" if stored is True else "NOT stored in the PACS (the files are kept)"
    message = _s(dicom.get("store_message"))
    cls = "note" if stored is True else "warning"
    return (f'<p class="{cls}">DICOM: {e(_s(dicom.get("files")))} files, series {e(_s(dicom.get("series_uid")))}, '
            f"{e(state)}{e(': ' + message) if message else ''}.</p>")


def _run_journal(journal: Any) -> str:
    entries = _list(journal)
    rows = [(_when(j.get("wall_time_s")), _num(_float(j.get("scan_time_s")), ".3f"), _s(j.get("trigger")),
             f"{_s(j.get('source'))} → {_s(j.get('dest'))}", _s(j.get("reason")))
            for j in entries if isinstance(j, Mapping)]
    if not rows:
        return ""
    return (f"<details><summary>State journal ({len(rows)} transitions)</summary>"
            + _table(("time (UTC)", "scan time (s)", "trigger", "state", "reason"), rows, cls="journal")
            + "</details>")


def _exam_journal(journal: Any) -> str:
    entries = _list(journal)
    rows = [(_s(j.get("t")), _s(j.get("event")),
             ", ".join(f"{k}={_value(v)}" for k, v in j.items() if k not in ("t", "event")))
            for j in entries if isinstance(j, Mapping)]
    return "<h2>Exam journal</h2>" + _table(("time (UTC)", "event", "details"), rows, id_="journal")


# -- helpers ---------------------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *, header: bool = True, id_: str = "",
           cls: str = "") -> str:
    attrs = (f' id="{e(id_)}"' if id_ else "") + (f' class="{e(cls)}"' if cls else "")
    out = [f"<table{attrs}>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        cells = [f"<th>{e(row[0])}</th>" if not header else f"<td>{e(row[0])}</td>"]
        cells += [f"<td>{e(c)}</td>" for c in row[1:]]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a damaged file shows as missing values)."""
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _s(value: Any) -> str:
    """A scalar from a file as text ('' for None, lists and objects: those are not shown as-is)."""
    if value is None or isinstance(value, Mapping | list):
        return ""
    return str(value)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return " × ".join(_value(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return f"{value} (not finite)"
    return f"{value:{fmt}}{unit}"


def _when(wall_time_s: Any) -> str:
    t = _float(wall_time_s)
    if t is None or not math.isfinite(t):
        return "—"
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return "—"


def _duration(start: Any, end: Any) -> str:
    try:
        a, b = dt.datetime.fromisoformat(str(start)), dt.datetime.fromisoformat(str(end))
        return f"{(b - a).total_seconds():.1f} s"
    except (TypeError, ValueError):
        return "—"


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data
