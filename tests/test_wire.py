"""scanctl.transport.wire: envelopes and binary frames round-trip, and every malformed message is refused cleanly."""

from __future__ import annotations

import contextlib
import json
import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis.extra import numpy as hnp

from scanctl.errors import WireProtocolError
from scanctl.hw.interfaces import Acquisition, AcquisitionBatch, Status, SubsystemState
from scanctl.hw.program import GradientProgram
from scanctl.transport.acquisitions import pack_acquisitions, unpack_acquisitions
from scanctl.transport.batch import Group, encode_batch, unbatch
from scanctl.transport.values import VERSION
from scanctl.transport.wire import (
    Message,
    decode,
    encode,
    error_reply,
    pack_body,
    reply_to,
    request_id_of,
    to_plain,
)

arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int16, np.uint8, np.complex64, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.text(max_size=20),
                    st.floats(allow_nan=False))
bodies = st.recursive(st.one_of(scalars, arrays),
                      lambda inner: st.one_of(st.lists(inner, max_size=4),
                                              st.dictionaries(st.text(max_size=8).filter(lambda k: k != "__nd__"),
                                                              inner, max_size=4)),
                      max_leaves=12)


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "__nd__"), bodies, max_size=5),
       seq=st.integers(0, 2**40))
def test_round_trip(body, seq):
    msg = Message(type="event", body=body, src="scanner", stream="state", seq=seq, run="r1")
    back = decode([bytes(f) for f in encode(msg)])
    assert (back.type, back.src, back.stream, back.seq, back.run) == ("event", "scanner", "state", seq, "r1")
    assert same(body, back.body)


def test_arrays_travel_as_binary_frames_not_json():
    data = np.arange(1000, dtype=np.complex64)
    frames = encode(Message(type="data", body={"samples": data, "index": 3}))
    assert len(frames) == 2 and len(frames[1]) == data.nbytes
    assert b"__nd__" in bytes(frames[0]) and len(frames[0]) < 200
    back = decode(frames)
    assert back.body["samples"].dtype == np.complex64 and np.array_equal(back.body["samples"], data)


def test_dataclasses_and_special_floats():
    axes = (np.zeros(2), np.ones(3), np.zeros(0))
    program = GradientProgram(0.0, 1.0, axes, axes)
    status = Status(SubsystemState.RUNNING, 1.5, "ok", {"coil_temperature_c": float("nan")})
    back = decode(encode(Message(type="x", body={"program": to_plain(program), "status": to_plain(status),
                                                 "inf": float("-inf")})))
    assert back.body["status"]["state"] == "running"
    assert np.isnan(back.body["status"]["telemetry"]["coil_temperature_c"])
    assert np.array_equal(back.body["program"]["t_s"][1], np.ones(3)) and back.body["inf"] == float("-inf")


def test_replies_answer_their_request():
    request = Message(type="command", id="abc-1", body={"command": "status"})
    assert reply_to(request).re == "abc-1"
    err = decode(encode(error_reply("abc-1", "malformed", "no command")))
    assert (err.type, err.re, err.body) == ("error", "abc-1", {"code": "malformed", "message": "no command"})


CURRENT = f"{VERSION[0]}.{VERSION[1]}"


