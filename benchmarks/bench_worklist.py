"""Worklist figures (docs/dicom.md): write 100 orders as .wl files, start a local Orthanc with its
ModalityWorklists plugin over them, and time C-FIND queries (all 100; one by accession number; median of 5).
Run: ``.venv/bin/python benchmarks/bench_worklist.py``."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from scanctl.data.dicom import Order
from scanctl.data.worklist import Scheduled, query, write_worklist
from scanctl.services.orthanc import Orthanc

ORDERS = 100


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        orders = [Order(patient_id=f"P{i}", patient_name=f"Patient^{i}", accession_number=f"A{i}",
                        weight_kg=50.0 + i % 50, requested_procedure_code="MRHEAD", requested_procedure="MR head")
                  for i in range(ORDERS)]
        t0 = time.perf_counter()
        write_worklist(orders, root / "wl", Scheduled(date="20261203"))
        written = time.perf_counter() - t0
        with Orthanc(root / "orthanc", worklists=root / "wl") as server:
            query(server.pacs)  # the first association warms up pynetdicom and the plugin
            every, one = [], []
            for _ in range(5):
                t0 = time.perf_counter()
                found = query(server.pacs)
                every.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                query(server.pacs, accession_number="A42")
                one.append(time.perf_counter() - t0)
        assert len(found) == ORDERS
        print(f"write {ORDERS} .wl files: {written:.3f} s; C-FIND of all {ORDERS}: {statistics.median(every):.3f} s; "
              f"one by accession number: {statistics.median(one):.3f} s (medians of 5)")


if __name__ == "__main__":
    main()
