"""ISMRMRD raw data: header, label mapping, flags, streaming/crash safety, reading back, bad files.

Files written by scanctl are read back with the ``ismrmrd`` package itself (its HDF5 reader and XML
schema binding), not only with scanctl's reader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanctl.data.rawdata import (
    LABEL_COUNTERS,
    EncodingLimit,
    RawDataError,
    RawDataWriter,
    RawHeader,
    centre_samples,
    header_for,
    is_set,
    read_acquisitions,
    sequence_labels,
)
from scanctl.data.rawdata import writer as writer_module
from scanctl.errors import ScanctlError
from scanctl.hw.interfaces import Acquisition

NX, NY = 32, 24


def make_header(**overrides: object) -> RawHeader:
    fields: dict[str, object] = {
        "protocol_name": "unit test",
        "sequence_name": "gre",
        "fov_m": (0.256, 0.192, 0.005),
        "encoded_matrix": (NX, NY, 1),
        "larmor_hz": 127.74e6,
        "b0_t": 3.0,
        "limits": {
            "kspace_encode_step_0": EncodingLimit(0, NX - 1, NX // 2),
            "kspace_encode_step_1": EncodingLimit(0, NY - 1, NY // 2),
            "slice": EncodingLimit(0, 1, 0),
            "average": EncodingLimit(0, 1, 0),
        },
        "tr_s": (0.01,),
        "te_s": (0.0043,),
        "flip_angle_deg": (15.0,),
        "channels": 2,
        "table_position_mm": -120.0,
        "patient_weight_kg": 70.0,
        "user_parameters": {"sequence_md5": "0123abcd", "segments": 3, "noise_std": 0.5},
    }
    fields.update(overrides)
    return RawHeader(**fields)  # type: ignore[arg-type]


def acquisition(index: int, labels: dict[str, int], channels: int = 2, samples: int = NX) -> Acquisition:
    """Data that encodes where it came from: channel c, sample s of acquisition i is i + 1000 c + 1j s."""
    c = np.arange(channels)[:, None]
    s = np.arange(samples)[None, :]
    data = (index + 1000 * c + 1j * s).astype(np.complex64)
    return Acquisition(index=index, block=3 * index + 2, start_s=0.01 * index + 1.5e-3, dwell_s=10e-6,
                       data=data, labels=labels)


def two_slice_scan() -> list[Acquisition]:
    """Averages outermost, then slices, then lines; the lines in a scrambled order."""
    order = np.random.default_rng(7).permutation(NY).tolist()
    acqs = []
    for avg in range(2):
        for slc in range(2):
            for lin in order:
                acqs.append(acquisition(len(acqs), {"LIN": lin, "SLC": slc, "AVG": avg}))
    return acqs


# ----------------------------------------------------------------------------------------------------------
# Header
# ----------------------------------------------------------------------------------------------------------


def test_header_xml_is_valid_ismrmrd_and_round_trips():
    header = make_header()
    parsed = ismrmrd.xsd.CreateFromDocument(header.to_xml())
    enc = parsed.encoding[0]
    assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y, enc.encodedSpace.matrixSize.z) == (NX, NY, 1)
    assert enc.encodedSpace.fieldOfView_mm.x == pytest.approx(256.0)
    assert enc.encodedSpace.fieldOfView_mm.y == pytest.approx(192.0)
    assert enc.encodedSpace.fieldOfView_mm.z == pytest.approx(5.0)
    lim = enc.encodingLimits.kspace_encoding_step_1
    assert (lim.minimum, lim.maximum, lim.center) == (0, NY - 1, NY // 2)
    assert enc.encodingLimits.slice.maximum == 1
    assert enc.trajectory.value == "cartesian"
    assert parsed.experimentalConditions.H1resonanceFrequency_Hz == 127740000
    system = parsed.acquisitionSystemInformation
    assert (system.systemVendor, system.systemModel, system.receiverChannels) == ("scanctl", "simulator", 2)
    assert system.systemFieldStrength_T == pytest.approx(3.0)
    assert parsed.measurementInformation.protocolName == "unit test"
    assert parsed.sequenceParameters.TR[0] == pytest.approx(10.0)  # ms in ISMRMRD
    assert parsed.sequenceParameters.TE[0] == pytest.approx(4.3)
    assert parsed.subjectInformation.patientWeight_kg == pytest.approx(70.0)

    back = RawHeader.from_xml(header.to_xml())
    assert back.protocol_name == header.protocol_name
    assert back.sequence_name == header.sequence_name
    assert back.fov_m == pytest.approx(header.fov_m)
    assert back.encoded_matrix == header.encoded_matrix and back.recon == header.encoded_matrix
    for counter in ("kspace_encode_step_0", *LABEL_COUNTERS.values()):
        assert back.limit(counter) == header.limit(counter)
    assert back.tr_s == pytest.approx(header.tr_s) and back.te_s == pytest.approx(header.te_s)
    assert back.flip_angle_deg == pytest.approx(header.flip_angle_deg)
    assert back.table_position_mm == pytest.approx(-120.0)
    assert back.user_parameters == header.user_parameters
    assert (back.larmor_hz, back.b0_t, back.channels) == (127.74e6, 3.0, 2)


def test_header_rejects_unknown_trajectory_and_bad_xml(tmp_path):
    with pytest.raises(RawDataError, match="trajectory"):
        make_header(trajectory="zigzag").to_xml()
    with pytest.raises(RawDataError, match="invalid ISMRMRD XML header"):
        RawHeader.from_xml("<ismrmrdHeader><nonsense/></ismrmrdHeader>")


# ----------------------------------------------------------------------------------------------------------
# Writer -> ismrmrd package
# ----------------------------------------------------------------------------------------------------------


def test_written_file_reads_with_the_ismrmrd_package(tmp_path):
    path = tmp_path / "raw.h5"
    acqs = two_slice_scan()
    with RawDataWriter.open(path, make_header()) as writer:
        for acq in acqs:
            writer.append(acq)
        assert writer.count == len(acqs)

    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r")
    try:
        xml = dset.read_xml_header()
        parsed = ismrmrd.xsd.CreateFromDocument(xml)
        assert parsed.encoding[0].encodingLimits.kspace_encoding_step_1.maximum == NY - 1
        assert dset.number_of_acquisitions() == len(acqs)
        for i, acq in enumerate(acqs):
            got = dset.read_acquisition(i)
            assert got.scan_counter == acq.index
            assert got.idx.kspace_encode_step_1 == acq.labels["LIN"]
            assert got.idx.slice == acq.labels["SLC"]
            assert got.idx.average == acq.labels["AVG"]
            assert got.idx.repetition == 0 and got.idx.contrast == 0
            assert (got.active_channels, got.number_of_samples) == (2, NX)
            assert got.center_sample == NX // 2
            assert got.sample_time_us == pytest.approx(10.0)
            assert got.acquisition_time_stamp == round(acq.start_s * 1e6)
            assert got.user_int[0] == acq.block
            assert got.isChannelActive(0) and got.isChannelActive(1) and not got.isChannelActive(2)
            assert got.patient_table_position[2] == pytest.approx(-120.0)
            np.testing.assert_array_equal(got.data, acq.data)
    finally:
        dset.close()


def test_first_and_last_flags_follow_the_acquisition_order(tmp_path):
    path = tmp_path / "raw.h5"
    acqs = two_slice_scan()
    with RawDataWriter.open(path, make_header()) as writer:
        for acq in acqs:
            writer.append(acq)
    flags = read_acquisitions(path).flags
    n = len(acqs)

    def rows(flag: int) -> list[int]:
        return [i for i in range(n) if is_set(flags[i], flag)]

    # Each (average, slice) k-space is one loop over the lines: NY acquisitions in a row.
    assert rows(ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1) == [0, NY, 2 * NY, 3 * NY]
    assert rows(ismrmrd.ACQ_LAST_IN_ENCODE_STEP1) == [NY - 1, 2 * NY - 1, 3 * NY - 1, 4 * NY - 1]
    # A slice holds both averages: its first acquisition is in average 0, its last in average 1.
    assert rows(ismrmrd.ACQ_FIRST_IN_SLICE) == [0, NY]
    assert rows(ismrmrd.ACQ_LAST_IN_SLICE) == [3 * NY - 1, 4 * NY - 1]
    assert rows(ismrmrd.ACQ_FIRST_IN_AVERAGE) == [0, NY, 2 * NY, 3 * NY]
    assert rows(ismrmrd.ACQ_FIRST_IN_REPETITION) == [0]
    assert rows(ismrmrd.ACQ_LAST_IN_REPETITION) == [n - 1]
    assert rows(ismrmrd.ACQ_LAST_IN_MEASUREMENT) == [n - 1]


def test_flag_labels_map_to_ismrmrd_flags(tmp_path):
    path = tmp_path / "raw.h5"
    acqs = [
        acquisition(0, {"NOISE": 1}),
        acquisition(1, {"NAV": 1, "LIN": 5}),
        acquisition(2, {"LIN": 0, "REV": 1}),
        acquisition(3, {"LIN": 1, "REF": 1}),
        acquisition(4, {"LIN": 2, "REF": 1, "IMA": 1}),
        acquisition(5, {"LIN": 3, "TRID": 4, "PMC": 1, "ECO": 2, "PHS": 1, "SET": 3, "SEG": 1, "REP": 2}),
    ]
    with RawDataWriter.open(path, make_header()) as writer:
        for acq in acqs:
            writer.append(acq)
    raw = read_acquisitions(path)
    f = raw.flags
    assert is_set(f[0], ismrmrd.ACQ_IS_NOISE_MEASUREMENT) and not is_set(f[0], ismrmrd.ACQ_FIRST_IN_SLICE)
    assert is_set(f[1], ismrmrd.ACQ_IS_NAVIGATION_DATA) and not is_set(f[1], ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1)
    assert is_set(f[2], ismrmrd.ACQ_IS_REVERSE) and is_set(f[2], ismrmrd.ACQ_FIRST_IN_SLICE)
    assert is_set(f[3], ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
    assert not is_set(f[3], ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
    assert is_set(f[4], ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
    # Labels come back under their Pulseq names; execution-only labels are not stored.
    labels = [a.labels for a in raw.acquisitions]
    assert labels[0]["NOISE"] == 1 and labels[1]["NAV"] == 1 and labels[1]["LIN"] == 5
    assert labels[2]["REV"] == 1 and "REV" not in labels[3]
    assert labels[3]["REF"] == 1 and "IMA" not in labels[3]
    assert labels[4]["REF"] == 1 and labels[4]["IMA"] == 1
    assert {k: labels[5][k] for k in ("LIN", "ECO", "PHS", "SET", "SEG", "REP")} == {
        "LIN": 3, "ECO": 2, "PHS": 1, "SET": 3, "SEG": 1, "REP": 2}
    assert "TRID" not in labels[5] and "PMC" not in labels[5]


def test_read_acquisitions_round_trip(tmp_path):
    path = tmp_path / "raw.h5"
    acqs = [acquisition(i, {"LIN": i, "SLC": 1}, channels=1 + i % 2, samples=16 + i) for i in range(5)]
    with RawDataWriter.open(path, make_header()) as writer:
        writer.append(acqs[0])
        writer.extend(acqs[1:4])  # one HDF5 write for three
        writer.append(acqs[4])
    raw = read_acquisitions(path)
    assert raw.path == str(path)
    assert raw.header.encoded_matrix == (NX, NY, 1)
    assert raw.xml.lstrip().startswith("<?xml")
    assert len(raw.acquisitions) == 5
    for want, got in zip(acqs, raw.acquisitions, strict=True):
        assert (got.index, got.block) == (want.index, want.block)
        assert got.start_s == pytest.approx(want.start_s, abs=1e-6)
        assert got.dwell_s == pytest.approx(want.dwell_s, rel=1e-6)
        assert got.data.dtype == np.complex64 and got.data.shape == want.data.shape
        np.testing.assert_array_equal(got.data, want.data)
        assert got.labels["LIN"] == want.labels["LIN"] and got.labels["SLC"] == 1 and got.labels["AVG"] == 0
    np.testing.assert_array_equal(raw.centre_samples, [(16 + i) // 2 for i in range(5)])


def test_time_stamps_unwrap_past_32_bits(tmp_path):
    path = tmp_path / "raw.h5"
    # Microsecond ticks wrap every 4294.967296 s; consecutive acquisitions are closer than that.
    starts = [4294.0, 4295.5, 4296.0, 8000.25, 8600.0]
    with RawDataWriter.open(path, make_header()) as writer:
        for i, t in enumerate(starts):
            writer.append(Acquisition(i, i, t, 1e-5, np.ones((2, 4), np.complex64), {"LIN": i}))
    got = [a.start_s for a in read_acquisitions(path).acquisitions]
    assert got == pytest.approx(starts, abs=1e-6)


def test_writer_errors_and_close_is_idempotent(tmp_path):
    path = tmp_path / "raw.h5"
    writer = RawDataWriter.open(path, make_header())
    with pytest.raises(RawDataError, match=r"label LIN=-1 is outside"):
        writer.append(acquisition(0, {"LIN": -1}))
    with pytest.raises(RawDataError, match=r"label SLC=70000"):
        writer.append(acquisition(0, {"SLC": 70000}))
    with pytest.raises(RawDataError, match="channels, samples"):
        writer.append(Acquisition(0, 0, 0.0, 1e-5, np.zeros((1, 2, 3), np.complex64), {}))
    writer.append(acquisition(0, {"LIN": 0}))  # the refused ones left no trace
    writer.close()
    writer.close()
    assert writer.closed
    with pytest.raises(RawDataError, match="closed"):
        writer.append(acquisition(1, {"LIN": 1}))
    assert len(read_acquisitions(path).acquisitions) == 1
    with pytest.raises(RawDataError, match=str(tmp_path / "missing")):
        RawDataWriter.open(tmp_path / "missing" / "raw.h5", make_header())


# ----------------------------------------------------------------------------------------------------------
# Abort and crash
# ----------------------------------------------------------------------------------------------------------


def test_a_writer_never_closed_is_readable_while_open(tmp_path):
    path = tmp_path / "raw.h5"
    writer = RawDataWriter.open(path, make_header())
    for i in range(7):
        writer.append(acquisition(i, {"LIN": i}))
    raw = read_acquisitions(path)  # e.g. a monitor, while the scan runs (or after an abort without close)
    assert [a.index for a in raw.acquisitions] == list(range(7))
    np.testing.assert_array_equal(raw.acquisitions[6].data, acquisition(6, {}).data)
    writer.close()


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from scanctl.hw.interfaces import Acquisition
    from scanctl.data.rawdata import RawDataWriter, RawHeader

    path, count = sys.argv[1], int(sys.argv[2])
    header = RawHeader(protocol_name="crash", fov_m=(0.2, 0.2, 0.005), encoded_matrix=(64, 512, 1),
                       larmor_hz=1.2e8)
    writer = RawDataWriter.open(path, header)
    i = 0
    while count < 0 or i < count:
        data = np.full((1, 64), i, dtype=np.complex64)
        writer.append(Acquisition(i, i, i * 1e-3, 1e-5, data, {"LIN": i % 512}))
        i += 1
        if count < 0:
            sys.stdout.write(f"{i}\\n")
            sys.stdout.flush()
    print("ready", flush=True)
    sys.stdin.read()  # wait to be killed
    """
)


