"""The patient table over a real serial link: the line protocol, the serial driver against the controller
simulator (in a thread on a real pty, or in its own process on a pty or TCP), faults on the wire, resets,
a pulled cable, adversarial bytes from the "controller", the bench CLI, and scans on a rig profile.

The table contract suite runs over the same links in tests/test_contracts.py (``serial-pty``,
``serial-socket``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scanctl.drivers.serial_link import SerialLink
from scanctl.drivers.serial_table import SerialTable
from scanctl.simulators.table_controller import WireFaults

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.engine.executor import Scanner
from scanctl.engine.machine import ScannerState
from scanctl.errors import ConfigError, DriverError, DriverTimeoutError, InvalidTransitionError, SubsystemFault
from scanctl.hw.interfaces import SubsystemState, TableSystem
from scanctl.hw.registry import open_subsystem
from scanctl.sequence import pulseq_read
from scanctl.transport.table_protocol import (
    EVENT,
    REPLY,
    WATCHDOG_POWER_UP_S,
    FrameError,
    Line,
    LineSplitter,
    crc16,
    decode,
    fmt,
    frame,
)
from tests.table_sim import ClockedController, ThreadSim, start_sim, stop_sim
from tests.test_cli import GRE

ROOT = Path(__file__).parents[1]
PROFILE = profiles.load()
pytestmark = pytest.mark.timeout(60)


def open_table(url: str, **options: object) -> TableSystem:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    table = open_subsystem("table", f"{url}?{query}" if query else url, PROFILE)
    assert isinstance(table, TableSystem)
    return table


# -- the line protocol --------------------------------------------------------------------------------------
DOC_LINES = [  # docs/table-serial.md, byte for byte
    b">17 ID*4396", b"<17 OK ID=SCANCTL-TABLE FW=1.2 SN=SIM0001 BOOT=3*7B8A", b">18 MOVE 350.000 50.000*9F4B",
    b"<18 OK TGT=350.000*F454", b">19 ST*1F45",
    b"<19 OK ST=MOVING POS=120.250 HOMED=1 T=2.405000 BOOT=3 CODE=F00 MSG=moving to 350 mm*3903",
    b"<20 ERR E10 LIMIT MSG=target 1200 mm outside -1000 to 1000 mm*5D78", b"!RESET BOOT=4*1C2C",
    b"!FAULT BOOT=3 CODE=F01 POS=212.500 MSG=motor stall at 212.5 mm*F6B4",
    b">24 WD 0.500*940E",
    b"<24 OK WD=0.500*C8F5",
    b">25 HB*13DB",
    b"<25 OK*9025",
    b"!FAULT BOOT=3 CODE=F04 POS=212.500 MSG=stopped: no command from the host for 0.51 s (watchdog 0.5 s)*DD82",
    b"<26 ERR E13 RANGE MSG=watchdog 20 s outside 0.1 to 10 s*C577",
]


def test_checksum_is_crc16_ccitt_false():
    assert crc16(b"123456789") == 0x29B1
    assert frame(">17 ID") == b">17 ID*4396\r\n"


@pytest.mark.parametrize("raw", DOC_LINES)
def test_documented_lines_decode_and_encode_back(raw):
    line = decode(raw)
    assert line.encode() == raw + b"\r\n"


def test_decoded_fields():
    reply = decode(DOC_LINES[5])
    assert (reply.kind, reply.seq, reply.word) == (REPLY, 19, "OK")
    assert reply.fields["ST"] == "MOVING" and reply.number("POS") == 120.25 and reply.integer("BOOT") == 3
    assert reply.fields["MSG"] == "moving to 350 mm"
    error = decode(DOC_LINES[6])
    assert error.args == ("E10", "LIMIT") and error.fields["MSG"].startswith("target 1200 mm")
    event = decode(DOC_LINES[8])
    assert (event.kind, event.seq, event.word) == (EVENT, None, "FAULT")


@pytest.mark.parametrize("payload", [
    "<0 OK", "<01 OK", "<10000 OK", "<1 ok", "<1", "<x OK", "<1 OK POS=1 POS=2", "<1 OK POS=1 E10",
    "<1 OK  POS=1", "<1 OK POS=", "!RESET BOOT=1 BOOT=2", "<1 OK POS=1e3",
])
def test_malformed_payloads_are_refused(payload):
    data = payload.encode()
    raw = data + b"*%04X" % crc16(data)
    with pytest.raises(FrameError):
        line = decode(raw)
        line.number("POS")  # a number field must be a plain decimal


@pytest.mark.parametrize("raw", [
    b"<1 OK*C10", b"<1 OK*c108", b"<1 OK C108", b"<1 OK*C109", b"<1 OK\x00*C108", b"<1 OK\r*C108",
    b"<1 O<K*C108", b"<1 OK POS=" + b"1" * 200 + b"*0000",
])
def test_bad_frames_are_refused(raw):
    with pytest.raises(FrameError):
        decode(raw)


def test_framing_refuses_what_cannot_be_sent():
    for payload in ("1 OK", "<1 OK MSG=a*b", "<1 OK MSG=é", "<1 OK " + "x" * 200):
        with pytest.raises(FrameError):
            frame(payload)


def test_splitter_resynchronises_at_line_starts_and_ends():
    s = LineSplitter()
    good = frame("<5 OK")
    assert s.feed(b"noise" + good[:4]) == []
    assert s.feed(good[4:]) == [good[:-2]]  # across reads, CR dropped
    # A line cut by the next start character is discarded, the new one kept; a LF without CR is fine.
    assert s.feed(b"<6 OK POS=1" + good[:-2] + b"\n") == [good[:-2]]
    assert s.discarded == 1
    assert s.feed(b"<" + b"7" * 400 + b"\n" + good) == [good[:-2]]  # overlong: dropped to its end
    assert s.discarded == 2


valid_lines = st.builds(
    lambda kind, seq, word, args, fields, msg: Line(kind, None if kind == EVENT else seq, word, tuple(args),
                                                    {**fields, **({"MSG": msg} if msg is not None else {})}),
    st.sampled_from(["<", ">", "!"]), st.integers(1, 9999), st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True),
    st.lists(st.from_regex(r"[-+.A-Za-z0-9_:/]{1,8}", fullmatch=True).filter(lambda a: "=" not in a), max_size=3),
    st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True).filter(lambda k: k != "MSG"),
                    st.from_regex(r"[-+.A-Za-z0-9_:/]{1,8}", fullmatch=True), max_size=4),
    st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="<>!*"),
                                 max_size=20)),
)


@settings(max_examples=200, deadline=None)
@given(valid_lines, st.data())
def test_round_trip_and_every_single_byte_error_is_caught(line, data):
    raw = line.encode()
    assert raw.endswith(b"\r\n")
    assert decode(raw[:-2]) == line
    i = data.draw(st.integers(0, len(raw) - 3))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    corrupted = raw[:i] + bytes([byte]) + raw[i + 1:-2]
    with pytest.raises(FrameError):
        decode(corrupted)


def test_wire_fault_specs():
    assert WireFaults.parse("garble=0.05,drop=0.1, delay=0.2s,reset@3,stuck@1") == \
        WireFaults(garble=0.05, drop=0.1, delay_s=0.2, reset_at=3, stuck_at=1)
    assert WireFaults.parse("") == WireFaults()
    for bad in ("garble=2", "drop=x", "reset@0", "stuck", "melt@1", "delay=-1"):
        with pytest.raises(ConfigError, match="wire fault"):
            WireFaults.parse(bad)


# -- adversarial bytes from the "controller" -------------------------------------------------------------------
class ScriptedPort:
    """A serial port whose controller answers each command with bytes made from ``script`` (functions of
    the command's sequence number), cut into the given read sizes; silent afterwards."""

    def __init__(self, script, sizes) -> None:
        self.script, self.sizes = script, sizes or [64]
        self.sent = bytearray()  # everything the "controller" sent
        self._pending = b""
        self._reads = 0

    @property
    def in_waiting(self) -> int:
        return len(self._pending)

    def write(self, data: bytes) -> None:
        seq = int(data[1:data.index(b" ")])
        out = b"".join(part(seq) for part in self.script)
        self.sent += out
        self._pending += out

    def flush(self) -> None:
        pass

    def read(self, n: int) -> bytes:
        if not self._pending:
            time.sleep(0.001)  # a real port waits out its read timeout here
            return b""
        size = min(n, self.sizes[self._reads % len(self.sizes)])
        self._reads += 1
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk


def _corrupt(data: bytes, i: int, byte: int) -> bytes:
    i %= len(data)
    return data[:i] + bytes([data[i] ^ byte]) + data[i + 1:]  # byte is 1..255: always a different byte


pieces = st.one_of(
    st.binary(max_size=40).map(lambda b: lambda seq: b),  # noise
    st.sampled_from([b"\n", b"\r\n", b"<", b">", b"!", b"*", b"\r"]).map(lambda b: lambda seq: b),
    st.tuples(st.sampled_from(["OK POS=12.500", "OK POS=-3.000", "ERR E04 BUSY MSG=moving", "OK"]),
              st.integers(-2, 2), st.sampled_from(["intact", "corrupt", "cut", "no-end"]), st.integers(0, 200),
              st.integers(1, 255)).map(
        lambda t: lambda seq: _mangle(frame(f"<{max(1, seq + t[1]) % 10000 or 1} {t[0]}"), *t[2:])),
    st.sampled_from(["!RESET BOOT=9", "!FAULT BOOT=1 CODE=F01 POS=1.000 MSG=x", ">5 ST"]).map(
        lambda p: lambda seq: frame(p)),
    st.integers(161, 400).map(lambda n: lambda seq: b"<" + b"9" * n + b"\r\n"),
)


def _mangle(data: bytes, how: str, i: int, byte: int) -> bytes:
    if how == "corrupt":
        return _corrupt(data[:-2], i, byte) + b"\r\n"
    if how == "cut":
        return data[: 1 + i % (len(data) - 2)]
    if how == "no-end":
        return data[:-2]
    return data


def _intact_lines(stream: bytes) -> set[bytes]:
    """Every line that went over the wire whole: after the last start character before a LF."""
    found = set()
    for chunk in stream.split(b"\n"):
        chunk = chunk.removesuffix(b"\r")
        starts = [i for i, b in enumerate(chunk) if b in b"<>!"]
        if starts:
            found.add(chunk[starts[-1]:])
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pieces, max_size=12), st.lists(st.integers(1, 50), max_size=5))
def test_fuzz_no_hang_no_crash_no_corrupt_reply_accepted(script, sizes):
    port = ScriptedPort(script, sizes)
    events = []
    link = SerialLink(port, "fuzz", timeout_s=0.01, retries=1, on_event=events.append)
    t0 = time.monotonic()
    try:
        reply = link.request("ST")
    except DriverTimeoutError:
        reply = None
    assert time.monotonic() - t0 < 2 * 0.01 + 0.5  # two attempts of 10 ms, and slack for a slow machine
    if reply is not None:
        # Accepted only what the controller sent whole, checksummed, for this very command.
        assert reply.kind == REPLY and reply.seq == link._seq
        assert reply.encode()[:-2] in _intact_lines(bytes(port.sent))
    for event in events:
        assert event.kind == EVENT and event.encode()[:-2] in _intact_lines(bytes(port.sent))


