"""scanctl.config.profile: the shipped default and every way a profile can be wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scanctl.config import profile as profiles
from scanctl.errors import ConfigError

SHIPPED = Path(profiles.__file__).parents[1] / "profiles" / "default.toml"


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
    assert len(keys) == 19
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
    with pytest.raises(ConfigError, match=r"no system profile named 'nope' \(shipped: default, safe-example\)"):
        profiles.load("nope")
    with pytest.raises(ConfigError, match="cannot read system profile"):
        profiles.load(tmp_path / "missing.toml")


SAFETY = """
[safety]
heartbeat_max_age_s = 0.5
[safety.sar]
whole_body_w_per_kg = { first_level = 3.5 }
window_s = 300
[safety.rf]
watts_per_ut2 = 25.0
[safety.gradient_thermal]
max_temp_c = 60.0
[safety.table]
max_speed_mm_s = 50.0
[safety.pns]
limit_percent = { normal = 70.0 }
"""


def test_safety_limits_default_and_from_the_profile(tmp_path):
    from scanctl.config.limits import DEFAULT_PNS, EXAMPLE_PNS, SafetyLimits

    default = profiles.load(None).safety
    assert default == SafetyLimits() and default.pns.x.tau1_ms == 0.2
    assert default.pns.x.stim_limit_t_per_m_per_s == 1.5 * EXAMPLE_PNS["x"].stim_limit_t_per_m_per_s
    path = tmp_path / "rig.toml"
    path.write_text(SHIPPED.read_text().split("\n[safety.pns]")[0] + SAFETY)  # its own [safety.pns]
    safety = profiles.load(path).safety
    assert safety.heartbeat_max_age_s == 0.5
    assert safety.sar.whole_body_w_per_kg == {"normal": 2.0, "first_level": 3.5} and safety.sar.window_s == 300
    assert safety.sar.head_w_per_kg == {"normal": 3.2, "first_level": 3.2}
    assert safety.rf.watts_per_ut2 == 25.0 and safety.rf.body_absorbed_fraction == 0.8
    assert safety.gradient_thermal.max_temp_c == 60.0 and safety.table.max_speed_mm_s == 50.0
    assert safety.pns.limit_percent == {"normal": 70.0, "first_level": 100.0} and safety.pns.y == DEFAULT_PNS["y"]


def test_the_safe_example_profile_has_pypulseqs_example_pns_hardware():
    from pypulseq.utils.safe_pns_prediction import safe_example_hw

    hw = safe_example_hw()
    pns = profiles.load("safe-example").safety.pns
    for axis in "xyz":
        ours, theirs = getattr(pns, axis), getattr(hw, axis)
        assert (ours.tau1_ms, ours.tau2_ms, ours.tau3_ms, ours.a1, ours.a2, ours.a3, ours.stim_limit_t_per_m_per_s,
                ours.stim_thresh_t_per_m_per_s, ours.g_scale) == (
            theirs.tau1, theirs.tau2, theirs.tau3, theirs.a1, theirs.a2, theirs.a3, theirs.stim_limit,
            theirs.stim_thresh, theirs.g_scale)


@pytest.mark.parametrize(("extra", "message"), [
    ("[safety]\ncolour = 1\n", r"safety\.colour: unknown key"),
    ("[safety.sar]\nwindow_s = -1\n", r"safety\.sar\.window_s: -1 is outside"),
    ("[safety.sar]\nhead_w_per_kg = { turbo = 9.0 }\n", r"safety\.sar\.head_w_per_kg\.turbo: unknown key"),
    ("[safety.sar]\nhead_w_per_kg = { normal = \"high\" }\n", r"safety\.sar\.head_w_per_kg\.normal: must be a number"),
    ("[safety.rf]\nbody_absorbed_fraction = 1.5\n", r"safety\.rf\.body_absorbed_fraction: 1.5 is outside"),
    ("[safety.pns]\nx = { tau1_ms = 0.2 }\n", r"safety\.pns\.x\.[a-z0-9_]+: missing key"),
    ("[safety.table]\nmin_mm = 10.0\nmax_mm = 5.0\n", r"safety\.table: min_mm 10.0 must be below max_mm 5.0"),
    ("[safety.gradient_thermal]\nambient_c = 30.0\nmax_temp_c = 25.0\n", r"max_temp_c must be above ambient_c"),
    ("[safety]\nsar = 3\n", r"safety\.sar: must be a table"),
])
def test_bad_safety_limits_name_the_key(tmp_path, extra, message):
    path = tmp_path / "bad.toml"
    path.write_text(SHIPPED.read_text().split("\n[safety.pns]")[0] + "\n" + extra)
    with pytest.raises(ConfigError, match=message):
        profiles.load(path)
