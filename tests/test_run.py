"""``scanctl run`` end to end on the simulators: every shipped protocol gives a recognisable phantom,
and every way a run can end leaves valid raw data and a report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scanctl.simulators.physics import shepp_logan

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.config.protocol import load_protocol
from scanctl.data.rawdata import read_acquisitions
from scanctl.engine.session import run_scan

PROTOCOLS = Path(__file__).parents[1] / "protocols"
PROFILE = profiles.load()


def expected_contrast(name: str, n: int, fov_m: float) -> np.ndarray:
    """The steady-state magnitude each voxel should show, from the phantom's PD, T1, T2."""
    ph = shepp_logan(n, fov_m=fov_m, b0_t=PROFILE.b0_t)
    protocol = load_protocol(PROTOCOLS / f"{name}.toml")
    p = protocol.sequence_params
    pd, t1, t2 = ph.pd, np.maximum(ph.t1_s, 1e-6), np.maximum(ph.t2_s, 1e-6)
    if p is None:  # a Pulseq file: proton density is what must be recognisable
        return pd
    if name.startswith("gre"):
        e1, a = np.exp(-p.tr_s / t1), np.radians(p.flip_angle_deg)
        return pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-p.te_s / t2)
    recovery = p.tr_s - (getattr(p, "etl", 1) * 2 - 1) * p.te_s / 2 if name.startswith("tse") else p.tr_s
    return pd * (1 - np.exp(-max(recovery, 1e-3) / t1)) * np.exp(-p.te_s / t2)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("name", ["gre_2d", "pulseq_gre", "tse_2d", "se_2d"])
def test_shipped_protocols_image_the_phantom(tmp_path, name):
    report = run_scan(PROTOCOLS / f"{name}.toml", PROFILE, tmp_path)
    assert report.outcome == "completed", report.message
    image = np.load(tmp_path / "image.npy")[0]
    raw = read_acquisitions(tmp_path / "raw.h5")
    assert len(raw.acquisitions) == report.acquisitions == image.shape[0]
    fov = float(raw.header.fov_m[0])
    n = image.shape[0]
    expected = expected_contrast(name, n, fov)
    r = correlation(image, expected)
    # Voxel-wise steady-state contrast; k-space weighting (TSE's T2 filter along the echo train, the
    # approach to steady state) blurs it a little, so "recognisable" means a correlation above 0.85.
    assert r > 0.85, f"{name}: correlation {r:.3f} with the expected contrast"
    assert (tmp_path / "image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["outcome"] == "completed" and written["sequence"]["md5"]
    # the scanner's journal from the load to the run's end, as a remote run's (one report shape)
    assert [e["dest"] for e in written["journal"]][-3:] == ["POSITIONING", "RUNNING", "IDLE"]


def test_run_a_pulseq_file_directly(tmp_path, capsys):
    seq = Path(__file__).parent / "data" / "pulseq-matlab" / "tests_legacy_approved_gre.seq"
    assert main(["run", str(seq), "--out", str(tmp_path), "--rf", "sim://?physics=0"]) == 0
    out = capsys.readouterr().out
    assert "completed: 64 acquisitions" in out
    assert read_acquisitions(tmp_path / "raw.h5").header.encoded_matrix[:2] == (64, 64)


def test_fault_mid_scan_keeps_valid_raw_data(tmp_path, capsys):
    code = main(["run", str(PROTOCOLS / "gre_2d.toml"), "--out", str(tmp_path), "--rf", "sim://?physics=0",
                 "--gradient", "sim://?fault=trip@0.7s"])
    assert code == 1
    assert "fault: " in (out := capsys.readouterr().out) and "0.700 of 1.480 s of sequence" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["outcome"] == "fault" and "trip at 0.700000 s" in report["message"]
    assert report["journal"][-1]["dest"] == "FAULT"  # latched: the report ends there
    played_s = report["timings"]["real_time_factor"] * report["timings"]["scan_wall_s"]  # of what played
    assert played_s == pytest.approx(0.7, abs=0.2)
    raw = read_acquisitions(tmp_path / "raw.h5")
    starts = [a.start_s for a in raw.acquisitions]
    assert len(starts) == report["acquisitions"] > 0 and max(starts) < 0.7
    assert (tmp_path / "image.png").exists()  # partial k-space still reconstructs


def test_sequence_beyond_the_scanner_is_refused_before_anything_moves(tmp_path, capsys):
    weak = tmp_path / "weak.toml"
    text = (Path(profiles.__file__).parents[1] / "profiles" / "default.toml").read_text()
    weak.write_text(text.replace("x = 40.0, y = 40.0, z = 40.0", "x = 5.0, y = 5.0, z = 5.0"))
    seq = Path(__file__).parent / "data" / "pulseq-matlab" / "tests_legacy_approved_gre.seq"
    code = main(["run", str(seq), "--system", str(weak), "--out", str(tmp_path / "out")])
    assert code == 1
    assert "refused before anything moved" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["outcome"] == "refused" and report["acquisitions"] == 0
    assert not (tmp_path / "out" / "raw.h5").exists()
    assert "POSITIONING" not in [e["dest"] for e in report["journal"]]


def test_bad_protocol_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text((PROTOCOLS / "gre_2d.toml").read_text().replace("te_s = 0.0045", "te_s = 0.001"))
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: sequence.te_s:" in err and "minimum" in err


def test_a_subsystem_that_cannot_be_reached_ends_the_run_with_a_report(tmp_path, capsys):
    """connect() sat outside the run's try/finally: a failed connect closed nothing and wrote no report."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    code = main(["run", str(PROTOCOLS / "gre_2d.toml"), "--out", str(out), "--rf", "sim://?physics=0",
                 "--gradient", f"tcp://127.0.0.1:{port}?liveness_s=0.2"])
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "fault" and "gradient driver" in report["message"], report["message"]
    assert report["acquisitions"] == 0 and "raw" not in report["outputs"]
