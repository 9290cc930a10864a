"""scanctl.hw.registry: subsystems chosen by URL, with clear errors for anything unknown."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from scanctl.simulators.gradient import SimulatedGradient
from scanctl.simulators.table import SimulatedTable

from scanctl.config import profile as profiles
from scanctl.errors import ConfigError
from scanctl.hw.registry import GROUP, INTERFACES, KINDS, available, is_remote, open_subsystem, parse_url

PROFILE = profiles.load()


def test_sim_urls_build_the_simulators_without_io():
    grad = open_subsystem("gradient", "sim://?buffer_s=1.5&fault=trip@2.5s", PROFILE)
    assert isinstance(grad, SimulatedGradient)
    assert grad.buffer_s == 1.5 and grad._fault_plan == ("trip", 2.5)
    assert grad.status().state.name == "OFF"  # construction does no I/O
    table = open_subsystem("table", "sim://?min_mm=-10&max_mm=500", PROFILE)
    assert isinstance(table, SimulatedTable) and table.max_position_mm == 500
    assert available("rf") == ["ipc", "sim", "tcp"]


@pytest.mark.parametrize(
    ("kind", "url", "message"),
    [
        ("gradient", "serial:///dev/ttyUSB0", r"unknown scheme 'serial' \(registered: ipc://, sim://, tcp://\)"),
        ("gradient", "sim://?noise=1", r"unknown option 'noise' \(accepted: buffer_s, fault,"),
        ("gradient", "sim://?fault=boom@1s", r"option fault='boom@1s': expected KIND@TIME"),
        ("gradient", "sim://?buffer_s=-1", r"buffer_s='-1': must be a positive number"),
        ("rf", "sim://?physics=maybe", r"physics='maybe': must be 0 or 1"),
        ("rf", "sim://?noise=1&noise=2", r"option 'noise' given twice"),
        ("table", "sim://?min_mm=5&max_mm=1", r"min_mm=5.0 must be below max_mm=1.0"),
        ("table", "sim://?min_mm=nan", r"min_mm='nan': must be a finite number"),
        ("coil", "sim://", r"unknown subsystem kind 'coil'"),
        ("rf", "localhost:5601", r"has no scheme"),
    ],
)
def test_bad_urls_are_config_errors(kind, url, message):
    with pytest.raises(ConfigError, match=message):
        open_subsystem(kind, url, PROFILE)


def test_parse_url_keeps_location_and_options():
    parsed = parse_url("tcp://10.0.0.5:5601/gradient?timeout_s=2")
    assert (parsed.scheme, parsed.location, parsed.options) == ("tcp", "10.0.0.5:5601/gradient", {"timeout_s": "2"})


#: A URL of each registered scheme that builds (construction does no I/O: nothing need be there).
SAMPLE_URLS = {"sim": "sim://", "tcp": "tcp://127.0.0.1:1", "ipc": "ipc:///nonexistent/scanctl",
               "serial": "serial:///dev/nonexistent", "socket": "socket://127.0.0.1:1", "loop": "loop://"}


def _registered() -> list[tuple[str, str]]:
    return sorted((kind, scheme) for kind, _, scheme in (ep.name.partition(".") for ep in entry_points(group=GROUP)))


def test_every_kind_has_an_interface_and_implementations():
    assert set(INTERFACES) == set(KINDS) == {kind for kind, _ in _registered()}


@pytest.mark.parametrize(("kind", "scheme"), _registered())
def test_every_registered_class_meets_its_interface(kind, scheme):
    """The entry points are out of mypy's sight (the registry casts what they name): each class they name is
    checked here, built from a URL of its scheme, against the runtime-checkable Protocol of its kind."""
    assert scheme in SAMPLE_URLS, f"add a sample URL for the scheme {scheme}:// to SAMPLE_URLS"
    subsystem = open_subsystem(kind, SAMPLE_URLS[scheme], PROFILE)
    assert isinstance(subsystem, INTERFACES[kind]), f"{kind}.{scheme}: {type(subsystem).__name__}"
    assert subsystem.kind == kind and subsystem.url == SAMPLE_URLS[scheme]


@pytest.mark.parametrize(("world", "remote"), [("default", False), ("scan-1", False), ("tcp://127.0.0.1:5600", True),
                                               ("ipc:///tmp/scanctl-world", True)])
def test_a_world_is_remote_when_it_is_an_endpoint(world, remote):
    assert is_remote(world) is remote
