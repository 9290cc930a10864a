"""scanctl sweep: the spec (bad input is one line, exit 2), tissue masks from the phantom, a sweep on a local
Dask cluster through the scan session, and resuming it (nothing recomputed)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scanctl.simulators.physics.phantom import TISSUES, shepp_logan, tissue_labels

from scanctl.cli import main
from scanctl.sweep.measure import image_figures
from scanctl.sweep.point import tasks
from scanctl.sweep.spec import SweepError, load_spec

ROOT = Path(__file__).resolve().parents[1]
GRE = ROOT / "protocols" / "gre_2d.toml"


def write_spec(tmp_path: Path, axes: str, *, head: str = "", measure: str = "", name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[sweep]\nbase = "{GRE}"\n{head}\n[axes]\n{axes}\n{measure}\n')
    return path


SMALL = '"sequence.matrix" = [[32, 32]]\n"sequence.dummy_scans" = [0]\n'


# -- the spec ---------------------------------------------------------------------------------------------


def test_spec_expands_lists_ranges_and_zips(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, '"sequence.flip_angle_deg" = [10.0, 20.0]\n'
                                     '"rf.noise" = { start = 0, stop = 2, count = 3 }\n'
                                     '[zip.te_tr]\n"sequence.te_s" = [0.004, 0.005]\n"sequence.tr_s" = '
                                     '{ start = 0.01, stop = 0.02, step = 0.01 }\n')
    spec = load_spec(spec_path)
    points = list(spec.points())
    assert spec.size == len(points) == 2 * 3 * 2
    assert points[0] == {"sequence.flip_angle_deg": 10.0, "rf.noise": 0.0, "sequence.te_s": 0.004,
                         "sequence.tr_s": 0.01}
    assert {(p["sequence.te_s"], p["sequence.tr_s"]) for p in points} == {(0.004, 0.01), (0.005, 0.02)}
    assert sorted({p["rf.noise"] for p in points}) == [0.0, 1.0, 2.0]


@settings(max_examples=50, deadline=None)
@given(start=st.floats(-1e3, 1e3), span=st.floats(0, 1e3), count=st.integers(1, 200))
def test_count_range_has_count_values_from_start_to_stop(tmp_path_factory: pytest.TempPathFactory, start: float,
                                                         span: float, count: int) -> None:
    tmp = tmp_path_factory.mktemp("range")
    spec = load_spec(write_spec(tmp, f'"rf.b0" = {{ start = {start!r}, stop = {start + span!r}, count = {count} }}'))
    values = [p["rf.b0"] for p in spec.points()]
    assert len(values) == count
    assert math.isclose(values[0], start, rel_tol=1e-9, abs_tol=1e-9)
    if count > 1:
        assert math.isclose(values[-1], start + span, rel_tol=1e-9, abs_tol=1e-9)
        assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_point_keys_are_content_hashes(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, '"sequence.flip_angle_deg" = [10.0, 20.0]\n"rf.seed" = [1, 2]'))
    first, again = tasks(spec), tasks(load_spec(spec.source))
    assert [t.key for t in first] == [t.key for t in again]  # the same inputs, the same keys
    assert len({t.key for t in first}) == 4
    moved = load_spec(write_spec(tmp_path, '"sequence.flip_angle_deg" = [20.0, 30.0]\n"rf.seed" = [1, 2]',
                                 name="other.toml"))
    shared = {t.key for t in first} & {t.key for t in tasks(moved)}
    assert len(shared) == 2  # flip 20 at both seeds: the same points, whichever spec names them
    assert "flip_angle_deg = 20.0" in tasks(moved)[0].protocol_text  # type: ignore[operator]


BAD = [
    ('"sequence.flip_angle_deg" = []', "axes.sequence.flip_angle_deg: has no values"),
    ('"sequence.flip_angle_deg" = { start = 30, stop = 10, step = 5 }', "has no values"),
    ('"sequence.flip_angel_deg" = [10.0]', "the gre_2d sequence has no parameter 'flip_angel_deg'"),
    ('"sequence.flip_angle_deg" = [500.0]', "axes.sequence.flip_angle_deg[0]: 500.0 is outside 1 to 90"),
    ('"rf.b0" = { start = 0, stop = 1000000, step = 1 }', "more than --max-points 10,000"),
    ('"rf.b0" = { start = 0, stop = 999, step = 1 }\n"rf.seed" = { start = 0, stop = 999, step = 1 }',
     "the sweep has 1,000,000 points, more than --max-points 10,000"),
    ('"rf.colour" = [1]', "unknown option 'colour'"),
    ('"rf.noise" = [-1.0]', "option noise='-1.0'"),
    ('"profile" = ["no-such-scanner"]', "no system profile named 'no-such-scanner'"),
    ('"tr" = [1]', "unknown axis 'tr'"),
    ('"sequence.te_s" = [0.004]\n[zip.z]\n"sequence.tr_s" = [0.01, 0.02]\n"rf.seed" = [1]',
     "zip.z: its axes must have the same number of values"),
]


@pytest.mark.parametrize(("axes", "message"), BAD)
def test_bad_spec_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], axes: str,
                                     message: str) -> None:
    spec = write_spec(tmp_path, axes)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scanctl: error: ")
    assert str(spec) in err and message in err, err
    assert not (tmp_path / "out").exists()  # nothing started


def test_max_points_lets_a_larger_sweep_through(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, '"rf.b0" = { start = 0, stop = 10, step = 1 }')
    with pytest.raises(SweepError, match="more than --max-points 5"):
        load_spec(spec_path, max_points=5)
    assert load_spec(spec_path, max_points=11).size == 11


def test_pulseq_base_has_no_sequence_parameters(tmp_path: Path) -> None:
    seq = ROOT / "protocols" / "sequences" / "gre_2d.seq"
    spec = tmp_path / "s.toml"
    spec.write_text(f'[sweep]\nbase = "{seq}"\n[axes]\n"sequence.tr_s" = [0.01]\n')
    with pytest.raises(SweepError, match="is a Pulseq file: it has no parameter 'tr_s'"):
        load_spec(spec)
    spec.write_text(f'[sweep]\nbase = "{seq}"\n[axes]\n"patient.weight_kg" = [50, 90]\n"rf.matrix" = [32]\n')
    assert [t.patient_weight_kg for t in tasks(load_spec(spec))] == [50.0, 90.0]


def test_reference_must_match_a_point(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, '"sequence.flip_angle_deg" = [10.0]',
                      measure='[measure]\nreference = { "sequence.flip_angle_deg" = 20.0 }')
    with pytest.raises(SweepError, match="measure.reference: no point of the sweep has"):
        load_spec(spec)


# -- tissue masks -----------------------------------------------------------------------------------------


def test_tissue_labels_are_the_phantoms_tissues() -> None:
    """On the isocentre plane's grid the labels are those of the 2D phantom the simulator images."""
    u = (np.arange(64) - 32) * 0.256 / 64
    y, x = np.meshgrid(u, u, indexing="ij")
    labels, names = tissue_labels(np.stack((x, y, np.zeros_like(x)), axis=-1))
    phantom = shepp_logan(64)
    assert names == tuple(TISSUES)
    assert set(np.unique(labels)) == set(range(len(names) + 1))  # background and every tissue
    for k, name in enumerate(names, start=1):
        assert np.all(phantom.pd[labels == k] == TISSUES[name][0])
    assert np.all(phantom.pd[labels == 0] == 0)