def envelope(**fields) -> bytes:
    """An envelope of a request type that needs no key but v and type (a driver call; a command needs more)."""
    return json.dumps({"v": "2.0", "type": "call", **fields}).encode()


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "empty message"),
        ([b"\xff\xfe"], "not UTF-8 JSON"),
        ([b"[1, 2]"], "not a JSON object"),
        ([b'{"v": "2.0", "type": "x", "body": NaN}'], "not UTF-8 JSON"),
        ([envelope(v="3.0")], rf"unsupported protocol version '3.0' \(this side speaks {CURRENT}\)"),
        ([envelope(v=1)], "unsupported protocol version 1"),
        ([envelope(v="1")], "unsupported protocol version '1'"),
        ([envelope(v="2.0.1")], "unsupported protocol version"),
        ([envelope(v=" 2.0")], "unsupported protocol version"),
        ([envelope(v="2.0\n")], "unsupported protocol version"),
        ([envelope(v="\u00b2.0")], "unsupported protocol version"),  # a digit to str.isdigit, not to int()
        ([envelope(v="1." + "1" * 5000)], "unsupported protocol version"),  # past int()'s digit limit
        ([envelope(v="1" * 5000 + ".0")], "unsupported protocol version"),
        ([envelope(v="3.0", extra=1)], "unsupported protocol version '3.0'"),  # the version is the reason
        ([envelope(v="2.0", extra=1, more=2)], "unknown keys: extra, more"),
        ([envelope(v="0.9", extra=1)], "unsupported protocol version '0.9'"),
        ([envelope(type="")], "'type' must be a non-empty string"),
        ([envelope(body=[])], "'body' must be an object"),
        ([envelope(extra=1)], "unknown keys: extra"),
        ([envelope(seq="7")], "'seq' has the wrong type"),
        ([envelope(body={"a": {"__nd__": 0, "dtype": "<f8", "shape": [2]}})], "binary frame 0, which is missing"),
        ([envelope(body={"a": {"__nd__": 0, "dtype": "<f8", "shape": [3]}}), b"x" * 16],
         "needs 24 bytes, frame 0 has 16"),
        ([envelope(body={"a": {"__nd__": 0, "dtype": "|O", "shape": [1]}}), b"x" * 8], "not a numeric dtype"),
        ([envelope(body={"a": {"__nd__": 0, "dtype": "<U4", "shape": [1]}}), b"x" * 16], "not a numeric dtype"),
        ([envelope(body={"a": {"__nd__": 0, "dtype": "<f8", "shape": [-1]}}), b""], "not a list of sizes"),
        ([envelope(body={"a": {"__nd__": 0, "dtype": "<f8", "shape": [1]},
                         "b": {"__nd__": 0, "dtype": "<f8", "shape": [1]}}), b"x" * 8], "already used"),
        ([envelope(body={"a": {"__float__": "__import__('os')"}})], "bad special float"),
        ([envelope()] + [b""] * 70, "frames, more than"),
        ([b" " * (2 << 20)], "envelope is 2097152 bytes"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(frames, message):
    with pytest.raises(WireProtocolError, match=message):
        decode(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_random_frames_never_raise_anything_else(frames):
    with contextlib.suppress(WireProtocolError):
        decode(frames)
    ident = request_id_of(frames)
    assert ident is None or isinstance(ident, str)


@pytest.mark.parametrize("v", [f"2.{VERSION[1] + 1}", "2.70", "2.100", "2.123456789"])
def test_a_newer_minor_may_carry_envelope_keys_this_side_ignores(v):
    """docs/wire-protocol.md: a newer minor only adds optional keys, so an older receiver ignores them."""
    msg = decode([envelope(v=v, id="r-1", extra=1, trace={"span": [1, 2]}, body={"x": 1})])
    assert (msg.v, msg.type, msg.id, msg.body) == (v, "call", "r-1", {"x": 1})
    with pytest.raises(WireProtocolError, match="'seq' has the wrong type"):  # known keys are still checked
        decode([envelope(v=v, extra=1, seq="7")])


@pytest.mark.parametrize("v", ["2.0", "2.00", CURRENT])
def test_this_minor_or_an_older_one_has_no_unknown_keys(v):
    with pytest.raises(WireProtocolError, match=rf"envelope has unknown keys: extra \(version {v} has no others; "
                                                rf"only a newer minor version than {CURRENT} may add keys"):
        decode([envelope(v=v, extra=1)])


def test_a_newer_minor_batch_may_carry_group_keys_this_side_ignores():
    group = {**GOOD_GROUP, "colour": "red"}
    newer = decode([json.dumps({"v": f"2.{VERSION[1] + 1}", "type": "batch", "body": {"groups": [group]}}).encode()])
    assert [[m.seq for m in g] for g in unbatch(newer)] == [[1]]
    same = decode([json.dumps({"v": "2.0", "type": "batch", "body": {"groups": [group]}}).encode()])
    with pytest.raises(WireProtocolError, match="batch group 0: unknown keys: colour"):
        unbatch(same)


@pytest.mark.parametrize(("frames", "ident"), [
    ([envelope(v="3.0", id="r-7")], "r-7"),  # another version: refused, but its id is readable
    ([envelope(id="r-7", extra=1)], "r-7"),
    ([envelope(id="r-7", type="")], "r-7"),
    ([envelope(id="r-7", body=[])], "r-7"),
    ([envelope(id="r-7", body={"a": {"__nd__": 0, "dtype": "<f8", "shape": [2]}})], "r-7"),
    ([envelope(id="r-7")] + [b""] * 70, "r-7"),  # too many frames
    ([memoryview(envelope(v="9.9", id="r-8"))], "r-8"),
    ([envelope(id=7)], None),  # an id of the wrong type is no id
    ([envelope(re="r-7")], None),
    ([b'{"v": "2.0", "id": "r-7"'], None),  # not JSON
    ([b'["r-7"]'], None),
    ([b'{"id": "r-7", "x": NaN}'], None),
    ([b'{"id": "r-7", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"], None),  # too deep to read safely
    ([b'{"id": "r-7", "x": "' + b" " * (1 << 20) + b'"}'], None),  # larger than any envelope
    ([b"\xff"], None),
    ([], None),
    ([object()], None),
])
def test_the_id_of_a_refused_request_is_read_best_effort(frames, ident):
    """A receiver answers a malformed request with ``re`` = its id whenever the id can still be read."""
    assert request_id_of(frames) == ident
    if ident is not None:  # each of them is refused, though
        with pytest.raises(WireProtocolError):
            decode(frames)


def test_deep_nesting_is_refused():
    body: dict = {}
    inner = body
    for _ in range(40):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(WireProtocolError, match="nested more than 32"):
        decode([json.dumps({"v": "2.0", "type": "x", "body": body}).encode()])



def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab"\\[]{}\n\u00e9\u2603/')),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="[]{}\"\\k", max_size=3), inner,
                                                                max_size=3),
    max_leaves=60)


@settings(max_examples=300, deadline=None)
@given(value=json_values, ensure_ascii=st.booleans())
def test_nesting_is_measured_on_the_text_exactly(value, ensure_ascii):
    """The text-level depth check agrees with the parsed structure's depth, whatever brackets, quotes
    and escapes the strings hold."""
    body = {"x": value}
    assume(_depth(body) <= 33)
    for _ in range(33 - _depth(body)):  # as deep as allowed: the body and 32 levels inside it
        body = {"x": body}
    text = json.dumps({"v": "2.0", "type": "x", "body": body}, ensure_ascii=ensure_ascii).encode()
    assert decode([text]).body == body
    deeper = json.dumps({"v": "2.0", "type": "x", "body": {"x": body}}, ensure_ascii=ensure_ascii).encode()
    with pytest.raises(WireProtocolError, match="nested more than 32"):
        decode([deeper])


@pytest.mark.parametrize("text", [b"[" * 200_000 + b"]" * 200_000, b"{" * 300_000, b'{"a":["]"}'])
def test_deep_or_unbalanced_text_is_refused_before_parsing(text):
    """Text deep enough to exhaust the JSON parser's recursion (a RecursionError) is a malformed message."""
    with pytest.raises(WireProtocolError):
        decode([b'{"v":"2.0","type":"x","body":{"a":' + text + b"}}"])

acquisition = st.builds(
    lambda i, block, start, channels, samples, labels: Acquisition(
        index=i, block=block, start_s=start, dwell_s=1e-5,
        data=(np.arange(channels * samples, dtype=np.float32) * (1 + 1j)).astype(np.complex64)
        .reshape(channels, samples) + i,
        labels=labels),
    st.integers(0, 2**40), st.integers(0, 2**31), st.floats(0, 1e4), st.integers(1, 4), st.integers(0, 9),
    st.dictionaries(st.sampled_from(["LIN", "SLC", "AVG", "REP"]), st.integers(-2**31, 2**31), max_size=3))


@settings(max_examples=60, deadline=None)
@given(st.lists(acquisition, max_size=20))
def test_acquisition_batches_round_trip_in_six_frames(batch):
    frames = encode(Message(type="data", body={"acquisitions": pack_acquisitions(batch)}))
    assert len(frames) <= 1 + 6 + 2 * 4  # envelope, six columns, a column (and a presence mask) per label
    back = unpack_acquisitions(decode(frames).body["acquisitions"])
    assert len(back) == len(batch)
    for a, b in zip(batch, back, strict=True):
        assert (a.index, a.block, a.start_s, a.dwell_s, a.labels) == (b.index, b.block, b.start_s, b.dwell_s, b.labels)
        assert b.data.dtype == np.complex64 and b.data.shape == a.data.shape and np.array_equal(a.data, b.data)



@settings(max_examples=60, deadline=None)
@given(batch=st.lists(acquisition, max_size=12), cut=st.tuples(st.integers(-14, 14), st.integers(-14, 14)))
def test_an_acquisition_batch_slices_forwards_and_joins_in_columns(batch, cut):
    """A batch sliced is a batch of the same acquisitions (its data a view, shapes mixed or not); packing
    a batch hands over its columns uncopied; batches joined are the acquisitions in order."""
    whole = AcquisitionBatch(pack_acquisitions(batch))
    assert pack_acquisitions(whole) is whole.columns
    assert whole[0:len(batch)] is whole  # the whole batch (a segment in one message) is not copied
    part = whole[cut[0]:cut[1]]
    assert isinstance(part, AcquisitionBatch)
    expected = batch[cut[0]:cut[1]]
    assert len(part) == len(expected)
    for a, b in zip(expected, part, strict=True):
        assert (a.index, a.block, a.start_s, a.labels) == (b.index, b.block, b.start_s, b.labels)
        assert np.array_equal(a.data, b.data) and b.data.shape == a.data.shape
    assert part.columns["data"].size == 0 or np.shares_memory(part.columns["data"], whole.columns["data"])
    halves = [whole[:len(batch) // 2], whole[len(batch) // 2:]]
    if all(set(a.labels) == set(batch[0].labels) for a in batch):  # joined batches share their labels
        joined = AcquisitionBatch.concatenate(halves)
        assert [a.index for a in joined] == [a.index for a in batch]
        assert all(np.array_equal(a.data, b.data) for a, b in zip(batch, joined, strict=True))
    assert len(AcquisitionBatch.empty()) == 0 and list(AcquisitionBatch.empty()) == []

def test_a_thousand_acquisitions_travel_in_one_message():
    batch = [Acquisition(i, i, i * 1e-3, 1e-5, np.full((2, 64), i, np.complex64), {"LIN": i}) for i in range(1000)]
    frames = encode(Message(type="data", body={"acquisitions": pack_acquisitions(batch)}))
    assert len(frames) == 1 + 6 + 1
    back = unpack_acquisitions(decode(frames).body["acquisitions"])
    assert [a.labels["LIN"] for a in back] == list(range(1000)) and back[999].data[1, 63] == 999


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update(data=b["data"][:-1]), "shapes need"),
    (lambda b: b.update(index=b["index"][:-1]), "disagree on the count"),
    (lambda b: b.update(start_s=b["start_s"].astype(np.int64)), "'start_s' must be an array"),
    (lambda b: b.pop("shape"), "'shape' must be an array"),
    (lambda b: b.update(shape=-b["shape"]), "negative"),
    (lambda b: b["labels"].update(LIN=np.zeros(1, np.int64)), "label column 'LIN'"),
    (lambda b: b.update(unlabelled={"SLC": np.zeros(3, bool)}), "'unlabelled'"),
])
def test_malformed_acquisition_batches_are_refused(change, message):
    batch = pack_acquisitions([Acquisition(i, i, 0.0, 1e-5, np.ones((1, 4), np.complex64), {"LIN": i})
                               for i in range(3)])
    change(batch)
    with pytest.raises(WireProtocolError, match=message):
        unpack_acquisitions(batch)
    with pytest.raises(WireProtocolError, match="object of columns"):
        unpack_acquisitions([1, 2])


