"""docs/wire-protocol.md's tables, generated from the wire schema (``wire.json``), so the two cannot disagree.

The page marks each generated table with ``<!-- schema:NAME -->`` … ``<!-- /schema:NAME -->``; :func:`render`
fills them in. ``python -m scanctl.transport.schema.docs`` rewrites the page; with ``--check`` it only says
whether the page is up to date (exit 1 if not), as tests/test_wire_schema.py checks.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from scanctl.transport.schema import load, resolve

PAGE = Path(__file__).parents[3] / "docs" / "wire-protocol.md"
_MARKED = re.compile(r"(<!-- schema:(\w+) -->\n)(.*?)(<!-- /schema:\2 -->)", re.DOTALL)
_NAMES = {"Number": "number", "Time": "number (Unix s)", "Seq": "integer", "Version": "string",
          "NdArray": "array", "SpecialFloat": "number"}


def type_of(node: dict[str, Any]) -> str:
    """A property's type as the tables write it (``string``, ``"a" \\| "b"``, ``number or null`` …)."""
    ref = node.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[1]
        return _NAMES.get(name, "object")
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(type_of(option) for option in node["oneOf"])
    if "allOf" in node:
        return type_of(node["allOf"][0])
    kind = node.get("type", "any")
    return " or ".join(kind) if isinstance(kind, list) else kind


def _keys(schema: dict[str, Any]) -> str:
    """An object's keys, required ones plain and optional ones in brackets."""
    required = set(schema.get("required", []))
    keys = [f"`{k}`" if k in required else f"[`{k}`]" for k in schema.get("properties", {}) if k != "command"]
    return ", ".join(keys) or "—"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("\n", " ") for cell in cells) + " |"


def envelope_table() -> list[str]:
    props = load()["components"]["schemas"]["Envelope"]["properties"]
    lines = [_row("key", "type", "meaning"), _row("---", "---", "---")]
    return lines + [_row(f"`{key}`", type_of(node), resolve(node).get("description", node.get("description", "")))
                    for key, node in props.items()]


def required_table() -> list[str]:
    doc = load()
    lines = [_row("message", "socket", "required envelope keys", "payload schema"), _row("---", "---", "---", "---")]
    for channel, entry in doc["channels"].items():
        for message in entry["messages"].values():
            message = resolve(message)
            schema_name = message["payload"]["$ref"].rsplit("/", 1)[1]
            payload = resolve(message["payload"])
            required = (payload.get("allOf", [payload])[0]).get("required", [])
            lines.append(_row(f"`{message['name']}`", channel, ", ".join(f"`{k}`" for k in required),
                              f"`{schema_name}`"))
    return lines


def commands_table() -> list[str]:
    lines = [_row("command", "arguments ([optional])", "needs control", "answer: `status` and body keys",
                  "what it does"), _row("---", "---", "---", "---", "---")]
    for name, entry in load()["x-commands"].items():
        args, reply = resolve(entry["arguments"]), resolve(entry["reply"])
        reply_keys = ", ".join(f"`{k}`" for k in reply["properties"] if k not in ("command", "status")) or "—"
        lines.append(_row(f"`{name}`", _keys(args), "yes" if entry["control"] else "no",
                          f"{entry['answer']}: {reply_keys}", entry["description"]))
    return lines


def arguments_table() -> list[str]:
    lines = [_row("command", "argument", "type", "meaning"), _row("---", "---", "---", "---")]
    for name, entry in load()["x-commands"].items():
        for arg, node in resolve(entry["arguments"])["properties"].items():
            if arg != "command":
                lines.append(_row(f"`{name}`", f"`{arg}`", type_of(node), node.get("description", "")))
    return lines


def errors_table() -> list[str]:
    lines = [_row("code", "meaning"), _row("---", "---")]
    return lines + [_row(f"`{code}`", text) for code, text in load()["x-error-codes"].items()]


def streams_table() -> list[str]:
    lines = [_row("stream", "socket", "`type`", "body keys ([optional])", "what"),
             _row("---", "---", "---", "---", "---")]
    for name, entry in load()["x-streams"].items():
        body = resolve(entry["body"])
        if "oneOf" in body:
            keys = " or ".join(_keys(option) for option in body["oneOf"])
        elif "if" in body:  # the run stream: start or end
            keys = f"`event` `\"start\"`: {_keys(resolve(body['then']))}; `event` `\"end\"`: the run report"
        else:
            keys = _keys(body)
        lines.append(_row(f"`{name}`", entry["socket"], f"`{entry['type']}`", keys, entry["description"]))
    return lines


def acquisitions_table() -> list[str]:
    props = load()["components"]["schemas"]["AcquisitionBatch"]["properties"]
    lines = [_row("key", "dtype, shape: meaning"), _row("---", "---")]
    return lines + [_row(f"`{key}`", node.get("description", "")) for key, node in props.items()]


TABLES = {"envelope": envelope_table, "required": required_table, "commands": commands_table,
          "arguments": arguments_table, "errors": errors_table, "streams": streams_table,
          "acquisitions": acquisitions_table}


def render(page: str) -> str:
    """``page`` with every marked table filled in from the schema. Raises KeyError for an unknown table."""
    def fill(match: re.Match[str]) -> str:
        return match[1] + "\n".join(TABLES[match[2]]()) + "\n" + match[4]
    return _MARKED.sub(fill, page)


def main(argv: list[str]) -> int:
    text = PAGE.read_text(encoding="utf-8")
    rendered = render(text)
    if "--check" in argv:
        if rendered != text:
            sys.stderr.write(f"{PAGE} is out of date: python -m scanctl.transport.schema.docs\n")
            return 1
        return 0
    PAGE.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
