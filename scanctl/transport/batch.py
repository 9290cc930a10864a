"""Batches: several event messages (without binary frames) sent as one ``batch`` message, so that a burst of
events costs a subscriber a couple of microseconds each (docs/wire-protocol.md#batches).

A batch's body is ``{"groups": [GROUP, ...]}``, a group a stretch of consecutive messages of one stream:
``type``, ``stream``, ``seq`` (the first's), ``run``, ``ts`` (the first's send time) and ``dt_us`` (each
message's send time in whole microseconds after it), ``bodies``. :func:`unbatch` raises WireProtocolError,
and nothing else, for a malformed one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from scanctl.errors import WireProtocolError
from scanctl.transport.values import (
    MAX_TEXT_CHARS,
    MAX_TS_S,
    VERSION,
    VERSION_TEXT,
    bad_text,
    check_seq,
    check_ts,
    minor_of,
    refuse_unknown_keys,
)
from scanctl.transport.wire import Message, dumps_envelope

#: Most messages in one ``batch`` (a publisher sends at most this many, scanctl.transport.publisher.BATCH_MAX).
MAX_BATCH_MESSAGES = 512
#: The type of a message that carries several messages without binary frames (see :func:`encode_batch`).
BATCH = "batch"

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
    newer = msg.v != VERSION_TEXT and minor_of(msg.v) > VERSION[1]  # a newer minor's group keys are ignored
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
        refuse_unknown_keys("", group.keys() - _GROUP_KEYS, v)
    kind, stream, seq, run = group.get("type"), group.get("stream"), group.get("seq"), group.get("run")
    first, offsets, bodies = group.get("ts"), group.get("dt_us"), group.get("bodies")
    if type(kind) is not str or not kind or len(kind) > 64:
        raise WireProtocolError("'type' must be a non-empty string")
    if type(stream) is not str or (run is not None and type(run) is not str):
        raise WireProtocolError("'stream' (and 'run', if given) must be strings")
    for key, value in (("'stream'", stream), ("'run'", run)):
        if value is not None and len(value) > MAX_TEXT_CHARS:
            raise bad_text(key, value)
    if type(seq) is not int:
        raise WireProtocolError("'seq' must be an integer")
    if not isinstance(bodies, list) or set(map(type, bodies)) != {dict}:
        raise WireProtocolError("'bodies' must be a non-empty list of objects")
    check_seq("'seq'", seq, len(bodies))
    if type(first) is not float and type(first) is not int:
        raise WireProtocolError("'ts' must be a time (a number)")
    check_ts("'ts'", first)
    if not isinstance(offsets, list) or len(offsets) != len(bodies) or set(map(type, offsets)) != {int}:
        raise WireProtocolError("'dt_us' must be a list of integers, one per body")
    earliest, latest = min(offsets), max(offsets)
    # Compared as integers first: a float of a 400-digit offset overflows.
    if earliest < -_MAX_DT_US or latest > _MAX_DT_US or first + earliest * 1e-6 < 0 or first + latest * 1e-6 > MAX_TS_S:
        raise WireProtocolError(f"'dt_us' puts a message's time outside 0 to {MAX_TS_S:g} s")
    return kind, stream, seq, run, [first + dt * 1e-6 for dt in offsets], bodies


_MAX_DT_US = int(MAX_TS_S * 1e6)

