"""The second-order shim reaches the simulated physics (docs/prescan.md): the gradient simulator's second-order
shim channels travel with its programs to the simulated magnet room (in one process and across processes) and
add their field to the spins' off-resonance, so that a second-order B0 error (``b0_2nd``) is cancelled by an
equal and opposite shim, and the prescan's shim, which fits the in-plane second-order terms where the profile
has second-order shim channels, takes the residual field over the object down at least 10x."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scanctl.simulators.physics.field import second_order_field_hz
from scanctl.simulators.world import World, WorldReceiver, WorldSender

from scanctl.config import profile as profiles
from scanctl.engine.executor import Scanner
from scanctl.engine.run import place_scene
from scanctl.errors import SafetyLimitError
from scanctl.hw.interfaces import Scene
from scanctl.hw.program import SECOND_ORDER_TERMS, GradientProgram
from scanctl.hw.registry import open_subsystem
from scanctl.prescan import Prescan
from scanctl.services.driver_service import DriverService

N = 32
LINE = "max_slew_t_per_m_per_s = { x = 200.0, y = 200.0, z = 200.0 }"
#: A test profile with in-plane second-order shims of 1 mT/m² (42.6 kHz/m², 4.26 Hz/cm²); the default has none.
SECOND_ORDER_PROFILE = profiles.parse(
    profiles.resources.files("scanctl.profiles").joinpath("default.toml").read_text().replace(
        LINE, LINE + "\nshim_second_order_max_mt_per_m2 = { x2y2 = 1.0, xy = 1.0, z2 = 1.0 }"))
#: The injected error (Hz/cm²: z2, zx, zy, x2y2, xy): 1.5 and -1 Hz/cm², 150 and 200 Hz at 10 cm.
B0_2ND = (0.0, 0.0, 0.0, 1.5, -1.0)


def open_scanner(rf_url: str, profile=SECOND_ORDER_PROFILE, gradient_url: str = "sim://") -> Scanner:
    scanner = Scanner.from_profile(profile, {"rf": rf_url, "gradient": gradient_url, "table": "sim://"})
    scanner.connect()
    place_scene(scanner.rf, Scene(matrix=N, fov_m=0.256))
    return scanner


def field_seen_hz(scanner: Scanner) -> np.ndarray:
    """The off-resonance the spins see at each voxel of the object (Hz): their own map (B0 error, the phantom's
    own, the second-order terms and the shim's) plus the linear shim, a static gradient, at the slab's centre."""
    vox = scanner.rf._spins._vox
    shim = scanner.gradient.adjustments()
    return vox["df"] + shim["x"] * vox["x"] + shim["y"] * vox["y"]


def test_the_profile_and_the_program_name_the_same_second_order_channels():
    assert SECOND_ORDER_TERMS == profiles.SECOND_ORDER
    assert SECOND_ORDER_PROFILE.adjustments.shim_channels == ("x", "y", "z", "z2", "x2y2", "xy")


def test_a_program_refuses_an_unknown_or_non_finite_shim_channel():
    empty = np.zeros(0)
    with pytest.raises(SafetyLimitError, match="no channel 'q2'"):
        GradientProgram(0.0, 1e-3, (empty,) * 3, (empty,) * 3, {"q2": 1.0})
    with pytest.raises(SafetyLimitError, match=r"shim_hz_per_m2\[xy\] is nan"):
        GradientProgram(0.0, 1e-3, (empty,) * 3, (empty,) * 3, {"xy": float("nan")})
    with pytest.raises(SafetyLimitError, match="not a number"):
        GradientProgram(0.0, 1e-3, (empty,) * 3, (empty,) * 3, {"xy": "1"})


@pytest.fixture
def services():
    """Driver services started by a test, stopped after it."""
    started: list[DriverService] = []
    yield started
    for service in started:
        service.stop()


def gradient_url(impl: str, services: list) -> str:
    """The gradient system: the simulator in this process (``sim``) or behind a driver service, reached through
    the proxy over TCP (``zmq``); either posts to this process's default world, where the RF simulator is."""
    if impl == "sim":
        return "sim://"
    service = DriverService("gradient", open_subsystem("gradient", "sim://", SECOND_ORDER_PROFILE), "tcp://127.0.0.1:*")
    threading.Thread(target=service.serve_forever, daemon=True).start()
    services.append(service)
    return service.endpoint


@pytest.mark.parametrize("impl", ["sim", "zmq"])
def test_an_equal_and_opposite_second_order_shim_cancels_the_error(impl, services):
    scanner = open_scanner("sim://?b0_2nd=" + ",".join(map(str, B0_2ND)), gradient_url=gradient_url(impl, services))
    try:
        with pytest.raises(SafetyLimitError, match="x2y2"):  # beyond the supply, through the proxy too
            scanner.gradient.set_shim({"x2y2": 1e6})
        before = field_seen_hz(scanner)
        x, y = scanner.rf._spins._vox["x"], scanner.rf._spins._vox["y"]
        assert np.allclose(before, second_order_field_hz({"x2y2": 1.5e4, "xy": -1e4}, x, y, 0 * x))
        scanner.gradient.set_shim({"x2y2": -1.5e4, "xy": 1e4})
        assert scanner.gradient.adjustments()["x2y2"] == -1.5e4
        Prescan(scanner).acquire(_fid)  # any scan: its programs carry the shim to the physics
        assert np.sqrt(np.mean(before**2)) > 20.0
        assert np.abs(field_seen_hz(scanner)).max() < 1e-9
        scanner.gradient.set_shim({"x2y2": 0.0, "xy": 0.0})  # and back: the error is there again
        Prescan(scanner).acquire(_fid)
        assert np.allclose(field_seen_hz(scanner), before)
    finally:
        scanner.close()


def _fid(profile, **params):
    from scanctl.prescan.sequences import fid

    return fid(profile, samples=64, **params)


@pytest.mark.parametrize("b0_2nd", [B0_2ND, (2.0, 0.0, 0.0, 1.5, -1.0)], ids=["in-plane", "with-z2"])
def test_prescan_shims_a_second_order_field_down_tenfold(b0_2nd):
    """The in-plane map fits x2y2, xy and (where the hardware has the coil) z2, whose field on the transverse
    plane is -(x² + y²)/2 times it."""
    scanner = open_scanner("sim://?b0_2nd=" + ",".join(map(str, b0_2nd)) + "&b0=40&noise=5")
    try:
        before = float(np.sqrt(np.mean(field_seen_hz(scanner) ** 2)))
        result = Prescan(scanner).run(["frequency", "shim"])
        assert result.ok, [(s.step, s.outcome, s.message) for s in result.steps]
        shim = next(s for s in result.steps if s.step == "shim")
        rms_after = float(np.sqrt(np.mean(field_seen_hz(scanner) ** 2)))  # (df is net of the frequency offset)
        assert before > 30.0
        assert rms_after * 10 <= before, (before, rms_after, result.shim)
        # What the prescan measured says so too (a third B0 map after the shim).
        assert shim.values["rms_after_hz"] * 10 <= shim.values["rms_before_hz"], shim.values
        assert result.shim["x2y2"] == pytest.approx(-1e4 * b0_2nd[3], rel=0.05)
        assert result.shim["xy"] == pytest.approx(-1e4 * b0_2nd[4], rel=0.05)
        assert result.shim["z2"] == pytest.approx(-1e4 * b0_2nd[0], abs=0.05e4)
    finally:
        scanner.close()


def _posted(sender, receiver, program: GradientProgram) -> GradientProgram | None:
    sender.post_gradient(program)
    return receiver.take_gradient(program.t0_s, wait_s=5.0)


def test_a_second_order_shim_travels_with_the_program_across_processes():
    """The gradient simulator's programs reach a world across sockets with the shim's field (the wire packs
    the program's ``shim_hz_per_m2``); in one process the program itself is handed over."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    rx, tx = WorldReceiver(endpoint), WorldSender(endpoint)
    rx.open()
    tx.open()
    gradient = open_subsystem("gradient", f"sim://?world={endpoint}", SECOND_ORDER_PROFILE)
    try:
        t = np.array([0.0, 1e-3])
        program = GradientProgram(0.0, 1e-3, (t, t, t), (np.zeros(2),) * 3, {"xy": 25.0})
        assert _posted(tx, rx, program).shim_hz_per_m2 == {"xy": 25.0}
        gradient.connect()
        gradient.set_shim({"x2y2": 1234.5, "x": 10.0})
        gradient.arm()
        gradient.load(GradientProgram(0.0, 1e-3, (t, t, t), (np.zeros(2),) * 3))
        got = rx.take_gradient(0.0, wait_s=5.0)
        assert got is not None and got.shim_hz_per_m2 == {"x2y2": 1234.5}
        assert np.allclose(got.sample(np.array([0.5e-3]))[0], 10.0)  # the linear shim, in the waveform
    finally:
        gradient.close()
        tx.close()
        rx.close()
    world = World.named("test-second-order")
    same = GradientProgram(0.0, 1e-3, (t, t, t), (np.zeros(2),) * 3, {"z2": -3.0})
    world.post_gradient(same)
    assert world.take_gradient(0.0).shim_hz_per_m2 == {"z2": -3.0}
