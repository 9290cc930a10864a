"""``scanctl prescan`` where the scan will image: ``--table-position-mm MM``, or ``--protocol FILE`` (its table
position and scene, as ``scanctl run`` prescans before it); a bad position is one line on stderr, exit 2,
before anything connects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanctl.cli import main
from scanctl.engine.executor import Scanner

GRE32 = Path(__file__).parent / "data" / "exam" / "gre32.toml"
RF = "sim://?b0=120&matrix=32"


@pytest.fixture
def positions(monkeypatch) -> list[float]:
    """The table position of every run the scanner is asked for (the calibrations)."""
    seen: list[float] = []
    run = Scanner.run

    def recorded(self, **kwargs):
        seen.append(kwargs["table_position_mm"])
        return run(self, **kwargs)

    monkeypatch.setattr(Scanner, "run", recorded)
    return seen


def test_prescan_runs_at_the_table_position_given(positions, capsys):
    assert main(["prescan", "frequency", "--rf", RF, "--table-position-mm", "150", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["table_position_mm"] == 150.0 and abs(out["frequency_offset_hz"] - 120) < 1
    assert positions and set(positions) == {150.0}


def test_prescan_for_a_protocol_runs_where_its_scan_images(positions, capsys, tmp_path):
    protocol = tmp_path / "gre_at_120.toml"
    protocol.write_text(GRE32.read_text().replace("position_mm = 0.0", "position_mm = 120.0"))
    assert main(["prescan", "frequency", "--rf", RF, "--protocol", str(protocol)]) == 0
    assert "at table position 120 mm" in capsys.readouterr().out
    assert positions and set(positions) == {120.0}


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("scanctl: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("argv", "said"), [
    (["--table-position-mm", "nan"], "'nan' is not a finite number of millimetres"),
    (["--table-position-mm", "inf"], "'inf' is not a finite number of millimetres"),
    (["--table-position-mm", "far"], "'far' is not a finite number of millimetres"),
    (["--table-position-mm", "5000"], "--table-position-mm 5000: table target 5000 mm is outside the profile's "
                                      "travel limits"),
    (["--table-position-mm", "10", "--protocol", str(GRE32)], "not allowed with argument"),
    (["--protocol", "no-such.toml"], "no-such.toml: cannot read protocol"),
])
def test_a_bad_table_position_is_one_line_exit_2_before_anything_connects(argv, said, positions, capsys):
    try:
        code = main(["prescan", "frequency", "--rf", RF, *argv])
    except SystemExit as exc:  # a usage error, from argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and said in one_error_line(err), err
    assert positions == []  # nothing ran


def test_a_protocol_beyond_the_table_travel_is_named(tmp_path, positions, capsys):
    protocol = tmp_path / "far.toml"
    protocol.write_text(GRE32.read_text().replace("position_mm = 0.0", "position_mm = 2500.0"))
    assert main(["prescan", "--rf", RF, "--protocol", str(protocol)]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"--protocol {protocol}: table target 2500 mm is outside the profile's travel limits" in err
    assert positions == []


# -- the exam queue in this process prescans each step, as scanctl run and the server's exam queue do ------------
def test_an_exam_step_run_in_this_process_prescans_unless_told_not_to(tmp_path, capsys):
    from importlib import resources

    default = (resources.files("scanctl.profiles") / "default.toml").read_text(encoding="utf-8")
    profile = tmp_path / "b0.toml"
    profile.write_text(default.replace('rf = "sim://"', f'rf = "{RF}"'))
    order = tmp_path / "order.toml"
    order.write_text('[order]\npatient_id = "P9"\npatient_name = "Pre^Scan"\nweight_kg = 70\n'
                     'requested_procedure = "MR head"\n')
    card = Path(__file__).parent / "data" / "exam" / "head32.toml"
    exam_dir = tmp_path / "exam"
    assert main(["exam", "open", str(exam_dir), "--order", str(order), "--card", str(card)]) == 0
    assert main(["exam", "next", str(exam_dir), "--system", str(profile)]) == 0
    first = json.loads((exam_dir / "runs" / "01-localizer" / "report.json").read_text())["prescan"]
    assert abs(first["frequency_offset_hz"] - 120) < 1, first
    assert main(["exam", "next", str(exam_dir), "--system", str(profile), "--no-prescan"]) == 0
    assert json.loads((exam_dir / "runs" / "02-t1_gre" / "report.json").read_text())["prescan"] == {}
    capsys.readouterr()
    assert main(["exam", "next", "--connect", "tcp://127.0.0.1:1", "--no-prescan"]) == 2
    assert "--no-prescan is not available with --connect" in one_error_line(capsys.readouterr().err)
