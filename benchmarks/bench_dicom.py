"""DICOM figures (docs/dicom.md): the conversion time per image of a multi-slice series, from a run directory
(a real gre_2d run whose image.npy/image.json are replaced by a stack of SLICES oblique slices, as the recon
writes them) and from memory (IMAGES images N x N: build and write), then a local Orthanc's start and the
C-STORE throughput to it, verified by C-FIND (the default) and not. Run:
``.venv/bin/python benchmarks/bench_dicom.py`` (Orthanc: ./setup-env test installs it as root)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from scanctl.config import profile as profiles
from scanctl.data.dicom import Series, build_series, export_run, write_series
from scanctl.data.pacs import store
from scanctl.data.rawdata import RawHeader
from scanctl.engine.session import run_scan
from scanctl.services.orthanc import Orthanc

ROOT = Path(__file__).resolve().parents[1]


def multi_slice_run(tmp: Path, slices: int) -> Path:
    """A gre_2d run directory with ``slices`` 128 x 128 slices 5 mm apart in an oblique plane (image.json)."""
    plain, run = tmp / "plain", tmp / "run"
    assert run_scan(ROOT / "protocols" / "gre_2d.toml", profiles.load(None), plain).ok
    run.mkdir()
    for name in ("raw.h5", "sequence.seq", "report.json"):
        shutil.copy(plain / name, run / name)
    image = np.load(plain / "image.npy")[0]
    np.save(run / "image.npy", np.stack([image * (1 + 0.01 * k) for k in range(slices)]).astype(np.float32))
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    read, phase = [c, s, 0.0], [-s, c, 0.0]
    normal = np.cross(read, phase)
    entries = [{"row": k, "counters": {"SLC": k}, "position_mm": ((k - slices // 2) * 5.0 * normal).tolist(),
                "read_dir": read, "phase_dir": phase, "slice_dir": normal.tolist(), "fov_mm": [256.0, 256.0, 5.0],
                "matrix": [128, 128], "channels": 1, "combine": "single"} for k in range(slices)]
    (run / "image.json").write_text(json.dumps({"format": 1, "images": entries, "trajectory": "cartesian",
                                                "three_d": False}))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=30, help="slices of the run directory's series (default 30)")
    parser.add_argument("--images", type=int, default=100, help="images of the in-memory series (default 100)")
    parser.add_argument("--matrix", type=int, default=256, help="their matrix (default 256)")
    args = parser.parse_args()
    n, size = args.images, args.matrix
    header = RawHeader(protocol_name="bench", sequence_name="gre_2d", fov_m=(0.256, 0.256, 0.005),
                       encoded_matrix=(size, size, 1), larmor_hz=127.728e6, b0_t=3.0, tr_s=(0.01,), te_s=(0.0045,),
                       flip_angle_deg=(15.0,))
    images = np.random.default_rng(0).random((n, size, size)).astype(np.float32)
    series = Series(images=images, index=[{"SLC": i} for i in range(n)], header=header, identity="bench",
                    acquired=dt.datetime.now(dt.UTC), dwell_s=1e-5)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = multi_slice_run(tmp, args.slices)
        exported = export_run(run, tmp / "run-dicom")
        print(f"export of a {args.slices}-slice run (128x128, image.json; read raw.h5 header, digest, build, "
              f"write): {exported.seconds:.3f} s = {1e3 * exported.seconds / args.slices:.2f} ms per image")
        t0 = time.perf_counter()
        files = write_series(build_series(series), tmp / "dicom")
        written = time.perf_counter() - t0
        print(f"{n} images {size}x{size} from memory: build+write {written:.3f} s = {1e3 * written / n:.2f} ms "
              f"per image")
        t0 = time.perf_counter()
        with Orthanc(tmp / "orthanc") as pacs:
            started = time.perf_counter() - t0
            verified = store(files, pacs.pacs)
            plain = store(exported.files, pacs.pacs, verify=False)
            again = store(exported.files, pacs.pacs)  # the same UIDs: Orthanc keeps one copy
    print(f"Orthanc start {started:.2f} s")
    print(f"C-STORE {n} images {size}x{size}, verified by C-FIND: {verified.seconds:.3f} s = "
          f"{verified.per_second:.1f} images/s")
    print(f"C-STORE {args.slices} images 128x128, not verified: {plain.seconds:.3f} s = {plain.per_second:.1f} "
          f"images/s; again, verified: {again.seconds:.3f} s = {again.per_second:.1f} images/s")


if __name__ == "__main__":
    main()
