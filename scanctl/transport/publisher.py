"""The control server's outgoing streams: events and ADC data, numbered and sent.

:meth:`Publisher.publish` may be called from any thread. It packs the body at once (so a body that cannot
travel fails in the caller) and stamps the time.

- An **event** is queued without taking a lock (a deque's append is atomic; a lock handed between the
  callers and the sender cost more than the rest of a publish). The sender thread numbers the events in
  queue order (each stream's next sequence number) and sends them: one with binary frames on its own, a
  run of them without frames as one ``batch`` message (docs/wire-protocol.md#batches), whose groups name
  the stream, run and first sequence number once for each stretch of one stream. A lone event goes out as
  itself, so at a calm rate every event is its own ZeroMQ message; in a burst one batch carries many, which
  is what lets ten subscribers keep up with tens of thousands of events a second.
- A **data** message (ADC data, ``data=True``) is numbered and sent in the caller's thread at once, its
  arrays zero-copy from numpy's memory above :data:`COPY_THRESHOLD_BYTES`: a hand-off to the sender thread
  cost more than the send itself (measured with benchmarks/bench_zmq.py, 262 kB messages: 38–71% of raw
  pyzmq's throughput through the sender thread with copied frames, 71–101% sent at once zero-copy).

A stream is published one way or the other, never both (its numbers would not be sent in order). The
sockets are used under one lock, as they may be one socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from scanctl.transport.batch import Group, encode_batch
from scanctl.transport.wire import MAX_ENVELOPE_BYTES, VERSION_TEXT, dumps_envelope, pack_body

log = logging.getLogger(__name__)

#: Most messages in one batch.
BATCH_MAX = 512
#: Frames smaller than this are copied into ZeroMQ; bigger ones are sent from numpy's memory (pyzmq's
#: default), so a data message's arrays must not be written to after it is published.
COPY_THRESHOLD_BYTES = 1 << 16


@dataclass(slots=True)
class _Item:
    """One message on its way: its body already packed, its arrays in ``frames``; ``seq`` is given by the
    sender thread."""

    socket: zmq.Socket[Any]
    type: str
    stream: str
    run: str | None
    ts: float
    body: dict[str, Any]
    frames: list[Any]
    seq: int = 0


class Publisher:
    """Publish on ``events`` (and ADC data on ``data``, which may be the same socket) as ``src``."""

    def __init__(self, events: zmq.Socket[Any], data: zmq.Socket[Any], src: str) -> None:
        self._events, self._data, self.src = events, data, src
        for socket in (events, data):
            socket.copy_threshold = COPY_THRESHOLD_BYTES
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()  # taken to use a socket (and to number data messages)
        self._queue: deque[_Item] = deque()
        self._wake = threading.Event()
        self._idle = False  # the sender found the queue empty and waits for _wake
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"{src}-publisher", daemon=True)
        self._thread.start()

    def publish(self, stream: str, body: dict[str, Any], *, run: str | None = None, data: bool = False) -> None:
        """Send ``body`` on ``stream`` with the stream's next sequence number: on the data socket at once
        if ``data``, else queued for the sender thread. Raises WireProtocolError if the body cannot be sent."""
        frames: list[Any] = []
        packed = pack_body(body, frames)
        # Type "data" for everything on the data socket (a subscriber filters on it), "event" for the rest.
        item = _Item(self._data if data else self._events, "data" if data else "event", stream, run, time.time(),
                     packed, frames)
        if data:
            with self._lock:  # numbered and sent in one go: several threads may publish data
                self._number([item])
                self._transmit(item.socket, [self._envelope(item), *frames])
            return
        self._queue.append(item)
        if self._idle:  # after the append: an idle sender either sees the item or is woken here
            self._idle = False
            self._wake.set()

    def seqs(self) -> dict[str, int]:
        """The last sequence number sent on each stream."""
        return dict(self._seq)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, then stop the sender thread (the sockets stay open: their owner closes them)."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)

    # -- the sender thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        queue = self._queue
        while True:
            items: list[_Item] = []
            while queue and len(items) < 64 * BATCH_MAX:
                items.append(queue.popleft())
            if items:
                self._number(items)
                self._send(items)
                continue
            if self._closing:
                return
            self._wake.clear()
            self._idle = True
            if not queue and not self._closing:  # (re-checked after idle is set: see publish)
                self._wake.wait()
            self._idle = False

    def _number(self, items: list[_Item]) -> None:
        seqs = self._seq
        for item in items:
            item.seq = seqs[item.stream] = seqs.get(item.stream, 0) + 1

    def _send(self, items: list[_Item]) -> None:
        run: list[_Item] = []
        for item in items:
            if run and (item.frames or item.socket is not run[0].socket or len(run) == BATCH_MAX):
                self._send_run(run)
                run = []
            if item.frames:
                self._send_frames(item.socket, [self._envelope(item), *item.frames])
            else:
                run.append(item)
        if run:
            self._send_run(run)

    def _envelope(self, item: _Item) -> bytes:
        envelope = {"v": VERSION_TEXT, "type": item.type, "ts": item.ts, "body": item.body, "src": self.src,
                    "stream": item.stream, "seq": item.seq}
        if item.run is not None:
            envelope["run"] = item.run
        return dumps_envelope(envelope)

    def _send_run(self, run: list[_Item]) -> None:
        if len(run) == 1:
            self._send_frames(run[0].socket, [self._envelope(run[0])])
            return
        groups: list[Group] = []
        for item in run:  # a stream's items are queued in sequence order: a stretch of one is consecutive
            last = groups[-1] if groups else None
            if last is None or (last.stream, last.type, last.run) != (item.stream, item.type, item.run):
                groups.append(Group(item.type, item.stream, item.seq, item.run, [item.ts], [item.body]))
            else:
                last.ts.append(item.ts)
                last.bodies.append(item.body)
        head = encode_batch(groups, self.src)
        if len(head) > MAX_ENVELOPE_BYTES:  # too big for a receiver to accept: send it in halves
            half = len(run) // 2
            self._send_run(run[:half])
            self._send_run(run[half:])
            return
        self._send_frames(run[0].socket, [head])

    def _send_frames(self, socket: zmq.Socket[Any], frames: list[Any]) -> None:
        with self._lock:
            self._transmit(socket, frames)

    def _transmit(self, socket: zmq.Socket[Any], frames: list[Any]) -> None:
        try:
            socket.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:
            log.warning("%s: message not published (subscribers will see a gap): %s", self.src, exc)
