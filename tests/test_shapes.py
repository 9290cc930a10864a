"""Pulseq shape compression (:mod:`scanctl.sequence.shapes`) against the specification and pypulseq.

* round trip: ``decompress(compress(w), len(w))`` is ``w`` to within half the quantisation step pypulseq
  uses (the derivative is quantised to 1e-7 with error feedback, so each sample is off by at most 0.5e-7);
* bit-compatibility: ``compress`` gives exactly pypulseq's ``compress_shape`` data, ``decompress`` exactly
  pypulseq's ``decompress_shape``;
* the specification's worked examples (doc/specification.tex in pulseq/pulseq);
* malformed packed data raises :class:`ShapeError` -- never another exception, a hang or an allocation
  sized by an absurd ``num_samples``.
"""

from __future__ import annotations

import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypulseq.compress_shape import compress_shape
from pypulseq.decompress_shape import decompress_shape

from scanctl.sequence.shapes import ShapeError, compress, decompress

QUANTUM = 1e-7  # pypulseq's (and MATLAB Pulseq's) quantisation step of the derivative
EPS = np.finfo(np.float64).eps

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------
# Waveforms with the structure real shapes have: runs, ramps, plateaus, noise, integer time shapes
# ----------------------------------------------------------------------------------------------------------

_values = st.one_of(
    st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False),
    st.integers(-5, 5).map(float),
    st.integers(-(10**7), 10**7).map(lambda k: k * QUANTUM),  # exactly on (or next to) the quantisation grid
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
)
_lengths = st.integers(1, 40)


@st.composite
def _segment(draw: st.DrawFn) -> np.ndarray:
    kind = draw(st.sampled_from(["constant", "ramp", "noise", "steps"]))
    n = draw(_lengths)
    if kind == "constant":
        return np.full(n, draw(_values))
    if kind == "ramp":
        slope = draw(st.one_of(st.floats(-0.1, 0.1, allow_nan=False), st.integers(-3, 3).map(float)))
        return draw(_values) + slope * np.arange(n)
    if kind == "steps":  # integer-valued (time shapes, counts that collide with run-length markers)
        return np.cumsum(np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), dtype=float))
    return np.array(draw(st.lists(_values, min_size=n, max_size=n)))


waveforms = st.lists(_segment(), min_size=1, max_size=8).map(np.concatenate)


def _tolerance(w: np.ndarray) -> float:
    """Half a quantisation step, plus float rounding accumulated by the cumulative sum."""
    return 0.5 * QUANTUM + 8 * w.size * EPS * max(1.0, float(np.abs(w).max()))


# ----------------------------------------------------------------------------------------------------------
# Round trip and pypulseq equality
# ----------------------------------------------------------------------------------------------------------


@SETTINGS
@given(waveforms)
def test_round_trip_within_quantisation(w: np.ndarray) -> None:
    packed = compress(w)
    assert packed.size <= w.size
    out = decompress(packed, w.size)
    assert out.shape == w.shape
    assert np.abs(out - w).max() <= _tolerance(w)
    if packed.size == w.size:  # stored uncompressed: exact
        np.testing.assert_array_equal(out, w)


@SETTINGS
@given(waveforms)
def test_compress_and_decompress_equal_pypulseq(w: np.ndarray) -> None:
    ours = compress(w)
    theirs = compress_shape(w.copy())
    assert theirs.num_samples == w.size
    packed = np.asarray(theirs.data, dtype=float)
    np.testing.assert_array_equal(ours, packed)
    expected = decompress_shape(SimpleNamespace(data=packed.copy(), num_samples=w.size))
    np.testing.assert_array_equal(decompress(packed, w.size), expected)


@pytest.mark.parametrize("n", [5, 16, 1000, 100_000])
def test_smooth_shapes_compress_to_a_few_values(n: int) -> None:
    """A constant, a ramp and a trapezoid need a handful of stored values whatever their length."""
    ramp = np.arange(n) / n
    trapezoid = np.minimum(np.minimum(np.arange(n), np.arange(n)[::-1]) / 3.0, 1.0)
    for w, limit in ((np.full(n, 0.5), 4), (ramp, 4), (trapezoid, 13)):
        packed = compress(w)
        assert packed.size <= min(limit, n)
        assert np.abs(decompress(packed, n) - w).max() <= _tolerance(w)


# ----------------------------------------------------------------------------------------------------------
# The specification's examples (doc/specification.tex, "Compression")
# ----------------------------------------------------------------------------------------------------------

SPEC_EXAMPLES = [
    pytest.param(
        [0.0, 0.1, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0],
        [0.0, 0.1, 0.15, 0.25, 0.5, 0.0, 0.0, 4, -0.25, -0.25, 2],
        id="ramp-plateau-ramp",
    ),
    pytest.param([0.0] * 100, [0.0, 0.0, 98], id="100-zeros"),
    pytest.param([1.0] * 100, [1.0, 0.0, 0.0, 97], id="100-ones"),
]


