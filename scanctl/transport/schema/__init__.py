"""The machine-readable schema of every message on the wire: ``wire.json`` beside this file.

``wire.json`` is an AsyncAPI 3.0 document (sockets as servers, channels, operations and messages), whose
message payloads are JSON Schema (draft-07, AsyncAPI's own schema format) of the envelope as it travels:
arrays appear as their ``{"__nd__", "dtype", "shape"}`` references, each a binary frame after the envelope.
Its ``x-commands``, ``x-streams`` and ``x-error-codes`` index the control server's commands (arguments,
reply, whether control is needed), event streams and error codes; docs/wire-protocol.md's tables are
generated from them (``python -m scanctl.transport.schema.docs``). Why AsyncAPI and what it cannot say
(ZeroMQ framing) is in docs/wire-protocol.md#the-schema.

The server takes the names of each command's arguments from here (:func:`command_arguments`), so an
argument the schema does not list is refused. Validating messages against the schema needs the
``jsonschema`` package (the test extra): :mod:`scanctl.transport.schema.validate`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

#: The file, as package data.
SCHEMA_FILE = "wire.json"


@cache
def load() -> dict[str, Any]:
    """The schema document (parsed once; do not modify it)."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def version() -> str:
    """The wire version the schema describes, ``"MAJOR.MINOR"`` (``info.version``)."""
    return str(load()["info"]["version"])


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` itself, or what its local ``$ref`` (``#/a/b``) points to."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = load()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return resolve(target)


@cache
def command_arguments() -> dict[str, frozenset[str]]:
    """Each command's argument names (the body's keys besides ``command``)."""
    out = {}
    for name, entry in load()["x-commands"].items():
        out[name] = frozenset(resolve(entry["arguments"])["properties"]) - {"command"}
    return out
