"""Accuracy of the Bloch simulator against an independent EPG (tests/physics_ref, Weigel JMRI 2015) and,
when installed, MRzeroCore.

Usage: .venv/bin/python benchmarks/physics_accuracy.py [--n-nonselective 32] [--no-mrzero]

1. ``protocols/gre_2d.toml`` through ``scanctl run`` (receiver noise off): per-tissue ROI means of
   image.npy and of the EPG reference image (same recon, same ROIs: tissue voxels one voxel from any
   other), their ratio, CSF / grey matter, and the k-space NRMSE of raw.h5 against the EPG-built k-space.
2. A non-selective RF-spoiled GRE of pypulseq block pulses on an n x n Shepp–Logan: k-space NRMSE of
   scanctl against the EPG reference, and of MRzeroCore (if importable) against the same reference — on
   the file itself and on its phase mirror (MRzeroCore turns a pulse of phase φ about +φ, the project's
   convention about -φ: see tests/test_physics_reference.py), after one constant complex factor.

NRMSE = ||got - ref|| / ||ref|| over every sample. The references are in the engine's signal unit (what a
one-voxel 90° FID gives, docs/phantom.md: 1 per mm³ of proton density 1). Wall times are whole calls on
this machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.physics_ref

from scanctl.simulators.physics import SpinSystem, shepp_logan  # noqa: E402
from scanctl.simulators.physics.phantom import tissue_values  # noqa: E402

from scanctl.cli import main as scanctl_main  # noqa: E402
from scanctl.engine.segments import compile_segments  # noqa: E402
from scanctl.sequence import pulseq_read  # noqa: E402
from tests.physics_ref import gre  # noqa: E402
from tests.physics_ref import nonselective as ns  # noqa: E402
from tests.physics_ref.seqread import read_gre  # noqa: E402
from tests.test_physics_reference import signal_unit  # noqa: E402

LARMOR_HZ = 42.576e6 * 3.0


def nrmse(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def fitted(got: np.ndarray, ref: np.ndarray) -> tuple[float, complex]:
    c = complex(np.vdot(got, ref) / np.vdot(got, got))
    return nrmse(c * got, ref), c


def image(kspace: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace))))


def roi_means(img: np.ndarray, tissues: gre.Tissues) -> dict[str, float]:
    out = {}
    for c, name in enumerate(tissues.names):
        m = tissues.label == c
        core = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
        if core.sum() >= 20:
            out[name] = float(img[core].mean())
    return out


def read_raw(path: Path) -> np.ndarray:
    import ismrmrd

    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as ds:
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    return np.array([a.data[0] for a in sorted(acqs, key=lambda a: a.idx.kspace_encode_step_1)], np.complex128)


def gre_2d(tmp: Path) -> None:
    protocol = tmp / "gre_2d.toml"
    protocol.write_text((ROOT / "protocols" / "gre_2d.toml").read_text() + "\n[acquisition]\nnoise_std = 0.0\n")
    t = time.perf_counter()
    if scanctl_main(["run", str(protocol), "--out", str(tmp / "gre"), "--no-prescan"]) != 0:
        raise SystemExit("scanctl run failed")
    run_s = time.perf_counter() - t
    phantom = shepp_logan(128)
    named = {name: (t1, t2) for name, (_, t1, t2) in tissue_values(3.0).items()}
    tissues = gre.tissues_of(phantom.pd, phantom.t1_s, phantom.t2_s, named)
    t = time.perf_counter()
    ref, _ = gre.reference_kspace(read_gre(tmp / "gre" / "sequence.seq"), tissues, phantom.voxel_size_m,
                                  unit_per_voxel=signal_unit(phantom.voxel_size_m))
    ref_s = time.perf_counter() - t
    got_k = read_raw(tmp / "gre" / "raw.h5")
    got, want = roi_means(np.load(tmp / "gre" / "image.npy")[0], tissues), roi_means(image(ref), tissues)
    print(f"gre_2d (protocols/gre_2d.toml, 128 x 128): scanctl run {run_s:.2f} s, EPG reference {ref_s:.2f} s")
    print(f"  {'tissue':<14}{'image.npy':>12}{'EPG':>12}{'ratio':>9}")
    for name in want:
        print(f"  {name:<14}{got[name]:>12.5f}{want[name]:>12.5f}{got[name] / want[name]:>9.4f}")
    print(f"  CSF / grey matter: image.npy {got['csf'] / got['gray_matter']:.4f}, "
          f"EPG {want['csf'] / want['gray_matter']:.4f}")
    print(f"  k-space NRMSE raw.h5 vs EPG: {nrmse(got_k, ref):.3g} "
          f"(its complex conjugate: {nrmse(np.conj(got_k), ref):.3g})")
    print(f"  image NRMSE image.npy vs EPG image: {nrmse(np.load(tmp / 'gre' / 'image.npy')[0], image(ref)):.3g}")


def nonselective(tmp: Path, n: int, with_mrzero: bool) -> None:
    phantom = shepp_logan(n)
    tissues = gre.tissues_of(phantom.pd, phantom.t1_s, phantom.t2_s, {})
    paths = {sign: ns.write_gre(tmp / f"ns{sign:+.0f}.seq", n=n, phase_sign=sign) for sign in (1.0, -1.0)}
    ref = gre.reference_kspace(read_gre(paths[1.0]), tissues, phantom.voxel_size_m)[0]
    t = time.perf_counter()
    spins = SpinSystem(phantom)
    got = np.concatenate([d for s in compile_segments(pulseq_read.read(paths[1.0]), larmor_hz=LARMOR_HZ)
                          for d in spins.play(s.gradient, s.rf, s.adc)]).astype(np.complex128)
    got /= signal_unit(phantom.voxel_size_m)  # MRzero's unit: 1 per voxel of proton density 1
    sim_s = time.perf_counter() - t
    print(f"non-selective RF-spoiled GRE of pypulseq block pulses, {n} x {n}, 15 deg, TR 10 ms, 20 dummies:")
    print(f"  scanctl ({sim_s:.2f} s): NRMSE vs EPG {nrmse(got, ref):.3g}; after one complex factor "
          f"{fitted(got, ref)[0]:.3g}")
    if not with_mrzero:
        return
    try:
        import MRzeroCore  # noqa: F401
    except ImportError as exc:
        print(f"  MRzeroCore: not installed ({exc}); pip install torch==2.13.0 MRzeroCore")
        return
    for sign, what in ((1.0, "the same file"), (-1.0, "the phase-mirrored file")):
        t = time.perf_counter()
        m = ns.mrzero_kspace(paths[sign], phantom.pd, phantom.t1_s, phantom.t2_s, phantom.voxel_size_m, LARMOR_HZ)
        m_s = time.perf_counter() - t
        error, factor = fitted(m, ref)
        print(f"  MRzeroCore on {what} ({m_s:.2f} s): NRMSE vs EPG {nrmse(m, ref):.3g}; after one complex factor "
              f"{error:.3g} (factor {factor.real:+.4f}{factor.imag:+.4f}i); vs scanctl after one factor "
              f"{fitted(got, m)[0]:.3g}")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-nonselective", type=int, default=32, help="matrix of the non-selective GRE")
    parser.add_argument("--no-mrzero", action="store_true", help="skip MRzeroCore even if installed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gre_2d(Path(tmp))
        nonselective(Path(tmp), args.n_nonselective, not args.no_mrzero)


if __name__ == "__main__":
    run()
