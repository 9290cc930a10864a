"""The recon of any ISMRMRD file: files written here with the ``ismrmrd`` package (as another tool would),
multi-slice in position order with its geometry, 3D, EPI odd/even phase correction (ghost ratio before and
after), coil combination, image.json, and ``scanctl recon``."""

from __future__ import annotations

import json
import logging

import ismrmrd
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ismrmrd import constants as C

from scanctl.cli import main
from scanctl.data.rawdata import read_acquisitions
from scanctl.data.recon import reconstruct_file
from scanctl.data.recon.coils import combine, noise_covariance
from tests.test_recon import corr, kspace, shepp_logan

N = 64


def write_ismrmrd(path, lines, *, matrix=(N, N, 1), fov_mm=(250.0, 250.0, 5.0), trajectory="cartesian",
                  centre=(N // 2, 0)):
    """An ISMRMRD file as another tool writes it (the ismrmrd package): ``lines`` are dicts with ``data``
    (channels, samples) and optional ``lin``, ``par``, ``slc``, ``flags``, ``position``, ``read``, ``phase``,
    ``slice``, ``centre`` (the centre sample)."""
    xsd = ismrmrd.xsd
    space = xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=matrix[0], y=matrix[1], z=matrix[2]),
                                  fieldOfView_mm=xsd.fieldOfViewMm(x=fov_mm[0], y=fov_mm[1], z=fov_mm[2]))
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=matrix[1] - 1, center=centre[0]),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=max(matrix[2] - 1, 0), center=centre[1]))
    enc = xsd.encodingType(encodedSpace=space, reconSpace=space, encodingLimits=limits,
                           trajectory=xsd.trajectoryType(trajectory))
    conditions = xsd.experimentalConditionsType(H1resonanceFrequency_Hz=63_870_000)
    header = xsd.ismrmrdHeader(experimentalConditions=conditions, encoding=[enc])
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dset.write_xml_header(xsd.ToXML(header, encoding="utf-8"))
    for n, line in enumerate(lines):
        acq = ismrmrd.Acquisition.from_array(np.asarray(line["data"], dtype=np.complex64))
        acq.scan_counter = n
        acq.idx.kspace_encode_step_1 = line.get("lin", 0)
        acq.idx.kspace_encode_step_2 = line.get("par", 0)
        acq.idx.slice = line.get("slc", 0)
        acq.center_sample = line.get("centre", np.shape(line["data"])[-1] // 2)
        acq.sample_time_us = 5.0
        for flag in line.get("flags", ()):
            acq.set_flag(flag)
        acq.position[:] = line.get("position", (0.0, 0.0, 0.0))
        acq.read_dir[:] = line.get("read", (1.0, 0.0, 0.0))
        acq.phase_dir[:] = line.get("phase", (0.0, 1.0, 0.0))
        acq.slice_dir[:] = line.get("slice", (0.0, 0.0, 1.0))
        dset.append_acquisition(acq)
    dset.close()
    return path


# ----------------------------------------------------------------------------------------------------------
# Multi-slice and 3D from a foreign file, with geometry
# ----------------------------------------------------------------------------------------------------------


def test_multislice_images_in_position_order_with_their_geometry(tmp_path):
    # Sagittal slices (normal -x), acquired interleaved and counted in acquisition order: the SLC counter
    # says nothing about where they lie; the positions do.
    read, phase, normal = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)
    offsets_mm = [6.0, -6.0, 0.0]  # slices 0, 1, 2 along the normal
    objects = [np.roll(shepp_logan(32), 4 * s, axis=1) * (1 + s) for s in range(3)]
    lines = [{"data": kspace(objects[s])[line][None], "lin": line, "slc": s,
              "position": tuple(o * np.array(normal) + np.array([0.0, 10.0, -20.0])), "read": read,
              "phase": phase, "slice": normal}
             for line in range(32) for s, o in enumerate(offsets_mm)]
    path = write_ismrmrd(tmp_path / "sag.h5", lines, matrix=(32, 32, 1), fov_mm=(200.0, 220.0, 3.0),
                         centre=(16, 0))
    raw = read_acquisitions(path)
    assert raw.read_dir.shape == raw.phase_dir.shape == raw.slice_dir.shape == raw.position_mm.shape == (96, 3)
    np.testing.assert_array_equal(raw.slice_dir, np.tile(normal, (96, 1)))
    np.testing.assert_array_equal(raw.phase_dir[5], phase)
    np.testing.assert_allclose(raw.position_mm[:3, 0], -np.array(offsets_mm))
    result = reconstruct_file(raw)
    order = np.argsort(offsets_mm)  # by position along the slice normal: -6, 0, 6 mm -> SLC 1, 2, 0
    assert [i["SLC"] for i in result.index] == order.tolist()
    for row, s in enumerate(order):
        np.testing.assert_allclose(result.images[row], np.abs(objects[s]), atol=1e-4)
        entry = result.meta["images"][row]
        assert entry["row"] == row and entry["counters"]["SLC"] == s
        np.testing.assert_allclose(entry["position_mm"], offsets_mm[s] * np.array(normal) + [0.0, 10.0, -20.0])
        assert (entry["read_dir"], entry["phase_dir"], entry["slice_dir"]) == (list(read), list(phase), list(normal))
        assert entry["fov_mm"] == [200.0, 220.0, 3.0] and entry["matrix"] == [32, 32]
        assert entry["channels"] == 1 and entry["combine"] == "single"
    assert result.meta["trajectory"] == "cartesian" and result.meta["three_d"] is False


