"""The contract suites (:mod:`scanctl.testing`), run against every implementation of each interface, and
what only the simulators promise beyond them.

``IMPLEMENTATIONS`` names how a subsystem is reached: ``sim`` is the simulator in-process, ``zmq`` the
same simulator behind a driver service, reached through the proxy driver over a real TCP socket. The
table's serial driver runs the table suite over a real pty (``serial-pty``) and over TCP
(``serial-socket``) to the controller simulator process (``scanctl sim table``), and behind a driver
service (``serial-zmq``: the proxy driver, over ZeroMQ, to the serial driver, over a pty, to the
controller simulator). Each is one subclass of a suite below, whose ``make`` is ``_open``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from scanctl.config import profile as profiles
from scanctl.errors import SubsystemFault
from scanctl.hw.interfaces import SubsystemState
from scanctl.hw.program import GradientProgram
from scanctl.hw.registry import open_subsystem
from scanctl.services.driver_service import DriverService
from scanctl.testing import (
    GradientContract,
    RFAdjustmentsContract,
    RFContract,
    SequencerFaults,
    ShimContract,
    TableContract,
    TableFaults,
    contract_segments,
    load_ahead,
)
from tests.table_sim import start_sim, stop_sim
from tests.test_prescan_second_order import SECOND_ORDER_PROFILE

PROFILE = profiles.load()
IMPLEMENTATIONS = ["sim", "zmq"]
WIRE = ["serial-pty", "serial-socket", "serial-zmq"]  # the serial table driver to the controller simulator
TABLES = IMPLEMENTATIONS + WIRE
SIM_URLS = {"gradient": "sim://", "rf": "sim://?physics=0", "table": "sim://"}
_services: list[DriverService] = []
_sims: list = []


@pytest.fixture(autouse=True)
def _stop_services():
    yield
    while _services:
        _services.pop().stop()
    while _sims:
        stop_sim(_sims.pop())


def _open(kind, impl, profile=PROFILE, **extra):
    url = SIM_URLS[kind]
    options = "&".join(f"{k}={v}" for k, v in extra.items())
    if impl in WIRE:
        proc, wire_url = start_sim(options, tcp=impl == "serial-socket")
        _sims.append(proc)
        local = open_subsystem(kind, wire_url, profile)
        if impl != "serial-zmq":
            return local
    else:
        local = open_subsystem(kind, url + ("&" if "?" in url else "?") + options if options else url, profile)
    if impl == "sim":
        return local
    service = DriverService(kind, local, "tcp://127.0.0.1:*")
    threading.Thread(target=service.serve_forever, daemon=True).start()
    _services.append(service)
    return open_subsystem(kind, service.endpoint, profile)


# -- the contract suites, once per implementation ----------------------------------------------------------------
#: The table the suites drive: limits the serial controller simulator is given too (its wire carries them).
TABLE_OPTIONS = {"min_mm": -100, "max_mm": 800, "speed_mm_s": 100, "accel_mm_s2": 1000}


class _Implementation:
    """``make`` for one implementation (``impl``) of the suite's kind, with ``options`` of its own."""

    impl = "sim"
    options: dict[str, Any] = {}
    kind: str
    profile = PROFILE

    def make(self, **options: Any) -> Any:
        return _open(self.kind, self.impl, self.profile, **{**self.options, **options})


class TestSimGradient(_Implementation, SequencerFaults, ShimContract, GradientContract):
    pass


class TestZmqGradient(_Implementation, SequencerFaults, ShimContract, GradientContract):
    impl = "zmq"


class TestSimGradientSecondOrderShim(_Implementation, ShimContract, GradientContract):
    """The shim suite on a profile with second-order shim coils (the default has none)."""

    profile = SECOND_ORDER_PROFILE


class TestZmqGradientSecondOrderShim(_Implementation, ShimContract, GradientContract):
    profile = SECOND_ORDER_PROFILE
    impl = "zmq"


class TestSimRF(_Implementation, SequencerFaults, RFAdjustmentsContract, RFContract):
    pass