def test_a_message_with_too_many_arrays_is_refused_by_its_sender():
    with pytest.raises(WireProtocolError, match="more than the 64 allowed"):
        encode(Message(type="data", body={"a": [np.zeros(1)] * 65}))


def test_a_batch_carries_its_groups_in_order_with_the_batch_src():
    bodies = [pack_body({"i": i, "x": float("nan")}, []) for i in range(3)]
    groups = [Group("event", "s", 7, "r", [1.0, 2.25], bodies[:2]), Group("event", "t", 1, None, [3.0], bodies[2:])]
    batch = decode([encode_batch(groups, src="server-1")])
    assert batch.type == "batch" and unbatch(Message(type="event"))[0][0].type == "event"
    inner = [m for group in unbatch(batch) for m in group]
    assert [len(group) for group in unbatch(batch)] == [2, 1]
    assert [(m.type, m.src, m.stream, m.seq, m.run, m.ts, m.body["i"]) for m in inner] == [
        ("event", "server-1", "s", 7, "r", 1.0, 0), ("event", "server-1", "s", 8, "r", 2.25, 1),
        ("event", "server-1", "t", 1, None, 3.0, 2)]
    assert math.isnan(inner[0].body["x"])


GOOD_GROUP = {"type": "event", "stream": "s", "seq": 1, "ts": 1.0, "dt_us": [0], "bodies": [{}]}