@pytest.mark.parametrize(("shape", "stored"), SPEC_EXAMPLES)
def test_specification_examples(shape: list[float], stored: list[float]) -> None:
    w, packed = np.array(shape), np.array(stored, dtype=float)
    np.testing.assert_allclose(compress(w), packed, rtol=0, atol=1e-12)
    np.testing.assert_allclose(decompress(packed, w.size), w, rtol=0, atol=1e-12)


def test_short_or_incompressible_shapes_are_stored_as_they_are() -> None:
    for w in (np.array([0.3]), np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.7, 0.1, 0.9, 0.2, 0.4])):
        packed = compress(w)
        np.testing.assert_array_equal(packed, w)
        assert packed is not w  # a copy: the caller's array is never aliased
        np.testing.assert_array_equal(decompress(packed, w.size), w)


# ----------------------------------------------------------------------------------------------------------
# Malformed packed data
# ----------------------------------------------------------------------------------------------------------

MALFORMED = [
    pytest.param([0.1, 0.1], 5, id="run-without-count"),
    pytest.param([0.2, 0.1, 0.1], 7, id="run-without-count-at-end"),
    pytest.param([0.1, 0.1, -1.0], 5, id="negative-count"),
    pytest.param([0.1, 0.1, 2.5], 6, id="fractional-count"),
    pytest.param([0.1, 0.1, np.nan], 6, id="nan-count"),
    pytest.param([0.1, 0.1, np.inf], 6, id="infinite-count"),
    pytest.param([0.1, 0.1, 1e300], 10, id="absurd-count"),
    pytest.param([0.1, 0.1, 3.0], 4, id="expands-to-too-many"),
    pytest.param([0.1, 0.1, 3.0, 0.2], 9, id="expands-to-too-few"),
    pytest.param([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 4, id="more-values-than-samples"),
    pytest.param([], 3, id="nothing-stored"),
    pytest.param([0.0, 0.0, 5.0], 10**15, id="absurd-num-samples"),
    pytest.param([0.0, 0.0, 1e9], 10**9 + 3, id="huge-count-one-short"),
    pytest.param([0.5, 0.5, 10**15 - 2, 1.0, 1.0, 10**15 - 2], 10**15, id="counts-sum-past-num-samples"),
]


@pytest.mark.parametrize(("packed", "num_samples"), MALFORMED)
def test_malformed_raises_shape_error_without_allocating(packed: list[float], num_samples: int) -> None:
    data = np.array(packed, dtype=float)
    tracemalloc.start()
    try:
        with pytest.raises(ShapeError):
            decompress(data, num_samples)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"decompress allocated {peak} bytes for {data.size} stored values"


_packed_values = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, -1.0, 2.5, 1e300, np.nan, np.inf, -np.inf]),
    st.integers(0, 6).map(float),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_packed_values, max_size=30).map(lambda v: np.array(v, dtype=float)),
    st.one_of(st.integers(0, 80), st.just(10**12 + 1)),
)
def test_arbitrary_packed_data_decodes_or_raises_shape_error(packed: np.ndarray, num_samples: int) -> None:
    """Whatever the stored values, the result is ``num_samples`` samples or a ShapeError -- nothing else.

    When scanctl accepts compressed data, pypulseq's decoder gives the same samples.
    """
    try:
        out = decompress(packed, num_samples)
    except ShapeError:
        return
    assert out.shape == (num_samples,)
    if packed.size != num_samples:
        theirs = decompress_shape(SimpleNamespace(data=packed.copy(), num_samples=num_samples))
        np.testing.assert_array_equal(out, theirs)


def test_long_malformed_data_is_rejected_quickly() -> None:
    """A million stored zeros (every position a run marker) that do not expand to num_samples."""
    n = 1_000_000
    start = time.perf_counter()
    with pytest.raises(ShapeError, match="expands to"):
        decompress(np.zeros(n), n + 1)
    assert time.perf_counter() - start < 5.0


def test_long_valid_run_length_data_matches_pypulseq() -> None:
    """Many back-to-back runs whose counts equal the next run's value (marker look-alikes)."""
    rng = np.random.default_rng(7)
    steps = np.repeat(rng.integers(0, 4, size=20_000).astype(float), rng.integers(1, 5, size=20_000))
    w = np.cumsum(steps)
    packed = compress(w)
    assert packed.size < w.size
    ours = decompress(packed, w.size)
    theirs = decompress_shape(SimpleNamespace(data=packed.copy(), num_samples=w.size))
    np.testing.assert_array_equal(ours, theirs)
    assert np.abs(ours - w).max() <= _tolerance(w)
