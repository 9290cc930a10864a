"""Simulators paced to wall-clock time (``realtime=1``): sync(t) returns no earlier than t after start, an
abort ends the wait at once, and a whole scan takes its sequence's duration."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from scanctl.config import profile as profiles
from scanctl.engine.session import run_scan
from scanctl.hw.program import GradientProgram
from scanctl.hw.registry import open_subsystem

GRE = "protocols/gre_2d.toml"


def running_gradient(url: str):
    gradient = open_subsystem("gradient", url, profiles.load(None))
    gradient.connect()
    gradient.arm()
    t = np.array([0.0, 0.4])
    gradient.load(GradientProgram(0.0, 0.4, (t, t, t), (np.zeros(2), np.zeros(2), np.zeros(2))))
    gradient.start()
    return gradient


def test_sync_waits_for_the_wall_clock():
    gradient = running_gradient("sim://?realtime=1")
    t0 = time.monotonic()
    gradient.sync(0.1)
    gradient.sync(0.25)
    assert 0.25 <= time.monotonic() - t0 < 0.4
    assert gradient.status().time_s == pytest.approx(0.25)


def test_by_default_the_simulator_runs_as_fast_as_it_can():
    gradient = running_gradient("sim://")
    t0 = time.monotonic()
    gradient.sync(0.4)
    assert time.monotonic() - t0 < 0.1


def test_abort_ends_a_real_time_wait_at_once():
    gradient = running_gradient("sim://?realtime=1")
    threading.Timer(0.05, gradient.abort).start()
    t0 = time.monotonic()
    with pytest.raises(Exception, match="cannot sync"):
        gradient.sync(0.4)
    assert time.monotonic() - t0 < 0.2


def test_a_real_time_scan_takes_its_duration(tmp_path):
    overrides = {"gradient": "sim://?realtime=1", "rf": "sim://?physics=0&realtime=1"}
    report = run_scan(GRE, profiles.load(None), tmp_path / "out", overrides=overrides, reconstruct=False)
    assert report.ok
    duration_s = report.timings["real_time_factor"] * report.timings["scan_wall_s"]
    assert 0.9 < report.timings["real_time_factor"] <= 1.0 and duration_s > 1.0