@pytest.mark.parametrize("groups, reason", [
    ("nope", "a list 'groups'"),
    ([1], "batch group 0: not an object"),
    ([GOOD_GROUP, {**GOOD_GROUP, "color": 1}], "batch group 1: unknown keys: color"),
    ([{**GOOD_GROUP, "type": ""}], "batch group 0: 'type' must be"),
    ([{**GOOD_GROUP, "stream": 3}], "batch group 0: 'stream'"),
    ([{**GOOD_GROUP, "run": ["r"]}], "batch group 0: 'stream' \\(and 'run'"),
    ([{**GOOD_GROUP, "seq": "1"}], "batch group 0: 'seq' must be an integer"),
    ([{**GOOD_GROUP, "seq": True}], "batch group 0: 'seq' must be an integer"),
    ([{**GOOD_GROUP, "bodies": [[]]}], "batch group 0: 'bodies' must be a non-empty list of objects"),
    ([{**GOOD_GROUP, "bodies": [], "dt_us": []}], "batch group 0: 'bodies' must be a non-empty list"),
    ([{**GOOD_GROUP, "ts": "now"}], "batch group 0: 'ts' must be a time"),
    ([{**GOOD_GROUP, "ts": True}], "batch group 0: 'ts' must be a time"),
    ([{**GOOD_GROUP, "dt_us": []}], "batch group 0: 'dt_us' must be a list of integers, one per body"),
    ([{**GOOD_GROUP, "dt_us": [0.5]}], "batch group 0: 'dt_us' must be a list of integers"),
])
def test_malformed_batches_are_refused_with_a_reason(groups, reason):
    frame = json.dumps({"v": "2.0", "type": "batch", "body": {"groups": groups}}).encode()
    with pytest.raises(WireProtocolError, match=reason):
        unbatch(decode([frame]))


