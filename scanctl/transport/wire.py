"""The wire format of every ZeroMQ message scanctl sends (documented in docs/wire-protocol.md).

A message is a ZeroMQ multipart message: frame 0 is the **envelope**, a UTF-8 JSON object; frames
1..n are **binary payloads** (numpy arrays, sent zero-copy, never pickled) that the envelope's body refers
to as ``{"__nd__": i, "dtype": "<f8", "shape": [...]}`` (``i`` counts from 0 over the binary frames).

Envelope keys: ``v`` (protocol version ``"MAJOR.MINOR"``; a different major is refused), ``type``
(message type), ``id`` (request id, for requests), ``re`` (the request id a reply answers), ``src``
(sender id), ``ts`` (sender's Unix time, s), ``stream``/``seq`` (event stream name and its sequence
number), ``run`` (run id), ``body`` (an object). Everything that is not valid is a
:class:`WireProtocolError` saying what is wrong; decoding never executes anything from the message.

:func:`decode`, :func:`unbatch` and :func:`request_id_of` raise nothing but WireProtocolError (the last not
even that) whatever bytes arrive: any local process can send them, and a receiver that catches
WireProtocolError must never die of a message. So every value is checked for its exact type (a JSON
``true`` is no integer) and its range before anything is computed from it: times (finite, 0 to
:data:`MAX_TS_S`), sequence numbers (0 to 2**63 - 1), texts (at most :data:`MAX_TEXT_CHARS`), array
shapes (sizes whose product is bounded, matching the frame's length exactly) and dtypes (a short
``[<>|=]KIND SIZE`` text of a bool, integer, float or complex type); what a refusal says of the message's
own values is shortened (a huge value is not echoed back).

Version rule: a newer minor version (same major) only adds optional keys, so keys this side does not
know are ignored in an envelope (or batch group) of a newer minor, and refused as malformed in one of
this side's minor or an older one, which has no such keys. :func:`request_id_of` reads the request id of
a message that could not be decoded, so that its ``malformed`` error can still say which request it answers.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from itertools import repeat
from typing import Any, cast

import numpy as np

from scanctl.errors import WireProtocolError

log = logging.getLogger(__name__)
VERSION = (1, 0)
VERSION_TEXT = f"{VERSION[0]}.{VERSION[1]}"
MAX_ENVELOPE_BYTES = 1 << 20
MAX_FRAMES = 64
MAX_PAYLOAD_BYTES = 1 << 30
#: Longest ``id``, ``re``, ``src``, ``stream``, ``run`` (characters): a name, not a payload.
MAX_TEXT_CHARS = 256
#: Latest send time ``ts`` taken (Unix s, in the year 2286); the earliest is 0.
MAX_TS_S = 1e10
#: Highest sequence number (a signed 64-bit integer holds it in any language).
MAX_SEQ = 2**63 - 1
#: Most dimensions of an array.
MAX_DIMS = 8
#: Most messages in one ``batch`` (a publisher sends at most this many, scanctl.transport.publisher.BATCH_MAX).
MAX_BATCH_MESSAGES = 512
#: The type of a message that carries several messages without binary frames (see :func:`encode_batch`).
BATCH = "batch"
_DTYPE_KINDS = "biufc"  # bool, integers, floats, complex: no objects, strings or records on the wire
_DTYPES: dict[str, np.dtype[Any]] = {}  # the dtypes seen so far, by their text
_ENVELOPE_KEYS = {"v", "type", "id", "re", "src", "ts", "stream", "seq", "run", "body"}


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


def pack_body(body: dict[str, Any], frames: list[bytes | memoryview]) -> dict[str, Any]:
    """``body`` made JSON-ready: each array replaced by its reference and its bytes appended to ``frames``.
    Raises WireProtocolError for what cannot travel (objects, strings or records in arrays, too many arrays)."""
    packed: dict[str, Any] = _pack(body, frames)
    if len(frames) > MAX_FRAMES:  # the receiver would refuse it: say so here, where the cause is
        raise WireProtocolError(f"message has {len(frames)} arrays, more than the {MAX_FRAMES} allowed")
    return packed


def encode(msg: Message) -> list[bytes | memoryview]:
    """The frames of ``msg``: the JSON envelope, then one frame per array in the body (zero-copy views)."""
    envelope, frames = envelope_of(msg)
    return [dumps_envelope(envelope), *frames]


@dataclass(slots=True)
class Group:
    """Consecutive messages of one ``type``, ``stream`` and ``run`` with sequence numbers ``seq``,
    ``seq + 1``, …: their send times ``ts`` (Unix s) and JSON-ready ``bodies`` (see :func:`pack_body`)."""

    type: str
    stream: str
    seq: int
    run: str | None
    ts: list[float]
    bodies: list[dict[str, Any]]

    def plain(self) -> dict[str, Any]:
        """As sent: the first time as ``ts`` and each message's as whole microseconds after it in ``dt_us``
        (integers encode several times faster than floats)."""
        first = self.ts[0]
        group: dict[str, Any] = {"type": self.type, "stream": self.stream, "seq": self.seq, "ts": first,
                                 "dt_us": [round((ts - first) * 1e6) for ts in self.ts], "bodies": self.bodies}
        if self.run is not None:
            group["run"] = self.run
        return group


def encode_batch(groups: Sequence[Group], src: str | None = None) -> bytes:
    """The envelope of one ``batch`` message carrying ``groups`` of messages without binary frames, in
    order: how a publisher sends a burst of events at once (docs/wire-protocol.md#batches)."""
    envelope: dict[str, Any] = {"v": VERSION_TEXT, "type": BATCH, "ts": time.time(),
                                "body": {"groups": [group.plain() for group in groups]}}
    if src is not None:
        envelope["src"] = src
    return dumps_envelope(envelope)


def unbatch(msg: Message) -> list[list[Message]]:
    """The messages a ``batch`` message carries, in order, one list per group (one stream's consecutive
    sequence numbers; ``src`` and ``v`` those of the batch), or ``[[msg]]`` for any other message.
    Raises WireProtocolError naming the malformed group (and nothing else, whatever the message holds)."""
    if msg.type != BATCH:
        return [[msg]]
    groups = msg.body.get("groups") if isinstance(msg.body, dict) else None
    if not isinstance(groups, list):
        raise WireProtocolError("batch body needs a list 'groups'")
    newer = msg.v != VERSION_TEXT and _minor_of(msg.v) > VERSION[1]  # a newer minor's group keys are ignored
    out: list[list[Message]] = []
    total = 0
    for g, group in enumerate(groups):
        try:
            kind, stream, seq, run, stamps, bodies = _group(group, newer, msg.v)
        except WireProtocolError as exc:
            raise WireProtocolError(f"batch group {g}: {exc}") from None
        n = len(bodies)
        total += n
        if total > MAX_BATCH_MESSAGES:  # a publisher never sends more: refused before any is made
            raise WireProtocolError(f"batch carries more than {MAX_BATCH_MESSAGES} messages")
        # mapped, not a comprehension: this runs for every event a subscriber gets
        out.append(list(map(Message, repeat(kind, n), bodies, repeat(None, n), repeat(None, n), repeat(msg.src, n),
                            stamps, repeat(stream, n), range(seq, seq + n), repeat(run, n), repeat(msg.v, n))))
    return out


_GROUP_KEYS = {"type", "stream", "seq", "run", "ts", "dt_us", "bodies"}


def _group(group: Any, newer: bool = False,
           v: str = VERSION_TEXT) -> tuple[str, str, int, str | None, list[float], list[dict[str, Any]]]:
    if not isinstance(group, dict):
        raise WireProtocolError("not an object")
    if not newer and not group.keys() <= _GROUP_KEYS:
        _refuse_unknown_keys("", group.keys() - _GROUP_KEYS, v)
    kind, stream, seq, run = group.get("type"), group.get("stream"), group.get("seq"), group.get("run")
    first, offsets, bodies = group.get("ts"), group.get("dt_us"), group.get("bodies")
    if type(kind) is not str or not kind or len(kind) > 64:
        raise WireProtocolError("'type' must be a non-empty string")
    if type(stream) is not str or (run is not None and type(run) is not str):
        raise WireProtocolError("'stream' (and 'run', if given) must be strings")
    for key, value in (("'stream'", stream), ("'run'", run)):
        if value is not None and len(value) > MAX_TEXT_CHARS:
            raise _bad_text(key, value)
    if type(seq) is not int:
        raise WireProtocolError("'seq' must be an integer")
    if not isinstance(bodies, list) or set(map(type, bodies)) != {dict}:
        raise WireProtocolError("'bodies' must be a non-empty list of objects")
    _check_seq("'seq'", seq, len(bodies))
    if type(first) is not float and type(first) is not int:
        raise WireProtocolError("'ts' must be a time (a number)")
    _check_ts("'ts'", first)
    if not isinstance(offsets, list) or len(offsets) != len(bodies) or set(map(type, offsets)) != {int}:
        raise WireProtocolError("'dt_us' must be a list of integers, one per body")
    earliest, latest = min(offsets), max(offsets)
    # Compared as integers first: a float of a 400-digit offset overflows.
    if earliest < -_MAX_DT_US or latest > _MAX_DT_US or first + earliest * 1e-6 < 0 or first + latest * 1e-6 > MAX_TS_S:
        raise WireProtocolError(f"'dt_us' puts a message's time outside 0 to {MAX_TS_S:g} s")
    return kind, stream, seq, run, [first + dt * 1e-6 for dt in offsets], bodies


_MAX_DT_US = int(MAX_TS_S * 1e6)


def _bad_text(what: str, value: Any) -> WireProtocolError:
    """The error for ``value``, which is not a string of at most :data:`MAX_TEXT_CHARS` characters."""
    if type(value) is not str:
        return WireProtocolError(f"{what} has the wrong type ({type(value).__name__})")
    return WireProtocolError(f"{what} is longer than {MAX_TEXT_CHARS} characters ({len(value)})")


def _check_seq(what: str, seq: int, count: int = 1) -> None:
    """WireProtocolError unless the integer ``seq`` and the ``count - 1`` numbers after it are sequence numbers."""
    if not 0 <= seq <= MAX_SEQ - (count - 1):
        raise WireProtocolError(f"{what} must be a sequence number from 0 to {MAX_SEQ} (got {_show(seq)})")


def _check_ts(what: str, ts: float) -> None:
    """WireProtocolError unless the number ``ts`` (int or float: compared exactly, never converted) is a time
    from 0 to :data:`MAX_TS_S` (Unix s). NaN cannot arrive (JSON has none); infinity (``1e999``) fails here."""
    if not 0 <= ts <= MAX_TS_S:
        raise WireProtocolError(f"{what} must be a time from 0 to {MAX_TS_S:g} s (Unix time), got {_show(ts)}")


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
        raise _unsupported(v)
    minor = VERSION[1] if v == VERSION_TEXT else _minor_of(v)
    if not envelope.keys() <= _ENVELOPE_KEYS and minor <= VERSION[1]:  # a newer minor's keys are ignored
        _refuse_unknown_keys("envelope has ", envelope.keys() - _ENVELOPE_KEYS, v)
    body = envelope.get("body", {})
    if not isinstance(body, dict):
        raise WireProtocolError("envelope 'body' must be an object")
    if len(raw) == 1 and b'"__' not in head:  # no array or special float in it: the body as parsed
        return _message(envelope, body, v)
    body = _unpack(body, raw[1:], set())
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


def _refuse_unknown_keys(what: str, unknown: Any, v: Any) -> None:
    names = sorted(unknown)
    shown = ", ".join(_clip(name) for name in names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    raise WireProtocolError(f"{what}unknown keys: {shown} (version {_clip(str(v))} has no others; "
                            f"only a newer minor version than {VERSION_TEXT} may add keys)")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters: a refusal names the value
    without echoing a megabyte of it."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's int-to-text digit limit
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= limit else f"{text[:limit - 15]}...({len(text)} characters)"


def request_id_of(frames: Sequence[bytes | memoryview | Any]) -> str | None:
    """The request id (``id``) of a message :func:`decode` refused, read best-effort from its envelope: a
    string ``id`` whenever frame 0 is still a JSON object within the size and nesting bounds (whatever its
    version, other keys or binary frames), else None. Never raises. A receiver puts it as ``re`` in the
    ``malformed`` error it answers, so the sender can tell which request was refused."""
    try:
        head = _buffer(frames[0])
        if len(head) > MAX_ENVELOPE_BYTES:
            return None
        text = bytes(head)
        _check_nesting(text)
        envelope = json.loads(text.decode("utf-8"), parse_constant=_no_constant)
    except Exception:  # noqa: BLE001 - best effort: anything unreadable has no id
        return None
    ident = envelope.get("id") if isinstance(envelope, dict) else None
    return ident if type(ident) is str and len(ident) <= MAX_TEXT_CHARS else None


def _message(envelope: dict[str, Any], body: dict[str, Any], v: str, src: str | None = None) -> Message:
    """The message of a checked envelope (keys known, version accepted) and its decoded body."""
    kind = envelope.get("type")
    if type(kind) is not str or not kind or len(kind) > 64:
        raise WireProtocolError("envelope 'type' must be a non-empty string of at most 64 characters")
    get = envelope.get
    ident, re, sender, stream, run, seq, ts = (get("id"), get("re"), get("src", src), get("stream"), get("run"),
                                               get("seq"), get("ts", 0.0))
    for key, value in (("id", ident), ("re", re), ("src", sender), ("stream", stream), ("run", run)):
        if value is not None and (type(value) is not str or len(value) > MAX_TEXT_CHARS):
            raise _bad_text(f"envelope {key!r}", value)
    if seq is not None:
        if type(seq) is not int:
            raise WireProtocolError(f"envelope 'seq' has the wrong type ({type(seq).__name__})")
        _check_seq("envelope 'seq'", seq)
    if type(ts) is not float and type(ts) is not int:
        raise WireProtocolError(f"envelope 'ts' has the wrong type ({type(ts).__name__})")
    _check_ts("envelope 'ts'", ts)
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


# -- structured values --------------------------------------------------------------------------------------
def to_plain(value: Any) -> Any:
    """Dataclasses (recursively) to dicts and enums to their values, keeping numpy arrays as they are."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


_PLAIN = (str, int, bool, type(None))


def _pack(value: Any, frames: list[bytes | memoryview]) -> Any:
    kind = type(value)
    if kind in _PLAIN:  # the common case first: exact types, no isinstance chain
        return value
    if kind is float:
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if kind is dict:
        if "__nd__" in value or "__float__" in value:
            raise WireProtocolError("'__nd__' and '__float__' are reserved keys")
        return {k if type(k) is str else str(k): _pack(v, frames) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _DTYPE_KINDS:
            raise WireProtocolError(f"cannot send arrays of dtype {value.dtype}")
        array = value if value.flags.c_contiguous else value.copy(order="C")
        frames.append(array.data.cast("B") if array.size else b"")  # the bytes, not copied
        return {"__nd__": len(frames) - 1, "dtype": array.dtype.str, "shape": list(array.shape)}
    if isinstance(value, dict):
        return _pack(dict(value), frames)
    if isinstance(value, (list, tuple)):
        return [_pack(v, frames) for v in value]
    if isinstance(value, np.generic):
        return _pack(value.item(), frames)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float):  # subclasses of the plain types
        return _pack(float(value), frames)
    if isinstance(value, (str, int)):
        return value
    raise WireProtocolError(f"cannot send a {type(value).__name__}")


def _unpack(value: Any, frames: list[memoryview], used: set[int]) -> Any:
    if isinstance(value, dict):
        if "__nd__" in value:
            return _array(value, frames, used)
        if "__float__" in value:
            text = value["__float__"]
            if len(value) != 1 or type(text) is not str or text not in ("nan", "inf", "-inf"):
                raise WireProtocolError(f"bad special float {_show(value)} (only {{'__float__': 'nan' | 'inf' | "
                                        f"'-inf'}})")
            return float(text)
        return {k: _unpack(v, frames, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, frames, used) for v in value]
    return value


def _array(ref: dict[str, Any], frames: list[memoryview], used: set[int]) -> np.ndarray:
    index, shape = ref.get("__nd__"), ref.get("shape")
    if type(index) is not int or not 0 <= index < len(frames) or index in used:
        raise WireProtocolError(f"array refers to binary frame {_show(index)}, which is missing or already used")
    used.add(index)
    dtype = _dtype(ref.get("dtype"))
    count = _count(shape)
    frame = frames[index]
    if count * dtype.itemsize != len(frame):
        raise WireProtocolError(f"array of shape {shape} and dtype {dtype.str} needs {count * dtype.itemsize} bytes, "
                                f"frame {index} has {len(frame)}")
    return np.frombuffer(frame, dtype=dtype, count=count).reshape(shape)


#: A dtype as numpy's ``dtype.str`` writes one of a bool, integer, float or complex type: ``<f8``, ``|u1``.
_DTYPE_TEXT = re.compile(r"[<>|=]?[biufc][1-9][0-9]?")


def _dtype(text: Any) -> np.dtype[Any]:
    """The numeric dtype ``text`` names (e.g. ``"<f8"``); WireProtocolError for anything else."""
    dtype = _DTYPES.get(text) if type(text) is str else None
    if dtype is not None:
        return dtype
    if type(text) is not str or _DTYPE_TEXT.fullmatch(text) is None:
        raise WireProtocolError(f"array dtype {_show(text)} is not a numeric dtype")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):  # a size the kind has not ("f3", "b2")
        raise WireProtocolError(f"array dtype {text!r} is not a numeric dtype") from None
    if dtype.kind not in _DTYPE_KINDS:
        raise WireProtocolError(f"array dtype {text!r} is not a numeric dtype")
    if len(_DTYPES) < 64:
        _DTYPES[text] = dtype
    return dtype


def _count(shape: Any) -> int:
    """The element count of an array of ``shape``, a list of at most :data:`MAX_DIMS` integers from 0 whose
    product — taking a 0 as 1, since numpy still needs the others to fit — is at most
    :data:`MAX_PAYLOAD_BYTES`. WireProtocolError for anything else (``true`` is no size)."""
    if type(shape) is not list or len(shape) > MAX_DIMS:
        raise WireProtocolError(f"array shape {_show(shape)} is not a list of at most {MAX_DIMS} sizes")
    count = bound = 1
    for n in shape:
        if type(n) is not int or not 0 <= n <= MAX_PAYLOAD_BYTES:
            raise WireProtocolError(f"array shape {_show(shape)} is not a list of sizes (integers from 0)")
        count *= n
        bound *= n or 1
        if bound > MAX_PAYLOAD_BYTES:
            raise WireProtocolError(f"array shape {_show(shape)} is larger than {MAX_PAYLOAD_BYTES} elements")
    return count


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


_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})")


def _minor_of(v: str) -> int:
    """The minor version of a ``"MAJOR.MINOR"`` text of this side's major; WireProtocolError for anything else."""
    match = _VERSION.fullmatch(v) if type(v) is str else None
    if match is None or int(match[1]) != VERSION[0]:
        raise _unsupported(v)
    return int(match[2])


def _unsupported(v: Any) -> WireProtocolError:
    return WireProtocolError(f"unsupported protocol version {_show(v)} (this side speaks {VERSION_TEXT})")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")
