"""The sweep spec (TOML, docs/sweep.md): a base protocol or Pulseq file, the axes to vary and what to
measure, expanded into points.

Every problem is a :class:`SweepError` (a :class:`~scanctl.errors.ConfigError`) naming the spec file and
the key, raised before anything runs: an axis with no values, a parameter the sequence does not have, a
value out of its range, a simulator option the subsystem does not accept, more points than allowed.

Axis names (dotted, quoted in TOML):

* ``sequence.<parameter>`` — a parameter of the base protocol's built-in sequence (docs/protocol.md);
* ``geometry.<key>`` (slice position, orientation, slices …), ``table.position_mm``, ``phantom.name``,
  ``phantom.matrix``, ``phantom.file``, ``acquisition.noise_std`` — the protocol's own keys;
* ``patient.weight_kg`` — the weight SAR is judged for (a protocol's or a Pulseq file's run);
* ``rf.<option>``, ``gradient.<option>`` — an option of that subsystem's URL (``sim://?noise=…&b0=…&seed=…``);
* ``profile`` — a system profile (a shipped name or a TOML path, relative to the spec).
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from scanctl.config import profile as profiles
from scanctl.config.protocol import KEYS as PROTOCOL_KEYS
from scanctl.config.protocol import parse_protocol
from scanctl.config.tomlcheck import Reader, load_text, parse
from scanctl.errors import ConfigError
from scanctl.hw.registry import GROUP, open_subsystem
from scanctl.sequence.builders import BUILDERS
from scanctl.sequence.builders.common import check_value

#: Points a sweep may have unless ``--max-points`` says more.
DEFAULT_MAX_POINTS = 10_000
#: Files a point can keep besides its figures (``image.npy`` is always kept: NRMSE needs it).
KEEPABLE = {"raw": "raw.h5", "image": "image.png", "report": "report.json", "sequence": "sequence.seq"}
#: Protocol tables whose keys a sweep may vary (the patient's weight is passed to the run instead: it works for
#: Pulseq too).
PROTOCOL_TABLES = ("geometry", "table", "phantom", "acquisition")
PROTOCOL_AXES = {f"{t}.{k}" for t, keys in PROTOCOL_KEYS.items() if t in PROTOCOL_TABLES for k in keys}
URL_KINDS = ("rf", "gradient")
RANGE_KEYS = {"start", "stop", "step", "count"}


class SweepError(ConfigError):
    """A sweep spec or its command line is wrong (names the file and key)."""


@dataclass(frozen=True)
class Spec:
    """A loaded sweep spec; :meth:`points` expands it."""

    source: Path
    name: str
    base: Path
    base_data: dict[str, Any] | None  # the base protocol's TOML, None for a Pulseq file
    profile: str | None
    mode: str
    axes: tuple[tuple[str, ...], ...]  # groups of axis names varying together (one name: a plain axis)
    values: tuple[tuple[tuple[Any, ...], ...], ...]  # per group, its value tuples
    contrast: tuple[tuple[str, str], ...] = ()
    reference: dict[str, Any] | None = None
    keep: tuple[str, ...] = ("image", "report")
    keep_points: frozenset[int] | None = None  # None: every point
    names: tuple[str, ...] = field(default=())

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.values)

    def points(self) -> Iterator[dict[str, Any]]:
        """Every point: axis name -> value, in order (the last axis varying fastest)."""
        for combo in itertools.product(*self.values):
            point: dict[str, Any] = {}
            for names, vals in zip(self.axes, combo, strict=True):
                point.update(zip(names, vals, strict=True))
            yield point

    def reference_index(self) -> int | None:
        """The index of the point NRMSE is measured against (the first matching ``measure.reference``)."""
        if self.reference is None:
            return None
        for i, point in enumerate(self.points()):
            if all(_same(point.get(k), v) for k, v in self.reference.items()):
                return i
        raise SweepError(f"{self.source}: measure.reference: no point of the sweep has "
                         + ", ".join(f"{k} = {v!r}" for k, v in self.reference.items()))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def load_spec(path: str | Path, max_points: int = DEFAULT_MAX_POINTS) -> Spec:
    """Read and validate a sweep spec. Raises :class:`SweepError` naming the file and the key."""
    path = Path(path)
    try:
        text = load_text(path, "sweep spec")
        data = parse(text, str(path))
    except SweepError:
        raise
    except ConfigError as exc:
        raise SweepError(str(exc)) from exc
    return _Parser(data, path, max_points).spec()


class _Reader(Reader):
    def fail(self, key: str, message: str) -> ConfigError:
        return SweepError(f"{self.source}: {key}: {message}")


class _Parser:
    def __init__(self, data: dict[str, Any], path: Path, max_points: int) -> None:
        self.r = _Reader(data, str(path))
        self.path = path
        self.max_points = max_points
        self.options_seen: dict[tuple[str, str], Any] = {}

    def spec(self) -> Spec:
        r = self.r
        r.no_other_tables(("sweep", "axes", "zip", "measure"))
        head = r.table("sweep", {"name", "base", "profile", "mode", "keep", "keep_points"}, required={"base"})
        base = self.file(head, "sweep.base")
        base_data = None
        if base.suffix.lower() != ".seq":
            try:
                base_data = parse(load_text(base, "protocol"), str(base))
                parse_protocol(load_text(base, "protocol"), base)  # the base itself must be a valid protocol
            except ConfigError as exc:
                raise SweepError(f"{self.path}: sweep.base: {exc}") from exc
        self.base, self.base_data = base, base_data
        profile = None
        if "profile" in head:
            profile = self.profile_ref(r.string(head, "sweep.profile"), "sweep.profile")
        self.profile = profile
        mode = r.string(head, "sweep.mode", ("normal", "first-level")) if "mode" in head else "normal"

        # Every axis's values counted first, then checked: a million-point typo is refused before any is.
        groups: list[tuple[str, ...]] = []
        columns: list[list[tuple[str, list[Any]]]] = []  # per group: (key, raw values) of each axis
        for name, raw in self.plain_table("axes").items():
            groups.append((name,))
            columns.append([(f"axes.{name}", self.axis(f"axes.{name}", raw))])
        for zname, group in self.plain_table("zip").items():
            if not isinstance(group, dict) or not group:
                raise r.fail(f"zip.{zname}", "must be a table of axes that vary together")
            cols = [(f"zip.{zname}.{name}", self.axis(f"zip.{zname}.{name}", raw)) for name, raw in group.items()]
            if len({len(c) for _, c in cols}) != 1:
                raise r.fail(f"zip.{zname}", "its axes must have the same number of values, got "
                             + ", ".join(f"{n}: {len(c)}" for n, (_, c) in zip(group, cols, strict=True)))
            groups.append(tuple(group))
            columns.append(cols)
        all_names = [n for g in groups for n in g]
        twice = sorted({n for n in all_names if all_names.count(n) > 1})
        if twice:
            raise r.fail(twice[0], "given as more than one axis")
        size = math.prod(len(cols[0][1]) for cols in columns)
        if size > self.max_points:
            raise r.fail("axes", f"the sweep has {size:,} points, more than --max-points {self.max_points:,} "
                                 "(give a larger --max-points to run it)")
        values = []
        for names, cols in zip(groups, columns, strict=True):
            checked = [[self.value(f"{key}[{i}]", name, v) for i, v in enumerate(col)]
                       for name, (key, col) in zip(names, cols, strict=True)]
            values.append(tuple(zip(*checked, strict=True)))
        contrast, reference = self.measure()
        keep = tuple(self.text(k, f"sweep.keep[{i}]", KEEPABLE) for i, k in
                     enumerate(self.array(head, "sweep.keep"))) if "keep" in head else ("image", "report")
        keep_points = None
        if "keep_points" in head:
            keep_points = frozenset(r.check_integer(v, f"sweep.keep_points[{i}]", 0, max(size - 1, 0))
                                    for i, v in enumerate(self.array(head, "sweep.keep_points")))
        name = r.string(head, "sweep.name") if "name" in head else self.path.stem
        spec = Spec(self.path, name, base, base_data, profile, mode, tuple(groups), tuple(values), contrast,
                    reference, keep, keep_points, tuple(all_names))
        spec.reference_index()  # a reference no point matches is bad input, now
        return spec

    # -- values ------------------------------------------------------------------------------------------

    def plain_table(self, name: str) -> dict[str, Any]:
        """An optional table of any keys (checked one by one by the caller)."""
        value = self.r.data.get(name, {})
        if not isinstance(value, dict):
            raise self.r.fail(name, "must be a table")
        return value

    def text(self, v: Any, key: str, choices: Any = None) -> str:
        if not isinstance(v, str):
            raise self.r.fail(key, f"must be a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.r.fail(key, f"{v!r} is not one of {', '.join(sorted(choices))}")
        return v

    def array(self, table: dict[str, Any], key: str) -> list[Any]:
        value = table[key.rsplit(".", 1)[-1]]
        if not isinstance(value, list):
            raise self.r.fail(key, f"must be a list, got {value!r}")
        return value

    def axis(self, key: str, raw: Any) -> list[Any]:
        """The values of one axis, not yet checked (:meth:`value`): a list, or a range ``{start, stop, step}`` /
        ``{start, stop, count}`` (stop included)."""
        if isinstance(raw, dict):
            vals = self.range(key, raw)
        elif isinstance(raw, list):
            vals = list(raw)
        else:
            raise self.r.fail(key, f"must be a list of values or a range {{start, stop, step}}, got {raw!r}")
        if not vals:
            raise self.r.fail(key, "has no values")
        return vals

    def range(self, key: str, raw: dict[str, Any]) -> list[float]:
        r = self.r
        extra = sorted(set(raw) - RANGE_KEYS)
        if extra:
            raise r.fail(f"{key}.{extra[0]}", "unknown key (a range has start, stop and step or count)")
        if {"start", "stop"} - set(raw) or ("step" in raw) == ("count" in raw):
            raise r.fail(key, "a range needs start, stop and one of step or count")
        start = r.check_number(raw["start"], f"{key}.start", -math.inf, math.inf)
        stop = r.check_number(raw["stop"], f"{key}.stop", -math.inf, math.inf)
        if "count" in raw:
            n = r.check_integer(raw["count"], f"{key}.count", 0, 2**62)
            step = (stop - start) / (n - 1) if n > 1 else 0.0
        else:
            step = r.check_number(raw["step"], f"{key}.step", -math.inf, math.inf)
            if step == 0:
                raise r.fail(f"{key}.step", "must not be 0")
            n = max(math.floor((stop - start) / step * (1 + 1e-12) + 1e-9) + 1, 0)
        if n > self.max_points:
            raise r.fail(key, f"the range has {n:,} values, more than --max-points {self.max_points:,} "
                              "(give a larger --max-points to run it)")
        as_int = all(isinstance(raw.get(k, 0), int) for k in ("start", "stop", "step"))
        vals = [start + i * step for i in range(n)]
        return [int(round(v)) for v in vals] if as_int and "count" not in raw else [float(f"{v:.12g}") for v in vals]

    def value(self, key: str, name: str, v: Any) -> Any:
        """``v`` checked for axis ``name`` (normalised as the protocol reads it)."""
        r = self.r
        kind, _, rest = name.partition(".")
        if name == "profile":
            return self.profile_ref(self.text(v, key), key)
        if kind == "sequence":
            return self.sequence_value(key, rest, v)
        if name == "patient.weight_kg":
            return r.check_number(v, key, 1.0, 500.0)
        if name in PROTOCOL_AXES:
            return self.protocol_value(key, name, v)
        if kind in URL_KINDS and rest:
            return self.url_value(key, kind, rest, v)
        raise r.fail(key, f"unknown axis {name!r} (axes: sequence.<parameter>, patient.weight_kg, "
                          f"{', '.join(sorted(PROTOCOL_AXES))}, rf.<option>, gradient.<option>, profile)")

    def sequence_value(self, key: str, param: str, v: Any) -> Any:
        if self.base_data is None:
            raise self.r.fail(key, f"the base {self.base.name} is a Pulseq file: it has no parameter {param!r} "
                                   "(sweep sequence parameters with a protocol as the base)")
        seq_type = self.base_data["sequence"].get("type")
        if seq_type is None:
            raise self.r.fail(key, f"the base protocol's sequence is a Pulseq file: it has no parameter {param!r}")
        declared = {f.name: f for f in fields(BUILDERS[seq_type].params)}
        if param not in declared:
            raise self.r.fail(key, f"the {seq_type} sequence has no parameter {param!r} "
                                   f"(parameters: {', '.join(sorted(declared))})")
        value = check_value(self.r, declared[param], v, key)
        return list(value) if isinstance(value, tuple) else value

    def protocol_value(self, key: str, name: str, v: Any) -> Any:
        if self.base_data is None:
            raise self.r.fail(key, f"the base {self.base.name} is a Pulseq file: it has no {name} "
                                   "(use rf.<option>, e.g. rf.phantom, rf.matrix)")
        table, _, k = name.partition(".")
        data = {**self.base_data, table: {**self.base_data.get(table, {}), k: v}}
        if name.startswith("phantom."):  # one of name and file: the swept one replaces the other
            data["phantom"].pop("file" if k == "name" else "name" if k == "file" else "", None)
            if k == "file" and isinstance(v, str):
                v = data["phantom"]["file"] = str(self.resolve(v))
        try:
            parse_protocol(dumps(data), self.base)
        except ConfigError as exc:
            raise self.r.fail(key, str(exc).split(": ", 1)[-1]) from exc
        return v

    def url_value(self, key: str, kind: str, option: str, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.r.fail(key, f"must be a string or a number, got {v!r}")
        profile = profiles.load(self.profile)
        url = with_options(profile.subsystems[kind], {option: v})
        try:
            if (kind, option) not in self.options_seen:  # the option itself, once: built as a run would build it
                open_subsystem(kind, url, profile).close()
                self.options_seen[kind, option] = _converter(kind, url, option)
            self.options_seen[kind, option](_text(v))  # then each value, by the option's own converter
        except (ValueError, ConfigError) as exc:
            raise self.r.fail(key, f"{kind} URL {url!r}: option {option}={_text(v)!r}: {exc}") from exc
        return v

    # -- files -------------------------------------------------------------------------------------------

    def resolve(self, given: str) -> Path:
        p = Path(given)
        return p if p.is_absolute() else self.path.parent / p

    def file(self, table: dict[str, Any], key: str) -> Path:
        given = self.r.string(table, key)
        path = self.resolve(given)
        if not path.is_file():
            raise self.r.fail(key, f"{given!r} does not exist (looked for {path})")
        return path

    def profile_ref(self, given: str, key: str) -> str:
        """A profile name, or a path made absolute; loaded now so a bad one is bad input."""
        path = self.resolve(given)
        ref = str(path) if (given.endswith(".toml") or path.exists()) else given
        try:
            profiles.load(ref)
        except ConfigError as exc:
            raise self.r.fail(key, str(exc)) from exc
        return ref

    def measure(self) -> tuple[tuple[tuple[str, str], ...], dict[str, Any] | None]:
        r = self.r
        m = r.table("measure", {"contrast", "reference"}, required=False, optional=True)
        pairs = []
        for i, pair in enumerate(self.array(m, "measure.contrast") if "contrast" in m else []):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise r.fail(f"measure.contrast[{i}]", f"must be a pair of tissue names, got {pair!r}")
            pairs.append((pair[0], pair[1]))
        reference = None
        if "reference" in m:
            reference = m["reference"]
            if not isinstance(reference, dict) or not reference:
                raise r.fail("measure.reference", "must be a table of axis values, e.g. "
                                                  "{ \"sequence.flip_angle_deg\" = 15.0 }")
            reference = {k: self.value(f"measure.reference.{k}", k, v) for k, v in reference.items()}
        return tuple(pairs), reference


def _converter(kind: str, url: str, option: str) -> Any:
    """The converter of ``option`` of the ``kind`` subsystem that ``url`` names (open_subsystem accepted it)."""
    from importlib.metadata import entry_points

    scheme = url.split("://", 1)[0]
    factory = next(ep for ep in entry_points(group=GROUP) if ep.name == f"{kind}.{scheme}").load()
    return factory.OPTIONS[option]


def with_options(url: str, options: dict[str, Any]) -> str:
    """``url`` with ``options`` set (replacing any of the same name)."""
    head, _, tail = url.partition("?")  # (urlunsplit would drop the // of "sim://")
    query = dict(parse_qsl(tail, keep_blank_values=True))
    query.update({k: _text(v) for k, v in options.items()})
    return f"{head}?{urlencode(query)}" if query else head


def _text(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------------------
# TOML out: the resolved protocol of a point (tables of scalars and lists, as protocols are)
# ----------------------------------------------------------------------------------------------------------


def dumps(data: dict[str, Any]) -> str:
    """TOML text of ``data``: top-level tables of strings, numbers, booleans, lists and (inline) tables."""
    lines = []
    for table, values in data.items():
        if not isinstance(values, dict):
            raise SweepError(f"cannot write protocol key {table!r}: not a table")
        lines.append(f"[{table}]")
        lines.extend(f"{_key(k)} = {_toml(v)}" for k, v in values.items())
        lines.append("")
    text = "\n".join(lines)
    tomllib.loads(text)  # what is written reads back (a bug here must not reach a worker)
    return text


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml(k)


def _toml(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else "inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):  # a nested table, written inline
        return "{ " + ", ".join(f"{_key(k)} = {_toml(x)}" for k, x in v.items()) + " }"
    raise SweepError(f"cannot write {v!r} as a protocol value")
