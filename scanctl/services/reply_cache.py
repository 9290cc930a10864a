"""The control server's memory of its replies, so that a retried command is answered without running twice.

Keyed by (client, request id); each entry keeps a fingerprint of the request, so an id reused for a
different command is told apart from a retry (and never answered with the first command's reply). Bounded
in entries and in bytes over all clients together: however many clients or names a peer makes up, the
cache never holds more than :data:`MAX_ENTRIES` replies or :data:`MAX_BYTES` of them, the oldest forgotten
first. Replies are kept encoded (the frames sent), so their size is known exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

MAX_ENTRIES = 4096
MAX_BYTES = 32 << 20


def fingerprint(body: dict[str, Any]) -> bytes:
    """A digest of a request's body (its command and arguments)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ReplyCache:
    """Replies by (client, request id), and the requests still running; see the module docstring."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._replies: OrderedDict[tuple[str, str], tuple[bytes, list[bytes]]] = OrderedDict()
        self._pending: dict[tuple[str, str], bytes] = {}  # requests whose reply follows (worker commands)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._replies)

    def seen(self, client: str, request_id: str, print_: bytes) -> list[bytes] | bool | None:
        """For a request arriving: its cached reply frames (a retry of an answered request), True for a
        retry of one still running (its reply follows), False for an id already used for a different
        request, None for a new request."""
        key = (client, request_id)
        cached = self._replies.get(key)
        if cached is not None:
            return cached[1] if cached[0] == print_ else False
        pending = self._pending.get(key)
        if pending is not None:
            return pending == print_
        return None

    def running(self, client: str, request_id: str, print_: bytes) -> None:
        """The request is being carried out; its reply follows (:meth:`remember`)."""
        if len(self._pending) < self.max_entries:  # at most one worker command runs: this never fills
            self._pending[(client, request_id)] = print_

    def remember(self, client: str, request_id: str, print_: bytes | None, frames: list[bytes]) -> None:
        """Keep the reply ``frames`` sent for the request (its ``print_``; None: the one it was running with)."""
        key = (client, request_id)
        pending = self._pending.pop(key, None)
        print_ = print_ if print_ is not None else pending
        size = sum(len(f) for f in frames)
        if print_ is None or not frames or size > self.max_bytes // 8:  # not kept: a retry runs it again
            return
        old = self._replies.pop(key, None)
        if old is not None:
            self.bytes -= sum(len(f) for f in old[1])
        self._replies[key] = (print_, frames)
        self.bytes += size
        while len(self._replies) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self._replies.popitem(last=False)
            self.bytes -= sum(len(f) for f in dropped)
