"""The simulated magnet room across processes: the gradient simulator's programs reach the RF simulator
through ``world=tcp://…`` (PUSH to PULL, the wire's packing); a bad world URL is a ConfigError; the RF
simulator places the scan's scene (phantom, field of view, matrix, noise) as its URL would have it."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from scanctl.simulators.rf import SimulatedRF
from scanctl.simulators.world import World, WorldReceiver, WorldSender, receiver, sender

from scanctl.config import profile as profiles
from scanctl.errors import ConfigError, DriverError
from scanctl.hw.interfaces import Scene
from scanctl.hw.program import GradientProgram
from scanctl.hw.registry import open_subsystem

PROFILE = profiles.load()


def free_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def program(t0_s: float, scale: float = 1.0) -> GradientProgram:
    t = np.array([t0_s, t0_s + 1e-3, t0_s + 2e-3])
    g = np.array([0.0, 1000.0, 0.0]) * scale
    return GradientProgram(t0_s, t0_s + 2e-3, (t, t.copy(), np.zeros(0)), (g, -g, np.zeros(0)))


def same(a: GradientProgram | None, b: GradientProgram) -> bool:
    return (a is not None and (a.t0_s, a.t1_s) == (b.t0_s, b.t1_s)
            and all(np.array_equal(x, y) for x, y in zip(a.t_s + a.g_hz_per_m, b.t_s + b.g_hz_per_m, strict=True)))


def test_a_world_across_sockets_delivers_programs_in_order():
    endpoint = free_endpoint()
    rx, tx = receiver(endpoint), sender(endpoint)
    assert isinstance(rx, WorldReceiver) and isinstance(tx, WorldSender)
    rx.open()
    tx.open()
    try:
        sent = [program(0.1 * i + 1 / 3, scale=i + 1) for i in range(5)]  # start times no decimal gives exactly
        for p in sent:
            tx.post_gradient(p)
        assert all(same(rx.take_gradient(p.t0_s), p) for p in reversed(sent))
        assert rx.take_gradient(sent[0].t0_s, wait_s=0) is None  # taken: gone
        # clear() drops what was sent before it, not what comes after (one connection keeps the order).
        tx.post_gradient(program(5.0))
        tx.clear()
        tx.post_gradient(program(6.0))
        assert same(rx.take_gradient(6.0), program(6.0))
        assert rx.take_gradient(5.0, wait_s=0) is None
    finally:
        tx.close()
        rx.close()


def test_take_waits_a_bounded_time_and_once_only_while_no_sender_is_heard():
    endpoint = free_endpoint()
    rx = WorldReceiver(endpoint, wait_s=0.3)
    rx.open()
    tx = WorldSender(endpoint)
    try:
        t0 = time.monotonic()
        assert rx.take_gradient(1.0) is None
        assert 0.25 < time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        assert rx.take_gradient(2.0) is None  # nobody sends: no second wait
        assert time.monotonic() - t0 < 0.1
        tx.post_gradient(program(3.0))  # a sender after all: once it is heard, takes wait again
        deadline = time.monotonic() + 10
        while (taken := rx.take_gradient(3.0)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert same(taken, program(3.0))
        delayed = subprocess.Popen([sys.executable, "-c", SEND_LATER, endpoint])
        try:
            assert same(rx.take_gradient(4.0, wait_s=20.0), program(4.0))
        finally:
            delayed.wait(timeout=30)
    finally:
        tx.close()
        rx.close()


SEND_LATER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from scanctl.hw.program import GradientProgram
    from scanctl.simulators.world import WorldSender
    time.sleep(0.2)
    t = np.array([4.0, 4.001, 4.002]); g = np.array([0.0, 1000.0, 0.0])
    tx = WorldSender(sys.argv[1])
    tx.post_gradient(GradientProgram(4.0, 4.002, (t, t.copy(), np.zeros(0)), (g, -g, np.zeros(0))))
    time.sleep(0.5)  # let it go out before the socket closes
    tx.close()
""")

GRADIENT_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    from scanctl.config import profile
    from scanctl.hw.program import GradientProgram
    from scanctl.hw.registry import open_subsystem
    gradient = open_subsystem("gradient", "sim://?world=" + sys.argv[1], profile.load())
    gradient.connect()
    gradient.arm()
    for i in range(3):
        t = np.array([0.0, 1e-3, 2e-3]) + 0.01 * i
        g = np.array([0.0, 1000.0, 0.0]) * (i + 1)
        gradient.load(GradientProgram(t[0], t[-1], (t, t.copy(), np.zeros(0)), (g, -g, np.zeros(0))))
    print("loaded", flush=True)
    sys.stdin.read()  # until the test has taken them
    gradient.close()
