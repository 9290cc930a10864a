"""Cartesian reconstruction: k-space of a known image -> acquisitions -> ISMRMRD file -> image.

The phantom is the (modified) Shepp–Logan head phantom drawn from its ten ellipses here, so the test
needs no phantom package. Images are compared by correlation, and exactly where the expected result
can be computed independently (averaging, partial k-space).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from scanctl.data.rawdata import EncodingLimit, RawDataWriter, RawHeader, read_acquisitions, sequence_labels
from scanctl.data.recon import (
    ReconError,
    mosaic,
    reconstruct,
    reconstruct_indexed,
    reconstruct_raw,
    save_npy,
    save_png,
    to_uint8,
)
from scanctl.hw.interfaces import Acquisition

N = 64

#: Modified Shepp–Logan (Toft): intensity, semi-axes a, b, centre x0, y0, rotation (degrees).
ELLIPSES = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def shepp_logan(n: int = N) -> np.ndarray:
    """``[y, x]`` on pixel centres ``(j - n/2) / (n/2)`` in [-1, 1)."""
    pos = (np.arange(n) - n // 2) / (n / 2)
    y, x = np.meshgrid(pos, pos, indexing="ij")
    image = np.zeros((n, n))
    for value, a, b, x0, y0, phi in ELLIPSES:
        c, s = np.cos(np.radians(phi)), np.sin(np.radians(phi))
        u, v = (x - x0) * c + (y - y0) * s, -(x - x0) * s + (y - y0) * c
        image[(u / a) ** 2 + (v / b) ** 2 <= 1] += value
    return image


def kspace(image: np.ndarray) -> np.ndarray:
    """The k-space of ``image`` with k = 0 at index n // 2 along every axis (the recon's convention)."""
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(image)))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def header(ny: int = N, nx: int = N, channels: int = 1, **limits: EncodingLimit) -> RawHeader:
    return RawHeader(protocol_name="recon test", fov_m=(0.25, 0.25, 0.005), encoded_matrix=(nx, ny, 1),
                     larmor_hz=63.87e6, channels=channels,
                     limits={"kspace_encode_step_0": EncodingLimit(0, nx - 1, nx // 2),
                             "kspace_encode_step_1": EncodingLimit(0, ny - 1, ny // 2), **limits})


def lines(k: np.ndarray, order: list[int], start: int = 0, **labels: int) -> list[Acquisition]:
    """One acquisition per line of ``k`` (``(channels, ny, nx)`` or ``(ny, nx)``), in ``order``."""
    k = k if k.ndim == 3 else k[np.newaxis]
    return [Acquisition(index=start + i, block=2 * (start + i), start_s=0.01 * (start + i), dwell_s=5e-6,
                        data=k[:, line, :].astype(np.complex64), labels={"LIN": line, **labels})
            for i, line in enumerate(order)]


def scrambled(n: int = N, seed: int = 3) -> list[int]:
    return np.random.default_rng(seed).permutation(n).tolist()


# ----------------------------------------------------------------------------------------------------------
# Through the file
# ----------------------------------------------------------------------------------------------------------


def test_phantom_through_ismrmrd_file_and_back(tmp_path):
    truth = shepp_logan()
    path = tmp_path / "raw.h5"
    with RawDataWriter.open(path, header()) as writer:
        for acq in lines(kspace(truth), scrambled()):
            writer.append(acq)

    # The ismrmrd package sees the header and every line.
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r")
    try:
        enc = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header()).encoding[0]
        assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (N, N)
        assert enc.encodedSpace.fieldOfView_mm.x == pytest.approx(250.0)
        assert enc.encodingLimits.kspace_encoding_step_1.center == N // 2
        assert sorted(dset.read_acquisition(i).idx.kspace_encode_step_1 for i in range(N)) == list(range(N))
    finally:
        dset.close()

    raw = read_acquisitions(path)
    image = reconstruct_raw(raw)
    assert image.shape == (1, N, N) and image.dtype == np.float32
    assert corr(image[0], truth) > 0.99
    # Not only correlated: the magnitude itself comes back (float32 k-space).
    np.testing.assert_allclose(image[0], np.abs(truth), atol=1e-5)


def test_two_channels_combine_by_root_sum_of_squares():
    truth = shepp_logan()
    pos = (np.arange(N) - N // 2) / N
    y, x = np.meshgrid(pos, pos, indexing="ij")
    theta = np.pi / 4 + 1.2 * x - 0.7 * y  # smooth coil profiles with |s1|^2 + |s2|^2 = 1
    sens = np.stack([np.cos(theta) * np.exp(0.5j * y), np.sin(theta) * np.exp(-1j * x)])
    k = np.stack([kspace(truth * s) for s in sens])
    image = reconstruct(lines(k, scrambled()), header=header(channels=2))
    assert image.shape == (1, N, N)
    assert corr(image[0], truth) > 0.99
    np.testing.assert_allclose(image[0], np.abs(truth), atol=1e-4)
    single = reconstruct(lines(k[:1], scrambled()))
    assert corr(single[0], truth) < corr(image[0], truth)  # one coil alone is shaded


def test_averages_are_averaged_in_k_space():
    truth = shepp_logan()
    k = kspace(truth)
    rng = np.random.default_rng(11)
    noise = (rng.standard_normal((2, N, N)) + 1j * rng.standard_normal((2, N, N))) * 2.0
    acqs = (lines(k + noise[0], scrambled(seed=1), AVG=0)
            + lines(k + noise[1], scrambled(seed=2), start=N, AVG=1))
    image = reconstruct(acqs, header=header(average=EncodingLimit(0, 1, 0)))
    expected = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k + noise.mean(axis=0)))))
    np.testing.assert_allclose(image[0], expected, rtol=1e-4, atol=1e-4)
    one = reconstruct([a for a in acqs if a.labels["AVG"] == 0], header=header())
    assert np.std(image[0] - truth) < 0.8 * np.std(one[0] - truth)  # sqrt(2) less noise
    assert corr(image[0], truth) > 0.99