def driver_on(port: ScriptedPort, *, timeout_s: float, retries: int) -> SerialTable:
    """The serial table driver on a test port instead of one that pyserial opens."""
    table = SerialTable("test://", "test", timeout_s=timeout_s, retries=retries)
    table._port = port
    table._link = SerialLink(port, "test", timeout_s=timeout_s, retries=retries, on_event=table._on_event)
    return table


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_leave_the_table_unknown_not_wrong(noise):
    """A driver that hears only noise: status() is UNKNOWN (never a position), motion refused, no crash."""
    table = driver_on(ScriptedPort([lambda seq: noise], []), timeout_s=0.005, retries=0)
    with pytest.raises(DriverTimeoutError):
        table.connect(timeout_s=0.01)
    status = table.status()
    assert status.state is SubsystemState.UNKNOWN and "position_mm" not in status.telemetry
    with pytest.raises(DriverError, match="UNKNOWN"):
        table.move_to(0.0)


class BabblingPort(ScriptedPort):
    """A controller that never stops sending noise (and well-formed lines for nobody)."""

    @property
    def in_waiting(self) -> int:
        return 64

    def read(self, n: int) -> bytes:
        return (b"\x00garbage<1 OK*0000\r\n" + frame("!FAULT BOOT=1 CODE=F03 POS=1.000 MSG=babble"))[:n]


