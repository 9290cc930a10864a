"""Write a :class:`Sequence` as a Pulseq 1.5.1 file with its MD5 signature.

Numbers are written with nine significant digits (the reference tools keep six), integer-µs
fields as integers. Tables are formatted with one ``%`` operation per table, not per row.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from scanctl.sequence import shapes as shape_codec
from scanctl.sequence.model import TIME_DEFAULT, TIME_OVERSAMPLED, Sequence

FORMAT_VERSION = (1, 5, 1)

_SIGNATURE_COMMENT = (
    "# This is the hash of the Pulseq file, calculated right before the [SIGNATURE] section was added\n"
    "# It can be reproduced/verified with md5sum if the file trimmed to the position right above [SIGNATURE]\n"
    "# The new line character preceding [SIGNATURE] BELONGS to the signature (and needs to be stripped away "
    "for recalculating/verification)\n"
)


def write(seq: Sequence, path: str | os.PathLike[str]) -> str:
    """Write ``seq`` to ``path``; returns the MD5 signature written."""
    data, digest = dumps(seq)
    Path(path).write_bytes(data)
    return digest


def dumps(seq: Sequence) -> tuple[bytes, str]:
    """The signed Pulseq file of ``seq`` and its MD5 signature."""
    body = dumps_body(seq).encode("ascii")
    digest = hashlib.md5(body).hexdigest()
    return body + f"\n[SIGNATURE]\n{_SIGNATURE_COMMENT}Type md5\nHash {digest}\n".encode("ascii"), digest


def dumps_body(seq: Sequence) -> str:
    """Everything of the file up to (not including) the signature."""
    out: list[str] = ["# Pulseq sequence file\n# Created by scanctl\n\n"]
    major, minor, revision = FORMAT_VERSION
    out.append(f"[VERSION]\nmajor {major}\nminor {minor}\nrevision {revision}\n\n")
    shape_ids = _ShapeIds(seq)
    out.append(_definitions(seq))
    out.append(_blocks(seq))
    out.append(_rf(seq, shape_ids))
    out.append(_gradients(seq, shape_ids))
    out.append(_adc(seq, shape_ids))
    out.append(_extensions(seq))
    out.append(_shapes(seq, shape_ids))
    return "".join(out)


def _table(fmt: str, columns: list[np.ndarray]) -> str:
    if not columns or columns[0].size == 0:
        return ""
    n = columns[0].size
    flat = np.empty(n * len(columns), dtype=object)
    for i, col in enumerate(columns):
        flat[i :: len(columns)] = col.tolist()
    return (fmt * n) % tuple(flat.tolist())


def _us(values: np.ndarray) -> np.ndarray:
    """Seconds to µs, as integers when they are integers (the format's usual case)."""
    us = np.round(values * 1e6, 6)
    return np.where(us == np.round(us), np.round(us), us)


def _definitions(seq: Sequence) -> str:
    defs = dict(seq.definitions)
    r = seq.rasters
    defs.update(
        {
            "GradientRasterTime": f"{r.gradient_s:.9g}",
            "RadiofrequencyRasterTime": f"{r.rf_s:.9g}",
            "AdcRasterTime": f"{r.adc_s:.9g}",
            "BlockDurationRaster": f"{r.block_duration_s:.9g}",
        }
    )
    required = set(defs.get("RequiredExtensions", "").split())
    if "ROTATIONS" in seq.extensions.specs:
        required.add("ROTATIONS")
    if required:
        defs["RequiredExtensions"] = " ".join(sorted(required))
    lines = "".join(f"{k} {defs[k]}\n" for k in sorted(defs))
    return f"[DEFINITIONS]\n{lines}\n"


def _ids(table_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, table_ids[np.maximum(rows, 0)] if table_ids.size else 0, 0)


def _blocks(seq: Sequence) -> str:
    b = seq.blocks
    cols = [
        b.id,
        b.duration_ticks,
        _ids(seq.rf.id, b.rf),
        _ids(seq.grad.id, b.grad[:, 0]),
        _ids(seq.grad.id, b.grad[:, 1]),
        _ids(seq.grad.id, b.grad[:, 2]),
        _ids(seq.adc.id, b.adc),
        _ids(seq.extensions.id, b.ext),
    ]
    head = "# Format of blocks:\n# NUM DUR RF  GX  GY  GZ  ADC  EXT\n[BLOCKS]\n"
    return head + _table("%d %d %d %d %d %d %d %d\n", [np.asarray(c) for c in cols]) + "\n"


class _ShapeIds:
    """Shape rows to file ids, adding a zero phase shape where an RF event has none."""

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.extra: dict[int, np.ndarray] = {}
        self.next_id = int(seq.shapes.id.max()) + 1 if len(seq.shapes) else 1

    def ids(self, rows: np.ndarray) -> np.ndarray:
        return _ids(self.seq.shapes.id, rows)

    def zero_phase(self, n: int) -> int:
        for sid, data in self.extra.items():
            if data.size == n:
                return sid
        sid = self.next_id
        self.next_id += 1
        self.extra[sid] = np.zeros(n)
        return sid


def _rf(seq: Sequence, shape_ids: _ShapeIds) -> str:
    rf = seq.rf
    if rf.id.size == 0:
        return ""
    phase = shape_ids.ids(rf.phase_shape)
    for row in np.flatnonzero(rf.phase_shape < 0).tolist():
        phase[row] = shape_ids.zero_phase(int(seq.shapes.length(rf.mag_shape[row : row + 1])[0]))
    time = np.where(rf.time_shape == TIME_DEFAULT, 0, shape_ids.ids(rf.time_shape))
    use = np.array([chr(u) for u in rf.use.tolist()], dtype=object)
    head = (
        "# Format of RF events:\n"
        "# id ampl. mag_id phase_id time_shape_id center delay freqPPM phasePPM freq phase use\n"
        "# ..   Hz      ..       ..            ..     us    us     ppm  rad/MHz   Hz   rad  ..\n"
        "# Field 'use' is the initial of: excitation refocusing inversion saturation preparation other undefined\n"
        "[RF]\n"
    )
    cols = [rf.id, rf.amplitude_hz, shape_ids.ids(rf.mag_shape), phase, time, _us(rf.center_s), _us(rf.delay_s),
            rf.freq_ppm, rf.phase_ppm, rf.freq_hz, rf.phase_rad, use]
    return head + _table("%d %.9g %d %d %d %.9g %.9g %.9g %.9g %.9g %.9g %s\n", cols) + "\n"


def _gradients(seq: Sequence, shape_ids: _ShapeIds) -> str:
    g = seq.grad
    out = []
    arb = np.flatnonzero(~g.is_trap)
    if arb.size:
        ts = g.time_shape[arb]
        time = np.where(ts == TIME_DEFAULT, 0, np.where(ts == TIME_OVERSAMPLED, -1, shape_ids.ids(ts)))
        out.append(
            "# Format of arbitrary gradients:\n"
            "#   time_shape_id of 0 means default timing (stepping with grad_raster starting at 1/2 of grad_raster)\n"
            "# id amplitude first last amp_shape_id time_shape_id delay\n"
            "# ..      Hz/m  Hz/m Hz/m        ..         ..          us\n"
            "[GRADIENTS]\n"
        )
        cols = [g.id[arb], g.amplitude_hz_per_m[arb], g.first_hz_per_m[arb], g.last_hz_per_m[arb],
                shape_ids.ids(g.shape[arb]), time, _us(g.delay_s[arb])]
        out.append(_table("%d %.9g %.9g %.9g %d %d %.9g\n", cols) + "\n")
    trap = np.flatnonzero(g.is_trap)
    if trap.size:
        out.append("# Format of trapezoid gradients:\n# id amplitude rise flat fall delay\n"
                   "# ..      Hz/m   us   us   us    us\n[TRAP]\n")
        cols = [g.id[trap], g.amplitude_hz_per_m[trap], _us(g.rise_s[trap]), _us(g.flat_s[trap]),
                _us(g.fall_s[trap]), _us(g.delay_s[trap])]
        out.append(_table("%d %.9g %.9g %.9g %.9g %.9g\n", cols) + "\n")
    return "".join(out)


def _adc(seq: Sequence, shape_ids: _ShapeIds) -> str:
    a = seq.adc
    if a.id.size == 0:
        return ""
    head = ("# Format of ADC events:\n# id num dwell delay freqPPM phasePPM freq phase phase_id\n"
            "# ..  ..    ns    us     ppm  rad/MHz   Hz   rad       ..\n[ADC]\n")
    dwell_ns = np.round(a.dwell_s * 1e9, 6)
    cols = [a.id, a.num_samples, dwell_ns, _us(a.delay_s), a.freq_ppm, a.phase_ppm, a.freq_hz, a.phase_rad,
            shape_ids.ids(a.phase_shape)]
    return head + _table("%d %d %.9g %.9g %.9g %.9g %.9g %.9g %d\n", cols) + "\n"


def _extensions(seq: Sequence) -> str:
    e = seq.extensions
    if e.id.size == 0 and not e.specs:
        return ""
    out = ["# Format of extension lists:\n# id type ref next_id\n# next_id of 0 terminates the list\n"
           "[EXTENSIONS]\n"]
    nxt = np.where(e.next >= 0, e.id[np.maximum(e.next, 0)] if e.id.size else 0, 0)
    out.append(_table("%d %d %d %d\n", [e.id, e.type_id, e.ref, nxt]) + "\n")
    for name, spec in e.specs.items():
        c = spec.columns
        head = f"extension {name} {spec.type_id}\n"
        if name == "TRIGGERS":
            body = _table("%d %d %d %.9g %.9g\n", [spec.id, c["type"], c["channel"], _us(c["delay_s"]),
                                                   _us(c["duration_s"])])
        elif name in ("LABELSET", "LABELINC"):
            body = _table("%d %d %s\n", [spec.id, c["value"], c["label"]])
        elif name == "DELAYS":
            body = _table("%d %d %.9g %.9g %s\n", [spec.id, c["num"], _us(c["offset_s"]), c["factor"], c["hint"]])
        elif name == "ROTATIONS":
            q = c["quaternion"]
            body = _table("%d %.9g %.9g %.9g %.9g\n", [spec.id, q[:, 0], q[:, 1], q[:, 2], q[:, 3]])
        elif name == "RF_SHIMS":
            body = "".join(
                f"{i} {len(mp)} " + " ".join(f"{v:.9g}" for v in np.ravel(mp)) + "\n"
                for i, mp in zip(spec.id.tolist(), c["magnitude_phase"], strict=True)
            )
        else:
            body = "".join(f"{t}\n" for t in c["text"])
        out.append(head + body + "\n")
    return "".join(out)


def _shapes(seq: Sequence, shape_ids: _ShapeIds) -> str:
    entries = [(int(seq.shapes.id[k]), seq.shapes.get(k)) for k in range(len(seq.shapes))]
    entries += list(shape_ids.extra.items())
    if not entries:
        return ""
    out = ["# Sequence Shapes\n[SHAPES]\n\n"]
    for sid, samples in entries:
        packed = shape_codec.compress(samples)
        out.append(f"shape_id {sid}\nnum_samples {samples.size}\n")
        out.append(("%.9g\n" * packed.size) % tuple(packed.tolist()))
        out.append("\n")
    return "".join(out)