# -- hostile input: nothing but WireProtocolError, whatever arrives (issue 13, defect 1) ----------------------
def envelope_text(**raw: str) -> bytes:
    """An envelope whose values are given as raw JSON text (numbers json.dumps cannot write, e.g. 5000 digits)."""
    fields = {"v": '"2.0"', "type": '"call"', **raw}
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}").encode()


def batch_of(**group) -> bytes:
    return json.dumps({"v": "2.0", "type": "batch", "body": {"groups": [{**GOOD_GROUP, **group}]}}).encode()


def nd(shape, dtype="<f8", index=0) -> dict:
    return {"__nd__": index, "dtype": dtype, "shape": shape}


HUGE = 10 ** 400  # a float() of it overflows
ENORMOUS = "9" * 4300  # as many digits as int() takes from text; arithmetic on it makes ints str() refuses


@pytest.mark.parametrize(("frames", "reason"), [
    # The three messages of issue 13 that ended a control server / driver service:
    ([envelope_text(ts="9" * 401)], "'ts' must be a time"),
    ([envelope(body={"a": nd([True])}), b"x" * 8], "array shape"),
    ([envelope(body={"a": nd([2 ** 64, 0])}), b""], "array shape"),
    # ... and their relatives:
    ([envelope_text(ts="1e999")], "'ts' must be a time"),  # json reads it as inf
    ([envelope_text(ts="-1")], "'ts' must be a time"),
    ([envelope(ts=1e300)], "'ts' must be a time"),
    ([envelope(ts=True)], "'ts' has the wrong type"),
    ([envelope(seq=2 ** 64)], "'seq' must be"),
    ([envelope(seq=-1)], "'seq' must be"),
    ([envelope(seq=False)], "'seq' has the wrong type"),
    ([envelope(src="s" * 100_000)], "'src' is longer than"),
    ([envelope(id="i" * 100_000)], "'id' is longer than"),
    ([envelope(body={"a": nd([1], index=True)}), b"x" * 8], "binary frame True"),
    ([envelope_text(body='{"a":{"__nd__":0,"dtype":"<f8","shape":[' + ",".join([ENORMOUS] * 8) + "]}}"), b""],
     "array shape"),
    ([envelope(body={"a": nd([2 ** 20] * 8)}), b""], "array shape"),  # each size fine, the product is not
    ([envelope(body={"a": nd([2 ** 31, 2 ** 31, 0])}), b""], "array shape"),
    ([envelope(body={"a": nd([1.0])}), b"x" * 8], "array shape"),
    ([envelope(body={"a": nd([1] * 9)}), b"x" * 8], "array shape"),
    ([envelope(body={"a": nd([1], dtype="(2)f8")}), b"x" * 16], "not a numeric dtype"),
    ([envelope(body={"a": nd([1], dtype="f8,i4")}), b"x" * 12], "not a numeric dtype"),
    ([envelope(body={"a": nd([1], dtype="<M8")}), b"x" * 8], "not a numeric dtype"),
    ([envelope(body={"a": nd([1], dtype=["f8"])}), b"x" * 8], "not a numeric dtype"),
    ([envelope(body={"a": nd([1], dtype="<f8" + " " * 10_000)}), b"x" * 8], "not a numeric dtype"),
    ([envelope(body={"__float__": "nan"})], "'body' must be an object"),  # a float body killed the server
    ([envelope(body=nd([1])), b"x" * 8], "'body' must be an object"),
    ([envelope(body={"a": {"__float__": "nan", "b": 1}})], "bad special float"),
    ([envelope(body={"a": {"__float__": ["nan"] * 10_000}})], "bad special float"),
    ([envelope(v="1." + "9" * 20)], "unsupported protocol version"),
    ([envelope(v="2" * 100_000)], "unsupported protocol version"),
    ([memoryview(np.zeros((2, 3), np.uint8)[:, ::2])], "not bytes"),  # a view no byte string can be made of
])
def test_hostile_messages_are_refused_as_malformed(frames, reason):
    """Every one of these raised OverflowError, TypeError or ValueError (or was taken) before: a receiver that
    catches WireProtocolError died of it. The reason is bounded too: a refused message's text is not echoed."""
    with pytest.raises(WireProtocolError, match=reason) as caught:
        decode(frames)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(("group", "reason"), [
    ({"ts": HUGE}, "'ts' must be a time"),  # killed `scanctl watch`
    ({"ts": 1e300}, "'ts' must be a time"),
    ({"ts": -5.0}, "'ts' must be a time"),
    ({"dt_us": [HUGE]}, "'dt_us'"),
    ({"dt_us": [-2 * 10 ** 6]}, "'dt_us'"),  # before 1970
    ({"dt_us": [True]}, "'dt_us' must be a list of integers"),
    ({"seq": 2 ** 63 - 1, "dt_us": [0, 1], "bodies": [{}, {}]}, "'seq' must be"),  # the second's passes 2**63 - 1
    ({"seq": -3}, "'seq' must be"),
    ({"stream": "s" * 10_000}, "'stream'"),
    ({"run": "r" * 10_000}, "'run'"),
    ({"dt_us": [0] * 513, "bodies": [{}] * 513}, "more than 512 messages"),
])
def test_hostile_batches_are_refused_as_malformed(group, reason):
    with pytest.raises(WireProtocolError, match=reason):
        unbatch(decode([batch_of(**group)]))


