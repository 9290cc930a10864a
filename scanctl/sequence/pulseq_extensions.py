"""The Pulseq reader's extensions: the [EXTENSIONS] lists and the ``extension NAME ID`` tables (TRIGGERS,
LABELSET/LABELINC, DELAYS, ROTATIONS, RF_SHIMS; any other kept as text)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.sequence._text import Section, Table
from scanctl.sequence.geometry import quaternion_to_matrix
from scanctl.sequence.model import Extensions, ExtensionSpec, IntArray
from scanctl.sequence.pulseq_shapes import NUMBER
from scanctl.sequence.pulseq_tables import IdIndex, TableReader

KNOWN_EXTENSIONS = ("TRIGGERS", "LABELSET", "LABELINC", "DELAYS", "ROTATIONS", "RF_SHIMS")


class ExtensionsReader(TableReader):
    defs_section: Section | None = None  # [DEFINITIONS], where RequiredExtensions is named

    def _extensions(self, sec: Section | None, spec_secs: list[Section], defs: dict[str, str]) -> Extensions:
        required = defs.get("RequiredExtensions", "").split()
        unknown = [name for name in required if name not in KNOWN_EXTENSIONS]
        if unknown:
            raise self.fail(self._definition_line(self.defs_section, "RequiredExtensions"),
                            f"required extension {unknown[0]} is not supported "
                            f"(supported: {', '.join(KNOWN_EXTENSIONS)})")
        specs: dict[str, _Spec] = {}
        type_names: dict[int, str] = {}
        for s in spec_secs:
            parts = s.header.split()
            if len(parts) != 3 or not parts[2].isdigit() or len(parts[2]) > 18:
                raise self.fail(s.line, f"extension header must be 'extension NAME ID', got {s.header[:40]!r}")
            name, type_id = parts[1], int(parts[2])
            if type_id in type_names:
                raise self.fail(s.line, f"extension type id {type_id} used by both {type_names[type_id]} and {name}")
            if name in specs:
                raise self.fail(s.line, f"extension {name} is specified twice (type ids {specs[name].spec.type_id} "
                                        f"and {type_id})")
            type_names[type_id] = name
            specs[name] = self._extension_spec(s, name, type_id)
        if sec is None:
            return Extensions(*(np.zeros(0, np.int64),) * 4, {k: s.spec for k, s in specs.items()})
        t = self._table(sec, 4, integer=True)
        v = t.values
        ids = v[:, 0]
        bad = np.flatnonzero(ids < 1)
        if bad.size:
            raise self.fail(int(t.lines[bad[0]]), "[EXTENSIONS] id must be a positive integer")
        self._require_unique(ids, "[EXTENSIONS]", "list entry", t.lines)
        index = IdIndex(ids)
        nxt = index.rows(v[:, 3])
        bad = np.flatnonzero((nxt < 0) & (v[:, 3] != 0))
        if bad.size:
            r = int(bad[0])
            raise self.fail(int(t.lines[r]), f"[EXTENSIONS] next id {v[r, 3]} is not defined")
        id_to_name: dict[int, str] = dict(type_names.items())
        for r in range(v.shape[0]):  # a few rows: lists are shared between blocks
            tid, ref = int(v[r, 1]), int(v[r, 2])
            if tid not in id_to_name:
                raise self.fail(int(t.lines[r]), f"[EXTENSIONS] type {tid} has no 'extension NAME {tid}' section")
            name = id_to_name[tid]
            if ref not in specs[name].row_of:
                raise self.fail(int(t.lines[r]), f"[EXTENSIONS] {name} entry {ref} is not defined")
        self._require_acyclic(nxt, t.lines)
        return Extensions(ids, v[:, 1].copy(), v[:, 2].copy(), nxt, {k: s.spec for k, s in specs.items()})

    def _require_acyclic(self, nxt: IntArray, lines: IntArray) -> None:
        state = np.zeros(nxt.size, np.int8)  # 0 new, 1 on path, 2 done
        for start in range(nxt.size):
            path = []
            row = start
            while row >= 0 and state[row] == 0:
                state[row] = 1
                path.append(row)
                row = int(nxt[row])
            if row >= 0 and state[row] == 1:
                raise self.fail(int(lines[row]), "[EXTENSIONS] list loops back on itself")
            state[path] = 2

    def _extension_spec(self, sec: Section, name: str, type_id: int) -> _Spec:
        what = f"[extension {name}]"
        if name == "TRIGGERS":
            t = self._table(sec, 5)
            cols: dict[str, npt.NDArray[Any]] = {"type": self._int_column(t, 1, what, "type", 0),
                    "channel": self._int_column(t, 2, what, "channel", 0),
                    "delay_s": t.values[:, 3] * 1e-6, "duration_s": t.values[:, 4] * 1e-6}
            self._nonnegative(t, 3, what, "delay")
            self._nonnegative(t, 4, what, "duration")
        elif name in ("LABELSET", "LABELINC"):
            t = self._table(sec, 3, word_columns=(2,))
            labels = t.words[0]
            odd = [i for i, s in enumerate(labels)
                   if not (s[:1].isalpha() and s.replace("_", "").isalnum() and s.isascii() and s.upper() == s)]
            if odd:
                raise self.fail(int(t.lines[odd[0]]), f"{what} label {labels[odd[0]][:20]!r} is not a label name")
            cols = {"value": self._int_column(t, 1, what, "value", None), "label": np.array(labels, dtype=object)}
        elif name == "DELAYS":
            t = self._table(sec, 5, word_columns=(4,))
            bad = np.flatnonzero(t.values[:, 3] == 0)
            if bad.size:
                raise self.fail(int(t.lines[bad[0]]), f"{what} factor is 0 (the delay is the value divided by it)")
            cols = {"num": self._int_column(t, 1, what, "num", 0), "offset_s": t.values[:, 2] * 1e-6,
                    "factor": t.values[:, 3].copy(), "hint": np.array(t.words[0], dtype=object)}
        elif name == "ROTATIONS":
            t = self._table(sec, 5)
            cols = self._rotations(t)
        elif name == "RF_SHIMS":
            cols, t = self._rf_shims(sec)
        else:  # an extension this reader does not interpret: kept as text (refused above if required)
            rows = self.text.body_lines(sec)
            row_ids = []
            for line, text in rows:
                head = text.split(None, 1)[0]
                if not head.isdigit() or len(head) > 18:
                    raise self.fail(line, f"{what} row must start with an id")
                row_ids.append(int(head))
            t = Table(np.array(row_ids, dtype=np.float64)[:, None], [], np.array([ln for ln, _ in rows], np.int64))
            cols = {"text": np.array([text for _, text in rows], dtype=object)}
        ids = self._ids(t, what)
        spec = ExtensionSpec(name, type_id, ids, cols)
        return _Spec(spec, {int(i): r for r, i in enumerate(ids.tolist())})

    def _rotations(self, t: Table) -> dict[str, np.ndarray]:
        """1.5.1 rotations: a unit quaternion ``w x y z`` per row (rotates logical into physical gradients)."""
        q = t.values[:, 1:5]
        norm = np.linalg.norm(q, axis=1)
        bad = np.flatnonzero(np.abs(norm - 1) > 1e-3)
        if bad.size:
            raise self.fail(int(t.lines[bad[0]]), f"[extension ROTATIONS] quaternion norm {norm[bad[0]]:g} is not 1")
        return {"quaternion": q.copy(), "matrix": quaternion_to_matrix(q)}

    def _rf_shims(self, sec: Section) -> tuple[dict[str, np.ndarray], Table]:
        """1.5.1 RF shims: ``id num_chan mag1 phase1 mag2 phase2 ...`` (rows may differ in length)."""
        rows = self.text.body_lines(sec)
        ids, lines = [], []
        coils = np.empty(len(rows), dtype=object)  # one (num_chan, 2) array per row
        for k, (line, text) in enumerate(rows):
            parts = text.split()
            if any(NUMBER.fullmatch(p.encode()) is None for p in parts):
                raise self.fail(line, "[extension RF_SHIMS] fields must be numbers")
            nums = np.array([float(p) for p in parts])
            if not np.isfinite(nums).all():
                raise self.fail(line, "[extension RF_SHIMS] value is not finite")
            if nums.size < 4 or nums[1] < 1 or nums[1] != int(nums[1]) or nums.size != 2 + 2 * int(nums[1]):
                raise self.fail(line, "[extension RF_SHIMS] row must be 'id num_chan mag1 phase1 ...' "
                                      "with num_chan >= 1 magnitude/phase pairs")
            ids.append(nums[0])
            coils[k] = nums[2:].reshape(-1, 2)
            if (coils[k][:, 0] < 0).any():
                raise self.fail(line, "[extension RF_SHIMS] magnitude is negative")
            lines.append(line)
        t = Table(np.array(ids, dtype=np.float64)[:, None], [], np.array(lines, np.int64))
        return {"magnitude_phase": coils}, t



class _Spec:
    """An extension table and the row of each of its ids."""

    def __init__(self, spec: ExtensionSpec, row_of: dict[int, int]) -> None:
        self.spec = spec
        self.row_of = row_of