""")


def test_the_gradient_simulator_of_another_process_reaches_the_rf_simulator():
    endpoint = free_endpoint()
    rf = open_subsystem("rf", f"sim://?physics=0&world={endpoint}", PROFILE)
    rf.connect()  # binds the world
    gradient = subprocess.Popen([sys.executable, "-c", GRADIENT_PROCESS, endpoint], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
    try:
        assert gradient.stdout is not None and gradient.stdout.readline().strip() == b"loaded"
        world = rf._world
        assert isinstance(world, WorldReceiver)
        for i in range(3):
            assert same(world.take_gradient(0.01 * i, wait_s=10.0), program(0.01 * i, scale=i + 1))
    finally:
        gradient.communicate(b"", timeout=30)
        rf.close()
    assert gradient.returncode == 0


@pytest.mark.parametrize("world, says", [
    ("tcp://127.0.0.1", "port"),
    ("tcp://127.0.0.1:notaport", "port"),
    ("tcp://127.0.0.1:70000", "port"),
    ("tcp://10.1.2.3:5000", "not a loopback address"),
    ("udp://127.0.0.1:5000", "unknown scheme"),
    ("ipc://", "needs a path"),
    ("", "must be a name"),
])
def test_bad_world_urls_are_config_errors(world, says):
    for kind in ("gradient", "rf"):
        with pytest.raises(ConfigError, match=f"option world.*{says}"):
            open_subsystem(kind, f"sim://?world={world}", PROFILE)
    with pytest.raises(ConfigError, match=says):
        receiver(world)


def test_a_world_address_in_use_is_a_config_error():
    endpoint = free_endpoint()
    first = WorldReceiver(endpoint)
    first.open()
    try:
        with pytest.raises(ConfigError, match=f"world {endpoint}: cannot bind"):
            second = WorldReceiver(endpoint)
            second.open()
    finally:
        first.close()
    again = WorldReceiver(endpoint)  # released on close: it can be bound again at once
    again.open()
    again.close()


def test_named_worlds_stay_in_process():
    assert sender("room-7") is World.named("room-7") is receiver("room-7")


def test_place_a_scene_as_the_url_would():
    rf = open_subsystem("rf", "sim://?physics=0&noise=0.5", PROFILE)
    rf.connect()
    try:
        rf.place(Scene(fov_m=0.2, matrix=64, noise_std=0.01, phantom="shepp_logan"))
        assert (rf.fov_m, rf.matrix, rf.noise_std, rf.phantom_name) == (0.2, 64, 0.5, "shepp_logan")  # URL wins
        rf.place(Scene())  # nothing given: back to the URL's and the defaults
        assert (rf.fov_m, rf.matrix, rf.noise_std) == (0.256, 128, 0.5)
        with pytest.raises(ConfigError, match="fov=-1"):
            rf.place(Scene(fov_m=-1))
        with pytest.raises(ConfigError, match="matrix=0"):
            rf.place(Scene(matrix=0))
        rf.arm()
        with pytest.raises(DriverError, match="scan is under way"):
            rf.place(Scene(fov_m=0.3))
    finally:
        rf.close()


def test_a_new_scene_rebuilds_the_phantom_and_every_scan_restarts_the_noise():
    rf = open_subsystem("rf", "sim://", PROFILE)
    assert isinstance(rf, SimulatedRF)
    rf.connect()
    rf.place(Scene(matrix=16, fov_m=0.1, noise_std=0.1))
    spins = rf._spins
    assert spins is not None and rf.matrix == 16
    rf.arm()
    first = rf._rng.standard_normal(4)
    rf.abort()
    rf.place(Scene(matrix=16, fov_m=0.1, noise_std=0.1))  # the same scene: nothing changes
    assert rf._spins is spins
    rf.arm()  # the same scene scanned again: the same noise
    assert np.array_equal(rf._rng.standard_normal(4), first)
    rf.abort()
    rf.place(Scene(matrix=16, fov_m=0.12, noise_std=0.1))
    rf.arm()
    assert rf._spins is not spins and np.array_equal(rf._rng.standard_normal(4), first)
    rf.close()


def test_a_scene_that_cannot_be_made_leaves_the_old_one():
    rf = open_subsystem("rf", "sim://?matrix=16", PROFILE)
    rf.connect()
    try:
        spins = rf._spins
        with pytest.raises(ConfigError, match="phantom file not found"):
            rf.place(Scene(phantom="/nonexistent/phantom.npz", fov_m=0.3))
        assert (rf.phantom_name, rf.fov_m, rf._spins) == ("shepp_logan", 0.256, spins)
    finally:
        rf.close()