def test_a_batch_of_more_messages_than_a_publisher_sends_is_refused():
    groups = [{**GOOD_GROUP, "seq": 1 + 300 * i, "dt_us": [0] * 300, "bodies": [{}] * 300} for i in range(2)]
    with pytest.raises(WireProtocolError, match="more than 512 messages"):
        unbatch(decode([json.dumps({"v": "2.0", "type": "batch", "body": {"groups": groups}}).encode()]))


def test_unbatch_and_request_id_of_take_anything():
    for msg in (Message(type="batch", body=[]), Message(type="batch", body={"groups": [GOOD_GROUP]}, v=1),
                Message(type="batch", body={"groups": [GOOD_GROUP]}, v="9.0")):
        with pytest.raises(WireProtocolError):
            unbatch(msg)
    assert request_id_of([envelope(id="r" * 100_000)]) is None  # too long to be a request id: not echoed
    assert request_id_of(5) is None and request_id_of([5]) is None


@pytest.mark.parametrize("change", [
    lambda b: b.update(index=np.array(3)),  # 0-d: len() of it raised TypeError
    lambda b: b.update(data=b["data"].reshape(3, 4)),
    lambda b: b.update(shape=np.array([[2 ** 62, 4], [2 ** 62, 4], [3, 4]])),  # products wrap around to 0 + 0 + 12
    lambda b: b.update(shape=np.array([[1, 2 ** 63 - 1], [1, 2 ** 63 - 1], [1, 14]])),  # the sum wraps around to 12
])
def test_acquisition_batches_that_would_overflow_are_refused(change):
    batch = pack_acquisitions([Acquisition(i, i, 0.0, 1e-5, np.ones((1, 4), np.complex64)) for i in range(3)])
    change(batch)
    with pytest.raises(WireProtocolError):
        unpack_acquisitions(batch)


