"""A non-selective RF-spoiled 2D gradient echo written with pypulseq: the sequence on which MRzeroCore's
model (no slice selection) and the references all apply."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pypulseq as pp


def write_gre(path: str | Path, n: int = 32, fov: float = 0.256, flip_deg: float = 15.0, tr: float = 10e-3,
              dummies: int = 20, slab: float = 0.01, phase_sign: float = 1.0) -> Path:
    """pypulseq block pulse (2 samples + time shape), Cartesian read-out, read spoiler and phase rewinder,
    117° quadratic RF spoiling with the ADC following (``phase_sign`` -1: every RF and ADC phase negated,
    the mirror image of the schedule); lines from -n/2 to n/2 - 1."""
    system = pp.Opts(max_grad=28, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s", rf_ringdown_time=20e-6,
                     rf_dead_time=100e-6, adc_dead_time=10e-6)
    seq = pp.Sequence(system)
    rf = pp.make_block_pulse(flip_angle=math.radians(flip_deg), duration=200e-6, delay=system.rf_dead_time,
                             system=system)
    dk = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * dk, flat_time=n * 40e-6, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system)
    gx_spoil = pp.make_trapezoid(channel="x", area=2 * n * dk, system=system)
    k = np.arange(dummies + n)
    phases = phase_sign * np.deg2rad(117.0 * k * (k + 1) / 2 % 360)
    fill = tr - pp.calc_duration(rf) - pp.calc_duration(gx_pre) - pp.calc_duration(gx)
    for i in range(-dummies, n):
        rf.phase_offset = adc.phase_offset = float(phases[i + dummies])
        gy = pp.make_trapezoid(channel="y", area=(i - n / 2) * dk if i >= 0 else 0.0, duration=1e-3, system=system)
        seq.add_block(rf)
        seq.add_block(gx_pre, gy)
        seq.add_block(gx, adc) if i >= 0 else seq.add_block(gx)
        seq.add_block(gx_spoil, pp.scale_grad(gy, -1), pp.make_delay(math.ceil(fill / 1e-5) * 1e-5))
    seq.set_definition("FOV", [fov, fov, slab])
    path = Path(path)
    seq.write(str(path))
    return path


def mrzero_kspace(path: str | Path, pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, voxel_m: tuple[float, ...],
                  larmor_hz: float) -> np.ndarray:
    """MRzeroCore's PDG simulation of the ``.seq`` at ``path`` on 2D maps ``(ny, nx)`` (sinc voxels, no T2',
    no diffusion, uniform B1 and coil), as ``(lines, samples)``; state limits far below the signal (400
    states, 1e-6). Raises ImportError without MRzeroCore."""
    import MRzeroCore as mr0
    import torch

    ny, nx = pd.shape
    affine = torch.eye(3, 4)
    for axis, size in enumerate(voxel_m[:3]):
        affine[axis, axis] = size * 1000  # mm
    to_xyz = lambda m: torch.tensor(np.ascontiguousarray(m.T[:, :, None]), dtype=torch.float32)  # noqa: E731
    zeros = torch.zeros(nx, ny, 1)
    phantom = mr0.VoxelGridPhantom(to_xyz(pd), to_xyz(np.where(pd > 0, t1, 1.0)), to_xyz(np.where(pd > 0, t2, 1.0)),
                                   torch.full((nx, ny, 1), 1e9), zeros, zeros, torch.ones(1, nx, ny, 1),
                                   torch.ones(1, nx, ny, 1), affine)
    data = phantom.build()
    seq = mr0.Sequence.import_file(str(path), larmor_hz=larmor_hz)
    graph = mr0.compute_graph(seq, data, 400, 1e-6)
    signal = mr0.execute_graph(graph, seq, data, min_emitted_signal=1e-6, min_latent_signal=1e-6,
                               print_progress=False)
    return np.asarray(signal.detach().numpy()).reshape(-1, nx)
