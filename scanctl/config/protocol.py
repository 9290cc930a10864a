"""Scan protocols: one TOML file naming a sequence (a built-in type with parameters, or a Pulseq file),
where it images (the geometry: slice position, orientation, slices), the table position, the patient and, for
the simulators, the phantom. Documented in docs/protocol.md.

Unknown tables and keys, wrong types, out-of-range values and missing files are a
:class:`~scanctl.errors.ConfigError` naming the file and the key. A TE or TR the sequence cannot meet is
found when the sequence is built for a system profile (:meth:`Protocol.build_sequence`), with the same
file-and-key message and the minimum achievable value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanctl.config.profile import SystemProfile
from scanctl.config.tomlcheck import Reader, load_text, parse
from scanctl.errors import ConfigError
from scanctl.sequence.builders import BUILDERS, ParameterError, Params
from scanctl.sequence.builders.placement import GEOMETRY_KEYS, Geometry
from scanctl.sequence.geometry import SliceStack
from scanctl.sequence.model import Sequence

#: Phantoms the simulators ship, by name.
PHANTOMS = ("shepp_logan",)
#: The keys of each table ([sequence]: ``type`` with that type's parameters, or ``file``).
KEYS = {
    "protocol": {"name", "description"},
    "table": {"position_mm"},
    "patient": {"weight_kg", "height_m", "patient_position"},
    "geometry": set(GEOMETRY_KEYS),
    "phantom": {"name", "file", "matrix"},
    "acquisition": {"noise_std"},
}
TABLES = ("protocol", "sequence", "geometry", "table", "patient", "phantom", "acquisition")


@dataclass(frozen=True)
class Patient:
    """The patient: weight (kg) for the SAR limits, optional height (m), and how they lie (DICOM Patient
    Position: HFS, FFS, HFP, FFP; it maps the protocol's patient coordinates into the scanner's)."""

    weight_kg: float
    height_m: float | None = None
    patient_position: str = "HFS"


@dataclass(frozen=True)
class Phantom:
    """The numerical phantom the simulators image: a shipped one by ``name`` or a ``file``
    (``.npz``/``.h5``), at ``matrix`` voxels per side (``None``: the simulator's default)."""

    name: str | None
    file: Path | None
    matrix: int | None


@dataclass(frozen=True)
class Protocol:
    """A loaded protocol. Exactly one of ``sequence_type`` (with ``sequence_params``) and
    ``sequence_file`` is set."""

    source: Path
    name: str
    description: str
    sequence_type: str | None
    sequence_params: Params | None
    sequence_file: Path | None
    table_position_mm: float
    patient: Patient
    phantom: Phantom | None = None
    noise_std: float | None = None
    #: Where a built-in sequence images: the ``[geometry]`` table (None without one, for a head-first supine
    #: patient: the builder's default; always None for a Pulseq file, whose RF offsets and rotations say).
    geometry: Geometry | None = None

    @property
    def patient_position(self) -> str:
        """DICOM Patient Position (HFS, FFS, HFP, FFP)."""
        return self.patient.patient_position

    @property
    def slice_stacks(self) -> list[SliceStack]:
        """The slice stacks a built-in sequence images, in SLC order (one; the localizer: one per plane),
        patient coordinates; empty for a Pulseq file."""
        if self.sequence_type is None or self.sequence_params is None:
            return []
        return BUILDERS[self.sequence_type].slice_stacks(self.sequence_params, self.geometry)

    @property
    def slice_stack(self) -> SliceStack | None:
        """The (first) slice stack, or None for a Pulseq file."""
        stacks = self.slice_stacks
        return stacks[0] if stacks else None

    def build_sequence(self, profile: SystemProfile) -> Sequence:
        """The protocol's sequence for ``profile``: built, or read from its Pulseq file.

        Raises :class:`ConfigError` naming the file and the parameter when the builder cannot meet it
        (e.g. TE below its minimum, with the minimum), or
        :class:`~scanctl.errors.SequenceFormatError` for an unreadable Pulseq file.
        """
        if self.sequence_file is not None:
            from scanctl.sequence.pulseq_read import read

            return read(self.sequence_file)
        assert self.sequence_type is not None and self.sequence_params is not None
        try:
            return BUILDERS[self.sequence_type].build(profile, self.sequence_params, geometry=self.geometry)
        except ParameterError as exc:
            raise ConfigError(f"{self.source}: {_qualified(exc.key)}: {exc.message}") from exc

    def as_dict(self) -> dict[str, Any]:
        """The protocol as plain data (paths as strings), e.g. for a run report."""
        params = None
        if self.sequence_params is not None:
            params = {d["name"]: getattr(self.sequence_params, d["name"]) for d in self.sequence_params.describe()}
        return {
            "source": str(self.source),
            "name": self.name,
            "description": self.description,
            "sequence": {"type": self.sequence_type, "parameters": params,
                         "file": None if self.sequence_file is None else str(self.sequence_file)},
            "geometry": None if self.sequence_type is None else BUILDERS[self.sequence_type].geometry(
                self.geometry).as_dict(),
            "table": {"position_mm": self.table_position_mm},
            "patient": {"weight_kg": self.patient.weight_kg, "height_m": self.patient.height_m,
                        "patient_position": self.patient.patient_position},
            "phantom": None if self.phantom is None else {
                "name": self.phantom.name, "matrix": self.phantom.matrix,
                "file": None if self.phantom.file is None else str(self.phantom.file)},
            "acquisition": {"noise_std": self.noise_std},
        }


def load_protocol(path: str | os.PathLike[str]) -> Protocol:
    """Read and validate a protocol file. Raises :class:`ConfigError` naming the file and the key."""
    path = Path(path)
    return parse_protocol(load_text(path, "protocol"), path)


def parse_protocol(text: str, source: Path) -> Protocol:
    """Validate protocol TOML ``text``; relative file names are taken from ``source``'s folder."""
    r = Reader(parse(text, str(source)), str(source))
    r.no_other_tables(TABLES)
    base = source.parent

    head = r.table("protocol", KEYS["protocol"], required={"name"})
    name = _nonempty(r, head, "protocol.name")
    description = r.string(head, "protocol.description") if "description" in head else ""

    seq = r.data.get("sequence")
    if not isinstance(seq, dict):
        raise r.fail("sequence", "missing table" if seq is None else "must be a table")
    seq_type = seq_params = seq_file = None
    if ("type" in seq) == ("file" in seq):
        raise r.fail("sequence", "give either type (a built-in sequence) or file (a Pulseq file)")
    if "file" in seq:
        r.table("sequence", {"file"})
        seq_file = _existing_file(r, seq, "sequence.file", base)
    else:
        seq_type = r.string(seq, "sequence.type", BUILDERS)
        values = {k: v for k, v in seq.items() if k != "type"}
        try:
            seq_params = BUILDERS[seq_type].params.from_mapping(values)
        except ParameterError as exc:
            raise r.fail(f"sequence.{exc.key}", exc.message) from exc

    table = r.table("table", KEYS["table"], optional=True)
    position = r.number(table, "table.position_mm", -3000.0, 3000.0) if "position_mm" in table else 0.0

    pat = r.table("patient", KEYS["patient"], required={"weight_kg"})
    patient = Patient(
        weight_kg=r.number(pat, "patient.weight_kg", 1.0, 500.0),
        height_m=r.number(pat, "patient.height_m", 0.2, 3.0) if "height_m" in pat else None,
        patient_position=pat.get("patient_position", "HFS"),
    )
    geometry = None
    if seq_type is not None:
        geo = r.table("geometry", KEYS["geometry"], required=False, optional=True)
        try:
            geometry = Geometry.from_mapping(geo, patient.patient_position)
        except ParameterError as exc:
            raise r.fail(exc.key, exc.message) from exc
        if "geometry" not in r.data and geometry.patient_position == "HFS":
            geometry = None  # the builder's own default (the localizer's: three slices per plane)
    elif "geometry" in r.data:
        raise r.fail("geometry", "a Pulseq file carries its own geometry (RF offsets, ROTATIONS): no [geometry]")
    elif "patient_position" in pat:
        r.string(pat, "patient.patient_position", {"HFS", "FFS", "HFP", "FFP"})

    phantom = None
    if "phantom" in r.data:
        ph = r.table("phantom", KEYS["phantom"], required=False)
        if ("name" in ph) == ("file" in ph):
            raise r.fail("phantom", "give either name (a shipped phantom) or file")
        phantom = Phantom(
            name=r.string(ph, "phantom.name", PHANTOMS) if "name" in ph else None,
            file=_existing_file(r, ph, "phantom.file", base) if "file" in ph else None,
            matrix=r.integer(ph, "phantom.matrix", 8, 1024) if "matrix" in ph else None,
        )

    acq = r.table("acquisition", KEYS["acquisition"], required=False, optional=True)
    noise = r.number(acq, "acquisition.noise_std", 0.0, 1e6) if "noise_std" in acq else None

    return Protocol(source=source, name=name, description=description, sequence_type=seq_type,
                    sequence_params=seq_params, sequence_file=seq_file, table_position_mm=position,
                    patient=patient, phantom=phantom, noise_std=noise, geometry=geometry)


def _qualified(key: str) -> str:
    """A builder's parameter key as the protocol file spells it (geometry and patient keys are their own)."""
    return key if key.startswith(("geometry.", "patient.")) else f"sequence.{key}"


def _nonempty(r: Reader, table: dict[str, Any], key: str) -> str:
    value = r.string(table, key)
    if not value.strip():
        raise r.fail(key, "must not be empty")
    return value


def _existing_file(r: Reader, table: dict[str, Any], key: str, base: Path) -> Path:
    given = Path(_nonempty(r, table, key))
    path = given if given.is_absolute() else base / given
    if not path.is_file():
        raise r.fail(key, f"{str(given)!r} does not exist (looked for {path})")
    return path
