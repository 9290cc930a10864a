"""What a Dask worker adds to a sweep point: the same points (gre_2d 64 x 64, flip x TR) run by
``scanctl.sweep.point.run_point`` on a 1-worker local cluster (as ``scanctl sweep`` makes it) and in this
process, batch for batch, interleaved so that the machine's drift (a shared 2-core VM moves by 10-30 % between
identical runs) falls on both alike. Prints the CPU time of the point's own thread per point for each round
and the ratio over all rounds (1.00: the worker adds nothing).

    .venv/bin/python benchmarks/bench_sweep_worker.py [--rounds 5] [--points 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sweep import write_spec  # noqa: E402


def timed(task: Any) -> float:
    """The point's thread CPU seconds."""
    from scanctl.sweep.point import run_point

    t0 = time.thread_time()
    run_point(task)
    return time.thread_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--points", type=int, default=10, help="a multiple of 10")
    args = ap.parse_args()

    import dask
    from distributed import Client, LocalCluster

    from scanctl.sweep.point import tasks
    from scanctl.sweep.runner import WORKER_CONFIG, WORKER_ENVIRON_UNSET
    from scanctl.sweep.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        points = tasks(load_spec(write_spec(Path(tmp), 64, args.points)))
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_ENVIRON_UNSET}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **WORKER_CONFIG}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                client.gather(client.map(timed, points[:3], pure=False))  # warm both: imports, caches
                [timed(p) for p in points[:3]]
                worker_s = here_s = 0.0
                for r in range(args.rounds):
                    w = sum(client.gather(client.map(timed, points, pure=False)))
                    h = sum(timed(p) for p in points)
                    worker_s, here_s = worker_s + w, here_s + h
                    print(f"round {r}: worker {1e3 * w / len(points):.0f} ms a point, this process "
                          f"{1e3 * h / len(points):.0f} ms, ratio {w / h:.3f}")
        finally:
            cluster.close()
    print(f"worker / in-process over {args.rounds} rounds: {worker_s / here_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