def test_3d_partitions_by_fft_along_kz_with_partition_positions(tmp_path):
    nz = 8
    volume = np.stack([np.roll(shepp_logan(16), p, axis=0) * (1 + 0.1 * p) for p in range(nz)])
    k = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(volume)))
    centre_mm = np.array([0.0, 0.0, 30.0])
    lines = [{"data": k[p, y][None], "lin": y, "par": p, "position": tuple(centre_mm)}
             for p in range(nz) for y in range(16)]
    path = write_ismrmrd(tmp_path / "3d.h5", lines, matrix=(16, 16, nz), fov_mm=(200.0, 200.0, 40.0),
                         centre=(8, nz // 2))
    result = reconstruct_file(read_acquisitions(path))
    assert result.images.shape == (nz, 16, 16) and result.meta["three_d"] is True
    np.testing.assert_allclose(result.images, np.abs(volume), atol=1e-4)
    z = [e["position_mm"][2] for e in result.meta["images"]]
    np.testing.assert_allclose(z, 30.0 + (np.arange(nz) - nz // 2) * 5.0)  # 40 mm / 8 partitions
    assert {e["fov_mm"][2] for e in result.meta["images"]} == {5.0}


# ----------------------------------------------------------------------------------------------------------
# EPI: odd/even phase correction
# ----------------------------------------------------------------------------------------------------------


def epi_lines(image, delay, phase, *, centre_y=True):
    """An EPI's lines of ``image``: every odd line read towards -k_x, its samples ``delay`` samples late
    along k_x (k + delay) with a constant ``phase`` (rad): what a gradient delay does to them."""
    n = image.shape[0]
    x = np.arange(n) - n // 2
    good, bad = kspace(image), kspace(image * np.exp(-2j * np.pi * delay * x / n)[None, :]) * np.exp(1j * phase)
    lines = []
    for y in range(n):
        if y % 2:
            lines.append({"data": bad[y, ::-1][None], "lin": y, "flags": (C.ACQ_IS_REVERSE,), "centre": n // 2 - 1})
        else:
            lines.append({"data": good[y][None], "lin": y})
    return lines


def small_object(n=N, shift=0):
    """Shepp–Logan over the middle half of the rows (so that its N/2 ghost falls where it is not)."""
    image = np.zeros((n, n))
    image[n // 4 : 3 * n // 4] = shepp_logan(n)[::2][:, :]  # squashed to half height
    return np.roll(image, shift, axis=0)


def ghost_ratio(image, truth):
    """Mean signal where the N/2 ghost of ``truth`` falls (and the object does not) over the mean in the object."""
    inside = truth > 0
    ghost = np.roll(inside, truth.shape[0] // 2, axis=0) & ~inside
    return float(image[ghost].mean() / image[inside].mean())


@pytest.mark.parametrize("shift", [0, N // 8])  # the fit must not depend on where the object lies in y
def test_epi_ghost_removed_by_the_linear_phase_fit(tmp_path, shift):
    truth = small_object(shift=shift)
    path = write_ismrmrd(tmp_path / "epi.h5", epi_lines(truth, delay=0.4, phase=0.3), trajectory="epi")
    raw = read_acquisitions(path)
    before = reconstruct_file(raw, epi_correction=False).images[0]
    after = reconstruct_file(raw).images[0]
    ratio_before, ratio_after = ghost_ratio(before, truth), ghost_ratio(after, truth)
    # measured: 0.24 before, 1.9e-4 after
    assert ratio_before > 0.1
    assert ratio_after < 0.01 * ratio_before
    assert corr(after, truth) > 0.999
    # the project's own measure (scanctl/data/quality.py, RMS signals): measured 0.31 before, 1.8e-4 after
    from scanctl.data.quality import ghosting_ratio

    assert ghosting_ratio(before, truth > 0) > 0.2
    assert ghosting_ratio(after, truth > 0) < 1e-3


@settings(max_examples=12, deadline=None)
@given(delay=st.floats(-1.5, 1.5), phase=st.floats(-1.4, 1.4), shift=st.integers(-N // 8, N // 8))
def test_epi_fit_removes_any_delay_and_phase(delay, phase, shift):
    """Delays up to 1.5 samples either way and zeroth-order phases within +-pi/2, wherever the object lies."""
    from scanctl.data.recon import reconstruct_indexed
    from scanctl.hw.interfaces import Acquisition

    truth = small_object(shift=shift)
    lines = epi_lines(truth, delay, phase)
    acqs = [Acquisition(i, 0, 0.0, 1e-5, line["data"].astype(np.complex64),
                        {"LIN": line["lin"], "REV": int(bool(line.get("flags")))}) for i, line in enumerate(lines)]
    image = reconstruct_indexed(acqs, centres=[line.get("centre", N // 2) for line in lines])[0][0]
    assert ghost_ratio(image, truth) < 1e-3


def test_epi_without_error_is_left_alone():
    from scanctl.data.recon import reconstruct_indexed
    from scanctl.hw.interfaces import Acquisition

    truth = small_object()
    acqs = [Acquisition(i, 0, 0.0, 1e-5, line["data"].astype(np.complex64),
                        {"LIN": line["lin"], "REV": int(bool(line.get("flags")))})
            for i, line in enumerate(epi_lines(truth, 0.0, 0.0))]
    centres = [line.get("centre", N // 2) for line in epi_lines(truth, 0.0, 0.0)]
    image = reconstruct_indexed(acqs, centres=centres)[0][0]
    # The fit finds next to nothing to correct: the object's own line-to-line phase differs slightly between
    # forward->reversed and reversed->forward pairs (measured: a ghost of 1.9e-4 of the object's maximum).
    np.testing.assert_allclose(image, truth, atol=5e-4)
    assert ghost_ratio(image, truth) < 1e-3


def test_epi_reference_lines_are_used_when_the_file_has_them(tmp_path, caplog):
    truth = small_object()
    n = truth.shape[0]
    x = np.arange(n) - n // 2
    delay, phase = -0.6, -0.5
    centre_line = kspace(truth)[n // 2]
    late = kspace(truth * np.exp(-2j * np.pi * delay * x / n)[None, :])[n // 2] * np.exp(1j * phase)
    refs = [{"data": centre_line[None], "lin": n // 2, "flags": (C.ACQ_IS_PHASECORR_DATA,)},
            {"data": late[::-1][None], "lin": n // 2, "centre": n // 2 - 1,
             "flags": (C.ACQ_IS_PHASECORR_DATA, C.ACQ_IS_REVERSE)},
            {"data": centre_line[None], "lin": n // 2, "flags": (C.ACQ_IS_PHASECORR_DATA,)}]
    path = write_ismrmrd(tmp_path / "epi_ref.h5", refs + epi_lines(truth, delay, phase), trajectory="epi")
    with caplog.at_level(logging.INFO, logger="scanctl.data.recon.epi"):
        after = reconstruct_file(read_acquisitions(path)).images[0]
    assert "(reference)" in caplog.text
    assert ghost_ratio(after, truth) < 1e-3
    assert corr(after, truth) > 0.999


# ----------------------------------------------------------------------------------------------------------
# Coil combination
# ----------------------------------------------------------------------------------------------------------


def coil_array(n=N, channels=4):
    """Smooth complex sensitivities of ``channels`` coils around the object."""
    y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    out = []
    for c in range(channels):
        a = 2 * np.pi * c / channels
        out.append(np.exp(-((x - 1.2 * np.cos(a)) ** 2 + (y - 1.2 * np.sin(a)) ** 2) / 1.5) * np.exp(1j * a))
    return np.array(out)


def test_adaptive_combination_recovers_the_object_times_the_sensitivity_norm():
    rho = shepp_logan()
    s = coil_array()
    images = s * rho[None]
    adaptive = combine(images, "adaptive")
    rss = combine(images, "rss")
    np.testing.assert_allclose(rss, np.abs(rho) * np.linalg.norm(s, axis=0), atol=1e-12)
    inside = np.abs(rho) > 0.15
    # noise-free: Walsh's |v^H c| is the RSS where the object is (v the local sensitivity direction; measured
    # within 0.25 %: the sensitivities vary over the 7 x 7 neighbourhood)
    np.testing.assert_allclose(adaptive[inside], rss[inside], rtol=5e-3)


def test_prewhitened_adaptive_combination_has_the_better_snr():
    rng = np.random.default_rng(0)
    channels, n = 4, 32
    s = coil_array(n, channels)
    rho = np.ones((n, n))
    mix = np.eye(channels) + 0.6 * rng.normal(size=(channels, channels))  # correlated, unequal noise
    psi = mix @ mix.T
    noise_scans = [mix @ (rng.normal(size=(channels, 256)) + 1j * rng.normal(size=(channels, 256))) / np.sqrt(2)
                   for _ in range(8)]
    estimate = noise_covariance(noise_scans)
    np.testing.assert_allclose(estimate, psi, atol=0.2 * np.abs(psi).max())  # 2048 samples per channel
    trials = []
    for _ in range(20):
        white = rng.normal(size=(channels, n, n)) + 1j * rng.normal(size=(channels, n, n))
        noise = np.einsum("ab,byx->ayx", mix, white)
        noisy = s * rho[None] + 0.05 * noise / np.sqrt(2)
        trials.append((combine(noisy, "rss"), combine(noisy, "adaptive", estimate)))
    stack = np.array(trials)  # (trials, method, y, x): the SNR of each pixel over the trials, averaged
    snr = np.mean(stack.mean(axis=0) / stack.std(axis=0), axis=(1, 2))
    assert snr[1] > 1.1 * snr[0]


# ----------------------------------------------------------------------------------------------------------
# scanctl recon
# ----------------------------------------------------------------------------------------------------------


def test_cli_recon_writes_the_images_and_their_description(tmp_path, capsys):
    truth = shepp_logan(32)
    rng = np.random.default_rng(1)
    s = coil_array(32, 2)
    k = np.stack([kspace(truth * c) for c in s])
    lines = [{"data": 1e-3 * (rng.normal(size=(2, 32)) + 1j * rng.normal(size=(2, 32))),
              "flags": (C.ACQ_IS_NOISE_MEASUREMENT,)}]
    lines += [{"data": k[:, y], "lin": y, "position": (0.0, 0.0, 12.5)} for y in range(32)]
    path = write_ismrmrd(tmp_path / "two.h5", lines, matrix=(32, 32, 1), centre=(16, 0))
    for how in ("rss", "adaptive"):
        out = tmp_path / how
        assert main(["recon", str(path), "--out", str(out), "--combine", how]) == 0
        images = np.load(out / "image.npy")
        assert images.shape == (1, 32, 32)
        assert corr(images[0], np.abs(truth) * np.linalg.norm(s, axis=0)) > 0.99
        meta = json.loads((out / "image.json").read_text())
        assert meta["images"][0]["combine"] == how and meta["images"][0]["channels"] == 2
        assert meta["images"][0]["position_mm"] == [0.0, 0.0, 12.5]
        assert (out / "image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1 image(s) of 32 x 32" in capsys.readouterr().out


@pytest.mark.parametrize("content, expect", [
    (None, "no such raw data file"),
    (b"not hdf5 at all", "not an HDF5 file"),
])
def test_cli_recon_bad_file_is_one_line_naming_it(tmp_path, capsys, content, expect):
    path = tmp_path / "bad.h5"
    if content is not None:
        path.write_bytes(content)
    assert main(["recon", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and expect in err


def test_cli_recon_data_it_cannot_image_names_the_file(tmp_path, capsys):
    lines = [{"data": np.ones((1, 16)), "lin": y} for y in range(4)]
    path = write_ismrmrd(tmp_path / "radial.h5", lines, matrix=(16, 16, 1), trajectory="radial", centre=(8, 0))
    assert main(["recon", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "no trajectory" in err


@pytest.mark.parametrize("field, key", [("position", "position"), ("read", "read_dir"), ("slice", "slice_dir")])
def test_cli_recon_refuses_geometry_that_is_not_finite(tmp_path, capsys, field, key):
    lines = [{"data": np.ones((1, 16)), "lin": y} for y in range(4)]
    lines[2][field] = (0.0, np.nan, 1.0)
    path = write_ismrmrd(tmp_path / "nan.h5", lines, matrix=(16, 16, 1), centre=(8, 0))
    assert main(["recon", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and f"acquisition 2's {key}" in err and "not finite" in err


def test_zero_directions_of_a_foreign_file_are_taken_as_x_y_z(tmp_path):
    lines = [{"data": kspace(shepp_logan(16))[y][None], "lin": y, "read": (0.0, 0.0, 0.0), "phase": (0.0, 0.0, 0.0),
              "slice": (0.0, 0.0, 0.0)} for y in range(16)]
    path = write_ismrmrd(tmp_path / "zero.h5", lines, matrix=(16, 16, 1), centre=(8, 0))
    entry = reconstruct_file(read_acquisitions(path)).meta["images"][0]
    assert (entry["read_dir"], entry["phase_dir"], entry["slice_dir"]) == ([1, 0, 0], [0, 1, 0], [0, 0, 1])


def test_cli_recon_refuses_a_matrix_too_large_to_allocate(tmp_path, capsys):
    path = write_ismrmrd(tmp_path / "huge.h5", [{"data": np.ones((1, 16)), "lin": 0}],
                         matrix=(16, 60000, 60000), centre=(0, 0))
    assert main(["recon", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and "too large" in err


def test_a_run_writes_image_json_beside_the_image(tmp_path):
    from pathlib import Path

    from scanctl.config import profile as profiles
    from scanctl.engine.session import run_scan

    protocol = Path(__file__).parents[1] / "protocols" / "gre_2d.toml"
    report = run_scan(protocol, profiles.load(), tmp_path)
    assert report.outcome == "completed", report.message
    assert report.outputs["image_json"] == "image.json"
    images = np.load(tmp_path / "image.npy")
    meta = json.loads((tmp_path / "image.json").read_text())
    raw = read_acquisitions(tmp_path / "raw.h5")
    assert meta["format"] == 1 and len(meta["images"]) == images.shape[0]
    entry = meta["images"][0]
    assert entry["matrix"] == [images.shape[2], images.shape[1]]
    np.testing.assert_allclose(entry["fov_mm"][:2], np.array(raw.header.fov_m[:2]) * 1e3)
    np.testing.assert_allclose(entry["position_mm"], raw.position_mm[-1], atol=1e-6)
    np.testing.assert_allclose(np.cross(entry["read_dir"], entry["phase_dir"]), entry["slice_dir"], atol=1e-9)


def epi_with_navigators(n: int = 32):
    """pypulseq's ``write_epi_label.py`` at one slice and one repetition: three navigator lines at k_y = 0
    (``NAV``, read +, -, +, ``REV`` labelled) before the EPI train, ``LIN``/``REV`` labels on every line."""
    import pypulseq as pp

    fov = 220e-3
    system = pp.Opts(max_grad=32, grad_unit="mT/m", max_slew=130, slew_unit="T/m/s", rf_ringdown_time=30e-6,
                     rf_dead_time=100e-6)
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=np.pi / 2, system=system, duration=3e-3, slice_thickness=3e-3,
                                   apodization=0.5, time_bw_product=4, return_gz=True, delay=system.rf_dead_time,
                                   use="excitation")
    delta_k, dwell = 1 / fov, 4e-6
    flat_time = np.ceil(n * dwell * 1e5) * 1e-5
    gx = pp.make_trapezoid(channel="x", system=system, amplitude=n * delta_k / (n * dwell), flat_time=flat_time)
    adc = pp.make_adc(num_samples=n, duration=n * dwell, delay=gx.rise_time + flat_time / 2 - (n * dwell - dwell) / 2)
    gx_pre = pp.make_trapezoid(channel="x", system=system, area=-gx.area / 2, duration=8e-4)
    gz_reph = pp.make_trapezoid(channel="z", system=system, area=-gz.area / 2, duration=8e-4)
    gy_pre = pp.make_trapezoid(channel="y", system=system, area=n / 2 * delta_k, duration=8e-4)
    blip = np.ceil(2 * np.sqrt(delta_k / system.max_slew) / 10e-6) * 10e-6
    gy = pp.make_trapezoid(channel="y", system=system, area=-delta_k, duration=blip)
    seq.add_block(rf, gz)
    seq.add_block(gx_pre, gz_reph, pp.make_label(type="SET", label="NAV", value=1),
                  pp.make_label(type="SET", label="LIN", value=n // 2))
    for nav in range(3):
        seq.add_block(gx, adc, pp.make_label(type="SET", label="REV", value=gx.amplitude < 0))
        if nav < 2:
            seq.add_block(pp.make_delay(pp.calc_duration(gy)))
        gx.amplitude = -gx.amplitude
    seq.add_block(gy_pre, pp.make_label(type="SET", label="LIN", value=0),
                  pp.make_label(type="SET", label="NAV", value=0))
    for _ in range(n):
        seq.add_block(pp.make_label(type="SET", label="REV", value=gx.amplitude < 0))
        seq.add_block(gx, adc)
        seq.add_block(gy, pp.make_label(type="INC", label="LIN", value=1))
        gx.amplitude = -gx.amplitude
    seq.set_definition("FOV", [fov, fov, 3e-3])
    return seq


def test_pypulseq_navigator_epi_with_a_delay_is_corrected_from_its_navigators(tmp_path, caplog):
    from scanctl.data.rawdata import RawDataWriter, RawHeader
    from scanctl.hw.interfaces import Acquisition
    from scanctl.sequence.labels import label_values
    from scanctl.sequence.pulseq_read import read
    from scanctl.sequence.waveforms import kspace_adc

    n = 32
    epi_with_navigators(n).write(str(tmp_path / "epi_nav.seq"))
    seq = read(tmp_path / "epi_nav.seq")
    truth = small_object(n)
    r = (np.arange(n) - n // 2) * 0.22 / n
    k = kspace_adc(seq)
    blocks = np.flatnonzero(seq.blocks.adc >= 0)
    labels = label_values(seq)  # what the scanner attaches to each window's data
    acqs, a = [], 0
    for w, m in enumerate(seq.adc.num_samples[seq.blocks.adc[blocks]].tolist()):
        kx, ky = k[0][a : a + m], k[1][a : a + m]
        a += m
        late = kx[-1] < kx[0]  # a readout towards -k_x: its samples 0.3 sample late and 0.4 rad off
        kx = kx - 0.3 / 0.22 if late else kx
        phase = np.exp(-2j * np.pi * (np.outer(kx, np.ones(n))[:, None, :] * r[None, None, :]
                                      + ky[:, None, None] * r[None, :, None]))
        s = np.einsum("myx,yx->m", phase, truth) * (np.exp(0.4j) if late else 1.0)
        acqs.append(Acquisition(w, int(blocks[w]), 0.0, dwell_s=4e-6, data=s[None].astype(np.complex64),
                                labels={name: int(v[blocks[w]]) for name, v in labels.items()}))
    path = tmp_path / "epi_nav.h5"
    with RawDataWriter.open(path, RawHeader.from_sequence(seq, larmor_hz=1.0), seq=seq) as writer:
        writer.extend(acqs)
    raw = read_acquisitions(path)
    assert sum(a.labels.get("NAV", 0) for a in raw.acquisitions) == 3
    before = reconstruct_file(raw, epi_correction=False).images[0]
    with caplog.at_level(logging.INFO, logger="scanctl.data.recon.epi"):
        after = reconstruct_file(raw).images[0]
    assert "(reference)" in caplog.text
    assert ghost_ratio(before, truth) > 0.1
    assert ghost_ratio(after, truth) < 1e-3
