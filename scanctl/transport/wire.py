"""The wire format of every ZeroMQ message scanctl sends (documented in docs/wire-protocol.md).

A message is a ZeroMQ multipart message: frame 0 is the **envelope**, a UTF-8 JSON object; frames
1..n are **binary payloads** (numpy arrays, sent zero-copy, never pickled) that the envelope's body refers
to as ``{"__nd__": i, "dtype": "<f8", "shape": [...]}`` (``i`` counts from 0 over the binary frames).

Envelope keys: ``v`` (protocol version ``"MAJOR.MINOR"``; a different major is refused), ``type``
(message type), ``id`` (request id, for requests), ``re`` (the request id a reply answers), ``src``
(sender id), ``ts`` (sender's Unix time, s), ``stream``/``seq`` (event stream name and its sequence
number), ``run`` (run id), ``body`` (an object). Everything that is not valid is a
:class:`WireProtocolError` saying what is wrong; decoding never executes anything from the message.

:func:`decode` (and :func:`scanctl.transport.batch.unbatch`) raise nothing but WireProtocolError, and
:func:`request_id_of` nothing at all, whatever bytes arrive: any local process can send them, and a
receiver that catches WireProtocolError must never die of a message. So every value is checked for its
exact type (a JSON ``true`` is no integer) and its range before anything is computed from it: times (finite, 0 to
:data:`MAX_TS_S`), sequence numbers (0 to 2**63 - 1), texts (at most :data:`MAX_TEXT_CHARS`), array
shapes (sizes whose product is bounded, matching the frame's length exactly) and dtypes (a short
``[<>|=]KIND SIZE`` text of a bool, integer, float or complex type); what a refusal says of the message's
own values is shortened (a huge value is not echoed back).

Version rule: a newer minor version (same major) only adds optional keys, so keys this side does not
know are ignored in an envelope (or batch group) of a newer minor, and refused as malformed in one of
this side's minor or an older one, which has no such keys. :func:`request_id_of` reads the request id of
a message that could not be decoded, so that its ``malformed`` error can still say which request it answers.

The value checks and the packing of arrays into frames are in :mod:`scanctl.transport.values`, batches in
:mod:`scanctl.transport.batch`; the machine-readable schema of every message is
``scanctl/transport/schema/wire.json`` (:mod:`scanctl.transport.schema`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from scanctl.errors import WireProtocolError
from scanctl.transport.values import (  # (re-exported: the names a receiver or sender of the wire needs)
    MAX_DIMS,
    MAX_FRAMES,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    MAX_TEXT_CHARS,
    MAX_TS_S,
    VERSION,
    VERSION_TEXT,
    bad_text,
    check_seq,
    check_ts,
    minor_of,
    pack_body,
    refuse_unknown_keys,
    to_plain,
    unpack_body,
    unsupported,
)

log = logging.getLogger(__name__)
MAX_ENVELOPE_BYTES = 1 << 20
_ENVELOPE_KEYS = {"v", "type", "id", "re", "src", "ts", "stream", "seq", "run", "body"}
#: Envelope keys a message of a type must carry (docs/wire-protocol.md#envelope): a command's ``id`` lets
#: its reply be matched, its ``src`` is who holds control.
REQUIRED_KEYS = {"command": ("id", "src", "ts")}

__all__ = ["MAX_DIMS", "MAX_ENVELOPE_BYTES", "MAX_FRAMES", "MAX_PAYLOAD_BYTES", "MAX_SEQ", "MAX_TEXT_CHARS",
           "MAX_TS_S", "REQUIRED_KEYS", "VERSION", "VERSION_TEXT", "Message", "command_of", "decode",
           "dumps_envelope", "encode", "envelope_of", "error_reply", "malformed_reply", "pack_body", "reply_to",
           "request_id_of", "routed", "to_plain"]


@dataclass(slots=True)
class Message:
    """One decoded message; ``body`` holds numpy arrays where the sender put them."""

    type: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    re: str | None = None
    src: str | None = None
    ts: float = 0.0
    stream: str | None = None
    seq: int | None = None
    run: str | None = None
    v: str = VERSION_TEXT


def envelope_of(msg: Message) -> tuple[dict[str, Any], list[bytes | memoryview]]:
    """``msg``'s envelope as a JSON-ready object and its binary frames (zero-copy views of its arrays)."""
    frames: list[bytes | memoryview] = []
    envelope = {"v": msg.v, "type": msg.type, "ts": msg.ts or time.time(), "body": pack_body(msg.body, frames)}
    for key in ("id", "re", "src", "stream", "seq", "run"):
        value = getattr(msg, key)
        if value is not None:
            envelope[key] = value
    return envelope, frames