# Raw JSON text of hostile values: numbers json.dumps cannot write or float() cannot take, and the structures a
# receiver looks into (array references, special floats, batch groups).
numbers = st.one_of(
    st.integers().map(str), st.integers(-2 ** 70, 2 ** 70).map(str),
    st.integers(1, 5000).map(lambda n: "9" * n), st.integers(1, 600).map(lambda n: "-1" + "0" * n),
    st.sampled_from(["1e999", "-1e999", "1e-999", "-0", "0.0", "1E400", "18446744073709551616", "4.5e15"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr))
strings = st.one_of(st.text(max_size=12), st.sampled_from(["2.0", "2.1", "3.0", "nan", "inf", "-inf", "<f8", "|b1",
                                                            "<c16", "f16", "(2)f8", "f8,i4", "O", "<U4", "S0",
                                                            "M8", "batch", "event", "command", "\ud800"]),
                    st.integers(1, 3000).map(lambda n: "x" * n)).map(json.dumps)
atoms = st.one_of(numbers, strings, st.sampled_from(["true", "false", "null"]))


def obj(pairs) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


def arr(items) -> str:
    return "[" + ",".join(items) + "]"


KEYS = ["v", "type", "id", "re", "src", "ts", "stream", "seq", "run", "body", "groups", "dt_us", "bodies",
        "__nd__", "__float__", "dtype", "shape", "__type__"]
sizes = st.one_of(st.integers(0, 4).map(str), numbers, st.sampled_from(["true", "false", "null", "[]", "{}"]))
nd_refs = st.builds(lambda i, d, s: obj([("__nd__", i), ("dtype", d), ("shape", s)]),
                    st.one_of(st.integers(-1, 4).map(str), atoms), strings,
                    st.one_of(st.lists(sizes, max_size=9).map(arr), atoms))
json_texts = st.recursive(
    st.one_of(atoms, nd_refs, strings.map(lambda s: obj([("__float__", s)]))),
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(arr),
                            st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), inner),
                                     max_size=5).map(obj)),
    max_leaves=25)
groups = st.lists(st.sampled_from(["type", "stream", "seq", "run", "ts", "dt_us", "bodies", "x"]), unique=True).flatmap(
    lambda keys: st.tuples(*[st.one_of(json_texts, st.just({"type": '"event"', "stream": '"s"', "seq": "1",
                                                            "run": '"r"', "ts": "1.5", "dt_us": "[0]",
                                                            "bodies": "[{}]", "x": "1"}[k])) for k in keys])
    .map(lambda values, keys=keys: obj(zip(keys, values, strict=True))))
good_refs = st.builds(lambda i, d, s: obj([("__nd__", str(i)), ("dtype", json.dumps(d)), ("shape", json.dumps(s))]),
                     st.integers(0, 3), st.sampled_from(["<f8", "|u1", "|b1", "<c16", "<i4", ">f4"]),
                     st.lists(st.sampled_from([0, 1, 2, 3, 8, 24]), max_size=3))
plausible = {"id": strings, "re": strings, "src": strings, "stream": strings, "run": strings,
             "ts": st.one_of(numbers, st.floats(0, 1e10).map(repr)),
             "seq": st.one_of(numbers, st.integers(0, 99).map(str)),
             "body": st.one_of(st.lists(st.tuples(st.text(max_size=4), st.one_of(good_refs, nd_refs, json_texts)),
                                        max_size=4).map(obj),
                               good_refs, st.sampled_from(["nan", "inf", "x"]).map(
                                   lambda s: obj([("__float__", json.dumps(s))])))}
