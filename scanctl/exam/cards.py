"""Exam cards: which protocols, in which order, an exam for a requested procedure runs (docs/exam.md).

A card is a TOML file (``protocols/exams/*.toml``)::

    [card]
    name = "head"
    description = "Head: localizer, T1 GRE, T2 TSE"
    codes = ["MRHEAD"]                 # Requested Procedure Code Values it serves (case-insensitive)
    procedures = ["MR head"]           # Requested Procedure Descriptions it serves (case and spaces ignored)
    protocols = ["../gre_2d.toml", { name = "t2_tse", path = "../tse_2d.toml" }]

Paths are relative to the card. Every protocol a card names is read and checked when the card is loaded
(:func:`scanctl.config.protocol.load_protocol`), so a card that would fail mid-exam is refused before the
exam opens. Every problem is one :class:`~scanctl.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanctl.config.tomlcheck import Reader, load_text, parse
from scanctl.errors import ConfigError, ScanctlError

#: The cards shipped with scanctl (protocols/exams/ of the source tree).
CARDS_DIR = Path(__file__).resolve().parents[2] / "protocols" / "exams"
#: A step's name becomes part of a folder name (runs/NN-NAME): letters, digits, ``_``, ``-``, ``.``.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")
_CARD_KEYS = ("name", "description", "codes", "procedures", "protocols")


class UnknownProcedureError(ConfigError):
    """No exam card serves the order's requested procedure (the message lists the known ones)."""


@dataclass(frozen=True)
class CardProtocol:
    """One protocol of a card: the step's ``name`` and the protocol or Pulseq file's ``path``."""

    name: str
    path: Path


@dataclass(frozen=True)
class ExamCard:
    """A parsed, checked exam card."""

    name: str
    description: str
    codes: tuple[str, ...]
    procedures: tuple[str, ...]
    protocols: tuple[CardProtocol, ...]
    source: Path

    def serves(self, code: str, procedure: str) -> bool:
        """Whether this card serves a requested procedure ``code`` or description ``procedure``."""
        if code and code.strip().upper() in {c.upper() for c in self.codes}:
            return True
        return bool(procedure) and _norm(procedure) in {_norm(p) for p in self.procedures}

    def summary(self) -> str:
        """``name (codes; 'descriptions')`` for error messages and listings."""
        served = [*self.codes, *(repr(p) for p in self.procedures)]
        return f"{self.name} ({', '.join(served)})"


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def step_name(text: str, where: str) -> str:
    """``text`` if it can name a step (and its run folder); raises ConfigError naming ``where``."""
    if not _NAME.fullmatch(text):
        raise ConfigError(f"{where}: {text!r} is not a step name (letters, digits, _ . -; at most 48 characters)")
    return text


def load_card(path: str | os.PathLike[str], *, check_protocols: bool = True) -> ExamCard:
    """Read and check the card at ``path``; with ``check_protocols`` every protocol it names is read and
    checked too. Raises ConfigError (SequenceFormatError for a bad Pulseq file) naming file and key."""
    path = Path(path)
    r = Reader(parse(load_text(path, "the exam card"), str(path)), str(path))
    r.no_other_tables(["card"])
    table = r.table("card", _CARD_KEYS, required=("name", "protocols"))
    name = step_name(r.string(table, "card.name"), f"{path}: card.name")
    description = r.string(table, "card.description") if "description" in table else ""
    codes = _strings(r, table, "codes")
    procedures = _strings(r, table, "procedures")
    if not codes and not procedures:
        raise r.fail("card.codes", "a card needs codes or procedures (what requested procedure it serves)")
    entries = table["protocols"]
    if not isinstance(entries, list) or not entries:
        raise r.fail("card.protocols", "must be a non-empty list of protocol paths or {name, path} tables")
    protocols = tuple(_protocol(r, entry, i, path.parent, check_protocols) for i, entry in enumerate(entries))
    return ExamCard(name, description, codes, procedures, protocols, path)


def _strings(r: Reader, table: dict[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise r.fail(f"card.{key}", f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _protocol(r: Reader, entry: Any, i: int, base: Path, check: bool) -> CardProtocol:
    key = f"card.protocols[{i}]"
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or "path" not in entry or set(entry) - {"name", "path"}:
        raise r.fail(key, f"must be a path or a table {{name, path}}, got {entry!r}")
    if not isinstance(entry["path"], str) or not entry["path"] or "\x00" in entry["path"]:
        raise r.fail(f"{key}.path", f"must be a path, got {entry['path']!r}")
    path = (base / entry["path"]).resolve()
    name = entry.get("name", path.stem)
    if not isinstance(name, str):
        raise r.fail(f"{key}.name", f"must be a string, got {name!r}")
    step_name(name, f"{r.source}: {key}.name")
    if not path.is_file():
        raise r.fail(f"{key}.path", f"{entry['path']!r}: no such file ({path})")
    if check:
        try:
            check_protocol(path)
        except ScanctlError as exc:  # the protocol's own error, named as the card's entry
            raise r.fail(f"{key}.path", str(exc)) from None
    return CardProtocol(name, path)


def check_protocol(path: Path) -> None:
    """Read and check a protocol TOML (or that a Pulseq file exists); raises ConfigError naming it."""
    if path.suffix == ".toml":
        from scanctl.config.protocol import load_protocol

        load_protocol(path)
    elif not path.is_file():
        raise ConfigError(f"{path}: no such protocol or Pulseq file")


def load_cards(folder: str | os.PathLike[str] = CARDS_DIR) -> list[ExamCard]:
    """Every card (``*.toml``) in ``folder``, by name. Raises ConfigError for a bad card or two of one name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no exam card folder")
    cards = [load_card(p) for p in sorted(folder.glob("*.toml"))]
    seen: dict[str, Path] = {}
    for card in cards:
        if card.name in seen:
            raise ConfigError(f"{card.source}: card name {card.name!r} is also {seen[card.name]}'s")
        seen[card.name] = card.source
    return cards


def card_for(code: str, procedure: str, cards: Sequence[ExamCard]) -> ExamCard:
    """The card that serves the requested procedure ``code`` (tried first) or description ``procedure``.
    Raises UnknownProcedureError listing the known ones."""
    by_code = [c for c in cards if code and c.serves(code, "")]
    matches = by_code or [c for c in cards if c.serves("", procedure)]
    if len(matches) == 1:
        return matches[0]
    asked = f"requested procedure {procedure!r}" + (f" (code {code!r})" if code else "")
    if matches:
        raise UnknownProcedureError(f"{asked} is served by several exam cards: "
                                    f"{', '.join(str(c.source) for c in matches)}; give one with --card")
    known = "; ".join(c.summary() for c in cards) or "none"
    raise UnknownProcedureError(f"no exam card for {asked}; known procedures: {known}")


def resolve_card(spec: str | os.PathLike[str] | None, code: str, procedure: str,
                 folder: str | os.PathLike[str] = CARDS_DIR) -> ExamCard:
    """The card ``spec`` names (a path to a TOML file, or a card name in ``folder``), else the one serving
    the order's procedure. Raises ConfigError / UnknownProcedureError."""
    if spec is not None and (str(spec).endswith(".toml") or os.sep in str(spec)):
        return load_card(spec)
    cards = load_cards(folder)
    if spec is not None:
        named = [c for c in cards if c.name == str(spec)]
        if not named:
            raise UnknownProcedureError(f"no exam card named {str(spec)!r} in {folder} (known: "
                                        f"{', '.join(c.name for c in cards) or 'none'})")
        return named[0]
    return card_for(code, procedure, cards)
