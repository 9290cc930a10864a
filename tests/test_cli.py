"""The scanctl command line: exit codes, output files and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scanctl.cli import main
from scanctl.sequence import pulseq_read, waveforms

DATA = Path(__file__).parent / "data" / "pulseq-matlab"
GRE = DATA / "tests_legacy_approved_gre.seq"  # within the default profile
SEQ1 = DATA / "tests_expected_output_seq1.seq"  # written with zero dead times: breaks the default profile


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_exit_codes(capsys, tmp_path):
    assert run(capsys, "check", GRE)[0] == 0
    code, out, _ = run(capsys, "check", SEQ1)
    assert code == 1 and "rf_dead_time" in out and "LIMITS BROKEN" in out
    bad = tmp_path / "bad.seq"
    bad.write_bytes(GRE.read_bytes().replace(b"\n  5 8731", b"\n  5 87x1"))
    code, out, err = run(capsys, "check", bad, "--ignore-signature")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"{bad}:28:" in err and "not an integer" in err


def test_check_json_has_the_documented_keys(capsys):
    code, out, _ = run(capsys, "check", SEQ1, "--json")
    assert code == 1
    report = json.loads(out)
    for key in ("format_version", "blocks", "duration_s", "rf_events", "adc_events", "adc_samples",
                "max_gradient_hz_per_m", "max_slew_hz_per_m_per_s", "ok", "violations"):
        assert key in report
    assert report["ok"] is False and report["format_version"] == "1.5.0"
    assert set(report["max_gradient_hz_per_m"]) == {"x", "y", "z"}
    v = report["violations"][0]
    assert set(v) == {"kind", "block", "time_s", "value", "limit", "message"}
    assert (v["kind"], v["block"], v["limit"]) == ("rf_dead_time", 1, pytest.approx(100e-6))


def test_check_with_profile_path_and_bad_profile(capsys, tmp_path):
    prof = tmp_path / "lenient.toml"
    text = (Path(__file__).parents[1] / "scanctl" / "profiles" / "default.toml").read_text()
    for key in ("rf_dead_time_s = 100e-6", "rf_ringdown_time_s = 20e-6", "adc_dead_time_s = 10e-6"):
        text = text.replace(key, key.split("=")[0] + "= 0.0")
    prof.write_text(text)
    # its gradients stimulate at 99 % of the threshold: beyond the normal mode's 80 %, within the first level
    assert run(capsys, "check", SEQ1, "--system", prof)[0] == 1
    assert run(capsys, "check", SEQ1, "--system", prof, "--mode", "first-level")[0] == 0
    prof.write_text(text.replace("b0_t = 3.0", "b0_t = 'x'"))
    code, _, err = run(capsys, "check", SEQ1, "--system", prof)
    assert code == 2 and "scanner.b0_t: must be a number" in err and err.count("\n") == 1


def test_waveforms_breakpoints_and_uniform_grid(capsys, tmp_path):
    out = tmp_path / "w.npz"
    assert run(capsys, "waveforms", GRE, "--out", out)[0] == 0
    seq = pulseq_read.read(GRE)
    with np.load(out) as w:
        assert set(w.files) == {"t_s", "gx", "gy", "gz"}
        t = w["t_s"]
        assert t[0] == 0 and t[-1] == pytest.approx(seq.duration_s) and np.all(np.diff(t) > 0)
        gx = waveforms.axis_waveform(seq, 0)
        np.testing.assert_allclose(w["gx"], gx.sample(t))
        assert np.abs(w["gx"]).max() == pytest.approx(np.abs(gx.g_hz_per_m).max())
    assert run(capsys, "waveforms", GRE, "--out", out, "--raster", "1e-5")[0] == 0
    with np.load(out) as w:
        np.testing.assert_allclose(np.diff(w["t_s"]), 1e-5, rtol=1e-9)
        assert w["t_s"].size == int(seq.duration_s / 1e-5 + 1e-9) + 1
    code, _, err = run(capsys, "waveforms", GRE, "--out", out, "--raster", "0")
    assert code == 2 and "--raster must be positive" in err


def test_kspace_npy(capsys, tmp_path):
    out = tmp_path / "k.npy"
    assert run(capsys, "kspace", GRE, "--out", out)[0] == 0
    k = np.load(out)
    assert k.shape == (3, 64 * 64) and np.isfinite(k).all()
    # A Cartesian GRE: 64 phase-encoding lines centred on ky = 0, each read-out crossing kx = 0.
    assert np.unique(np.round(k[1], 3)).size == 64
    assert np.abs(k[0]).min() < np.abs(k[0]).max() / 32


def test_plot_png(capsys, tmp_path):
    png = tmp_path / "seq.png"
    assert run(capsys, "plot", GRE, "--out", png, "--time-range", "0", "0.2")[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kpng = tmp_path / "k.png"
    assert run(capsys, "plot", GRE, "--out", kpng, "--kspace")[0] == 0
    assert kpng.stat().st_size > 10_000
    code, _, err = run(capsys, "plot", GRE, "--out", png, "--time-range", "1", "0")
    assert code == 2 and "--time-range needs A < B" in err


def test_missing_file_is_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "check", tmp_path / "nope.seq")
    assert code == 2 and out == "" and err.count("\n") == 1 and "nope.seq" in err


def test_console_entry_point_in_a_real_process(tmp_path):
    bad = tmp_path / "tampered.seq"
    bad.write_bytes(GRE.read_bytes().replace(b"\n  5 8731", b"\n  5 8732"))
    done = subprocess.run([sys.executable, "-m", "scanctl", "check", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "signature" in done.stderr.lower() and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "scanctl", "check", str(bad), "--ignore-signature"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_check_accepts_a_protocol(capsys):
    protocol = Path(__file__).parents[1] / "protocols" / "gre_2d.toml"
    code, out, _ = run(capsys, "check", protocol, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["adc_events"] == 128 and report["blocks"] > 128
