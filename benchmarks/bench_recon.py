"""NUFFT recon figures (docs/recon.md, issue 16): the 64-spoke radial GRE of pypulseq's ``write_radial_gre.py``
(tests/pypulseq_examples.py builds it with the pinned pypulseq), its signal summed directly from the phantom at
the sequence's own trajectory, written to an ISMRMRD file with its ``traj``; then

1. the whole recon of that file (read + ``reconstruct_file``: Pipe–Menon weights and FINUFFT), target < 1 s;
2. the transform alone for each NUFFT candidate on the same samples and weights — FINUFFT (what the recon
   uses), PyNUFFT, and scanctl's own Kaiser–Bessel gridding (``Gridder.image``) — times as ratios to FINUFFT,
   and each one's error against the direct sum (NDFT) on that case and on a small random one.

Run: ``.venv/bin/python benchmarks/bench_recon.py [--channels 8] [--repeat 7]`` (PyNUFFT: ``pip install
pynufft``, or the ``bench`` extra; without it its line says so).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/pypulseq_examples.py

from scanctl.data.nufft import Gridder, adjoint, density_weights  # noqa: E402
from scanctl.data.rawdata import RawDataWriter, RawHeader, read_acquisitions  # noqa: E402
from scanctl.data.recon import reconstruct_file  # noqa: E402
from scanctl.hw.interfaces import Acquisition  # noqa: E402
from scanctl.sequence.pulseq_read import read  # noqa: E402
from scanctl.sequence.waveforms import kspace_adc  # noqa: E402
from tests import pypulseq_examples as examples  # noqa: E402

N, SPOKES = 64, 64


def direct(k: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """The NDFT: Σ_m values_m exp(+2πi k_m · x) at the pixels, ``[y, x]`` (k in units of 1/FOV)."""
    x = (np.arange(n) - n // 2) / n
    ey = np.exp(2j * np.pi * np.outer(k[:, 1], x))  # (M, n)
    ex = np.exp(2j * np.pi * np.outer(k[:, 0], x))
    return np.einsum("m,my,mx->yx", values, ey, ex)


def radial_file(folder: Path, channels: int) -> Path:
    """The example's sequence, its signal (a disc phantom times smooth coil phases), written to raw.h5."""
    path = folder / "radial.seq"
    examples.radial_gre(N, spokes=SPOKES).write(str(path))
    seq = read(path)
    fov = float(seq.definition_floats("FOV")[0])
    k = kspace_adc(seq)
    m = 64
    r = (np.arange(m) - m // 2) * fov / m
    y, x = np.meshgrid(r, r, indexing="ij")
    pd = ((x / 0.09) ** 2 + (y / 0.11) ** 2 <= 1).astype(float) - 0.5 * ((x - 0.03) ** 2 + y**2 <= 0.02**2)
    signal = np.exp(-2j * np.pi * (np.outer(k[0], x.ravel()) + np.outer(k[1], y.ravel()))) @ pd.ravel()
    coils = np.exp(1j * np.arange(channels))[:, None] * np.linspace(0.5, 1.5, channels)[:, None]
    rows = seq.blocks.adc[seq.blocks.adc >= 0]
    acqs, a = [], 0
    for w, samples in enumerate(seq.adc.num_samples[rows].tolist()):
        acqs.append(Acquisition(w, 0, 0.0, 1e-5, (coils * signal[a : a + samples]).astype(np.complex64), {}))
        a += samples
    raw = folder / "raw.h5"
    with RawDataWriter.open(raw, RawHeader.from_sequence(seq, larmor_hz=1.0), seq=seq) as writer:
        writer.extend(acqs)
    return raw


def timed(run: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs (after one to warm up)."""
    run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def candidates(k: np.ndarray, n: int) -> dict[str, Callable[[np.ndarray], np.ndarray] | str]:
    """Each NUFFT's adjoint ``(channels, M) -> (channels, n, n)`` (or why it is missing), planned inside."""
    out: dict[str, Callable[[np.ndarray], np.ndarray] | str] = {
        "finufft": lambda v: adjoint(k, v, n),
        "own KB gridding": lambda v: np.stack([Gridder(k, n).image(c) for c in v]),
    }
    try:
        import pynufft
    except ImportError:
        out["pynufft"] = "not installed (pip install pynufft)"
        return out

    def pyn(v: np.ndarray) -> np.ndarray:
        plan = pynufft.NUFFT()
        plan.plan(2 * np.pi * k[:, ::-1] / n, (n, n), (2 * n, 2 * n), (6, 6))  # (y, x) order, radians
        return np.stack([plan.adjoint(c) for c in v]) * (2 * n) ** 2  # its adjoint divides by the grid size

    out["pynufft"] = pyn
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = radial_file(Path(tmp), args.channels)
        raw = read_acquisitions(path)
        whole = timed(lambda: reconstruct_file(read_acquisitions(path)), args.repeat)
        print(f"radial GRE {SPOKES} spokes x {N} samples, {args.channels} channels: read + recon {whole * 1e3:.1f} ms "
              f"(target < 1000 ms); {reconstruct_file(raw).images.shape}")
        k = np.concatenate([t[:, :2] for t in raw.trajectories]).astype(np.float64)
        data = np.concatenate([a.data for a in raw.acquisitions], axis=1).astype(np.complex128)
        weights = density_weights(Gridder(k, N))
        t_w = timed(lambda: density_weights(Gridder(k, N)), args.repeat)
        print(f"  Pipe-Menon density weights (shared by all): {t_w * 1e3:.1f} ms")
        values = data * weights
        reference = np.stack([direct(k, c, N) for c in values[:1]])
        rng = np.random.default_rng(0)
        small_k = rng.uniform(-12, 12, (400, 2))
        small_v = (rng.normal(size=400) + 1j * rng.normal(size=400))[None]
        small_ref = direct(small_k, small_v[0], 24)
        base = None
        for name, fn in candidates(k, N).items():
            if isinstance(fn, str):
                print(f"  {name:16s} {fn}")
                continue
            seconds = timed(lambda fn=fn: fn(values), args.repeat)
            base = base or seconds
            err = np.max(np.abs(fn(values[:1]) - reference)) / np.max(np.abs(reference))
            small = candidates(small_k, 24)[name]
            small_err = np.max(np.abs(small(small_v)[0] - small_ref)) / np.max(np.abs(small_ref))  # type: ignore[operator]
            print(f"  {name:16s} {seconds * 1e3:8.2f} ms  = {seconds / base:5.1f}x finufft;  error vs NDFT "
                  f"{err:.1e} (radial), {small_err:.1e} (400 random samples, 24 x 24)")


if __name__ == "__main__":
    main()
