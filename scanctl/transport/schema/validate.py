"""Check messages as they travel against the wire schema (``wire.json``); needs ``jsonschema`` (test extra).

:class:`Validator` takes a message's frames as sent (routing frames removed) and the channel it travels on
(``commands``, ``events``, ``data``, ``driver``: the AsyncAPI channels of the schema) and returns what does
not fit, as readable lines: the envelope against the payload schema of the channel's message of its
``type``, each array reference against a binary frame (one frame per reference, none left over), and every
message a ``batch`` carries against the event schema, as if it had been sent on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from scanctl.errors import ScanctlError
from scanctl.transport.schema import load, resolve


class Validator:
    """Validators for every channel's messages, built once from the schema (see the module docstring)."""

    def __init__(self) -> None:
        try:
            import jsonschema
        except ImportError:
            raise ScanctlError("validating against the wire schema needs the jsonschema package "
                               "(pip install 'scanctl[test]')") from None
        doc = load()
        components = doc["components"]
        self._by_channel: dict[str, dict[str, Any]] = {}
        for channel, entry in doc["channels"].items():
            kinds = {}
            for message in entry["messages"].values():
                message = resolve(message)
                root = {**message["payload"], "components": components}
                kinds[message["name"]] = jsonschema.Draft7Validator(root)
            self._by_channel[channel] = kinds
        self._event = self._by_channel["events"]["event"]

    def check(self, frames: Sequence[bytes], channel: str) -> list[str]:
        """What in ``frames`` (envelope first) does not fit the schema of ``channel``; empty if all does."""
        try:
            envelope = json.loads(bytes(frames[0]))
        except (ValueError, IndexError) as exc:
            return [f"envelope is not JSON: {exc}"]
        if not isinstance(envelope, dict):
            return ["envelope is not an object"]
        kind = envelope.get("type")
        validator = self._by_channel[channel].get(kind) if isinstance(kind, str) else None
        if validator is None:
            return [f"no message of type {kind!r} on channel {channel!r}"]
        problems = _errors(validator, envelope)
        refs = sorted(_references(envelope.get("body")))
        if refs != list(range(len(frames) - 1)):
            problems.append(f"array references {refs} do not match the {len(frames) - 1} binary frames")
        if kind == "batch" and not problems:
            problems += self._batched(envelope)
        return problems

    def _batched(self, batch: dict[str, Any]) -> list[str]:
        """Every message a batch carries, rebuilt as sent alone (docs/wire-protocol.md#batches) and checked."""
        problems = []
        for g, group in enumerate(batch["body"]["groups"]):
            for i, body in enumerate(group["bodies"]):
                alone = {"v": batch["v"], "type": group["type"], "src": batch.get("src"), "ts": group["ts"],
                         "stream": group["stream"], "seq": group["seq"] + i, "body": body}
                if "run" in group:
                    alone["run"] = group["run"]
                problems += [f"group {g} message {i}: {p}" for p in _errors(self._event, alone)]
        return problems

    def batched_messages(self, frames: Sequence[bytes]) -> int:
        """How many messages ``frames`` carry (a batch's count, else 1)."""
        envelope = json.loads(bytes(frames[0]))
        if envelope.get("type") != "batch":
            return 1
        return sum(len(group["bodies"]) for group in envelope["body"]["groups"])


def _errors(validator: Any, instance: dict[str, Any]) -> list[str]:
    out = []
    for error in validator.iter_errors(instance):
        where = "/".join(str(p) for p in error.absolute_path) or "(envelope)"
        text = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        out.append(f"{where}: {text}")
    return out


def _references(value: Any) -> Iterator[int]:
    """The ``__nd__`` indices of every array reference in ``value``."""
    if isinstance(value, dict):
        if "__nd__" in value:
            yield value["__nd__"]
            return
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)