def test_a_babbling_line_cannot_hold_the_driver():
    table = driver_on(BabblingPort([], []), timeout_s=0.02, retries=1)
    t0 = time.monotonic()
    with pytest.raises(DriverTimeoutError):
        table.connect(timeout_s=0.05)
    assert table.status().state is SubsystemState.UNKNOWN
    table._link.pump()
    assert time.monotonic() - t0 < 1.0


# -- the driver over loop:// -------------------------------------------------------------------------------------
def test_loop_url_hears_only_its_own_echo_and_times_out_cleanly():
    table = open_table("loop://", timeout_s=0.02, retries=1)
    t0 = time.monotonic()
    with pytest.raises(DriverTimeoutError, match="no valid reply to ID"):
        table.connect(timeout_s=0.1)
    assert time.monotonic() - t0 < 1.0
    assert table.status().state is SubsystemState.UNKNOWN
    table.close()
    table.close()
    assert table.status().state is SubsystemState.OFF


@pytest.mark.parametrize(("url", "match"), [
    ("serial://", "no device"), ("socket://nohost", "HOST:PORT"), ("serial:///dev/null?retries=99", "0 to 20"),
    ("serial:///dev/null?speed=3", "unknown option"),
    ("serial:///dev/null?watchdog_s=0.05", "0.1 to 10 s"), ("serial:///dev/null?watchdog_s=nan", "0.1 to 10 s"),
    ("serial:///dev/null?timeout_s=0.3&watchdog_s=0.5", r"twice the longer of timeout_s and heartbeat_s \(0.6 s"),
    ("serial:///dev/null?heartbeat_s=0.3&watchdog_s=0.5", r"twice the longer of timeout_s and heartbeat_s \(0.6 s"),
    ("serial:///dev/null?timeout_s=6", r"watchdog_s=12 must be .* to 10 s"),
])
def test_bad_serial_urls(url, match):
    with pytest.raises(ConfigError, match=match):
        open_subsystem("table", url, PROFILE)


def test_the_watchdog_the_driver_sets_leaves_room_for_a_lost_reply():
    assert open_table("serial:///dev/null").watchdog_s == 0.5
    assert open_table("serial:///dev/null?timeout_s=0.3").watchdog_s == 0.6  # twice the longest quiet line
    assert open_table("serial:///dev/null?timeout_s=0.3&watchdog_s=2").watchdog_s == 2.0