def test_contrast_by_tissue_masks_reached_through_the_entry_point() -> None:
    """An image that is the phantom's proton density gives exactly the tissues' PD contrast: the masks (from
    the entry point, at image resolution) lie on the tissues in the image's orientation."""
    pd = shepp_logan(128).pd
    figures, notes = image_figures(pd[None], phantom="shepp_logan", fov_m=0.256,
                                   contrast=(("white_matter", "gray_matter"), ("csf", "tumor"), ("csf", "bone")))
    wm, gm, csf, tumor = (TISSUES[t][0] for t in ("white_matter", "gray_matter", "csf", "tumor"))
    assert figures["contrast_white_matter_gray_matter"] == pytest.approx((wm - gm) / (wm + gm))
    assert figures["contrast_csf_tumor"] == pytest.approx((csf - tumor) / (csf + tumor))
    assert any("no tissue 'bone'" in n for n in notes)
    _, coarse = image_figures(shepp_logan(32).pd, phantom="shepp_logan", fov_m=0.256, contrast=(("csf", "tumor"),))
    assert coarse == ["contrast_csf_tumor: a tissue has no pixel inside it at this resolution"]
    flipped, _ = image_figures(pd[::-1][None], phantom="shepp_logan", fov_m=0.256,
                               contrast=(("white_matter", "gray_matter"),))
    assert flipped["contrast_white_matter_gray_matter"] != pytest.approx(figures["contrast_white_matter_gray_matter"])


