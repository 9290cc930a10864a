"""scanctl.profile: the shipped default and every way a profile can be wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scanctl import profile as profiles
from scanctl.errors import ConfigError

SHIPPED = Path(profiles.__file__).parent / "profiles" / "default.toml"


def test_default_profile_values_and_units():
    p = profiles.load()
    assert p == profiles.load("default")
    assert p.b0_t == 3.0 and p.gamma_hz_per_t == pytest.approx(42.576e6)
    assert p.gradient.max_amplitude_t_per_m == pytest.approx((0.04, 0.04, 0.04))
    assert p.max_gradient_hz_per_m() == pytest.approx((0.04 * 42.576e6,) * 3)
    assert p.max_slew_hz_per_m_per_s() == pytest.approx((200 * 42.576e6,) * 3)
    assert p.timing.rf_dead_time_s == pytest.approx(100e-6)


def test_every_shipped_key_is_documented():
    doc = (Path(__file__).parents[1] / "docs" / "system-profile.md").read_text()
    keys = re.findall(r"^([a-z_0-9]+)\s*=", SHIPPED.read_text(), flags=re.M)
    assert len(keys) == 15
    for key in keys:
        assert f"`{key}`" in doc, key


def test_server_endpoints_default_and_from_the_profile(tmp_path):
    assert profiles.load(None).endpoints == profiles.DEFAULT_ENDPOINTS
    path = tmp_path / "rig.toml"
    path.write_text(SHIPPED.read_text() + '\n[server]\ncontrol = "tcp://127.0.0.1:6000"\n')
    assert profiles.load(path).endpoints == {**profiles.DEFAULT_ENDPOINTS, "control": "tcp://127.0.0.1:6000"}


def test_profile_from_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(SHIPPED.read_text().replace('name = "default 3T (simulated)"', 'name = "rig"'))
    assert profiles.load(path).name == "rig"
    assert profiles.load(str(path)).source == str(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("b0_t = 3.0", "b0_t = 3.0\nbore = 60"), r"scanner\.bore: unknown key"),
        (("b0_t = 3.0\n", ""), r"scanner\.b0_t: missing key"),
        (("b0_t = 3.0", 'b0_t = "3"'), r"scanner\.b0_t: must be a number"),
        (("b0_t = 3.0", "b0_t = true"), r"scanner\.b0_t: must be a number"),
        (("b0_t = 3.0", "b0_t = 300.0"), r"scanner\.b0_t: 300.0 is outside"),
        (("{ x = 40.0, y = 40.0, z = 40.0 }", "{ x = 40.0, y = 40.0 }"), r"max_amplitude_mt_per_m: must be a table"),
        (("z = 200.0 }", "z = -1.0 }"), r"max_slew_t_per_m_per_s\.z: -1.0 is outside"),
        (("[timing]", "[timing]\n[extra]\n[timing2]"), r"unknown table|missing key"),
        (("[scanner]", "[scanner"), r"not valid TOML"),
        (("rf_dead_time_s = 100e-6", "rf_dead_time_s = 2.0"), r"timing\.rf_dead_time_s: 2.0 is outside"),
        (("[timing]", '[server]\ncontrol = "127.0.0.1:5555"\n[timing]'), r"server\.control: .* not a ZeroMQ endpoint"),
        (("[timing]", '[server]\nport = 5\n[timing]'), r"server\.port: unknown key"),
    ],
)
def test_bad_profiles_name_file_and_key(tmp_path, edit, message):
    old, new = edit
    text = SHIPPED.read_text()
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as info:
        profiles.load(path)
    assert str(path) in str(info.value)


def test_unknown_name_lists_shipped_profiles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no system profile named 'nope' \(shipped: default\)"):
        profiles.load("nope")
    with pytest.raises(ConfigError, match="cannot read system profile"):
        profiles.load(tmp_path / "missing.toml")
