"""Which plane the simulated RF system images (docs/phantom.md): a scan's first excitation poses the
phantom on the plane (or the stack of parallel planes) it selects, and an excitation of a plane none of the
posed spin systems covers (a three-plane localizer's other orientations, a slice first excited later) poses
one more; each system plays its excitations and the pulses and windows after them, and every segment's
gradients. A mixin of :class:`scanctl.simulators.rf.SimulatedRF` (it uses that class's scene and spin
systems).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from scanctl.hw.program import ADCProgram, GradientProgram, RFProgram

log = logging.getLogger("scanctl.simulators.rf")

#: Posed spin systems kept for the next scan (a three-plane localizer poses three; each holds its own maps).
MAX_POSED = 8


@dataclasses.dataclass
class PosedPlanes:
    """A posed spin system and the planes it images (``placement.Selection``: one, or a stack's)."""

    spins: Any
    planes: list[Any]

    def covers(self, sel: Any) -> bool:
        return any(plane.same_plane(sel) for plane in self.planes)


class PlaneImaging:
    """Plane placement of :class:`scanctl.simulators.rf.SimulatedRF`."""

    # Provided by SimulatedRF.
    _spins: Any
    _base_spins: Any
    _posed: dict[tuple[float, ...], tuple[Any, list[float]]]
    _planes: list[PosedPlanes]
    _current: int
    _awaiting_plane: bool
    _queue: Any
    _world: Any
    phantom_name: str
    matrix: int
    fov_m: float
    b0_t: float
    isochromats: int | None
    b0_gradient_hz_per_m: tuple[float, ...]

    if TYPE_CHECKING:  # SimulatedRF's and Adjustable's: declared for the type checker only (no MRO stubs)
        def _to_scanner(self) -> Any: ...
        def _make_spins(self, phantom: Any = None, isochromats: int | None = None) -> Any: ...
        def _transmitted(self, rf: RFProgram) -> RFProgram: ...

    def _set_spins(self, spins: Any) -> None:
        """The scene's spin system, imaged until a scan's first pulse selects another plane."""
        self._spins = self._base_spins = spins
        self._posed.clear()

    def _place_for(self, gradient: GradientProgram, rf: RFProgram,
                   adc: ADCProgram) -> list[tuple[Any, list[int], list[int]]] | None:
        """Which spin system plays which of the segment's pulses and windows (docs/phantom.md).

        At a scan's first RF pulse (every spin still at equilibrium) the plane it selects is posed (the 2D
        default for a transverse slice at the isocentre, else the Shepp–Logan phantom on a grid in that plane),
        or the planes of a multi-slice scan, whose other slices the same pulse at other carrier offsets selects
        in the segments queued so far (``buffer_s`` ahead). An excitation of a plane none of the posed systems
        covers (another orientation: a three-plane localizer; a slice outside the stack) poses one more system
        there, at equilibrium then. Each excitation belongs to its plane's system, every other pulse and every
        window to the latest excitation's. None: ``self._spins`` plays the whole segment (one system), else
        ``(spins, pulses, windows)`` for every posed system, each played with the segment's gradients (its own
        pulses and windows, maybe none: its clock and gradient moments stay the scan's)."""
        from scanctl.simulators.physics import placement

        if self._spins is None:
            return None
        programmed = gradient
        if rf.n_pulses:
            gradient = self._field_gradient(gradient)
        if rf.n_pulses and self._awaiting_plane:
            self._awaiting_plane = False
            if self.phantom_name == "shepp_logan":  # a phantom file is imaged where it is
                first = next(((p, sel) for p in range(rf.n_pulses)
                              if (sel := placement.selection_of(gradient, rf, p)) is not None), None)
                if first is not None:
                    self._pose(first[1], gradient, rf, first[0])
                else:  # non-selective: a volume if the scan encodes one, else the scene's phantom as it is
                    self._pose_volume(programmed, rf, adc)
        if not self._planes or (len(self._planes) == 1 and rf.n_pulses == 0):
            return None
        pulse_owner, window_owner = self._owners(gradient, rf, adc)
        self._spins = self._planes[self._current].spins
        if len(self._planes) == 1:
            return None
        return [(planes.spins, [p for p, o in enumerate(pulse_owner) if o == g],
                 [w for w, o in enumerate(window_owner) if o == g]) for g, planes in enumerate(self._planes)]

    def _field_gradient(self, gradient: GradientProgram) -> GradientProgram:
        """The gradient that decides which plane a pulse selects: the program's (shims included) and the
        magnet's own linear inhomogeneity (``b0_grad``), as the spins see them (a shim that cancels it leaves
        the slice where the sequence put it)."""
        if not any(self.b0_gradient_hz_per_m):
            return gradient
        from scanctl.simulators.physics.moments import with_static_gradient

        gx, gy, gz = self.b0_gradient_hz_per_m
        return with_static_gradient(gradient, (gx, gy, gz))

    def _owners(self, gradient: GradientProgram, rf: RFProgram, adc: ADCProgram) -> tuple[list[int], list[int]]:
        """The posed system (index into ``self._planes``) of each pulse and each window of the segment, posing
        a system for an excitation of a plane none covers; ``self._current`` becomes the latest excitation's."""
        from scanctl.simulators.physics import placement

        found = placement.pulse_selections(gradient, rf, thickness=False)  # enough to tell planes apart
        order = np.argsort(rf.start_s, kind="stable").tolist()
        at_start = self._current  # windows before the segment's first pulse: the latest excitation's
        owners = []  # in time order
        for p in order:
            sel = found[p]
            if sel is not None:
                owner = next((g for g, planes in enumerate(self._planes) if planes.covers(sel)), None)
                if owner is None:
                    full = placement.selection_of(gradient, rf, p)  # with its thickness
                    owner = self._pose(full, gradient, rf, p) if full is not None else None
                self._current = self._current if owner is None else owner
            owners.append(self._current)
        pulse_owner = [0] * rf.n_pulses
        for p, owner in zip(order, owners, strict=True):
            pulse_owner[p] = owner
        latest = np.searchsorted(rf.start_s[order], adc.start_s, side="right") - 1  # the latest pulse before
        window_owner = [owners[k] if k >= 0 else at_start for k in latest.tolist()]
        return pulse_owner, window_owner

    def _pose(self, first: Any, gradient: GradientProgram, rf: RFProgram, p: int) -> int:
        """Pose a spin system for the plane ``first`` pulse ``p`` of the segment selects, or the stack of
        planes that pulse and the same pulse at other carrier offsets select (this one's later pulses and the
        queued segments'); the index of the new entry of ``self._planes``, now the current one."""
        from scanctl.simulators.physics import placement

        later = placement.pulses_of(rf, [q for q in range(rf.n_pulses) if rf.start_s[q] >= rf.start_s[p]])
        queued = [program for program, _ in self._queue]
        peek = getattr(self._world, "peek_gradient", None)  # the queued segments' gradients, where known
        ahead = [peek(program.t0_s) if peek else None for program in queued]
        gradients = [gradient, *(None if g is None else self._field_gradient(g) for g in ahead)]
        positions = placement.stack_positions(first, [later, *queued], gradients)
        spins, positions = self._spins_for(first, positions)
        if self._planes:
            log.info("rf: a plane first excited at %.6f s, %d posed before it in this scan", rf.start_s[p],
                     len(self._planes))
        self._planes.append(PosedPlanes(spins, [dataclasses.replace(first, position_m=q) for q in positions]))
        self._current = len(self._planes) - 1
        return self._current

    def _pose_volume(self, gradient: GradientProgram, rf: RFProgram, adc: ADCProgram) -> None:
        """Pose the 3D phantom on the voxel grid the scan encodes when its excitations select no plane and its
        windows (this segment's and the queued ones', ``buffer_s`` ahead) move along every axis
        (``placement.encoded_voxel``; pypulseq's ``write_mprage.py``); else leave the scene's phantom."""
        from scanctl.simulators.physics import placement

        peek = getattr(self._world, "peek_gradient", None)
        segments = [(gradient, rf, adc), *((peek(program.t0_s) if peek else None, program, windows)
                                           for program, windows in self._queue)]
        voxel = placement.encoded_voxel(segments)
        if voxel is None:
            return
        key = (0.0, 0.0, 0.0, *np.round(voxel, 9).tolist())  # no plane's key: a plane's normal is a unit vector
        hit = self._posed.get(key)
        if hit is not None:
            hit[0].reset()
            spins = hit[0]
        else:
            phantom = placement.volume_phantom(voxel, self.fov_m, self.b0_t, self._to_scanner())
            spins = self._make_spins(phantom)
            log.info("rf: imaging %s", phantom.source)
            self._remember(key, (spins, []))
        self._planes.append(PosedPlanes(spins, []))
        self._current = len(self._planes) - 1

    def _remember(self, key: tuple[float, ...], posed: tuple[Any, list[float]]) -> None:
        """Keep a posed system for the next scan (at most :data:`MAX_POSED`, the oldest dropped)."""
        if len(self._posed) >= MAX_POSED:
            self._posed.pop(next(iter(self._posed)))
        self._posed[key] = posed

    def _spins_for(self, first: Any, positions: list[float]) -> tuple[Any, list[float]]:
        """The spin system imaging ``first``'s plane, or the stack of ``positions`` along its normal (a
        multi-slice scan), and the positions it covers (cached: a scan repeated images the same)."""
        from scanctl.simulators.physics import placement

        to_scanner = self._to_scanner()
        if len(positions) > 1 and placement.stack_planes(first, positions) is None:
            log.warning("rf: the scan selects %d planes along %s (%s mm) that are not one stack of thin, evenly "
                        "spaced slices: each is posed on its own when first excited", len(positions),
                        np.round(first.normal, 3).tolist(), ", ".join(f"{p * 1e3:.2f}" for p in positions))
            positions = [first.position_m]
        if len(positions) == 1 and placement.is_default(first, to_scanner):
            return self._base_spins, positions
        # The key names what the system images (the planes it covers), so that a hit is that very plane.
        key = (*np.round(first.normal, 6).tolist(), *np.round(positions, 6).tolist(), round(first.thickness_m, 4))
        hit = self._posed.get(key)
        if hit is not None:
            hit[0].reset()
            return hit
        isochromats = None
        if len(positions) > 1:
            phantom = placement.stacked_phantom(first, positions, self.matrix, self.fov_m, self.b0_t, to_scanner)
            isochromats = self.isochromats or placement.STACK_ISOCHROMATS
        else:
            phantom = placement.posed_phantom(first, self.matrix, self.fov_m, self.b0_t, to_scanner)
        assert phantom is not None  # a stack that passed stack_planes, or a single plane, is always posed
        spins = self._make_spins(phantom, isochromats)
        log.info("rf: imaging %s", phantom.source)
        self._remember(key, (spins, positions))
        return spins, positions

    def _play(self, gradient: GradientProgram, rf: RFProgram, adc: ADCProgram) -> list[Any]:
        """The segment's windows, each ``(channels, samples)``, from the spin system(s) imaging it."""
        from scanctl.simulators.physics import placement

        parts = self._place_for(gradient, rf, adc)
        transmitted = self._transmitted(rf)
        if parts is None:
            return self._spins.play(gradient, transmitted, adc)
        signals: list[Any] = [None] * adc.n_windows
        for spins, pulses, windows in parts:
            own = spins.play(gradient, placement.pulses_of(transmitted, pulses), placement.windows_of(adc, windows))
            for w, signal in zip(windows, own, strict=True):
                signals[w] = signal
        return signals

    def _every_spin_system(self) -> list[Any]:
        """The scene's spin system and every posed one cached for other planes (each once)."""
        found = {id(x): x for x in (self._spins, self._base_spins, *(spins for spins, _ in self._posed.values()))
                 if x is not None}
        return list(found.values())
