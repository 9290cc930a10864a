"""The RF simulator images every plane a scan excites: a three-plane localizer's transverse, sagittal and
coronal slices, and scans alternating orientations (simulators/rf.py, physics/placement.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scanctl.simulators.physics.phantom import shepp_logan_at

from tests.test_phantom import FOV

DATA = Path(__file__).parent / "data"


def raw_slices(raw: Path) -> dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Each slice's image (inverse FFT of its lines in phase-encoding order: rows along phase, columns along
    read) and geometry (mm and unit vectors, patient coordinates) as raw.h5's acquisitions give them."""
    import ismrmrd

    lines: dict[int, list] = {}
    with ismrmrd.Dataset(str(raw), "dataset", create_if_needed=False) as ds:
        for i in range(ds.number_of_acquisitions()):
            acq = ds.read_acquisition(i)
            lines.setdefault(int(acq.idx.slice), []).append(acq)
    out = {}
    for slc, acqs in lines.items():
        acqs.sort(key=lambda a: a.idx.kspace_encode_step_1)
        k = np.stack([a.data[0] for a in acqs]).astype(np.complex128)
        image = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k))))
        a = acqs[0]
        out[slc] = image, {name: np.array(getattr(a, name), np.float64)
                           for name in ("position", "read_dir", "phase_dir", "slice_dir")}
    return out


def cut(geometry: dict[str, np.ndarray], shape: tuple[int, int], fov_m: tuple[float, float]) -> np.ndarray:
    """The phantom's proton density on a slice's pixels (pixel (i - n//2) x fov/n from the position along
    read and phase)."""
    rows = (np.arange(shape[0]) - shape[0] // 2) * fov_m[1] / shape[0]
    cols = (np.arange(shape[1]) - shape[1] // 2) * fov_m[0] / shape[1]
    c, r = np.meshgrid(cols, rows)
    points = geometry["position"] * 1e-3 + c[..., None] * geometry["read_dir"] + r[..., None] * geometry["phase_dir"]
    return shepp_logan_at(points, fov_m=FOV)[0]


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_the_localizer_images_each_slice_on_its_plane(tmp_path, caplog):
    """``scanctl run`` of a three-plane localizer (3 transverse, 3 sagittal, 3 coronal slices, 32 x 32): each
    slice's image follows the phantom's proton density on the plane raw.h5 places it on, better than any
    other slice's plane (but its mirror image: the phantom is nearly symmetric left to right), and the
    simulator poses a stack of 3 slabs for each orientation, each when first excited."""
    from scanctl.cli import main

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="scanctl.simulators.rf"):
        assert main(["run", str(DATA / "localizer32.toml"), "--rf", "sim://?matrix=32", "--no-prescan",
                     "--no-recon", "--out", str(out)]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "outside the planes" in m or "not one stack" in m]
    assert sum("on 3 slabs" in m for m in messages) == 3, messages
    slices = raw_slices(out / "raw.h5")
    assert sorted(slices) == list(range(9))
    normals = {tuple(np.round(np.abs(g["slice_dir"]), 3)) for _, g in slices.values()}
    assert normals == {(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)}
    cuts = {s: cut(g, image.shape, (FOV, FOV)) for s, (image, g) in slices.items()}
    for s, (image, _) in slices.items():
        own = corr(image, cuts[s])
        assert own > 0.9, (s, own)
        for t in slices:
            if t != s and corr(cuts[t], cuts[s]) < 0.95:  # a plane whose cut differs from this one's
                assert corr(image, cuts[t]) < own, (s, t, own, corr(image, cuts[t]))


def gre_planes(n: int, planes: list[tuple[tuple[str, str, str], float]], excited: set[int]):
    """A 2D gradient echo over several planes, one after the other in every TR: plane ``j`` has its read,
    phase and slice on the gradient channels ``planes[j][0]`` and its offset ``planes[j][1]`` (m) along the
    slice channel; only the planes in ``excited`` get their RF pulse (the others' blocks play the same
    gradients and ADC, with a delay for the pulse): the same timing whatever is excited."""
    import pypulseq as pp

    from tests.pulseq_factory import default_system

    system = default_system()
    seq = pp.Sequence(system)
    thickness, dk = 5e-3, 1 / FOV
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=np.deg2rad(30), duration=2e-3, slice_thickness=thickness,
                                   apodization=0.5, time_bw_product=4, delay=system.rf_dead_time, system=system,
                                   return_gz=True, use="excitation")
    blocks = []
    for channels, offset in planes:
        read, phase, slc = channels
        pulse = pp.make_sinc_pulse(flip_angle=np.deg2rad(30), duration=2e-3, slice_thickness=thickness,
                                   apodization=0.5, time_bw_product=4, delay=system.rf_dead_time, system=system,
                                   use="excitation")
        pulse.freq_offset = gz.amplitude * offset
        pulse.phase_offset = -2 * np.pi * pulse.freq_offset * pp.calc_rf_center(pulse)[0]
        select = pp.make_trapezoid(channel=slc, amplitude=gz.amplitude, flat_time=gz.flat_time,
                                   rise_time=gz.rise_time, system=system)
        gx = pp.make_trapezoid(channel=read, flat_area=n * dk, flat_time=n * 40e-6, system=system)
        adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
        blocks.append((pulse, select, gx, adc, phase, slc, pp.calc_duration(rf, gz)))
    for i in range(n):
        for j, (pulse, select, gx, adc, phase, slc, rf_time) in enumerate(blocks):
            gy = pp.make_trapezoid(channel=phase, area=(i - n / 2 + 0.5) * dk, duration=1e-3, system=system)
            if j in excited:
                seq.add_block(pulse, select, pp.make_delay(rf_time))
            else:
                seq.add_block(select, pp.make_delay(rf_time))
            seq.add_block(pp.make_trapezoid(channel=gx.channel, area=-gx.area / 2, duration=1e-3, system=system), gy,
                          pp.make_trapezoid(channel=slc, area=-select.area / 2, duration=1e-3, system=system))
            seq.add_block(gx, adc)
            seq.add_block(pp.make_trapezoid(channel=slc, area=4 / thickness, system=system), pp.scale_grad(gy, -1),
                          pp.make_delay(4e-3))
    seq.set_definition("FOV", [FOV, FOV, thickness])
    return seq


