"""DICOM figures (docs/dicom.md): build and write 100 images 256 x 256 as a series, start a local Orthanc,
C-STORE them to it. Run: ``.venv/bin/python benchmarks/bench_dicom.py`` (Orthanc: ./setup-env test installs it
as root)."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np

from scanctl.data.dicom import Series, build_series, write_series
from scanctl.data.pacs import store
from scanctl.data.rawdata import RawHeader
from scanctl.services.orthanc import Orthanc

IMAGES, N = 100, 256


def main() -> None:
    header = RawHeader(protocol_name="bench", sequence_name="gre_2d", fov_m=(0.256, 0.256, 0.005),
                       encoded_matrix=(N, N, 1), larmor_hz=127.728e6, b0_t=3.0, tr_s=(0.01,), te_s=(0.0045,),
                       flip_angle_deg=(15.0,))
    images = np.random.default_rng(0).random((IMAGES, N, N)).astype(np.float32)
    series = Series(images=images, index=[{"SLC": i} for i in range(IMAGES)], header=header, identity="bench",
                    acquired=dt.datetime.now(dt.UTC), dwell_s=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = write_series(build_series(series), Path(tmp) / "dicom")
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        with Orthanc(Path(tmp) / "orthanc") as pacs:
            started = time.perf_counter() - t0
            result = store(files, pacs.pacs)
    print(f"{IMAGES} images {N}x{N}: build+write {written:.3f} s; Orthanc start {started:.2f} s; "
          f"C-STORE {result.seconds:.3f} s = {result.per_second:.0f} images/s")


if __name__ == "__main__":
    main()