def test_aborted_scan_leaves_missing_lines_zero(tmp_path):
    truth = shepp_logan()
    k = kspace(truth)
    order = scrambled()
    path = tmp_path / "raw.h5"
    writer = RawDataWriter.open(path, header())
    for acq in lines(k, order)[:40]:  # the scan stops after 40 of 64 lines, the writer is never closed
        writer.append(acq)
    image = reconstruct_raw(read_acquisitions(path))
    partial = np.zeros_like(k)
    partial[order[:40]] = k[order[:40]]
    expected = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(partial))))
    assert image.shape == (1, N, N)
    np.testing.assert_allclose(image[0], expected, atol=1e-4)
    writer.close()


def test_nothing_acquired():
    empty = reconstruct([], header=header(ny=32, nx=48))
    assert empty.shape == (1, 32, 48) and not empty.any()
    with pytest.raises(ReconError, match="no imaging acquisitions"):
        reconstruct([])
    noise_only = [Acquisition(0, 0, 0.0, 1e-5, np.ones((1, 8), np.complex64), {"NOISE": 1})]
    with pytest.raises(ReconError, match="no imaging acquisitions"):
        reconstruct(noise_only)


def test_unlabelled_acquisitions_need_the_sequence():
    acqs = [Acquisition(i, 0, 0.0, 1e-5, np.ones((1, 8), np.complex64), {}) for i in range(4)]
    with pytest.raises(ReconError, match="no LIN label"):
        reconstruct(acqs)