def _child(path: Path, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(count)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _check_prefix(path: Path, at_least: int) -> int:
    raw = read_acquisitions(path)
    assert len(raw.acquisitions) >= at_least
    for i, acq in enumerate(raw.acquisitions):
        assert acq.index == i and acq.labels["LIN"] == i % 512
        np.testing.assert_array_equal(acq.data, np.full((1, 64), i, dtype=np.complex64))
    return len(raw.acquisitions)


def test_killed_writer_keeps_every_acquisition_appended(tmp_path):
    path = tmp_path / "raw.h5"
    child = _child(path, 25)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert _check_prefix(path, 25) == 25


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_writer_killed_while_writing_keeps_a_readable_prefix(tmp_path):
    path = tmp_path / "raw.h5"
    child = _child(path, -1)  # appends until killed, reporting each completed append
    try:
        assert child.stdout is not None
        done = 0
        while done < 150:
            done = int(child.stdout.readline())
        child.send_signal(signal.SIGKILL)  # most likely in the middle of the next append
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert _check_prefix(path, done) >= done


_FULL_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    import numpy as np
    from scanctl.hw.interfaces import Acquisition
    from scanctl.data.rawdata import RawDataError, RawDataWriter, RawHeader

    path, limit, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    header = RawHeader(protocol_name="full", fov_m=(0.2, 0.2, 0.005), encoded_matrix=(512, 64, 1),
                       larmor_hz=1.2e8)
    writer = RawDataWriter.open(path, header)
    written, errors = 0, []
    rng = np.random.default_rng(5)
    while not errors:
        acqs = []
        for i in range(written, written + batch):
            data = (rng.standard_normal((2, 512)) + 1j * rng.standard_normal((2, 512))).astype(np.complex64)
            acqs.append(Acquisition(i, i, i * 1e-3, 1e-5, data, {"LIN": i % 64}))
        try:
            writer.extend(acqs)
            written += batch
        except RawDataError as exc:
            errors.append(str(exc))
    try:
        writer.extend(acqs)  # once refused, refused again (no gap in the scan's data)
    except RawDataError as exc:
        errors.append(str(exc))
    try:
        writer.close()
    except RawDataError as exc:
        errors.append(f"close: {exc}")
    print(json.dumps({"written": written, "errors": errors}))
    """
)


@pytest.mark.parametrize("batch", [1, 50])
def test_a_disk_that_fills_mid_scan_keeps_every_acquisition_written_before(tmp_path, batch):
    """The file may grow by 2 MB (RLIMIT_FSIZE: writes past it fail as on a full disk; each acquisition
    is 8 kB of samples): the writer refuses the batch that would not fit, and the file reads back whole with
    every acquisition written before, flags finished by close()."""
    path = tmp_path / "raw.h5"
    done = subprocess.run([sys.executable, "-c", _FULL_CHILD, str(path), str(2_000_000), str(batch)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    written, errors = result["written"], result["errors"]
    raw = read_acquisitions(path)  # (before the writer checked the room: "damaged ISMRMRD file")
    assert written > 0 and len(errors) == 2, result  # a refused batch, refused again; close succeeded
    assert all(f"{path}: cannot write acquisition {written}: " in e and "File too large" in e for e in errors)
    assert [a.index for a in raw.acquisitions] == list(range(written))
    rng = np.random.default_rng(5)
    for acq in raw.acquisitions:
        expected = (rng.standard_normal((2, 512)) + 1j * rng.standard_normal((2, 512))).astype(np.complex64)
        np.testing.assert_array_equal(acq.data, expected)
    assert is_set(raw.flags[-1], ismrmrd.ACQ_LAST_IN_MEASUREMENT)


def test_the_writer_refuses_a_batch_the_file_system_has_no_room_for(tmp_path, monkeypatch):
    """The free space of the file system bounds a write (statvfs), before HDF5 is asked: nothing written."""
    path = tmp_path / "raw.h5"
    writer = RawDataWriter.open(path, make_header())
    writer.append(acquisition(0, {"LIN": 0}))
    free = {"blocks": 10**6}

    class Fs:
        f_frsize = 1024

        @property
        def f_bavail(self) -> int:
            return free["blocks"]

    monkeypatch.setattr(writer_module.os, "statvfs", lambda p: Fs())
    writer.append(acquisition(1, {"LIN": 1}))
    free["blocks"] = 100  # 100 kB: less than the spare room a write must leave
    with pytest.raises(RawDataError, match="cannot write acquisition 2: No space left on device"):
        writer.append(acquisition(2, {"LIN": 2}))
    free["blocks"] = 10**6  # space again: still refused, so the scan's data have no gap
    with pytest.raises(RawDataError, match="cannot write acquisition 3: No space left on device"):
        writer.append(acquisition(3, {"LIN": 3}))
    writer.close()
    raw = read_acquisitions(path)
    assert [a.index for a in raw.acquisitions] == [0, 1]
    assert is_set(raw.flags[-1], ismrmrd.ACQ_LAST_IN_MEASUREMENT)


# ----------------------------------------------------------------------------------------------------------
# Bad files
# ----------------------------------------------------------------------------------------------------------


def test_bad_files_raise_a_clear_error_naming_the_file(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5 at all\n")
    with pytest.raises(RawDataError, match=r"notes\.h5: not an HDF5 file") as info:
        read_acquisitions(text)
    assert isinstance(info.value, ScanctlError) and info.value.path == str(text)

    with pytest.raises(RawDataError, match=r"nothere\.h5: no such raw data file"):
        read_acquisitions(tmp_path / "nothere.h5")

    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("something", data=np.arange(3))
    with pytest.raises(RawDataError, match=r"empty\.h5: not an ISMRMRD file: no 'dataset' group"):
        read_acquisitions(empty)

    no_xml = tmp_path / "no_xml.h5"
    with h5py.File(no_xml, "w") as f:
        f.create_group("dataset").create_dataset("data", data=np.arange(3))
    with pytest.raises(RawDataError, match=r"no_xml\.h5: not an ISMRMRD file: no 'dataset/xml' header"):
        read_acquisitions(no_xml)

    bad_xml = tmp_path / "bad_xml.h5"
    with h5py.File(bad_xml, "w") as f:
        f.create_group("dataset").create_dataset("xml", data=[b"<oops"], dtype=h5py.special_dtype(vlen=bytes))
    with pytest.raises(RawDataError, match=r"bad_xml\.h5: invalid ISMRMRD XML header"):
        read_acquisitions(bad_xml)

    bad_table = tmp_path / "bad_table.h5"
    with h5py.File(bad_table, "w") as f:
        g = f.create_group("dataset")
        g.create_dataset("xml", data=[make_header().to_xml().encode()], dtype=h5py.special_dtype(vlen=bytes))
        g.create_dataset("data", data=np.arange(3.0))
    with pytest.raises(RawDataError, match=r"bad_table\.h5: not an ISMRMRD file: 'data' is not a table"):
        read_acquisitions(bad_table)

    bad_head = tmp_path / "bad_head.h5"
    with h5py.File(bad_head, "w") as f:
        g = f.create_group("dataset")
        g.create_dataset("xml", data=[make_header().to_xml().encode()], dtype=h5py.special_dtype(vlen=bytes))
        g.create_dataset("data", data=np.zeros(2, dtype=[("head", "<u8"), ("data", "<f4")]))
    with pytest.raises(RawDataError, match=r"bad_head\.h5: damaged ISMRMRD file"):
        read_acquisitions(bad_head)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "raw.h5"
    with RawDataWriter.open(path, make_header()) as writer:
        for i in range(40):
            writer.append(acquisition(i, {"LIN": i % NY}))
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(RawDataError, match=r"cut\.h5: "):
        read_acquisitions(cut)


def test_header_only_file_has_no_acquisitions(tmp_path):
    path = tmp_path / "raw.h5"
    RawDataWriter.open(path, make_header()).close()  # e.g. aborted before the first ADC window
    raw = read_acquisitions(path)
    assert raw.acquisitions == [] and raw.header.protocol_name == "unit test"


# ----------------------------------------------------------------------------------------------------------
# From a sequence
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """pypulseq sequences read into scanctl's model: 2D GRE with labels, 3D GRE with and without."""
    from scanctl.sequence.pulseq_read import read
    from tests import pulseq_factory as factory

    folder = tmp_path_factory.mktemp("seq")
    out = {}
    for name, build in (("gre", lambda: factory.gre(16)),
                        ("gre3d", lambda: factory.gre3d(16, 4, n_read=16, labels=True)),
                        ("gre3d_unlabelled", lambda: factory.gre3d(16, 4, n_read=16, labels=False)),
                        ("epi", lambda: factory.epi(16))):
        build().write(str(folder / f"{name}.seq"))
        out[name] = read(folder / f"{name}.seq")
    return out


def test_header_from_a_labelled_2d_sequence(sequences):
    header = RawHeader.from_sequence(sequences["gre"], larmor_hz=123.2e6, protocol_name="p", channels=4)
    assert header.encoded_matrix == (16, 16, 1)
    assert header.fov_m == pytest.approx((0.256, 0.256, 0.005))
    assert header.limit("kspace_encode_step_1") == EncodingLimit(0, 15, 8)  # ky = 0 on line 8
    assert header.limit("kspace_encode_step_0") == EncodingLimit(0, 15, 8)
    assert header.limit("slice") == EncodingLimit(0, 0, 0)
    assert header.sequence_name == "gre"
    assert header.tr_s == pytest.approx((0.01,)) and header.te_s == pytest.approx((0.0043,))
    assert header.channels == 4
    ismrmrd.xsd.CreateFromDocument(header.to_xml())


def test_lines_and_partitions_from_the_trajectory_match_the_labels(sequences):
    labelled = sequence_labels(sequences["gre3d"])
    derived = sequence_labels(sequences["gre3d_unlabelled"])
    assert set(derived) == {"LIN", "PAR"}
    np.testing.assert_array_equal(derived["LIN"], labelled["LIN"])
    np.testing.assert_array_equal(derived["PAR"], labelled["PAR"])
    assert derived["LIN"].tolist()[:17] == [*range(16), 0]
    a = RawHeader.from_sequence(sequences["gre3d"], larmor_hz=1.0)
    b = RawHeader.from_sequence(sequences["gre3d_unlabelled"], larmor_hz=1.0)
    assert a.encoded_matrix == b.encoded_matrix == (16, 16, 4)
    assert a.limit("kspace_encode_step_2") == b.limit("kspace_encode_step_2") == EncodingLimit(0, 3, 2)
    assert a.limit("kspace_encode_step_1") == b.limit("kspace_encode_step_1") == EncodingLimit(0, 15, 8)


def test_writer_fills_unlabelled_lines_and_centre_samples_from_the_sequence(sequences, tmp_path):
    seq = sequences["gre3d_unlabelled"]
    header = RawHeader.from_sequence(seq, larmor_hz=1.0)
    n = int((seq.blocks.adc >= 0).sum())
    path = tmp_path / "raw.h5"
    with RawDataWriter.open(path, header, seq=seq) as writer:
        for i in range(n):
            writer.append(Acquisition(i, 0, i * 1e-3, 1e-5, np.zeros((1, 16), np.complex64), {}))
    raw = read_acquisitions(path)
    expected = sequence_labels(seq)
    assert [a.labels["LIN"] for a in raw.acquisitions] == expected["LIN"].tolist()
    assert [a.labels["PAR"] for a in raw.acquisitions] == expected["PAR"].tolist()
    np.testing.assert_array_equal(raw.centre_samples, centre_samples(seq))


def test_epi_navigators_do_not_count_and_centre_samples_follow_the_trajectory(sequences):
    seq = sequences["epi"]
    header = RawHeader.from_sequence(seq, larmor_hz=1.0)
    assert header.limit("average") == EncodingLimit(0, 0, 0)  # AVG 1 only marks a navigator
    assert header.limit("kspace_encode_step_1") == EncodingLimit(0, 15, 8)
    assert header.limit("segment") == EncodingLimit(0, 1, 0)
    centres = centre_samples(seq)
    assert centres.shape == (19,)
    # This EPI samples k_x = 0 one sample before the middle, in both readout directions.
    assert set(centres.tolist()) == {7}


def test_header_for_a_profile_and_protocol(sequences):
    from types import SimpleNamespace

    from scanctl.config import profile as profiles

    prof = profiles.load()
    protocol = SimpleNamespace(name="GRE head", sequence_params=SimpleNamespace(flip_angle_deg=12.0),
                               table_position_mm=35.0, patient=SimpleNamespace(weight_kg=80.0))
    header = header_for(sequences["gre"], prof, protocol)  # type: ignore[arg-type]
    assert header.larmor_hz == pytest.approx(prof.gamma_hz_per_t * prof.b0_t)
    assert header.b0_t == prof.b0_t and header.system_model == prof.name
    assert header.protocol_name == "GRE head" and header.flip_angle_deg == (12.0,)
    assert header.table_position_mm == 35.0 and header.patient_weight_kg == 80.0
    bare = header_for(sequences["gre"], prof)
    assert bare.protocol_name == "gre" and bare.patient_weight_kg is None


# -- k-space grids (shared by the encoding and the recon along any axis) ---------------------------------

@given(step=st.floats(1.0, 100.0), first=st.integers(-20, 5), count=st.integers(2, 40), half=st.booleans(),
       noise=st.lists(st.floats(-1.0, 1.0), min_size=40, max_size=40), scale=st.sampled_from([0.0, 1e-7, 1e-6]))
@settings(max_examples=200, deadline=None)
def test_grid_step_is_the_step_of_the_values(step, first, count, half, noise, scale):
    """Distinct k values (1/m) on a grid of ``step`` (whole or half steps), each off by up to ``scale`` of a
    step (the rounding of phase areas in a file): the grid step found is within twice that of the step (within
    float rounding where the values are exact)."""
    from scanctl.data.rawdata.kgrid import grid_step

    index = np.arange(first, first + count) + (0.5 if half else 0.0)
    k = (index + scale * np.array(noise[:count])) * step
    found = grid_step(np.repeat(k, 3))  # repeated values (several windows per line) are one value
    assert found == pytest.approx(step, rel=2 * scale + 1e-12)


def test_grid_step_takes_the_least_squares_grid_where_the_gaps_disagree():
    """pypulseq's write_mprage.py's x lines (k in steps, as its file holds them: the phase areas rounded): the
    median gap is 6e-6 of a step short, the least-squares grid within 1e-6; a line never acquired (a gap of two
    steps) counts as two steps; values that do not move (within 0.5 1/m of 0) are no grid."""
    from scanctl.data.rawdata.kgrid import grid_step

    steps = np.array([8.000006, 6.999994, 6.000005, 4.99999, 3.999996, 3.000002, 2.0, 1.0, 0.0, -1.0, -2.0,
                      -3.000002, -3.999996, -4.99999, -6.000005, -6.999998])
    fov = 0.192
    assert 1.0 / float(np.median(np.diff(np.sort(steps / fov)))) == pytest.approx(fov, abs=2e-6)
    assert 1.0 / grid_step(steps / fov) == pytest.approx(fov, abs=1e-7)
    assert grid_step(np.delete(np.arange(-8.0, 8.0), 5) / fov) == pytest.approx(1.0 / fov, rel=1e-12)
    assert grid_step(np.array([0.0, 0.1, -0.2])) == 0.0