def run_lines(seq, tmp_path: Path, name: str, n: int, planes: int) -> np.ndarray:
    """``scanctl run`` of ``seq`` (matrix ``n``): the raw data, ``(planes, n lines, n samples)``."""
    import ismrmrd

    from scanctl.cli import main

    seq.write(str(tmp_path / f"{name}.seq"))
    out = tmp_path / name
    assert main(["run", str(tmp_path / f"{name}.seq"), "--rf", f"sim://?matrix={n}", "--out", str(out),
                 "--no-recon"]) == 0
    with ismrmrd.Dataset(str(out / "raw.h5"), "dataset", create_if_needed=False) as ds:
        data = np.stack([ds.read_acquisition(i).data[0] for i in range(ds.number_of_acquisitions())])
    return data.reshape(n, planes, n).transpose(1, 0, 2).astype(np.complex128)


# A transverse slice at z = +10 mm and a sagittal one at x = -15 mm (read/phase/slice channels, offset).
TWO_PLANES = [(("x", "y", "z"), 0.010), (("y", "z", "x"), -0.015)]


def test_a_scan_alternating_two_orientations_images_each_as_alone(tmp_path):
    """A transverse and a sagittal slice excited in turn every TR give, each, the data of the same scan with
    only that slice's pulse played (the same gradients and timing): each plane's spins see only their own
    excitations and relax between them (noise-free: to float precision); each image follows its plane."""
    n = 32
    both = run_lines(gre_planes(n, TWO_PLANES, {0, 1}), tmp_path, "both", n, 2)
    for j, (channels, offset) in enumerate(TWO_PLANES):
        alone = run_lines(gre_planes(n, TWO_PLANES, {j}), tmp_path, f"alone{j}", n, 2)[j]
        assert np.abs(both[j] - alone).max() <= 1e-4 * np.abs(alone).max(), j
        image = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(both[j]))))
        read, phase, slc = (np.eye(3)["xyz".index(c)] for c in channels)
        plane = cut({"position": 1e3 * offset * slc, "read_dir": read, "phase_dir": phase}, image.shape, (FOV, FOV))
        assert corr(image, plane) > 0.9, (j, corr(image, plane))