def test_a_missing_device_is_a_clear_driver_error():
    table = open_table("serial:///dev/does-not-exist")
    with pytest.raises(DriverError, match="cannot open serial port /dev/does-not-exist"):
        table.connect()


# -- faults on the wire ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("faults", ["garble=0.15,drop=0.15", "delay=0.08,drop=0.1", "garble=0.3"])
def test_moves_through_a_bad_line_end_at_the_right_position_or_a_clear_fault(faults):
    targets = [120.0, -40.5, 300.25, 0.0, 75.0]
    with ThreadSim("speed_mm_s=400&accel_mm_s2=2000", faults, seed=11) as sim:
        table = open_table(sim.url, timeout_s=0.05, retries=5)
        table.connect()
        table.home()
        moved = 0
        for target in targets:
            try:
                table.move_to(target)
                status = table.wait_idle(timeout_s=10)
            except (SubsystemFault, DriverTimeoutError, DriverError) as exc:
                pytest.fail(f"with retries a moderately bad line must not lose the move: {exc}")
            moved += 1
            # Reported right, and right indeed: the axis is where the driver says.
            assert status.telemetry["position_mm"] == target == sim.true_position_mm()
            assert table.position_mm() == target
        counts = sim.controller.counts
        assert counts["moves"] == moved  # every MOVE ran exactly once, however often it was sent
        assert counts["garbled"] + counts["dropped"] > 0
        table.close()


def test_a_lost_move_reply_does_not_move_twice():
    with ThreadSim("speed_mm_s=400&accel_mm_s2=2000", "drop=0.5", seed=3) as sim:
        table = open_table(sim.url, timeout_s=0.03, retries=10)
        table.connect(timeout_s=5)
        table.home(timeout_s=10)
        for target in (50.0, 60.0, 70.0, 80.0):
            table.move_to(target)
            assert table.wait_idle(timeout_s=10).telemetry["position_mm"] == target
        assert sim.controller.counts["moves"] == 4 and sim.controller.counts["duplicates"] > 0
        table.close()


def test_a_silent_line_times_out_within_its_bound():
    with ThreadSim("", "drop=1") as sim:
        table = open_table(sim.url, timeout_s=0.05, retries=2)
        t0 = time.monotonic()
        with pytest.raises(DriverTimeoutError, match=r"no valid reply to ID .* \(3 attempts in"):
            table.connect(timeout_s=0.01)
        assert time.monotonic() - t0 < 0.5
        table.close()


def test_a_stuck_axis_is_a_fault_not_a_position():
    with ThreadSim("", "stuck@2") as sim:
        table = open_table(sim.url, stuck_s=0.3)
        table.connect()
        table.home()
        table.move_to(100.0)
        table.wait_idle()
        table.move_to(200.0)
        with pytest.raises(SubsystemFault, match="axis stuck at 100 mm"):
            table.wait_idle(timeout_s=5)
        status = table.status()
        assert status.state is SubsystemState.FAULT and sim.true_position_mm() == 100.0
        with pytest.raises(DriverError, match="cannot move in state FAULT"):
            table.move_to(0.0)
        table.reset()  # the controller saw no fault: it keeps its homing; the axis stays stuck
        assert table.status().state is SubsystemState.STANDBY
        table.move_to(0.0)
        with pytest.raises(SubsystemFault, match="axis stuck at 100 mm"):
            table.wait_idle(timeout_s=5)
        table.close()


# -- resets ---------------------------------------------------------------------------------------------------
def test_a_reset_during_a_move_is_detected_and_the_position_is_not_trusted():
    with ThreadSim("", "reset@2") as sim:
        table = open_table(sim.url)
        table.connect()
        table.home()
        table.move_to(100.0)
        table.wait_idle()
        table.move_to(500.0)  # accepted, then the controller reboots
        with pytest.raises(DriverError, match=r"reset \(boot 1 -> 2\)"):
            table.wait_idle()
        status = table.status()
        assert status.state is SubsystemState.UNKNOWN and "position_mm" not in status.telemetry
        with pytest.raises(DriverError, match="cannot move: state UNKNOWN"):
            table.move_to(0.0)
        with pytest.raises(DriverError, match="UNKNOWN"):
            table.position_mm()
        table.reset()  # identifies the controller afresh: back, not homed
        status = table.status()
        assert status.state is SubsystemState.STANDBY and status.telemetry["homed"] == 0.0
        table.home()
        table.move_to(500.0)
        assert table.wait_idle().telemetry["position_mm"] == 500.0
        table.close()


@pytest.mark.parametrize("lose_event", [False, True])
def test_a_reset_while_idle_is_seen_even_without_its_event(lose_event):
    with ThreadSim() as sim:
        table = open_table(sim.url)
        table.connect()
        table.home()
        if lose_event:
            sim.controller.faults = WireFaults(drop=1.0)
        sim.reboot()
        sim.controller.faults = WireFaults()
        status = table.status()
        assert status.state is SubsystemState.UNKNOWN and "reset" in status.message
        table.close()