class TestZmqRF(_Implementation, SequencerFaults, RFAdjustmentsContract, RFContract):
    impl = "zmq"


class TestSimTable(_Implementation, TableFaults, TableContract):
    options = TABLE_OPTIONS


class TestZmqTable(TestSimTable):
    impl = "zmq"


class TestSerialPtyTable(TestSimTable):
    impl = "serial-pty"


class TestSerialSocketTable(TestSimTable):
    impl = "serial-socket"


class TestSerialZmqTable(TestSimTable):
    impl = "serial-zmq"


# -- beyond the contracts: what the simulators promise (in-process, and through a driver service) ------------------


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_gradient_heats_up_and_trips_on_over_temperature(url):
    sub = _open("gradient", url, tau_s=1, kelvin_per_watt=0.01, max_temp_c=100, buffer_s=10)
    sub.connect()
    sub.arm()
    limit = np.array(PROFILE.max_gradient_hz_per_m())
    t = np.array([0.0, 1e-3, 4.999, 5.0])
    shape = np.array([0.0, 0.9, 0.9, 0.0])
    program = GradientProgram(0.0, 5.0, (t, t, t), tuple(shape * limit[a] for a in range(3)))
    sub.load(program)
    sub.start()
    status = sub.sync(0.5)
    # 0.81 of full power (20 kW) * 0.01 K/W = 162 K steady rise; after 0.5 s with tau 1 s: 162 (1 - e^-0.5)
    assert status.telemetry["coil_temperature_c"] == pytest.approx(20 + 162 * (1 - np.exp(-0.5)), rel=0.02)
    with pytest.raises(SubsystemFault, match="over-temperature"):
        sub.sync(5.0)
    status = sub.status()
    assert status.state is SubsystemState.FAULT
    assert status.time_s == pytest.approx(-np.log(1 - 80 / 162), abs=0.02)  # when 100 °C is crossed


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_rf_noise_is_at_the_asked_level(url):
    sub = _open("rf", url, noise=0.5, seed=3)
    sub.connect()
    sub.arm()
    segments = contract_segments(PROFILE)
    loaded, batches = load_ahead(sub, segments, 0, 0.0), []
    sub.start()
    while loaded < len(segments):
        playhead = sub.sync(segments[loaded - 1].t1_s).time_s
        batches.extend(sub.acquisitions())
        loaded = load_ahead(sub, segments, loaded, playhead)
    sub.sync(segments[-1].t1_s)
    received = [*batches, *sub.acquisitions()]
    noise = np.concatenate([a.data.ravel() for a in received])
    dwell = np.unique([a.dwell_s for a in received])
    assert noise.size == 64 * 64 and dwell.size == 1
    # physics off: noise only, at the asked level for a 10 µs dwell, scaled as 1/sqrt(dwell)
    assert np.std(noise) == pytest.approx(0.5 * np.sqrt(10e-6 / dwell[0]), rel=0.05)


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_table_moves_on_a_trapezoidal_profile(url):
    table = _open("table", url, min_mm=-100, max_mm=800, speed_mm_s=50, accel_mm_s2=100)
    table.connect()
    table.home()
    table.move_to(500.0)
    assert table.wait_idle().time_s == pytest.approx(500 / 50 + 50 / 100)


@pytest.mark.parametrize("url", IMPLEMENTATIONS)
def test_a_table_move_too_short_for_its_clock_still_ends_at_the_target(url):
    """1e-296 mm takes 1e-148 s, which the clock cannot add: the table must still be at the target after it
    (Hypothesis found it in the safety state machine: 'table at the scan position' failed)."""
    table = _open("table", url)
    table.connect()
    table.home()
    for target in (1.0, 1.0718464944043452e-296):
        table.move_to(target)
        table.wait_idle()
    assert table.position_mm() == 1.0718464944043452e-296
    table.move_to(0.0)
    assert table.wait_idle().state is SubsystemState.STANDBY and table.position_mm() == 0.0