def encode(msg: Message) -> list[bytes | memoryview]:
    """The frames of ``msg``: the JSON envelope, then one frame per array in the body (zero-copy views)."""
    envelope, frames = envelope_of(msg)
    return [dumps_envelope(envelope), *frames]



def dumps_envelope(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()


def decode(frames: Sequence[bytes | memoryview | Any]) -> Message:
    """Decode frames (``bytes`` or pyzmq ``Frame``s). Raises WireProtocolError naming what is wrong, and no
    other exception whatever the frames hold."""
    if not isinstance(frames, Sequence):
        raise WireProtocolError(f"a message is a sequence of frames, not a {type(frames).__name__}")
    if not frames:
        raise WireProtocolError("empty message")
    if len(frames) > MAX_FRAMES + 1:
        raise WireProtocolError(f"{len(frames)} frames, more than the {MAX_FRAMES + 1} allowed")
    raw = [_buffer(f) for f in frames]
    if len(raw[0]) > MAX_ENVELOPE_BYTES:
        raise WireProtocolError(f"envelope is {len(raw[0])} bytes, more than the {MAX_ENVELOPE_BYTES} allowed")
    head = bytes(raw[0])
    _check_nesting(head)  # before parsing: a deep enough text would exhaust the parser's recursion
    try:
        envelope = json.loads(head.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireProtocolError(f"envelope is not UTF-8 JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise WireProtocolError("envelope is not a JSON object")
    v = envelope.get("v")
    if type(v) is not str:
        raise unsupported(v)
    minor = VERSION[1] if v == VERSION_TEXT else minor_of(v)
    if not envelope.keys() <= _ENVELOPE_KEYS and minor <= VERSION[1]:  # a newer minor's keys are ignored
        refuse_unknown_keys("envelope has ", envelope.keys() - _ENVELOPE_KEYS, v)
    body = envelope.get("body", {})
    if not isinstance(body, dict):
        raise WireProtocolError("envelope 'body' must be an object")
    if len(raw) == 1 and b'"__' not in head:  # no array or special float in it: the body as parsed
        return _message(envelope, body, v)
    body = unpack_body(body, raw[1:], set())
    if not isinstance(body, dict):  # the body itself was an array reference or a special float
        raise WireProtocolError(f"envelope 'body' must be an object, not an encoded {type(body).__name__}")
    return _message(envelope, body, v)


#: Deepest nesting of the envelope's text: the envelope, its body and 32 levels inside the body.
MAX_NESTING = 34
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_STEP = np.zeros(256, np.int64)  # what each byte does to the nesting level outside strings
_STEP[list(b"{[")] = 1
_STEP[list(b"}]")] = -1
_QUOTE = ord('"')


def _check_nesting(text: bytes) -> None:
    """Refuse JSON text nested deeper than :data:`MAX_NESTING`, working on the text at C speed: escapes
    removed, only quotes and brackets kept; a bracket is inside a string when an odd number of quotes come
    before it, and the nesting level before each byte is the running sum of the others (+1 opening, -1
    closing). The parser never nests deeper than the highest level."""
    if text.count(b"{") + text.count(b"[") <= MAX_NESTING:  # too few brackets to nest too deep
        return
    if b"\\" in text:
        text = _ESCAPE.sub(b"", text)
    kept = np.frombuffer(text.translate(None, _NOT_STRUCTURE), np.uint8)
    outside = (np.cumsum(kept == _QUOTE) & 1) == 0  # (a closing quote counts as outside: its step is 0)
    if int(np.cumsum(_STEP[kept] * outside).max(initial=0)) > MAX_NESTING:
        raise WireProtocolError(f"body nested more than {MAX_NESTING - 2} levels deep")




def request_id_of(frames: Sequence[bytes | memoryview | Any]) -> str | None:
    """The request id (``id``) of a message :func:`decode` refused, read best-effort from its envelope: a
    string ``id`` of at most :data:`MAX_TEXT_CHARS` whenever frame 0 is still a JSON object within the size
    (1 MiB) and nesting bounds (whatever its version, other keys or binary frames), else None. Never raises.
    A receiver puts it as ``re`` in the ``malformed`` error it answers, so the sender can tell which request
    was refused."""
    ident = _readable(frames).get("id")
    return ident if type(ident) is str and len(ident) <= MAX_TEXT_CHARS else None


def command_of(frames: Sequence[bytes | memoryview | Any]) -> str | None:
    """The ``command`` named in the body of a message :func:`decode` refused, read best-effort as
    :func:`request_id_of` reads its id (a string of at most ``MAX_TEXT_CHARS`` characters, else None). Never raises."""
    body = _readable(frames).get("body")
    name = body.get("command") if isinstance(body, dict) else None
    return name if type(name) is str and len(name) <= 64 else None


def _readable(frames: Sequence[bytes | memoryview | Any]) -> dict[str, Any]:
    """Frame 0 of ``frames`` as a JSON object if it is one within the size and nesting bounds, else ``{}``."""
    try:
        head = _buffer(frames[0])
        if len(head) > MAX_ENVELOPE_BYTES:
            return {}
        text = bytes(head)
        _check_nesting(text)
        envelope = json.loads(text.decode("utf-8"), parse_constant=_no_constant)
    except Exception:  # noqa: BLE001 - best effort: anything unreadable has no id
        return {}
    return envelope if isinstance(envelope, dict) else {}


def _message(envelope: dict[str, Any], body: dict[str, Any], v: str) -> Message:
    """The message of a checked envelope (keys known, version accepted) and its decoded body."""
    kind = envelope.get("type")
    if type(kind) is not str or not kind or len(kind) > 64:
        raise WireProtocolError("envelope 'type' must be a non-empty string of at most 64 characters")
    get = envelope.get
    ident, re, sender, stream, run, seq, ts = (get("id"), get("re"), get("src"), get("stream"), get("run"),
                                               get("seq"), get("ts", 0.0))
    for key, value in (("id", ident), ("re", re), ("src", sender), ("stream", stream), ("run", run)):
        if value is not None and (type(value) is not str or len(value) > MAX_TEXT_CHARS):
            raise bad_text(f"envelope {key!r}", value)
    if seq is not None:
        if type(seq) is not int:
            raise WireProtocolError(f"envelope 'seq' has the wrong type ({type(seq).__name__})")
        check_seq("envelope 'seq'", seq)
    if type(ts) is not float and type(ts) is not int:
        raise WireProtocolError(f"envelope 'ts' has the wrong type ({type(ts).__name__})")
    check_ts("envelope 'ts'", ts)
    required = REQUIRED_KEYS.get(kind, ())
    missing = ", ".join(repr(key) for key in required if envelope.get(key) is None)  # null counts as absent
    if missing:
        raise WireProtocolError(f"a {kind} envelope needs {', '.join(map(repr, required))} (missing: {missing})")
    return Message(kind, body, ident, re, sender, float(ts), stream, seq, run, v)


def reply_to(request: Message, type: str = "reply", body: dict[str, Any] | None = None,
             src: str | None = None) -> Message:
    """A reply that answers ``request`` (``re`` = its id)."""
    return Message(type=type, body=body or {}, re=request.id, src=src)


def error_reply(request_id: str | None, code: str, message: str, src: str | None = None) -> Message:
    """The error every malformed or refused request gets: ``{"code", "message"}``."""
    return Message(type="error", body={"code": code, "message": message}, re=request_id, src=src)


def routed(frames: Sequence[Any]) -> tuple[list[bytes], list[Any]] | None:
    """A ROUTER socket's message split into the peer's routing frames (its identity, and a REQ peer's empty
    delimiter) and the message's own frames; None for one that came from no DEALER/REQ peer (nothing can be
    answered)."""
    if len(frames) < 2:
        return None
    identity, payload = [bytes(frames[0].buffer)], list(frames[1:])
    if payload and len(payload[0]) == 0:  # a REQ peer's empty delimiter
        identity.append(b"")
        payload = payload[1:]
    return identity, payload


def malformed_reply(frames: Sequence[bytes | memoryview | Any], exc: Exception, src: str | None = None) -> Message:
    """The ``malformed`` error answering ``frames``, which :func:`decode` refused with ``exc`` (``re``: their
    request id, if it can be read). A receive loop catches every exception of decode, not only
    WireProtocolError, and answers with this: anything else is a decoder bug, logged here with its
    traceback, and no message may end a server for it."""
    if isinstance(exc, WireProtocolError):
        reason = str(exc)
    else:
        log.error("%s: decoding a message raised %s (a decoder bug): answered as malformed", src,
                  type(exc).__name__, exc_info=exc)
        reason = f"undecodable message ({type(exc).__name__})"
    return error_reply(request_id_of(frames), "malformed", reason, src=src)





def _buffer(frame: Any) -> memoryview:
    """``frame``'s bytes as a flat byte view (not copied); WireProtocolError for what holds no such bytes."""
    if isinstance(frame, (bytes, bytearray)):
        return memoryview(frame)
    source = frame if isinstance(frame, memoryview) else getattr(frame, "buffer", None)  # a pyzmq Frame
    try:
        view = memoryview(cast(Any, source))  # (TypeError for None and anything else that is no buffer)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError):  # a strided view cannot be cast to flat bytes
        raise WireProtocolError(f"frame of type {type(frame).__name__} is not bytes") from None




def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")
