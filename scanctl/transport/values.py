"""What a value on the wire may be (docs/wire-protocol.md): the checks of versions, names, times and sequence
numbers that the envelope (:mod:`scanctl.transport.wire`) and batches (:mod:`scanctl.transport.batch`) share,
and message bodies with their arrays packed into binary frames and unpacked from them.

Every check raises :class:`WireProtocolError` and nothing else, whatever the value: a receiver that catches
it must never die of a message. What a refusal says of the message's own values is shortened (:func:`show`).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from scanctl.errors import WireProtocolError

VERSION = (2, 2)
VERSION_TEXT = f"{VERSION[0]}.{VERSION[1]}"
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

_DTYPE_KINDS = "biufc"  # bool, integers, floats, complex: no objects, strings or records on the wire
_DTYPES: dict[str, np.dtype[Any]] = {}  # the dtypes seen so far, by their text


def bad_text(what: str, value: Any) -> WireProtocolError:
    """The error for ``value``, which is not a string of at most :data:`MAX_TEXT_CHARS` characters."""
    if type(value) is not str:
        return WireProtocolError(f"{what} has the wrong type ({type(value).__name__})")
    return WireProtocolError(f"{what} is longer than {MAX_TEXT_CHARS} characters ({len(value)})")


def check_seq(what: str, seq: int, count: int = 1) -> None:
    """WireProtocolError unless the integer ``seq`` and the ``count - 1`` numbers after it are sequence numbers."""
    if not 0 <= seq <= MAX_SEQ - (count - 1):
        raise WireProtocolError(f"{what} must be a sequence number from 0 to {MAX_SEQ} (got {show(seq)})")


def check_ts(what: str, ts: float) -> None:
    """WireProtocolError unless the number ``ts`` (int or float: compared exactly, never converted) is a time
    from 0 to :data:`MAX_TS_S` (Unix s). NaN cannot arrive (JSON has none); infinity (``1e999``) fails here."""
    if not 0 <= ts <= MAX_TS_S:
        raise WireProtocolError(f"{what} must be a time from 0 to {MAX_TS_S:g} s (Unix time), got {show(ts)}")


def refuse_unknown_keys(what: str, unknown: Any, v: Any) -> None:
    names = sorted(unknown)
    shown = ", ".join(clip(name) for name in names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    raise WireProtocolError(f"{what}unknown keys: {shown} (version {clip(str(v))} has no others; "
                            f"only a newer minor version than {VERSION_TEXT} may add keys)")


def clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters: a refusal names the value
    without echoing a megabyte of it."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's int-to-text digit limit
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= limit else f"{text[:limit - 15]}...({len(text)} characters)"


def pack_body(body: dict[str, Any], frames: list[bytes | memoryview]) -> dict[str, Any]:
    """``body`` made JSON-ready: each array replaced by its reference and its bytes appended to ``frames``.
    Raises WireProtocolError for what cannot travel (objects, strings or records in arrays, too many arrays)."""
    packed: dict[str, Any] = _pack(body, frames)
    if len(frames) > MAX_FRAMES:  # the receiver would refuse it: say so here, where the cause is
        raise WireProtocolError(f"message has {len(frames)} arrays, more than the {MAX_FRAMES} allowed")
    return packed

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


def unpack_body(value: Any, frames: list[memoryview], used: set[int]) -> Any:
    if isinstance(value, dict):
        if "__nd__" in value:
            return _array(value, frames, used)
        if "__float__" in value:
            text = value["__float__"]
            if len(value) != 1 or type(text) is not str or text not in ("nan", "inf", "-inf"):
                raise WireProtocolError(f"bad special float {show(value)} (only {{'__float__': 'nan' | 'inf' | "
                                        f"'-inf'}})")
            return float(text)
        return {k: unpack_body(v, frames, used) for k, v in value.items()}
    if isinstance(value, list):
        return [unpack_body(v, frames, used) for v in value]
    return value


def _array(ref: dict[str, Any], frames: list[memoryview], used: set[int]) -> np.ndarray:
    index, shape = ref.get("__nd__"), ref.get("shape")
    if type(index) is not int or not 0 <= index < len(frames) or index in used:
        raise WireProtocolError(f"array refers to binary frame {show(index)}, which is missing or already used")
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
        raise WireProtocolError(f"array dtype {show(text)} is not a numeric dtype")
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
        raise WireProtocolError(f"array shape {show(shape)} is not a list of at most {MAX_DIMS} sizes")
    count = bound = 1
    for n in shape:
        if type(n) is not int or not 0 <= n <= MAX_PAYLOAD_BYTES:
            raise WireProtocolError(f"array shape {show(shape)} is not a list of sizes (integers from 0)")
        count *= n
        bound *= n or 1
        if bound > MAX_PAYLOAD_BYTES:
            raise WireProtocolError(f"array shape {show(shape)} is larger than {MAX_PAYLOAD_BYTES} elements")
    return count

_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})")


def minor_of(v: str) -> int:
    """The minor version of a ``"MAJOR.MINOR"`` text of this side's major; WireProtocolError for anything else."""
    match = _VERSION.fullmatch(v) if type(v) is str else None
    if match is None or int(match[1]) != VERSION[0]:
        raise unsupported(v)
    return int(match[2])


def unsupported(v: Any) -> WireProtocolError:
    return WireProtocolError(f"unsupported protocol version {show(v)} (this side speaks {VERSION_TEXT})")