def test_snr_counts_the_receive_channels() -> None:
    """The background of an RSS image of N channels is chi with 2N degrees of freedom: the same image read as
    from 8 channels has a smaller per-channel sigma (quality.background_mean_factor)."""
    from scanctl.data.quality import background_mean_factor

    rng = np.random.default_rng(1)
    image = shepp_logan(64).pd + np.abs(rng.normal(0, 0.01, (64, 64)))
    one, _ = image_figures(image, phantom=None, fov_m=0.256, contrast=(), channels=1)
    eight, _ = image_figures(image, phantom=None, fov_m=0.256, contrast=(), channels=8)
    assert eight["noise_sigma"] == pytest.approx(one["noise_sigma"] * background_mean_factor(1)
                                                 / background_mean_factor(8))


# -- a sweep on a local cluster ---------------------------------------------------------------------------


def sweep(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scanctl", "sweep", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_local_cluster_sweep_then_resume(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SMALL + '"sequence.flip_angle_deg" = [10.0, 40.0]\n"sequence.tr_s" = [0.002, 0.01]\n'
                                        '"rf.noise" = [1.0]',
                      head='keep = ["raw", "image"]\nkeep_points = [1]',
                      measure='[measure]\ncontrast = [["csf", "gray_matter"]]\n'
                              'reference = { "sequence.flip_angle_deg" = 10.0, "sequence.tr_s" = 0.01 }')
    out = tmp_path / "out"
    first = sweep(spec, "--out", out, "--workers", "2")
    assert first.returncode == 1, first.stderr  # two points cannot meet TR 2 ms
    rows = read_rows(out)
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
    by = {(float(r["sequence.flip_angle_deg"]), float(r["sequence.tr_s"])): r for r in rows}
    for flip in (10.0, 40.0):
        bad = by[flip, 0.002]
        assert bad["outcome"] == "invalid" and "shorter than the minimum" in bad["message"]
        assert 0.002 < float(bad["min_tr_s"]) < 0.01
        good = by[flip, 0.01]
        assert good["outcome"] == "completed" and good["check_ok"] == "True"
        assert float(good["snr"]) > 5 and float(good["sar_wb_6min_w_per_kg"]) > 0
        assert -1 < float(good["contrast_csf_gray_matter"]) < 1
        assert float(good["wall_s"]) > 0
    assert float(by[10.0, 0.01]["nrmse"]) == 0.0 and float(by[40.0, 0.01]["nrmse"]) > 0.01
    # the tissue contrast follows the flip angle (T1 weighting)
    contrasts = [float(by[flip, 0.01]["contrast_csf_gray_matter"]) for flip in (10.0, 40.0)]
    assert abs(contrasts[1] - contrasts[0]) > 0.05
    kept = out / "points" / by[10.0, 0.01]["key"]  # index 1: raw data and image kept
    assert {"result.json", "image.npy", "image.json", "raw.h5", "image.png"} <= {p.name for p in kept.iterdir()}
    other = out / "points" / by[40.0, 0.01]["key"]
    assert {p.name for p in other.iterdir()} == {"result.json", "image.npy", "image.json"}
    assert (out / "plots" / "snr.png").stat().st_size > 1000
    result = json.loads((kept / "result.json").read_text())
    assert result["values"]["sequence.flip_angle_deg"] == 10.0

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    again = sweep(spec, "--out", out)
    assert again.returncode == 1, again.stderr
    assert "4 already done, 0 run" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()} == stamps  # nothing recomputed
    assert read_rows(out) == rows

    import shutil

    shutil.rmtree(other)  # one point lost: only it is run again
    third = sweep(spec, "--out", out, "--workers", "1")
    assert "3 already done, 1 run (1 completed)" in third.stdout, third.stdout + third.stderr
    assert read_rows(out)[3]["snr"] == rows[3]["snr"]  # the same inputs (seeded noise), the same figures


def test_local_workers_keep_glibcs_dynamic_mmap_threshold() -> None:
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which makes every large array of the Bloch simulation a fresh
    mmap (40-60 % more CPU a point); the local cluster's workers start without it, and without the profiler."""
    import os

    import dask

    from scanctl.sweep.runner import _client

    with _client(None, 1) as client:
        environ = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS"),
                                      dask.config.get("distributed.worker.profile.enabled")))
    assert list(environ.values()) == [(None, "1", False)]  # Dask's other settings (one BLAS thread) kept