def test_a_reset_of_a_controller_without_a_boot_counter_is_seen_by_its_lost_homing():
    with ThreadSim() as sim:
        table = open_table(sim.url)
        table.connect()
        table.home()
        sim.controller.boot = 0  # a controller whose boot counter always says 1, so !RESET BOOT=1 looks old
        sim.reboot()
        status = table.status()
        assert status.state is SubsystemState.UNKNOWN and "forgot its homing" in status.message
        table.close()


@pytest.fixture
def bridged():
    """A homed table on the controller simulator process behind TCP: (the processes started, table, url)."""
    proc, url = start_sim(tcp=True)
    procs = [proc]
    table = open_table(url, timeout_s=0.05, retries=1)
    try:
        table.connect()
        table.home()
        yield procs, table, url
    finally:
        table.close()
        for proc in procs:
            stop_sim(proc)


def test_sigusr1_reboots_the_simulator_process(bridged):
    procs, table, _ = bridged
    os.kill(procs[0].pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while table.status().state is not SubsystemState.UNKNOWN and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "boot 1 -> 2" in table.status().message


# -- a pulled cable ---------------------------------------------------------------------------------------------
def test_a_silent_controller_is_unknown_until_it_answers_again(bridged):
    procs, table, _ = bridged
    os.kill(procs[0].pid, signal.SIGSTOP)  # the line goes quiet, as with a pulled RS-232 cable
    try:
        t0 = time.monotonic()
        with pytest.raises(DriverTimeoutError):
            table.position_mm()
        assert time.monotonic() - t0 < 0.5
        assert table.status().state is SubsystemState.UNKNOWN
        with pytest.raises(DriverError, match="UNKNOWN"):
            table.move_to(10.0)
    finally:
        os.kill(procs[0].pid, signal.SIGCONT)
    deadline = time.monotonic() + 2.0  # a process just woken (on a loaded machine) may miss a probe's 0.1 s
    while (status := table.status()).state is SubsystemState.UNKNOWN and time.monotonic() < deadline:
        time.sleep(0.05)  # each status() probes: the same controller, same boot, answers: back
    assert status.state is SubsystemState.STANDBY and status.telemetry["homed"] == 1.0
    table.move_to(10.0)
    assert table.wait_idle().telemetry["position_mm"] == 10.0


def test_a_restarted_bridge_is_reconnected_by_reset(bridged):
    procs, table, url = bridged
    stop_sim(procs[0])  # the serial-over-TCP bridge goes away: the port fails
    with pytest.raises(DriverError):
        table.move_to(10.0)
    assert table.status().state is SubsystemState.UNKNOWN
    procs.append(start_sim(tcp=True, port=int(url.rsplit(":", 1)[1]), seed=2)[0])  # back on the same port
    table.reset()  # opens the line afresh and identifies the controller: a new one, not homed
    status = table.status()
    assert status.state is SubsystemState.STANDBY and status.telemetry["homed"] == 0.0


def test_killed_controller_leaves_the_table_unknown_and_the_scanner_refuses(tmp_path):
    proc, url = start_sim()
    scanner = Scanner.from_profile(PROFILE, {"rf": "sim://?physics=0", "table": url + "?timeout_s=0.05&retries=1"},
                                   segment_s=0.5)
    try:
        scanner.connect()
        scanner.prepare(pulseq_read.read(GRE))
        proc.kill()
        proc.wait(timeout=5)
        assert scanner.table.status().state is SubsystemState.UNKNOWN
        with pytest.raises(DriverError, match="table's state is UNKNOWN"):
            scanner.run(table_position_mm=100.0)
        assert scanner.state is ScannerState.FAULT
        assert "UNKNOWN" in scanner.journal[-1].reason
        with pytest.raises(InvalidTransitionError):
            scanner.move_table(10.0)
        with pytest.raises(DriverError):
            scanner.reset()  # nothing to reconnect to: still FAULT
        assert scanner.state is ScannerState.FAULT
    finally:
        scanner.close()
        stop_sim(proc)


def test_scanner_reset_brings_a_reset_table_back_homed():
    with ThreadSim() as sim:
        scanner = Scanner.from_profile(PROFILE, {"rf": "sim://?physics=0", "table": sim.url}, segment_s=0.5)
        scanner.connect()
        scanner.move_table(50.0)
        sim.reboot()
        with pytest.raises(DriverError, match="UNKNOWN"):
            scanner.move_table(60.0)
        assert scanner.state is ScannerState.FAULT
        scanner.reset()
        assert scanner.state is ScannerState.IDLE
        assert scanner.table.status().telemetry["homed"] == 1.0
        assert scanner.move_table(60.0) == 60.0 == sim.true_position_mm()
        scanner.close()


# -- the bench CLI ----------------------------------------------------------------------------------------------
@pytest.fixture
def pty_sim():
    proc, url = start_sim()
    yield url
    stop_sim(proc)


def test_cli_table_verbs_over_a_pty(pty_sim, capsys, tmp_path):
    assert main(["table", "--url", pty_sim, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "standby" and status["position_mm"] == 0.0 and status["homed"] is False
    assert main(["table", "--url", pty_sim, "home"]) == 0
    assert "standby, at 0 mm" in capsys.readouterr().out
    assert main(["table", "--url", pty_sim, "move", "250", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["position_mm"] == 250.0
    profile = tmp_path / "rig.toml"
    profile.write_text((ROOT / "protocols" / "systems" / "hil_serial_table.toml").read_text()
                       .replace("serial:///dev/ttyUSB0?baud=115200&", f"{pty_sim}?"))
    assert main(["table", "--system", str(profile), "stop", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["position_mm"] == 250.0
    assert main(["table", "--url", pty_sim, "move", "5000"]) == 1
    assert "outside the travel limits" in capsys.readouterr().err


def test_cli_table_without_a_controller(capsys):
    assert main(["table", "--url", "loop://?timeout_s=0.02&retries=0", "status", "--timeout", "0.1"]) == 1
    assert "no valid reply to ID" in capsys.readouterr().err
    assert main(["table", "--url", "nope://", "status"]) == 2


# -- scans on a rig ---------------------------------------------------------------------------------------------
def rig_protocol(tmp_path: Path, position_mm: float) -> Path:
    protocol = tmp_path / "gre_rig.toml"
    protocol.write_text((ROOT / "protocols" / "gre_2d.toml").read_text()
                        .replace("position_mm = 0.0", f"position_mm = {position_mm}"))
    return protocol


def test_scanctl_run_with_the_table_on_the_serial_simulator(tmp_path, pty_sim, capsys):
    profile = tmp_path / "rig.toml"
    profile.write_text((ROOT / "protocols" / "systems" / "hil_serial_table.toml").read_text()
                       .replace("serial:///dev/ttyUSB0?baud=115200&", f"{pty_sim}?"))
    out = tmp_path / "out"
    code = main(["run", str(rig_protocol(tmp_path, 150.0)), "--system", str(profile), "--out", str(out),
                 "--rf", "sim://?physics=0", "--no-recon"])
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "completed" and report["acquisitions"] == 128
    assert report["subsystems"]["table"].startswith(pty_sim)
    positioned = next(e for e in report["journal"] if e["trigger"] == "positioned")
    assert positioned["reason"].startswith("table at 150 mm; homed=1, boot=1")
    assert report["telemetry"]["table"]["position_mm"] == 150.0


def test_run_with_a_noisy_line_positions_right_or_faults_clearly(tmp_path):
    with ThreadSim("", "garble=0.2,drop=0.2", seed=5) as sim:
        from scanctl.engine.session import run_scan

        url = sim.url + "?timeout_s=0.05&retries=6"
        report = run_scan(rig_protocol(tmp_path, -80.0), PROFILE, tmp_path / "out",
                          overrides={"rf": "sim://?physics=0", "table": url}, reconstruct=False)
        if report.outcome == "completed":  # positioned right, and really there
            assert report.telemetry["table"]["position_mm"] == -80.0 == sim.true_position_mm()
            assert report.telemetry["table"]["serial_retries"] > 0
        else:  # or a clear, typed table failure before anything played
            assert report.outcome == "fault" and report.message.startswith("table: ")
            assert report.acquisitions == 0


# -- the shipped rig profiles -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hil_serial_table", "hil_remote_rf"])
def test_shipped_rig_profiles_load_and_name_registered_subsystems(name, capsys):
    path = ROOT / "protocols" / "systems" / f"{name}.toml"
    prof = profiles.load(path)
    for kind, url in prof.subsystems.items():
        sub = open_subsystem(kind, url, prof)  # builds without I/O: nothing is on this machine
        assert sub.kind == kind
    assert prof.subsystems["table"].split(":")[0] in ("serial", "socket")
    assert main(["check", str(ROOT / "protocols" / "gre_2d.toml"), "--system", str(path)]) == 0
    assert "OK against profile" in capsys.readouterr().out


# -- one host at a time ---------------------------------------------------------------------------------------
def test_a_second_host_cannot_open_a_serial_port_in_use(pty_sim, capsys):
    device = pty_sim.removeprefix("serial://")
    first = open_table(pty_sim)
    first.connect()
    second = open_table(pty_sim)
    with pytest.raises(DriverError, match=rf"serial port {device} is in use by another host"):
        second.connect()
    assert second.status().state is SubsystemState.OFF
    # The bench CLI is a host like any other: one line, exit 1, naming the port.
    assert main(["table", "--url", pty_sim, "status"]) == 1
    err = capsys.readouterr().err
    assert f"serial port {device} is in use by another host" in err and "Traceback" not in err
    assert first.status().state is SubsystemState.STANDBY  # the host that has it is undisturbed
    first.close()
    second.connect()  # free again once its host has closed it
    assert second.status().state is SubsystemState.STANDBY
    second.close()


def test_a_second_host_on_a_tcp_bridge_takes_the_line_and_the_first_one_knows(bridged):
    _, first, url = bridged  # the simulator's bridge hands the port to the newest client
    second = open_table(url, timeout_s=0.05, retries=1)
    second.connect()
    with pytest.raises(DriverError, match="failed"):
        first.position_mm()
    assert first.status().state is SubsystemState.UNKNOWN  # no longer heartbeating, not moving anything
    assert second.status().state is SubsystemState.STANDBY
    second.close()


# -- the host-link watchdog: the controller itself ------------------------------------------------------------
@pytest.fixture
def clocked():
    ctl = ClockedController()
    assert ctl.command("HOME").word == "OK"
    ctl.advance(0.1)
    assert ctl.command("ST").fields["ST"] == "IDLE"
    return ctl


def test_controller_watchdog_stops_a_move_when_its_host_falls_silent(clocked):
    assert clocked.command("WD 0.500").fields["WD"] == "0.500"
    assert clocked.command("MOVE 900.000 100.000").word == "OK"
    clocked.advance(0.49)  # silent, but not for long enough
    assert clocked.controller.table.status().state is SubsystemState.MOVING
    clocked.advance(0.02)  # 0.51 s without a word from the host: stopped, latched
    where = clocked.controller.table.position_mm()
    assert 40.0 < where < 60.0
    [event] = [e for e in clocked.output() if e.word == "FAULT"]
    assert event.fields["CODE"] == "F04" and event.number("POS") == float(f"{where:.3f}")
    clocked.advance(5.0)  # and it stays stopped
    status = clocked.command("ST")
    assert (status.fields["ST"], status.fields["CODE"], status.number("POS")) == ("FAULT", "F04", float(f"{where:.3f}"))
    assert "no command from the host" in status.fields["MSG"]
    refused = clocked.command("MOVE 900.000")
    assert refused.word == "ERR" and refused.args == ("E05", "FAULT")
    assert clocked.command("STOP").word == "OK" and clocked.command("ST").fields["ST"] == "FAULT"  # still latched
    assert clocked.command("CLR").word == "OK"  # acknowledged: the position was kept, so is the homing
    status = clocked.command("ST")
    assert (status.fields["ST"], status.fields["CODE"], status.fields["HOMED"]) == ("IDLE", "F00", "1")
    assert clocked.command("MOVE 100.000").word == "OK"


def test_controller_watchdog_is_fed_by_every_command_and_heartbeats_keep_a_long_move_going(clocked):
    assert clocked.command("WD 0.200").word == "OK"
    assert clocked.command("MOVE 500.000 100.000").word == "OK"
    for _ in range(40):  # 6 s of heartbeats, 0.15 s apart: the whole move
        clocked.advance(0.15)
        assert clocked.command("HB").word == "OK"
    assert clocked.command("ST").fields["ST"] == "IDLE" and clocked.controller.table.position_mm() == 500.0
    assert clocked.controller.counts["heartbeats"] == 40 and clocked.controller.counts["watchdog_trips"] == 0
    clocked.advance(30.0)  # a silent host while nothing moves: nothing to stop
    status = clocked.command("ST")
    assert status.fields["ST"] == "IDLE" and status.fields["CODE"] == "F00"


def test_commands_that_queued_while_the_controller_stalled_do_not_rescue_its_move(clocked):
    assert clocked.command("WD 0.500").word == "OK"
    assert clocked.command("MOVE 900.000 100.000").word == "OK"
    clocked.advance(0.2)
    clocked.stall(1.0)  # frozen: the host's polls and heartbeats queue up on the line meanwhile
    status = clocked.command("ST")  # the first of them, read as the controller runs again
    assert status.fields["ST"] == "FAULT" and status.fields["CODE"] == "F04"
    assert status.number("POS") < 900.0


def test_controller_watchdog_settings():
    ctl = ClockedController()
    assert ctl.controller.watchdog_s == WATCHDOG_POWER_UP_S == 1.0
    for bad in ("WD 0.050", "WD 10.001", "WD -1.000"):
        reply = ctl.command(bad)
        assert reply.word == "ERR" and reply.args == ("E13", "RANGE")
    assert ctl.command("WD").args == ("E01", "SYNTAX") and ctl.command("WD abc").args == ("E01", "SYNTAX")
    assert ctl.command("WD 2.500").fields["WD"] == "2.500" and ctl.controller.watchdog_s == 2.5
    assert ctl.command("HB").word == "OK" and ctl.command("HB 1").args == ("E01", "SYNTAX")
    ctl.controller.reboot()  # the setting is the host's, for this boot only
    assert ctl.controller.watchdog_s == 1.0


# -- the host-link watchdog: host and controller over a real line ---------------------------------------------
def test_host_heartbeats_keep_a_long_move_going_while_nobody_polls():
    with ThreadSim("speed_mm_s=100&accel_mm_s2=1000", speedup=1.0) as sim:
        table = open_table(sim.url)
        table.connect()
        table.home()
        assert sim.controller.watchdog_s == 0.5  # the driver's watchdog_s, set on connect
        table.move_to(250.0)  # 2.6 s at 100 mm/s
        time.sleep(2.0)  # the host's caller looks away; its driver's heartbeats do not
        assert sim.controller.table.status().state is SubsystemState.MOVING
        assert table.wait_idle(timeout_s=10).telemetry["position_mm"] == 250.0 == sim.true_position_mm()
        counts = sim.controller.counts
        assert counts["heartbeats"] >= 10 and counts["watchdog_trips"] == 0
        beating = table._heartbeat
        assert beating is not None and beating.is_alive()
        table.close()
        assert not beating.is_alive() and table._heartbeat is None  # close() ends it (other tests' may run on)


def test_a_host_without_heartbeats_has_its_move_stopped_by_the_power_up_watchdog():
    import serial

    with ThreadSim("speed_mm_s=100&accel_mm_s2=1000", speedup=1.0) as sim:
        port = serial.serial_for_url(sim.url.removeprefix("serial://"), timeout=0.01)
        link = SerialLink(port, "raw", timeout_s=0.2, retries=3)
        try:
            assert link.request("HOME").word == "OK"
            time.sleep(0.1)
            assert link.request("MOVE", "500.000").word == "OK"
            time.sleep(1.5)  # silent for longer than the controller's power-up watchdog
            status = link.request("ST")
            assert (status.fields["ST"], status.fields["CODE"]) == ("FAULT", "F04")
            assert status.number("POS") < 200.0 and f"{sim.true_position_mm():.3f}" == status.fields["POS"]
        finally:
            port.close()


def test_a_host_that_gives_up_on_its_controller_stops_its_heartbeat_and_so_the_move():
    with ThreadSim("speed_mm_s=100&accel_mm_s2=1000", speedup=1.0) as sim:
        table = open_table(sim.url)
        table.connect()
        table.home()
        table.move_to(900.0)
        time.sleep(0.2)
        sim.controller.faults = WireFaults(drop=1.0)  # the controller hears the host, the host hears nothing
        with pytest.raises(DriverTimeoutError):
            table.wait_idle(timeout_s=30)
        assert table.status().state is SubsystemState.UNKNOWN  # given up (its one probe goes unanswered)
        time.sleep(1.0)  # no heartbeat from a host that has given up: the controller's watchdog stops the move
        assert sim.controller.counts["watchdog_trips"] == 1
        where = sim.true_position_mm()
        time.sleep(0.3)
        assert sim.true_position_mm() == where < 900.0
        sim.controller.faults = WireFaults()
        table.reset()  # identifies the controller afresh and acknowledges F04, in one go
        status = table.status()
        assert (status.state, status.telemetry["homed"]) == (SubsystemState.STANDBY, 1.0)
        assert status.telemetry["position_mm"] == float(fmt(where))
        table.close()


def test_a_host_that_finds_the_table_moving_on_connect_stops_it():
    import serial

    with ThreadSim("speed_mm_s=100&accel_mm_s2=1000", speedup=1.0) as sim:
        port = serial.serial_for_url(sim.url.removeprefix("serial://"), timeout=0.01)
        link = SerialLink(port, "raw", timeout_s=0.2, retries=3)
        assert link.request("HOME").word == "OK"
        time.sleep(0.1)
        assert link.request("MOVE", "500.000").word == "OK"
        time.sleep(0.2)
        port.close()  # a host gone, its move still running
        table = open_table(sim.url)
        table.connect()  # nobody here started that move: stopped, not taken over
        status = table.status()
        where = status.telemetry["position_mm"]
        assert status.state is SubsystemState.STANDBY and 0.0 < where < 100.0
        time.sleep(0.3)
        assert table.position_mm() == where and f"{sim.true_position_mm():.3f}" == fmt(where)
        assert sim.controller.counts["watchdog_trips"] == 0  # stopped by the host, before the watchdog
        table.close()


def test_a_frozen_controller_stops_its_move_when_it_runs_again_instead_of_completing_it():
    proc, url = start_sim("speed_mm_s=100&accel_mm_s2=1000", speedup=1.0)  # 900 mm take 9 s
    table = open_table(url)  # gives up after 4 x 0.2 s; watchdog 0.5 s
    try:
        table.connect()
        table.home()
        table.move_to(900.0)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGSTOP)  # the controller freezes mid-move
        try:
            t0 = time.monotonic()
            with pytest.raises(DriverError):  # the host gives up on it
                table.wait_idle(timeout_s=30)
            assert time.monotonic() - t0 < 1.5
            assert table.status().state is SubsystemState.UNKNOWN
            time.sleep(0.5)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        status = table.status()  # the same controller answers again: it stopped, it did not move on
        assert status.state is SubsystemState.FAULT and "no command from the host" in status.message
        where = status.telemetry["position_mm"]
        assert 0.0 < where < 400.0
        time.sleep(0.5)
        assert table.status().telemetry["position_mm"] == where
        table.close()
        table = open_table(url)  # a host that starts afresh sees the same: stopped, short of the target
        table.connect()
        status = table.status()
        assert status.state is SubsystemState.FAULT and status.telemetry["position_mm"] == where
        table.reset()  # acknowledged: the position is known, the homing kept
        status = table.status()
        assert status.state is SubsystemState.STANDBY and status.telemetry["homed"] == 1.0
        assert status.telemetry["position_mm"] == where
    finally:
        table.close()
        stop_sim(proc)
