"""The wire format of every ZeroMQ message scanctl sends (documented in docs/wire-protocol.md).

A message is a ZeroMQ multipart message: frame 0 is the **envelope**, a UTF-8 JSON object; frames
1..n are **binary payloads** (numpy arrays, sent zero-copy, never pickled) that the envelope's body refers
to as ``{"__nd__": i, "dtype": "<f8", "shape": [...]}`` (``i`` counts from 0 over the binary frames).

Envelope keys: ``v`` (protocol version ``"MAJOR.MINOR"``; a different major is refused), ``type``
(message type), ``id`` (request id, for requests), ``re`` (the request id a reply answers), ``src``
(sender id), ``ts`` (sender's Unix time, s), ``stream``/``seq`` (event stream name and its sequence
number), ``run`` (run id), ``body`` (an object). Everything that is not valid is a
:class:`WireProtocolError` saying what is wrong; decoding never executes anything from the message.

Version rule: a newer minor version (same major) only adds optional keys, so keys this side does not
know are ignored in an envelope (or batch group) of a newer minor, and refused as malformed in one of
this side's minor or an older one, which has no such keys. :func:`request_id_of` reads the request id of
a message that could not be decoded, so that its ``malformed`` error can still say which request it answers.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from itertools import repeat
from typing import Any

import numpy as np

from scanctl.errors import WireProtocolError
from scanctl.interfaces import Acquisition, AcquisitionBatch

VERSION = (1, 0)
VERSION_TEXT = f"{VERSION[0]}.{VERSION[1]}"
MAX_ENVELOPE_BYTES = 1 << 20
MAX_FRAMES = 64
MAX_PAYLOAD_BYTES = 1 << 30
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
    Raises WireProtocolError naming the malformed group."""
    if msg.type != BATCH:
        return [[msg]]
    groups = msg.body.get("groups")
    if not isinstance(groups, list):
        raise WireProtocolError("batch body needs a list 'groups'")
    newer = msg.v != VERSION_TEXT and _minor_of(msg.v) > VERSION[1]  # a newer minor's group keys are ignored
    out: list[list[Message]] = []
    for g, group in enumerate(groups):
        try:
            kind, stream, seq, run, stamps, bodies = _group(group, newer, msg.v)
        except WireProtocolError as exc:
            raise WireProtocolError(f"batch group {g}: {exc}") from None
        n = len(bodies)  # mapped, not a comprehension: this runs for every event a subscriber gets
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
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise WireProtocolError("'type' must be a non-empty string")
    if type(stream) is not str or (run is not None and type(run) is not str):
        raise WireProtocolError("'stream' (and 'run', if given) must be strings")
    if type(seq) is not int:
        raise WireProtocolError("'seq' must be an integer")
    if not isinstance(bodies, list) or set(map(type, bodies)) != {dict}:
        raise WireProtocolError("'bodies' must be a non-empty list of objects")
    if type(first) is not float and type(first) is not int:
        raise WireProtocolError("'ts' must be a time (a number)")
    if not isinstance(offsets, list) or len(offsets) != len(bodies) or set(map(type, offsets)) != {int}:
        raise WireProtocolError("'dt_us' must be a list of integers, one per body")
    return kind, stream, seq, run, [first + dt * 1e-6 for dt in offsets], bodies


