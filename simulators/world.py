"""The simulated magnet room: what the simulators of one process share.

The RF simulator's receiver needs the gradients that actually played to compute the MR signal; in a
real scanner physics couples them, here the gradient simulator posts every program it accepts to the
``World`` of its name (``sim://?world=NAME``, default ``default``) and the RF simulator takes them from
there. With a real gradient system (a hardware-in-the-loop rig) nothing is posted and the RF simulator
receives without spatial encoding, which it logs once.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from scanctl.program import GradientProgram


class World:
    _worlds: ClassVar[dict[str, World]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name
        self._gradients: dict[float, GradientProgram] = {}
        self._mutex = threading.Lock()

    @classmethod
    def named(cls, name: str) -> World:
        with cls._lock:
            world = cls._worlds.get(name)
            if world is None:
                world = cls._worlds[name] = World(name)
            return world

    def post_gradient(self, program: GradientProgram) -> None:
        with self._mutex:
            self._gradients[program.t0_s] = program

    def take_gradient(self, t0_s: float) -> GradientProgram | None:
        """The gradient program that starts at ``t0_s`` (removed from the world), if one was posted."""
        with self._mutex:
            return self._gradients.pop(t0_s, None)

    def clear(self) -> None:
        with self._mutex:
            self._gradients.clear()