def test_slices_and_echoes_give_one_image_each_in_counter_order():
    images = {(eco, slc): np.roll(shepp_logan(32), 5 * (2 * eco + slc), axis=1) * (1 + eco)
              for eco in range(2) for slc in range(3)}
    acqs: list[Acquisition] = []
    for line in scrambled(32):  # echoes innermost, then slices, as a multi-echo multi-slice scan might
        for slc in range(3):
            for eco in range(2):
                acqs += lines(kspace(images[eco, slc]), [line], start=len(acqs), SLC=slc, ECO=eco)
    stack, index = reconstruct_indexed(acqs)
    assert stack.shape == (6, 32, 32)
    assert [(i["ECO"], i["SLC"]) for i in index] == [(e, s) for e in range(2) for s in range(3)]
    for row, entry in zip(stack, index, strict=True):
        np.testing.assert_allclose(row, np.abs(images[entry["ECO"], entry["SLC"]]), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Placed by the sequence (pypulseq sequences, signal from the k-space trajectory)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    from scanctl.sequence.pulseq_read import read
    from tests import pulseq_factory as factory

    folder = tmp_path_factory.mktemp("seq")
    out = {}
    for name, build in (("gre", lambda: factory.gre(32)),
                        ("gre3d", lambda: factory.gre3d(16, 4, n_read=16, labels=False)),
                        ("epi", lambda: factory.epi(16))):
        build().write(str(folder / f"{name}.seq"))
        out[name] = read(folder / f"{name}.seq")
    return out


def simulate(seq, density: np.ndarray, keep_labels: bool = True) -> list[Acquisition]:
    """Every ADC window's signal ``s(k) = sum_r rho(r) exp(-2 pi i k.r)`` at the sequence's own k-space
    trajectory, voxel ``j`` of ``n`` at ``(j - n/2) FOV / n`` (``density`` is ``[z, y, x]``)."""
    from scanctl.sequence.waveforms import kspace_adc

    fov = seq.definition_floats("FOV")
    nz, ny, nx = density.shape
    z, y, x = np.meshgrid(*((np.arange(n) - n // 2) * f / n for n, f in zip((nz, ny, nx), fov[::-1], strict=True)),
                          indexing="ij")
    k = kspace_adc(seq)
    if nz == 1:
        k = k.copy()
        k[2] = 0.0  # a 2D scan: one slice, no partition encoding
    phase = np.outer(k[0], x.ravel()) + np.outer(k[1], y.ravel()) + np.outer(k[2], z.ravel())
    signal = np.exp(-2j * np.pi * phase) @ density.ravel()
    rows = seq.blocks.adc[seq.blocks.adc >= 0]
    labels = sequence_labels(seq)
    out, a = [], 0
    for w, n in enumerate(seq.adc.num_samples[rows].tolist()):
        lab = {name: int(v[w]) for name, v in labels.items()} if keep_labels else {}
        out.append(Acquisition(w, 0, 0.0, 1e-5, signal[a : a + n][np.newaxis].astype(np.complex64), lab))
        a += n
    return out


def test_labelled_2d_sequence_gives_the_object_in_place(sequences):
    seq = sequences["gre"]
    truth = shepp_logan(32)
    image = reconstruct(simulate(seq, truth[np.newaxis]), seq)
    assert image.shape == (1, 32, 32)
    assert corr(image[0], truth) > 0.99  # not mirrored, not shifted


def test_unlabelled_3d_sequence_is_placed_by_its_trajectory(sequences):
    seq = sequences["gre3d"]
    truth = np.stack([shepp_logan(16) * (1 + p) for p in range(4)])
    acqs = simulate(seq, truth, keep_labels=False)
    assert all(not a.labels for a in acqs)
    image = reconstruct(acqs, seq)
    assert image.shape == (4, 16, 16)
    assert corr(image, truth) > 0.99
    with pytest.raises(ReconError, match="no LIN label"):
        reconstruct(acqs)


def test_epi_reversed_lines_are_mirrored_about_their_centre_sample(sequences, tmp_path):
    seq = sequences["epi"]
    truth = shepp_logan(16)
    acqs = simulate(seq, truth[np.newaxis])
    # This EPI counts LIN down k_y (line 0 at k_y = +8): its lines go where k_y puts them
    # (Encoding.recounted: sequence_labels, which simulate() attaches, are the lines by k_y), so the image is
    # in place, not mirrored in y as by the file's labels.
    image = reconstruct(acqs, seq)
    assert corr(image[0], truth) > 0.99
    assert corr(image[0], truth[(16 - np.arange(16)) % 16]) < 0.9
    # Through the file: the centre samples and the lines travel in the ISMRMRD headers.
    path = tmp_path / "epi.h5"
    with RawDataWriter.open(path, RawHeader.from_sequence(seq, larmor_hz=1.0), seq=seq) as writer:
        writer.extend(acqs)
    assert corr(reconstruct_raw(read_acquisitions(path))[0], truth) > 0.99
    # Mirroring about sample N/2 instead of the true centre ghosts the image...
    naive = reconstruct(acqs, header=RawHeader.from_sequence(seq, larmor_hz=1.0), epi_correction=False)
    assert corr(naive[0], truth) < 0.9
    # ... unless the odd/even phase correction takes the one-sample shift off (a linear phase in hybrid space).
    corrected = reconstruct(acqs, header=RawHeader.from_sequence(seq, larmor_hz=1.0))
    assert corr(corrected[0], truth) > 0.999


# ----------------------------------------------------------------------------------------------------------
# Image files
# ----------------------------------------------------------------------------------------------------------


def decode_png(data: bytes) -> tuple[dict[str, int], np.ndarray]:
    """A minimal PNG decoder for 8-bit grayscale, checking the signature, every CRC and the filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        pos += 12 + length
    assert [c[0] for c in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    info = {"width": width, "height": height, "depth": depth, "colour": colour, "interlace": interlace}
    assert (compression, filtering) == (0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any()  # filter type 0 on every scanline
    return info, rows[:, 1:]


def test_png_is_valid_and_holds_the_scaled_pixels(tmp_path):
    image = np.abs(shepp_logan(48)[:, :40]).astype(np.float32)  # not square: rows and columns kept apart
    path = save_png(image, tmp_path / "image.png")
    info, pixels = decode_png(path.read_bytes())
    assert info == {"width": 40, "height": 48, "depth": 8, "colour": 0, "interlace": 0}
    np.testing.assert_array_equal(pixels, to_uint8(image))
    assert pixels.max() == 255 and pixels.min() == 0
    bright = np.unravel_index(np.argmax(image), image.shape)
    assert pixels[bright] == 255
    independent = np.rint(image.astype(np.float64) / float(image.max()) * 255)
    assert np.abs(pixels - independent).max() <= 1


def test_png_of_a_stack_is_a_mosaic_and_scaling_options(tmp_path):
    stack = np.stack([np.full((8, 6), v, np.float32) for v in (1.0, 2.0, 3.0)])
    info, pixels = decode_png(save_png(stack, tmp_path / "stack.png").read_bytes())
    assert (info["height"], info["width"]) == (16, 12)  # 2 x 2 grid, one empty tile
    assert pixels[0, 0] == 85 and pixels[0, 6] == 170 and pixels[8, 0] == 255 and pixels[8, 6] == 0
    assert mosaic(stack, columns=3).shape == (8, 18)
    _, fixed = decode_png(save_png(stack[0], tmp_path / "fixed.png", vmin=0.0, vmax=2.0).read_bytes())
    assert (fixed == 128).all()
    assert (to_uint8(np.full((3, 3), 7.0)) == 255).all()  # scaled from 0
    assert not to_uint8(np.zeros((3, 3))).any()
    assert not to_uint8(np.full((3, 3), 7.0), vmin=7.0).any()
    with_nan = to_uint8(np.array([[np.nan, 1.0]]))
    assert with_nan.tolist() == [[0, 255]]


def test_image_file_errors_name_the_file(tmp_path):
    with pytest.raises(ReconError, match="2D image"):
        save_png(np.zeros(5), tmp_path / "line.png")
    target = tmp_path / "missing" / "image.png"
    with pytest.raises(ReconError, match=str(target)):
        save_png(np.zeros((4, 4)), target)
    with pytest.raises(ReconError, match=str(tmp_path / "missing" / "image.npy")):
        save_npy(np.zeros((1, 4, 4)), tmp_path / "missing" / "image.npy")


def test_npy_round_trip(tmp_path):
    image = reconstruct(lines(kspace(shepp_logan(32)), scrambled(32)))
    path = save_npy(image, tmp_path / "image.npy")
    assert path == Path(tmp_path / "image.npy")
    back = np.load(path)
    assert back.dtype == np.float32 and back.shape == (1, 32, 32)
    np.testing.assert_array_equal(back, image)
