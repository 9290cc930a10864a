"""Strict reading of TOML configuration files (system profiles, protocols).

Every problem is one :class:`~scanctl.errors.ConfigError` naming the file and the dotted key:
``"<file>: <table>.<key>: <what is wrong>"``. Keys are passed dotted (``"scanner.b0_t"``); the last
part is looked up in the table given.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from scanctl.config.files import read_bounded
from scanctl.errors import ConfigError

#: The largest configuration file read (bytes): a protocol or profile is a few kB.
MAX_TOML_BYTES = 1 << 20


def load_text(path: Path, what: str) -> str:
    """The text of ``path``; ``what`` names the kind of file in the error. Raises :class:`ConfigError` for a
    file that cannot be read, is not a regular file (a FIFO, a device), is over :data:`MAX_TOML_BYTES` or is
    not UTF-8."""
    try:
        return read_bounded(path, MAX_TOML_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read {what}: not UTF-8 text") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: cannot read {what}: it {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc


def parse(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text. Raises :class:`ConfigError` naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc


class Reader:
    """Typed, range-checked access to parsed TOML ``data`` from ``source`` (a path or a label)."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def table(self, name: str, keys: Collection[str], *, required: bool | Collection[str] = True,
              optional: bool = False) -> dict[str, Any]:
        """The table ``name`` (dotted for a nested one, e.g. ``safety.sar``), refusing keys not in ``keys``.

        ``required``: every key (True), none (False) or the given ones must be present. An ``optional``
        table that is absent reads as empty.
        """
        value: Any = self.data
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail(name, "missing table" if value is None else "must be a table")
        extra = sorted(set(value) - set(keys))
        if extra:
            raise self.fail(f"{name}.{extra[0]}", f"unknown key (known: {', '.join(sorted(keys))})")
        needed = set(keys) if required is True else set() if required is False else set(required)
        missing = sorted(needed - set(value))
        if missing:
            raise self.fail(f"{name}.{missing[0]}", "missing key")
        return value

    def no_other_tables(self, known: Collection[str]) -> None:
        extra = sorted(set(self.data) - set(known))
        if extra:
            raise self.fail(extra[0], f"unknown table (known: {', '.join(sorted(known))})")

    @staticmethod
    def _get(table: dict[str, Any], key: str) -> Any:
        return table[key.rsplit(".", 1)[-1]]

    def number(self, table: dict[str, Any], key: str, low: float, high: float) -> float:
        """A finite int or float in ``[low, high]``."""
        return self.check_number(self._get(table, key), key, low, high)

    def check_number(self, value: Any, key: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {value!r}")
        if not math.isfinite(value) or not low <= value <= high:
            raise self.fail(key, f"{value} is outside {low:g} to {high:g}")
        return float(value)

    def integer(self, table: dict[str, Any], key: str, low: int, high: int) -> int:
        """An integer in ``[low, high]`` (a float such as ``2.0`` is refused)."""
        return self.check_integer(self._get(table, key), key, low, high)

    def check_integer(self, value: Any, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"{value} is outside {low} to {high}")
        return value

    def string(self, table: dict[str, Any], key: str, choices: Collection[str] | None = None) -> str:
        """A string (one of ``choices`` when given)."""
        value = self._get(table, key)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(sorted(choices))}")
        return value

    def boolean(self, table: dict[str, Any], key: str) -> bool:
        value = self._get(table, key)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def axes(self, table: dict[str, Any], key: str, low: float, high: float) -> tuple[float, float, float]:
        """An inline table ``{ x = …, y = …, z = … }`` of numbers in ``[low, high]``."""
        value = self._get(table, key)
        if not isinstance(value, dict) or set(value) != {"x", "y", "z"}:
            raise self.fail(key, "must be a table with exactly x, y and z")
        x, y, z = (self.number(value, f"{key}.{a}", low, high) for a in "xyz")
        return x, y, z