def test_an_off_centre_pulse_repeated_later_is_composed_once():
    """A slice-selective sinc pulse (even sample count: two samples at its peak) at an off-centre carrier,
    repeated every 120 ms with RF spoiling: its sample times, absolute in a segment, carry float noise that
    grows with the scan time (2e-16 s at 1.5 s, 2e-10 of the raster), and the spin system's pulse cache
    composed it again whenever that noise moved a rounded digit or the peak sample (gre_oblique: 32 of its
    168 pulses, 0.2x real time). Composed once."""
    from scanctl.simulators.physics import SpinSystem

    from tests.test_bloch import adc_program, gradient, rf_program, rf_spoil_phases, single_voxel

    n, strength, f = 2000, 4e5, -1024.500620247586  # samples, slice gradient (Hz/m), carrier (Hz)
    b1 = 500.0 * np.sinc(np.linspace(-4, 4, n)) * np.hanning(n)
    spins = SpinSystem(single_voxel(shape=(1, 4), voxel=(1e-3, 1e-3, 5e-3)), isochromats=16)
    starts = 1e-4 + 0.12 * np.arange(14)
    for start, phase in zip(starts.tolist(), rf_spoil_phases(starts.size).tolist(), strict=True):
        t = np.array([start, start + 0.1])
        spins.play(gradient(start, start + 0.1, z=[(t, np.full(2, strength))]),
                   rf_program(start, start + 0.1, [(start + 1e-5, b1 * np.exp(1j * phase), f)]),
                   adc_program(start, start + 0.1, []))
    assert spins._cache.misses == 1, (spins._cache.misses, spins._cache.hits)


def test_a_stack_under_a_static_field_gradient_is_posed_once(tmp_path, caplog):
    """Three transverse slices under the magnet's own gradient along z (``b0_grad``, 50 Hz/cm, not shimmed):
    every slice moves with the field (its carrier over the total gradient), the first pulse's and the queued
    pulses' alike, so the three make one stack posed at the first pulse, and no slice gets a system of its
    own later."""
    from scanctl.cli import main
    from tests.test_phantom import gre_slice

    n = 16
    gre_slice(n, offset_m=[-0.024, 0.0, 0.024], tr_delay_s=0.03).write(str(tmp_path / "ms.seq"))  # 1.6 s
    with caplog.at_level(logging.INFO, logger="scanctl.simulators.rf"):
        assert main(["run", str(tmp_path / "ms.seq"), "--rf", f"sim://?matrix={n}&b0_grad=0,0,50", "--no-prescan",
                     "--no-recon", "--out", str(tmp_path / "out")]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("on 3 slabs" in m for m in messages) == 1, messages
    assert not [m for m in messages if "first excited" in m or "not one stack" in m], messages


def test_an_uneven_stack_images_each_slice_with_a_system_of_its_own(tmp_path, caplog):
    """Three transverse slices at -24, 0 and +10 mm (no even spacing: no stack of slabs), interleaved every TR:
    each slice gets a spin system of its own at its first excitation (three posed in all, once each), and
    each slice's image follows its own plane's proton density."""
    from scanctl.cli import main
    from tests.test_phantom import _grid, _plane_phantom, gre_slice

    n, offsets = 32, [-0.024, 0.0, 0.010]
    gre_slice(n, offset_m=offsets).write(str(tmp_path / "ms.seq"))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="scanctl.simulators.rf"):
        assert main(["run", str(tmp_path / "ms.seq"), "--rf", f"sim://?matrix={n}", "--no-recon",
                     "--out", str(out)]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("rf: a plane first excited") for m in messages) == 2, messages
    slices = raw_slices(out / "raw.h5")
    r, c = _grid((n, n), n)
    maps = [_plane_phantom(np.stack((c, r, np.full(r.shape, z)), -1), n).pd for z in offsets]
    for j in range(len(offsets)):
        got = [corr(slices[j][0], m) for m in maps]
        assert got[j] > 0.9 and got[j] == max(got), (j, np.round(got, 3))
