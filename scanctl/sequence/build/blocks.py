"""The block accumulator: :class:`SequenceBuilder` appends blocks of events and produces the columnar
:class:`~scanctl.sequence.model.Sequence`; identical events, shapes, labels and extension lists are stored
once, as Pulseq does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from scanctl.sequence.build.events import ADC, RF, Label, Rotation, Shape, System, Trap
from scanctl.sequence.geometry import quaternion_to_matrix
from scanctl.sequence.model import (
    TIME_DEFAULT,
    ADCEvents,
    Blocks,
    Extensions,
    ExtensionSpec,
    FloatArray,
    GradEvents,
    RFEvents,
    Sequence,
    Shapes,
)
from scanctl.sequence.pulseq_write import FORMAT_VERSION

#: Extension type ids written for labels.
LABEL_TYPE_IDS = {"LABELSET": 1, "LABELINC": 2}
#: Extension type id written for rotations.
ROTATION_TYPE_ID = 3
_TYPE_IDS = {**LABEL_TYPE_IDS, "ROTATIONS": ROTATION_TYPE_ID}


class SequenceBuilder:
    """Accumulates blocks and produces the columnar :class:`Sequence`.

    >>> b = SequenceBuilder(system)
    >>> b.add_block(rf, gz)                      # duration: the longest event
    >>> b.add_block(gx, adc, Label("LIN", 3))
    >>> b.add_block(min_duration_s=2e-3)         # a pure delay
    >>> seq = b.build({"Name": "demo", "FOV": (0.256, 0.256, 0.005)})

    ``rotation`` (a :class:`Rotation`, or None): added to every later block that plays a gradient, as the
    last entry of its extension list (a block holds at most one).
    """

    def __init__(self, system: System) -> None:
        self.system = system
        self._shapes: dict[Shape, int] = {}
        self._rf: dict[tuple[object, ...], int] = {}
        self._grad: dict[tuple[float, ...], int] = {}
        self._adc: dict[tuple[float, ...], int] = {}
        self._labels: dict[tuple[str, str, int], int] = {}  # (kind, name, value) -> row of its spec
        self._label_counts = dict.fromkeys(LABEL_TYPE_IDS, 0)
        self._rotations: dict[tuple[float, float, float, float], int] = {}  # quaternion -> row of its spec
        self.rotation: Rotation | None = None
        self._lists: dict[tuple[tuple[str, int], ...], int] = {}  # label entries -> head row
        self._entries: dict[tuple[int, int, int], int] = {}  # (type id, spec row, next row) -> row
        self._rf_rows: list[RF] = []
        self._adc_rows: list[ADC] = []
        self._grad_rows: list[Trap] = []
        # Block columns: duration ticks, rf, gx, gy, gz, adc, ext
        self._cols: list[list[int]] = [[] for _ in range(7)]
        self._ticks_total = 0

    @property
    def duration_s(self) -> float:
        """The duration of the blocks added so far."""
        return self._ticks_total * self.system.rasters.block_duration_s

    def __len__(self) -> int:
        return len(self._cols[0])

    def add_block(self, *events: RF | Trap | ADC | Label, min_duration_s: float = 0.0) -> float:
        """Append one block; returns its duration (see :meth:`System.block_duration`).

        At most one RF, one ADC and one gradient per axis. Raises ``ValueError`` otherwise.
        """
        rf = gx = gy = gz = a = ext = -1
        labels: list[Label] = []
        rotation = self.rotation
        timed: list[RF | Trap | ADC] = []
        for e in events:
            if isinstance(e, Trap):
                row = self._grad.get(e._key())
                if row is None:
                    row = self._grad[e._key()] = len(self._grad_rows)
                    self._grad_rows.append(e)
                if e.channel == "x" and gx < 0:
                    gx = row
                elif e.channel == "y" and gy < 0:
                    gy = row
                elif e.channel == "z" and gz < 0:
                    gz = row
                else:
                    raise ValueError(f"a block holds one gradient per axis (x, y, z), got {e.channel!r} again")
                timed.append(e)
            elif isinstance(e, RF):
                if rf >= 0:
                    raise ValueError("a block holds one RF pulse")
                rf = self._rf_row(e)
                timed.append(e)
            elif isinstance(e, ADC):
                if a >= 0:
                    raise ValueError("a block holds one ADC event")
                key = (e.num_samples, e.dwell_s, e.delay_s, e.freq_hz, e.phase_rad)
                a = self._adc.get(key, -1)
                if a < 0:
                    a = self._adc[key] = len(self._adc_rows)
                    self._adc_rows.append(e)
                timed.append(e)
            elif isinstance(e, Label):
                labels.append(e)
            elif isinstance(e, Rotation):
                rotation = e
            else:
                raise TypeError(f"not a block event: {e!r}")
        if rotation is not None and max(gx, gy, gz) < 0:
            rotation = None  # nothing to rotate
        if labels or rotation is not None:
            ext = self._ext_list(labels, rotation)
        duration = self.system.block_duration(*timed, min_duration_s=min_duration_s)
        ticks = round(duration / self.system.rasters.block_duration_s)
        for col, value in zip(self._cols, (ticks, rf, gx, gy, gz, a, ext), strict=True):
            col.append(value)
        self._ticks_total += ticks
        return ticks * self.system.rasters.block_duration_s

    def _shape_row(self, shape: Shape) -> int:
        row = self._shapes.get(shape)
        if row is None:
            row = self._shapes[shape] = len(self._shapes)
        return row

    def _rf_row(self, e: RF) -> int:
        key = (e.amplitude_hz, e.magnitude, e.phase, e.duration_s, e.center_s, e.delay_s, e.freq_hz, e.phase_rad,
               e.use)
        row = self._rf.get(key)
        if row is None:
            if e.use not in "erispou" or len(e.use) != 1:
                raise ValueError(f"RF use {e.use!r} is not one of e r i s p o u")
            self._shape_row(e.magnitude)
            self._shape_row(e.phase)
            row = self._rf[key] = len(self._rf_rows)
            self._rf_rows.append(e)
        return row

    def _ext_list(self, labels: list[Label], rotation: Rotation | None) -> int:
        items = []
        for lab in labels:
            kind = "LABELINC" if lab.increment else "LABELSET"
            key = (kind, lab.name, int(lab.value))
            if key not in self._labels:
                if not (lab.name[:1].isalpha() and lab.name.replace("_", "").isalnum() and lab.name.isupper()):
                    raise ValueError(f"label name {lab.name!r} must be upper-case letters, digits and _")
                self._labels[key] = self._label_counts[kind]
                self._label_counts[kind] += 1
            items.append((kind, self._labels[key]))
        if rotation is not None:
            q = tuple(float(v) for v in rotation.quaternion)
            if len(q) != 4 or abs(sum(v * v for v in q) - 1.0) > 1e-9:
                raise ValueError(f"rotation {q} is not a unit quaternion (w, x, y, z)")
            items.append(("ROTATIONS", self._rotations.setdefault(q, len(self._rotations))))
        chain = tuple(items)
        head = self._lists.get(chain)
        if head is None:
            nxt = -1
            for kind, spec_row in reversed(chain):  # entries shared with other lists are stored once
                nxt = self._entries.setdefault((_TYPE_IDS[kind], spec_row, nxt), len(self._entries))
            head = self._lists[chain] = nxt
        return head

    # -- the columnar sequence ----------------------------------------------------------------------
    def build(self, definitions: Mapping[str, object] | None = None) -> Sequence:
        """The sequence of every block added so far. ``definitions`` values are written as text: numbers
        with nine significant digits, sequences of numbers space-separated."""
        if not self._cols[0]:
            raise ValueError("no blocks to build a sequence from")
        n = len(self._cols[0])
        cols = np.array(self._cols, dtype=np.int64)
        blocks = Blocks(
            id=np.arange(1, n + 1, dtype=np.int64),
            duration_ticks=cols[0].copy(),
            rf=cols[1].copy(),
            grad=np.ascontiguousarray(cols[2:5].T),
            adc=cols[5].copy(),
            ext=cols[6].copy(),
        )
        return Sequence(
            version=FORMAT_VERSION,
            definitions={k: _definition_text(v) for k, v in (definitions or {}).items()},
            rasters=self.system.rasters,
            blocks=blocks,
            rf=self._rf_events(),
            grad=self._grad_events(),
            adc=self._adc_events(),
            shapes=self._shape_table(),
            extensions=self._extensions(),
        )

    def _shape_table(self) -> Shapes:
        shapes = list(self._shapes)  # insertion order is row order
        lengths = np.array([len(s) for s in shapes], dtype=np.int64)
        return Shapes(
            id=np.arange(1, len(shapes) + 1, dtype=np.int64),
            offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            samples=np.concatenate([s.samples for s in shapes]) if shapes else np.zeros(0),
        )

    def _rf_events(self) -> RFEvents:
        rows = self._rf_rows
        n = len(rows)

        def col(attr: str) -> FloatArray:
            return np.array([getattr(r, attr) for r in rows], dtype=np.float64)

        zeros = np.zeros(n)
        return RFEvents(
            id=np.arange(1, n + 1, dtype=np.int64),
            amplitude_hz=col("amplitude_hz"),
            mag_shape=np.array([self._shapes[r.magnitude] for r in rows], dtype=np.int64),
            phase_shape=np.array([self._shapes[r.phase] for r in rows], dtype=np.int64),
            time_shape=np.full(n, TIME_DEFAULT, dtype=np.int64),
            center_s=col("center_s"),
            delay_s=col("delay_s"),
            freq_ppm=zeros,
            phase_ppm=zeros.copy(),
            freq_hz=col("freq_hz"),
            phase_rad=col("phase_rad"),
            use=np.frombuffer("".join(r.use for r in rows).encode("ascii"), dtype=np.uint8).copy(),
        )

    def _grad_events(self) -> GradEvents:
        n = len(self._grad_rows)
        v = np.array([g._key() for g in self._grad_rows], dtype=np.float64).reshape(n, 5)
        zeros = np.zeros(n)
        return GradEvents(
            id=np.arange(1, n + 1, dtype=np.int64),
            is_trap=np.ones(n, dtype=bool),
            amplitude_hz_per_m=v[:, 0].copy(),
            rise_s=v[:, 1].copy(),
            flat_s=v[:, 2].copy(),
            fall_s=v[:, 3].copy(),
            delay_s=v[:, 4].copy(),
            first_hz_per_m=zeros,
            last_hz_per_m=zeros.copy(),
            shape=np.full(n, -1, dtype=np.int64),
            time_shape=np.full(n, TIME_DEFAULT, dtype=np.int64),
        )

    def _adc_events(self) -> ADCEvents:
        n = len(self._adc_rows)
        v = np.array([(a.num_samples, a.dwell_s, a.delay_s, a.freq_hz, a.phase_rad) for a in self._adc_rows],
                     dtype=np.float64).reshape(n, 5)
        zeros = np.zeros(n)
        return ADCEvents(
            id=np.arange(1, n + 1, dtype=np.int64),
            num_samples=v[:, 0].astype(np.int64),
            dwell_s=v[:, 1].copy(),
            delay_s=v[:, 2].copy(),
            freq_ppm=zeros,
            phase_ppm=zeros.copy(),
            freq_hz=v[:, 3].copy(),
            phase_rad=v[:, 4].copy(),
            phase_shape=np.full(n, -1, dtype=np.int64),
        )

    def _extensions(self) -> Extensions:
        if not self._entries:
            return Extensions.empty()
        specs: dict[str, ExtensionSpec] = {}
        for kind, type_id in LABEL_TYPE_IDS.items():
            keys = sorted((row, name, value) for (k, name, value), row in self._labels.items() if k == kind)
            if not keys:
                continue
            specs[kind] = ExtensionSpec(
                name=kind,
                type_id=type_id,
                id=np.arange(1, len(keys) + 1, dtype=np.int64),
                columns={"value": np.array([v for _, _, v in keys], dtype=np.int64),
                         "label": np.array([name for _, name, _ in keys], dtype=object)},
            )
        if self._rotations:
            q = np.array(list(self._rotations), dtype=np.float64).reshape(-1, 4)
            specs["ROTATIONS"] = ExtensionSpec(name="ROTATIONS", type_id=ROTATION_TYPE_ID,
                                               id=np.arange(1, q.shape[0] + 1, dtype=np.int64),
                                               columns={"quaternion": q, "matrix": quaternion_to_matrix(q)})
        e = np.array(list(self._entries), dtype=np.int64)
        return Extensions(
            id=np.arange(1, e.shape[0] + 1, dtype=np.int64),
            type_id=e[:, 0].copy(),
            ref=e[:, 1] + 1,  # spec ids are rows + 1
            next=e[:, 2].copy(),
            specs=specs,
        )


def _definition_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float | np.integer | np.floating):
        return f"{float(value):.9g}" if not isinstance(value, int | np.integer) else str(int(value))
    if isinstance(value, Iterable):
        return " ".join(_definition_text(v) for v in value)
    raise TypeError(f"cannot write {value!r} as a definition")