def test_tissue_masks_follow_the_image_geometry(tmp_path: Path) -> None:
    """A sweep over the slice's plane: each point's masks come from its image's geometry (image.json, kept
    with the image), so they cover the object the image shows, and the tissues' contrast — a property of the
    tissues and the sequence, not of where the slice lies — is the same on a transverse slice off the
    isocentre and on a sagittal one (the masks of an isocentre transverse slice lie elsewhere)."""
    from scanctl.sweep.measure import tissue_labels as labels_of
    from scanctl.sweep.point import _geometry, run_point

    spec = load_spec(write_spec(tmp_path, '"sequence.matrix" = [[64, 64]]\n"sequence.dummy_scans" = [0]\n'
                                          '"rf.noise" = [0.0]\n'
                                          '"geometry.orientation" = ["transverse", "sagittal"]\n'
                                          '"geometry.position_mm" = [[10.0, 0.0, 20.0]]\n',
                                measure='[measure]\ncontrast = [["white_matter", "gray_matter"]]\n'))
    contrasts = []
    for task in tasks(spec):
        out = run_point(task)
        assert out["result"]["outcome"] == "completed", out["result"]["message"]
        contrasts.append(out["result"]["figures"]["contrast_white_matter_gray_matter"])
        run = tmp_path / f"run{task.index}"
        run.mkdir()
        for name, data in out["files"].items():
            (run / name).write_bytes(data)
        image = np.load(run / "image.npy")
        geometry = _geometry(run, image.shape)
        assert geometry is not None and geometry["position_mm"] == [10.0, 0.0, 20.0]
        placed, _ = labels_of("shepp_logan", image.shape[1:], 0.256, geometry)
        centred, _ = labels_of("shepp_logan", image.shape[1:], 0.256, None)
        seen = image[0] > 0.15 * image[0].max()
        assert _dice(placed > 0, seen) > 0.93
        assert _dice(placed > 0, seen) > _dice(centred > 0, seen) + 0.05
    transverse, sagittal = contrasts
    assert transverse < 0 and sagittal < 0  # gray matter brighter than white in gre_2d, on both planes
    assert abs(transverse - sagittal) < 0.15 * abs(transverse)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_completed_run_check_figures_are_the_sequence_checks(tmp_path: Path) -> None:
    """A completed run's check figures come from its report (the scanner checked the sequence before it
    played); they are what checking its sequence.seq again gives."""
    from scanctl.config import profile as profiles
    from scanctl.engine.session import run_scan
    from scanctl.sweep.measure import check_figures

    protocol = tmp_path / "p.toml"
    protocol.write_text(GRE.read_text().replace("matrix = [128, 128]", "matrix = [32, 32]"))
    profile = profiles.load()
    run_scan(protocol, profile, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["outcome"] == "completed"
    seq = tmp_path / "run" / "sequence.seq"
    from_report = check_figures(report, seq, profile)
    rechecked = check_figures({**report, "outcome": "aborted"}, seq, profile)
    assert from_report["check_ok"] is rechecked["check_ok"] is True
    assert from_report["check_violations"] == rechecked["check_violations"] == 0
    assert math.isclose(from_report["duration_s"], rechecked["duration_s"], rel_tol=1e-9)


def test_parquet_table_holds_the_csv_rows_typed(tmp_path: Path) -> None:
    """results.parquet (pyarrow, the `parquet` extra the tests install) has the CSV's rows and columns, with
    numbers as numbers, None as null, and a list-valued axis (a matrix) as its JSON text."""
    import pyarrow.parquet as pq

    from scanctl.sweep.store import PointStore

    rows = [{"index": 0, "key": "a", "sequence.matrix": [64, 64], "outcome": "completed", "message": "",
             "wall_s": 0.25, "cpu_s": 0.2, "notes": "", "snr": 31.5, "check_ok": True},
            {"index": 1, "key": "b", "sequence.matrix": [32, 32], "outcome": "invalid", "message": "TE too short",
             "wall_s": 0.01, "cpu_s": None, "notes": "", "snr": None, "min_te_s": 0.0031}]
    written = PointStore(tmp_path).write_table(rows, ("sequence.matrix",))
    assert [p.name for p in written] == ["results.csv", "results.parquet"]
    table = pq.read_table(tmp_path / "results.parquet").to_pylist()
    with open(tmp_path / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [set(r) for r in table] == [set(r) for r in csv_rows]
    assert table[0]["snr"] == 31.5 and table[1]["snr"] is None and table[0]["cpu_s"] == 0.2
    assert table[0]["sequence.matrix"] == "[64, 64]" == csv_rows[0]["sequence.matrix"]
    assert table[1]["min_te_s"] == 0.0031 and table[0]["min_te_s"] is None
    assert table[0]["check_ok"] is True and table[1]["message"] == "TE too short"