envelopes = st.one_of(
    st.lists(st.tuples(st.sampled_from(KEYS[:10] + ["extra"]), json_texts), max_size=10).map(obj),
    st.lists(st.sampled_from(sorted(plausible)), unique=True).flatmap(  # the right JSON types, hostile values
        lambda keys: st.tuples(*[plausible[k] for k in keys]).map(
            lambda values, keys=keys: obj([("v", '"2.0"'), ("type", '"event"'), *zip(keys, values, strict=True)]))),
    st.builds(lambda v, t, rest: obj([("v", v), ("type", t), *rest]),
              st.sampled_from(['"2.0"', '"2.1"', '"2.00"']), st.sampled_from(['"command"', '"batch"', '"call"']),
              st.lists(st.tuples(st.sampled_from(KEYS[2:10]), json_texts), max_size=6)),
    st.builds(lambda v, gs: obj([("v", v), ("type", '"batch"'), ("body", obj([("groups", arr(gs))]))]),
              st.sampled_from(['"2.0"', '"2.2"']), st.lists(st.one_of(groups, json_texts), max_size=3)))
frame_lists = st.lists(st.one_of(st.binary(max_size=32), st.sampled_from([b"", b"x" * 8, b"y" * 16, b"z" * 24])),
                       max_size=4)


def check_anything(frames) -> None:
    """The property every receiver relies on: a Message whose fields are what the protocol says, or
    WireProtocolError — never another exception — from decode, unbatch and request_id_of alike."""
    ident = request_id_of(frames)
    assert ident is None or (isinstance(ident, str) and len(ident) <= 256)
    try:
        msg = decode(frames)
    except WireProtocolError as exc:
        assert len(str(exc)) < 1000  # the message's own text is never echoed at length
        event(f"refused: {str(exc).split(' ')[0]}")
        return
    event(f"decoded: {msg.type}" if msg.type == "batch" else "decoded")
    for m in [m for group in _unbatched(msg) for m in group]:  # (a message unbatch refuses is checked as such)
        assert type(m.type) is str and 0 < len(m.type) <= 64 and isinstance(m.body, dict)
        assert type(m.ts) is float and 0 <= m.ts <= 1e10
        assert m.seq is None or (type(m.seq) is int and 0 <= m.seq < 2 ** 63)
        for text in (m.id, m.re, m.src, m.stream, m.run):
            assert text is None or (type(text) is str and len(text) <= 256)


def _unbatched(msg: Message) -> list[list[Message]]:
    try:
        groups = unbatch(msg)
    except WireProtocolError:
        return [[msg]]
    if msg.type == "batch":
        event("unbatched")
    return groups


@settings(max_examples=400, deadline=None)
@given(head=envelopes, frames=frame_lists)
def test_hostile_envelopes_give_a_message_or_wire_protocol_error(head, frames):
    check_anything([head.encode("utf-8", "surrogatepass"), *frames])


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("__nd__", "__float__")), bodies,
                            max_size=4),
       cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 4), st.binary(max_size=3)), min_size=1,
                     max_size=4),
       drop=st.booleans())
def test_mutated_messages_give_a_message_or_wire_protocol_error(body, cuts, drop):
    """A valid message with bytes replaced, inserted or cut anywhere, in the envelope or the binary frames."""
    frames = [bytearray(f) for f in encode(Message(type="event", body=body, id="r-1", src="s", stream="state",
                                                   seq=3, run="r"))]
    for at, length, new in cuts:
        frame = frames[at % len(frames)]
        where = (at // len(frames)) % (len(frame) + 1)
        frame[where:where + length] = new
    if drop and len(frames) > 1:
        frames.pop()
    check_anything([bytes(f) for f in frames])


@pytest.mark.parametrize("key", ["id", "src"])
def test_a_required_command_key_sent_as_null_counts_as_missing(key):
    """`{"id": null}` is no id: its reply could not be matched (and `src: null` would hold control under a
    routing id), so it is refused like a missing key."""
    fields = {"v": "2.0", "type": "command", "id": "r-1", "src": "console", "ts": 1.0, "body": {"command": "status"}}
    fields[key] = None
    with pytest.raises(WireProtocolError, match=f"missing: '{key}'"):
        decode([json.dumps(fields).encode()])
