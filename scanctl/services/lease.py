"""Who controls the scanner: one client at a time, its control lapsing after a silence.

Only the holder may command; anyone may observe. A holder silent for longer than ``timeout_s`` (no
command, not even ``status``) may be taken over without ``force``: a console that died does not hold the
scanner. Control is held by a client's id (with CurveZMQ, its name and key; see docs/server.md).
"""

from __future__ import annotations

import time


class Lease:
    """The control lease (see the module docstring); driven from the server's loop thread only."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.holder: str | None = None
        self.since = 0.0  # Unix time it was taken
        self._seen = 0.0  # monotonic time of the holder's last command

    def heard(self, client: str) -> None:
        """A command came from ``client``: the holder's silence starts again."""
        if client == self.holder:
            self._seen = time.monotonic()

    def silent_s(self) -> float | None:
        """How long the holder has said nothing (s); None without a holder."""
        return None if self.holder is None else time.monotonic() - self._seen

    def take(self, client: str, force: bool) -> tuple[str | None, bool] | None:
        """``client`` takes control. Returns None if it held it already, else ``(previous holder, lapsed)``.
        Raises PermissionError saying who holds it when another client does, has not lapsed and ``force`` is
        not given."""
        lapsed = False
        if self.holder not in (None, client):
            silent = time.monotonic() - self._seen
            lapsed = silent > self.timeout_s
            if not force and not lapsed:
                since = time.strftime("%H:%M:%S", time.localtime(self.since))
                raise PermissionError(f"{self.holder!r} has control (since {since}, last heard {silent:.1f} s ago; "
                                      f"it lapses after {self.timeout_s:g} s of silence); take_control with force "
                                      "to take it over")
        self._seen = time.monotonic()
        if self.holder == client:
            return None
        previous, self.holder, self.since = self.holder, client, time.time()
        return previous, lapsed

    def release(self) -> None:
        self.holder = None
