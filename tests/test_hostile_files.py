"""Files from outside that are not what they claim: a FIFO with no writer, /dev/zero, a directory, a
decompression bomb, a corrupt archive. Each is one clear error naming the file, at once: never a hang,
never memory read away, never a traceback (issue 13, defect 7)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scanctl.simulators.physics.phantom import MAX_PHANTOM_BYTES, load_phantom

from scanctl.config.files import read_bounded
from scanctl.config.protocol import load_protocol
from scanctl.errors import ConfigError, SequenceFormatError
from scanctl.sequence.pulseq_read import read as read_seq

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)
    return path


def _zero_link(tmp_path: Path, name: str) -> Path:
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    return link


def test_read_bounded_refuses_what_is_no_regular_file_or_too_big(tmp_path: Path, fifo: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="FIFO"):
        read_bounded(fifo, 1000)  # a FIFO with no writer: an ordinary open would wait forever
    with pytest.raises(ValueError, match="character device"):
        read_bounded(_zero_link(tmp_path, "z.seq"), 1000)
    with pytest.raises(ValueError, match="directory"):
        read_bounded(tmp_path, 1000)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * 1001)
    with pytest.raises(ValueError, match="1001 bytes, more than the 1000"):
        read_bounded(big, 1000)
    assert read_bounded(big, 1001) == b"#" * 1001
    assert time.monotonic() - t0 < 2.0


def test_protocol_profile_and_pulseq_readers_name_the_file(tmp_path: Path, fifo: Path) -> None:
    from scanctl.config.profile import load as load_profile

    with pytest.raises(ConfigError, match=r"pipe\.toml: cannot read protocol: it is a FIFO"):
        load_protocol(fifo)
    with pytest.raises(ConfigError, match=r"pipe\.toml: cannot read system profile: it is a FIFO"):
        load_profile(fifo)
    with pytest.raises(SequenceFormatError, match="character device"):
        read_seq(_zero_link(tmp_path, "zero.seq"))
    latin = tmp_path / "latin.toml"
    latin.write_bytes("name = \"caf\xe9\"".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.toml: cannot read system profile: not UTF-8"):
        load_profile(latin)


def _bomb(path: Path, expanded_bytes: int) -> None:
    """A valid .npz whose one array is zeros: a few kB that expand to ``expanded_bytes``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (expanded_bytes,)})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("pd.npy", "w", force_zip64=True) as member:
        member.write(header.getvalue())
        block = bytes(1 << 24)
        for _ in range(expanded_bytes >> 24):
            member.write(block)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    _bomb(path, 3 << 30)  # 3 GiB of zeros
    assert path.stat().st_size < 16 << 20
    return path


def test_phantom_bomb_corrupt_and_device_are_refused(tmp_path: Path, bomb: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=rf"bomb\.npz: .*expands to \d+ bytes, more than the {MAX_PHANTOM_BYTES}"):
        load_phantom(bomb)
    assert time.monotonic() - t0 < 2.0
    corrupt = tmp_path / "corrupt.npz"
    good = io.BytesIO()
    np.savez_compressed(good, pd=np.ones((8, 8)), t1_s=np.ones((8, 8)), t2_s=np.ones((8, 8)), voxel_size_m=[1e-3] * 3)
    corrupt.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(ConfigError, match=r"corrupt\.npz: cannot read as \.npz"):
        load_phantom(corrupt)
    flipped = bytearray(good.getvalue())
    flipped[60:70] = b"\xff" * 10  # inside the first member's compressed data
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(ConfigError, match=r"flipped\.npz: cannot read as \.npz"):
        load_phantom(tmp_path / "flipped.npz")
    with pytest.raises(ConfigError, match="character device"):
        load_phantom(_zero_link(tmp_path, "zero.npz"))


def _scanctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scanctl", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_cli_refuses_a_fifo_and_dev_zero_in_one_line(tmp_path: Path, fifo: Path) -> None:
    for source in (fifo, _zero_link(tmp_path, "zero.seq")):
        done = _scanctl("check", str(source), timeout=30)  # a hang would time out here
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and str(source) in lines[0] and "not a regular file" in lines[0], done.stderr


def test_cli_run_with_a_bomb_phantom_is_one_line(tmp_path: Path, bomb: Path) -> None:
    (tmp_path / "bomb.npz").symlink_to(bomb)
    protocol = (ROOT / "protocols" / "gre_2d.toml").read_text().replace('name = "shepp_logan"', 'file = "bomb.npz"')
    (tmp_path / "p.toml").write_text(protocol)
    done = _scanctl("run", str(tmp_path / "p.toml"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bomb.npz" in lines[0] and "expands to" in lines[0], done.stderr


def test_an_npz_whose_array_header_declares_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    """A 300-byte .npz whose .npy header declares 2^40 float64 values: numpy allocates by the header."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)})
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pd.npy", header.getvalue())
    with pytest.raises(ConfigError, match=r"liar\.npz: .*expands to \d+ bytes"):
        load_phantom(path)