def dumps_envelope(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()


def decode(frames: Sequence[bytes | memoryview | Any]) -> Message:
    """Decode frames (``bytes`` or pyzmq ``Frame``s). Raises WireProtocolError naming what is wrong."""
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
    return _message(envelope, _unpack(body, raw[1:], set()), v)


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
    raise WireProtocolError(f"{what}unknown keys: {', '.join(sorted(unknown))} (version {v} has no others; "
                            f"only a newer minor version than {VERSION_TEXT} may add keys)")


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
    return ident if type(ident) is str else None


def _message(envelope: dict[str, Any], body: dict[str, Any], v: str, src: str | None = None) -> Message:
    """The message of a checked envelope (keys known, version accepted) and its decoded body."""
    kind = envelope.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise WireProtocolError("envelope 'type' must be a non-empty string")
    get = envelope.get
    ident, re, sender, stream, run, seq, ts = (get("id"), get("re"), get("src", src), get("stream"), get("run"),
                                               get("seq"), get("ts", 0.0))
    for key, value in (("id", ident), ("re", re), ("src", sender), ("stream", stream), ("run", run)):
        if value is not None and type(value) is not str:
            raise WireProtocolError(f"envelope {key!r} has the wrong type ({type(value).__name__})")
    if seq is not None and type(seq) is not int:
        raise WireProtocolError(f"envelope 'seq' has the wrong type ({type(seq).__name__})")
    if type(ts) is not float and type(ts) is not int:
        raise WireProtocolError(f"envelope 'ts' has the wrong type ({type(ts).__name__})")
    return Message(kind, body, ident, re, sender, float(ts), stream, seq, run, v)


def reply_to(request: Message, type: str = "reply", body: dict[str, Any] | None = None,
             src: str | None = None) -> Message:
    """A reply that answers ``request`` (``re`` = its id)."""
    return Message(type=type, body=body or {}, re=request.id, src=src)


def error_reply(request_id: str | None, code: str, message: str, src: str | None = None) -> Message:
    """The error every malformed or refused request gets: ``{"code", "message"}``."""
    return Message(type="error", body={"code": code, "message": message}, re=request_id, src=src)


# -- acquisitions --------------------------------------------------------------------------------------------
def pack_acquisitions(acquisitions: Sequence[Acquisition]) -> dict[str, Any]:
    """A batch of acquisitions as columns: six binary frames (and one or two per label) for any number of
    them (docs/wire-protocol.md#acquisition-batches).

    ``index``, ``block`` (int64), ``start_s``, ``dwell_s`` (float64), ``shape`` (int64 ``(n, 2)``: channels,
    samples), ``data`` (complex64, every acquisition's samples one after the other), ``labels`` (name → int64
    column) and ``unlabelled`` (name → bool column, only for a label some acquisitions lack). An
    :class:`AcquisitionBatch` is in columns already: its own are returned."""
    if isinstance(acquisitions, AcquisitionBatch):
        return acquisitions.columns
    n = len(acquisitions)
    arrays = [a.data for a in acquisitions]
    shape = np.array([d.shape for d in arrays], dtype=np.int64).reshape(n, 2)
    data = (np.concatenate(arrays, axis=None).astype(np.complex64, copy=False) if n else np.zeros(0, np.complex64))
    label_dicts = [a.labels for a in acquisitions]
    names = sorted({name for labels in label_dicts for name in labels})
    columns, unlabelled = {}, {}
    for name in names:
        values = [labels.get(name) for labels in label_dicts]
        if None in values:
            unlabelled[name] = np.array([v is None for v in values], dtype=bool)
            values = [0 if v is None else v for v in values]
        columns[name] = np.array(values, dtype=np.int64)
    return {
        "index": np.array([a.index for a in acquisitions], dtype=np.int64),
        "block": np.array([a.block for a in acquisitions], dtype=np.int64),
        "start_s": np.array([a.start_s for a in acquisitions], dtype=np.float64),
        "dwell_s": np.array([a.dwell_s for a in acquisitions], dtype=np.float64),
        "shape": shape, "data": data, "labels": columns, "unlabelled": unlabelled,
    }


def check_acquisitions(batch: Any) -> int:
    """Check a packed batch of acquisitions (its columns agree with each other) without unpacking it;
    returns how many acquisitions it holds. A receiver that works on the columns (e.g. all the samples as
    one array, ``batch["data"]``) needs no more. Raises WireProtocolError naming what does not fit."""
    if not isinstance(batch, dict):
        raise WireProtocolError("acquisitions must be an object of columns")
    for key, kind in (("index", "i"), ("block", "i"), ("start_s", "f"), ("dwell_s", "f"), ("shape", "i"),
                      ("data", "c")):
        column = batch.get(key)
        if not isinstance(column, np.ndarray) or column.dtype.kind != kind:
            raise WireProtocolError(f"acquisitions: {key!r} must be an array of kind {kind!r}")
    n = len(batch["index"])
    if any(len(batch[key]) != n for key in ("block", "start_s", "dwell_s")) or batch["shape"].shape != (n, 2):
        raise WireProtocolError(f"acquisitions: columns disagree on the count ({n} indices)")
    shape = batch["shape"]
    if (shape < 0).any():
        raise WireProtocolError("acquisitions: negative channel or sample count")
    needed = int((shape[:, 0] * shape[:, 1]).sum())
    if needed != batch["data"].size:
        raise WireProtocolError(f"acquisitions: shapes need {needed} samples, data has {batch['data'].size}")
    labels, unlabelled = batch.get("labels", {}), batch.get("unlabelled", {})
    if not isinstance(labels, dict) or not isinstance(unlabelled, dict) or not set(unlabelled) <= set(labels):
        raise WireProtocolError("acquisitions: 'labels' and 'unlabelled' must be objects of columns")
    for name, column in (*labels.items(), *unlabelled.items()):
        if not isinstance(column, np.ndarray) or column.shape != (n,) or column.dtype.kind not in "ib":
            raise WireProtocolError(f"acquisitions: label column {name!r} must be {n} integers")
    return n


def unpack_acquisitions(batch: Any) -> AcquisitionBatch:
    """The acquisitions :func:`pack_acquisitions` packed, checked, as a batch (their ``data`` views the
    received frame; objects are made when asked for). Raises WireProtocolError naming what does not fit."""
    check_acquisitions(batch)
    return AcquisitionBatch(batch)


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
        if "__nd__" in value:
            raise WireProtocolError("'__nd__' is reserved")
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
            if text not in ("nan", "inf", "-inf"):
                raise WireProtocolError(f"bad special float {text!r}")
            return float(text)
        return {k: _unpack(v, frames, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, frames, used) for v in value]
    return value


def _array(ref: dict[str, Any], frames: list[memoryview], used: set[int]) -> np.ndarray:
    index, dtype_text, shape = ref.get("__nd__"), ref.get("dtype"), ref.get("shape")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(frames) or index in used:
        raise WireProtocolError(f"array refers to binary frame {index!r}, which is missing or already used")
    used.add(index)
    dtype = _DTYPES.get(dtype_text) if isinstance(dtype_text, str) else None
    if dtype is None:
        try:
            dtype = np.dtype(dtype_text) if isinstance(dtype_text, str) and len(dtype_text) <= 8 else None
        except TypeError:
            dtype = None
        if dtype is not None and dtype.kind in _DTYPE_KINDS and len(_DTYPES) < 64 and isinstance(dtype_text, str):
            _DTYPES[dtype_text] = dtype
    if dtype is None or dtype.kind not in _DTYPE_KINDS:
        raise WireProtocolError(f"array dtype {dtype_text!r} is not a numeric dtype")
    if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise WireProtocolError(f"array shape {shape!r} is not a list of sizes")
    count = math.prod(shape)
    frame = frames[index]
    if count * dtype.itemsize != len(frame):
        raise WireProtocolError(f"array of shape {shape} and dtype {dtype.str} needs {count * dtype.itemsize} bytes, "
                                f"frame {index} has {len(frame)}")
    return np.frombuffer(frame, dtype=dtype, count=count).reshape(shape)


def _buffer(frame: Any) -> memoryview:
    if isinstance(frame, (bytes, bytearray)):
        return memoryview(frame)
    if isinstance(frame, memoryview):
        return frame.cast("B") if frame.format != "B" else frame
    buffer = getattr(frame, "buffer", None)  # a pyzmq Frame received with copy=False
    if buffer is not None:
        return memoryview(buffer)
    raise WireProtocolError(f"frame of type {type(frame).__name__} is not bytes")


_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})")


def _minor_of(v: str) -> int:
    """The minor version of a ``"MAJOR.MINOR"`` text of this side's major; WireProtocolError for anything else."""
    match = _VERSION.fullmatch(v)
    if match is None or int(match[1]) != VERSION[0]:
        raise _unsupported(v)
    return int(match[2])


def _unsupported(v: Any) -> WireProtocolError:
    return WireProtocolError(f"unsupported protocol version {v!r} (this side speaks {VERSION_TEXT})")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")
