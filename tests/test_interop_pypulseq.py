"""Interoperability with pypulseq (pinned 1.5.0.post1), the reference implementation.

For every small sequence of :mod:`tests.pulseq_factory`:

* **pypulseq -> scanctl**: pypulseq writes the file, scanctl reads it; block count, total duration, ADC events
  and samples, ADC sample times, RF excitation/refocusing times, the gradient waveform of every axis and the
  k-space trajectory at the ADC samples match what pypulseq itself computes from the *same file*
  (``Sequence.read`` + ``duration``/``waveforms_and_times``/``calculate_kspace``);
* **scanctl -> pypulseq**: scanctl writes the sequence it read (format 1.5.1); pypulseq reads that file and
  gets the same figures as for the original file and as scanctl; labels, soft delays, triggers and
  definitions survive;
* **signatures**: the ``[SIGNATURE]`` hash is the MD5 of the file's bytes up to (not including) the newline
  before ``[SIGNATURE]`` (pypulseq's ``write_seq`` signs exactly that and scanctl's writer documents the same
  rule). pypulseq never verifies a signature on read, so its own signing procedure is reproduced on
  scanctl-written files, and scanctl verifies pypulseq-signed ones;
* **format 1.4.1**: ``Sequence.write(..., v141_compat=True)`` files read by scanctl give the same figures as
  pypulseq's reading of them.

Tolerances: gradients and k-space within 1e-6 of each channel's maximum (the issue's criterion); times within
1 ns (1 % of the finest raster, the 100 ns ADC raster; the float error of these short sequences is ~1e-15 s).

pypulseq behaviours the tests work around (each is explained where it is handled):

* ``Sequence.read`` defaults to ``detect_rf_use=False``, which overrides ``read_seq.read``'s own default
  (detect for files older than 1.5). Read that way, every RF pulse of a 1.4 file is "undefined" -- an
  excitation for ``calculate_kspace`` -- so refocusing pulses are ignored. 1.4 files are therefore read with
  ``detect_rf_use=True`` (for 1.5 files the flag is ignored with a warning, so they are read without it).
* ``Sequence.waveforms`` drops the ``first``/``last`` edge points of half-raster (``time_id`` -1) gradients:
  their sample times are not on the regular raster, so they take the extended-trapezoid branch. pypulseq's
  own ``make_arbitrary_grad(oversampling=True)`` defines such a gradient as ``first`` at 0, samples at
  ``k * raster / 2`` and ``last`` at ``shape_dur = (N + 1) / 2 * raster``; the reference waveform gets those
  edge points back (see :func:`_pypulseq_waveforms`) before anything is compared or integrated.
* ``remove_duplicates`` (on by default in ``write`` and ``read``) raises ``KeyError: -1`` for half-raster
  gradients, so that case is written and read with ``remove_duplicates=False``.
* pypulseq's 1.4.1 writer drops the soft-delay extension specification but keeps the list entries that
  refer to it: the file is invalid (pypulseq cannot read it back either); scanctl must refuse it clearly.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pypulseq as pp
import pytest

from scanctl.errors import SequenceFormatError, SignatureError
from scanctl.sequence import pulseq_read, pulseq_write
from scanctl.sequence import waveforms as W
from scanctl.sequence.model import Sequence
from tests import pulseq_factory as factory

REL_TOL = 1e-6  # of each channel's maximum: gradients and k-space
TIME_TOL_S = 1e-9
_STEP_S = 1e-9  # breakpoints closer than this are the same instant (a step)


# ----------------------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], pp.Sequence]
    # pypulseq's remove_duplicates raises KeyError: -1 for half-raster gradients (see the module docstring).
    remove_duplicates: bool = True


CASES: dict[str, Case] = {name: Case(name, builder) for name, builder in factory.ALL_SMALL.items()}
CASES["arbitrary_gradient_half_raster"] = Case(
    "arbitrary_gradient_half_raster",
    functools.partial(factory.arbitrary_gradient_oversampled, oversampled=True),
    remove_duplicates=False,
)


@contextmanager
def _quiet() -> Iterator[None]:
    """pypulseq warns about file versions newer than itself (1.5.1), 1.4 files and version-dependent flags."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _pp_read(path: Path, case: Case, *, detect_rf_use: bool = False) -> pp.Sequence:
    ref = pp.Sequence()
    with _quiet():
        ref.read(str(path), detect_rf_use=detect_rf_use, remove_duplicates=case.remove_duplicates)
    return ref


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    blocks: int
    duration_s: float
    adc_events: int
    adc_samples: int
    adc_t_s: np.ndarray
    excitation_t_s: np.ndarray
    refocusing_t_s: np.ndarray
    waves: list[tuple[np.ndarray, np.ndarray]]  # per axis: breakpoint times (s) and values (Hz/m)
    kspace_adc: np.ndarray  # (3, N), 1/m
    kspace_max: np.ndarray | None = None  # (3,): max |k| per channel over the whole trajectory (pypulseq)


def _pypulseq_waveforms(ref: pp.Sequence) -> list[np.ndarray]:
    """``ref.waveforms()`` with the edge points of half-raster gradients restored (see the module docstring).

    A point is only added where pypulseq has none at that time, so this is a no-op for a pypulseq that
    keeps them.
    """
    waves = [w.copy() for w in ref.waveforms()]
    extra: list[list[tuple[float, float]]] = [[], [], []]
    t0 = 0.0
    for block_id in ref.block_events:
        block = ref.get_block(block_id)
        for axis, channel in enumerate(("gx", "gy", "gz")):
            g = getattr(block, channel)
            if g is not None and g.type == "grad" and g.time_id == -1:
                start = t0 + g.delay
                # shape_dur as make_arbitrary_grad(oversampling=True) defines it: (N + 1) / 2 rasters
                end = start + g.tt[-1] + 0.5 * ref.grad_raster_time
                extra[axis] += [(start, float(g.first)), (end, float(g.last))]
        t0 += ref.block_durations[block_id]
    for axis, points in enumerate(extra):
        if not points:
            continue
        t, g = waves[axis]
        new = [(tp, gp) for tp, gp in points if t.size == 0 or np.abs(t - tp).min() > 1e-12]
        if new:
            t = np.concatenate((t, [p[0] for p in new]))
            g = np.concatenate((g, [p[1] for p in new]))
            order = np.argsort(t, kind="stable")
            waves[axis] = np.stack((t[order], g[order]))
    return waves


def pypulseq_figures(ref: pp.Sequence) -> Figures:
    duration, blocks, events = ref.duration()  # events: per column of [BLOCKS] (.., RF, GX, GY, GZ, ADC, EXT)
    waves = _pypulseq_waveforms(ref)
    # calculate_kspace integrates ref.waveforms(): let it integrate the corrected waveforms.
    ref.waveforms = lambda append_RF=False, time_range=None: [w.copy() for w in waves]
    try:
        with _quiet():
            k_adc, k_traj, t_exc, t_ref, t_adc = ref.calculate_kspace()
    finally:
        del ref.waveforms
    return Figures(
        blocks=int(blocks),
        duration_s=float(duration),
        adc_events=int(events[5]),
        adc_samples=int(np.size(t_adc)),
        adc_t_s=np.asarray(t_adc, dtype=float),
        excitation_t_s=np.sort(np.asarray(t_exc, dtype=float)),
        refocusing_t_s=np.sort(np.asarray(t_ref, dtype=float)),
        waves=[(w[0], w[1]) for w in waves],
        kspace_adc=np.asarray(k_adc),
        kspace_max=np.nanmax(np.abs(k_traj), axis=1),
    )


def scanctl_figures(seq: Sequence) -> Figures:
    adc_blocks = np.flatnonzero(seq.blocks.adc >= 0)
    t_rf, _, rows = W.rf_centres(seq)
    use = seq.rf.use[rows]
    exc = (use == ord("e")) | (use == ord("u"))
    waves = []
    for axis in range(3):
        w = W.axis_waveform(seq, axis)
        waves.append((w.t_s, w.g_hz_per_m))
    return Figures(
        blocks=len(seq.blocks),
        duration_s=seq.duration_s,
        adc_events=int(adc_blocks.size),
        adc_samples=int(seq.adc.num_samples[seq.blocks.adc[adc_blocks]].sum()),
        adc_t_s=W.adc_sample_times(seq)[0],
        excitation_t_s=np.sort(t_rf[exc]),
        refocusing_t_s=np.sort(t_rf[use == ord("r")]),
        waves=waves,
        kspace_adc=W.kspace_adc(seq),
    )


def _sample_points(t_a: np.ndarray, t_b: np.ndarray) -> np.ndarray:
    """Two points inside every interval of the union of both breakpoint sets.

    Both waveforms are linear on each such interval, so agreeing at two inner points of every interval means
    agreeing everywhere -- without evaluating either exactly at a step, where "the" value is a convention.
    """
    u = np.union1d(t_a, t_b)
    if u.size < 2:
        return u
    d = np.diff(u)
    keep = d > _STEP_S
    lo, d = u[:-1][keep], d[keep]
    return np.concatenate((lo + 0.25 * d, lo + 0.75 * d))


def _interp(t: np.ndarray, g: np.ndarray, at: np.ndarray) -> np.ndarray:
    return np.interp(at, t, g, left=0.0, right=0.0) if t.size else np.zeros(at.shape)


def assert_figures_match(expected: Figures, actual: Figures, what: str) -> None:
    assert actual.blocks == expected.blocks, f"{what}: block count"
    assert actual.duration_s == pytest.approx(expected.duration_s, abs=TIME_TOL_S), f"{what}: duration"
    assert actual.adc_events == expected.adc_events, f"{what}: ADC events"
    assert actual.adc_samples == expected.adc_samples, f"{what}: ADC samples"
    np.testing.assert_allclose(actual.adc_t_s, expected.adc_t_s, rtol=0, atol=TIME_TOL_S, err_msg=f"{what}: ADC times")
    assert actual.excitation_t_s.size == expected.excitation_t_s.size, f"{what}: number of excitations"
    assert actual.refocusing_t_s.size == expected.refocusing_t_s.size, f"{what}: number of refocusing pulses"
    np.testing.assert_allclose(
        actual.excitation_t_s, expected.excitation_t_s, rtol=0, atol=TIME_TOL_S, err_msg=f"{what}: excitations"
    )
    np.testing.assert_allclose(
        actual.refocusing_t_s, expected.refocusing_t_s, rtol=0, atol=TIME_TOL_S, err_msg=f"{what}: refocusing"
    )

    for axis, name in enumerate("xyz"):
        (te, ge), (ta, ga) = expected.waves[axis], actual.waves[axis]
        scale = max(np.abs(ge).max(initial=0.0), np.abs(ga).max(initial=0.0))
        if scale == 0.0:
            continue  # both empty or all zero on this axis
        at = _sample_points(te, ta)
        err = np.abs(_interp(ta, ga, at) - _interp(te, ge, at))
        worst = int(np.argmax(err))
        assert err[worst] <= REL_TOL * scale, (
            f"{what}: g{name} differs by {err[worst]:.3g} Hz/m at t = {at[worst]:.9f} s "
            f"(limit {REL_TOL * scale:.3g} = {REL_TOL:g} of the channel maximum {scale:.6g} Hz/m)"
        )

    assert actual.kspace_adc.shape == expected.kspace_adc.shape, f"{what}: k-space shape"
    k_max = expected.kspace_max if expected.kspace_max is not None else np.abs(expected.kspace_adc).max(axis=1)
    overall = float(np.max(k_max, initial=0.0))
    for axis, name in enumerate("xyz"):
        # A channel whose trajectory is ~0 everywhere is measured against the largest channel instead.
        scale = k_max[axis] if k_max[axis] > 1e-6 * overall else overall
        err = np.abs(actual.kspace_adc[axis] - expected.kspace_adc[axis])
        if err.size == 0:
            continue
        worst = int(np.argmax(err))
        assert err[worst] <= REL_TOL * scale, (
            f"{what}: k{name} differs by {err[worst]:.3g} 1/m at ADC sample {worst} "
            f"(limit {REL_TOL * scale:.3g} = {REL_TOL:g} of {scale:.6g} 1/m)"
        )


# ----------------------------------------------------------------------------------------------------------
# Prepared files (built once per case and worker)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    case: Case
    dir: Path
    built: pp.Sequence
    pp_path: Path  # written by pypulseq (1.5.0)
    pp_ref: pp.Sequence  # pypulseq's reading of pp_path
    pp_figures: Figures
    sc_seq: Sequence  # scanctl's reading of pp_path
    sc_path: Path  # scanctl's 1.5.1 rewrite of sc_seq
    sc_digest: str  # what pulseq_write.write returned
    pp_ref_of_sc: pp.Sequence  # pypulseq's reading of sc_path


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    case = CASES[request.param]
    d = tmp_path_factory.mktemp(case.name)
    built = case.build()
    pp_path = d / "pypulseq.seq"
    with _quiet():
        built.write(str(pp_path), remove_duplicates=case.remove_duplicates)
    pp_ref = _pp_read(pp_path, case)
    pp_figs = pypulseq_figures(pp_ref)
    sc_seq = pulseq_read.read(pp_path)  # verifies pypulseq's signature
    sc_path = d / "scanctl.seq"
    digest = pulseq_write.write(sc_seq, sc_path)
    return Prepared(case, d, built, pp_path, pp_ref, pp_figs, sc_seq, sc_path, digest, _pp_read(sc_path, case))


# ----------------------------------------------------------------------------------------------------------
# pypulseq -> scanctl
# ----------------------------------------------------------------------------------------------------------


def test_scanctl_reads_pypulseq_file_with_pypulseq_figures(prepared: Prepared) -> None:
    figs = prepared.pp_figures
    # The factory's sequences are not trivial: the comparison has something to compare.
    assert figs.blocks > 0 and figs.adc_samples > 0 and figs.excitation_t_s.size > 0
    assert_figures_match(figs, scanctl_figures(prepared.sc_seq), f"{prepared.case.name}: scanctl vs pypulseq")


def test_scanctl_figures_match_the_sequence_pypulseq_built(prepared: Prepared) -> None:
    """The file is a faithful copy: pypulseq's in-memory sequence gives the same block/ADC figures."""
    duration, blocks, events = prepared.built.duration()
    seq = prepared.sc_seq
    assert len(seq.blocks) == blocks
    assert seq.duration_s == pytest.approx(duration, abs=TIME_TOL_S)
    assert int((seq.blocks.adc >= 0).sum()) == int(events[5])
    t_adc, _ = prepared.built.adc_times()
    np.testing.assert_allclose(W.adc_sample_times(seq)[0], t_adc, rtol=0, atol=TIME_TOL_S)


def test_scanctl_verifies_pypulseq_signature(prepared: Prepared) -> None:
    ref_signature = prepared.pp_ref.signature_value
    assert prepared.sc_seq.signature == ref_signature
    data = prepared.pp_path.read_bytes()
    cut = data.rindex(b"\n[SIGNATURE]")
    assert hashlib.md5(data[:cut]).hexdigest() == ref_signature
    # A change to the signed content is detected; the reader still reads it when told not to verify.
    tampered = data[:cut] + b"\n# edited after signing\n" + data[cut:]
    with pytest.raises(SignatureError):
        pulseq_read.parse(tampered, path="tampered.seq")
    assert len(pulseq_read.parse(tampered, path="tampered.seq", verify_signature=False).blocks) == len(
        prepared.sc_seq.blocks
    )


# ----------------------------------------------------------------------------------------------------------
# scanctl -> pypulseq
# ----------------------------------------------------------------------------------------------------------


def test_pypulseq_reads_scanctl_file_with_the_same_figures(prepared: Prepared) -> None:
    figs = pypulseq_figures(prepared.pp_ref_of_sc)
    name = prepared.case.name
    assert_figures_match(prepared.pp_figures, figs, f"{name}: pypulseq(scanctl file) vs pypulseq(original)")
    rewritten = pulseq_read.read(prepared.sc_path)
    assert rewritten.version == pulseq_write.FORMAT_VERSION
    assert_figures_match(figs, scanctl_figures(rewritten), f"{name}: scanctl vs pypulseq on the scanctl file")


def test_scanctl_signature_verifies_the_pypulseq_way(prepared: Prepared) -> None:
    """pypulseq signs ``md5(text before '\\n[SIGNATURE]')``; the same procedure must give scanctl's hash."""
    ref = prepared.pp_ref_of_sc
    assert str(ref.signature_type).lower() == "md5"
    assert ref.signature_value == prepared.sc_digest
    text = prepared.sc_path.read_text()  # as pypulseq's write_seq reads the file back to sign it
    body = text[: text.rindex("\n[SIGNATURE]")]
    assert hashlib.md5(body.encode("utf-8")).hexdigest() == prepared.sc_digest
    # and scanctl's own check accepts it (read() verifies by default)
    assert pulseq_read.read(prepared.sc_path).signature == prepared.sc_digest


def test_extensions_survive_for_pypulseq(prepared: Prepared) -> None:
    """Labels, soft delays, triggers and definitions as pypulseq sees them, before and after scanctl."""
    a, b = prepared.pp_ref, prepared.pp_ref_of_sc
    with _quiet():
        labels_a, labels_b = a.evaluate_labels(evolution="blocks"), b.evaluate_labels(evolution="blocks")
    assert labels_a.keys() == labels_b.keys()
    for key in labels_a:
        np.testing.assert_array_equal(labels_b[key], labels_a[key], err_msg=f"label {key}")

    def rows(lib: object) -> list[tuple]:
        return sorted(tuple(np.ravel(v).tolist()) for v in lib.data.values())  # type: ignore[attr-defined]

    assert rows(b.trigger_library) == rows(a.trigger_library)
    assert rows(b.soft_delay_library) == rows(a.soft_delay_library)
    assert a.definitions.keys() <= b.definitions.keys()
    for key, value in a.definitions.items():
        if isinstance(value, str):
            assert b.definitions[key] == value, f"definition {key}"
        else:
            np.testing.assert_allclose(np.ravel(b.definitions[key]), np.ravel(value), rtol=1e-9, err_msg=key)


def test_case_specific_extensions_are_present() -> None:
    """The extension test above is only meaningful if the factory sequences carry those extensions."""
    with _quiet():
        labels = factory.labels_and_triggers()
        soft = factory.soft_delays()
    assert len(labels.trigger_library.data) > 0 and len(labels.label_set_library.data) > 0
    assert len(labels.label_inc_library.data) > 0
    assert len(soft.soft_delay_library.data) > 0


def test_soft_delays_apply_identically_after_scanctl(tmp_path: Path) -> None:
    """pypulseq applies a soft delay to the scanctl-written file exactly as to its own file."""
    case = CASES["soft_delays"]
    built = case.build()
    original = tmp_path / "pypulseq.seq"
    with _quiet():
        built.write(str(original))
    rewritten = tmp_path / "scanctl.seq"
    pulseq_write.write(pulseq_read.read(original), rewritten)
    te = float(built.get_definition("TE"))
    durations = []
    for path in (original, rewritten):
        ref = _pp_read(path, case)
        with _quiet():
            ref.apply_soft_delay(TE=te + 1e-3)
        durations.append(np.array(list(ref.block_durations.values())))
    before = np.array(list(_pp_read(original, case).block_durations.values()))
    assert not np.allclose(durations[0], before)  # the soft delay changed something
    np.testing.assert_allclose(durations[1], durations[0], rtol=0, atol=TIME_TOL_S)


# ----------------------------------------------------------------------------------------------------------
# pypulseq 1.4.1 output
# ----------------------------------------------------------------------------------------------------------


def _write_v141(prepared: Prepared) -> Path:
    path = prepared.dir / "pypulseq_v141.seq"
    if not path.exists():
        with _quiet():
            prepared.built.write(str(path), v141_compat=True, remove_duplicates=prepared.case.remove_duplicates)
    return path


def test_scanctl_reads_pypulseq_v141_file_with_pypulseq_figures(prepared: Prepared) -> None:
    path = _write_v141(prepared)
    head = path.read_text()[:200]
    assert "major 1\nminor 4\nrevision 1" in head
    if prepared.case.name == "soft_delays":
        # pypulseq's 1.4.1 writer keeps the [EXTENSIONS] entries of the soft delays but drops their
        # 'extension DELAYS' specification: pypulseq cannot read its own file back, scanctl says why.
        with pytest.raises(ValueError):
            _pp_read(path, prepared.case, detect_rf_use=True)
        with pytest.raises(SequenceFormatError, match=r"EXTENSIONS.*no 'extension NAME"):
            pulseq_read.read(path)
        return
    seq = pulseq_read.read(path)
    assert seq.version == (1, 4, 1)
    # detect_rf_use=True: see the module docstring (without it pypulseq ignores refocusing pulses).
    ref = _pp_read(path, prepared.case, detect_rf_use=True)
    expected = pypulseq_figures(ref)
    assert_figures_match(expected, scanctl_figures(seq), f"{prepared.case.name} (1.4.1): scanctl vs pypulseq")
    # and scanctl's 1.5.1 rewrite of the 1.4.1 file (RF use/center and gradient first/last now explicit)
    # reads in pypulseq with the same figures
    out = prepared.dir / "scanctl_from_v141.seq"
    pulseq_write.write(seq, out)
    assert_figures_match(
        expected, pypulseq_figures(_pp_read(out, prepared.case)), f"{prepared.case.name} (1.4.1 -> 1.5.1)"
    )


def test_refocusing_pulses_of_v141_files_are_detected(tmp_path: Path) -> None:
    """1.4 files store no RF use: scanctl derives it as pypulseq's detect_rf_use does (spin echo: e, r)."""
    case = CASES["spin_echo"]
    path = tmp_path / "se141.seq"
    with _quiet():
        case.build().write(str(path), v141_compat=True)
    seq = pulseq_read.read(path)
    ref = _pp_read(path, case, detect_rf_use=True)
    expected = {k: v for k, v in ref.rf_library.type.items()}
    got = {int(i): chr(u) for i, u in zip(seq.rf.id.tolist(), seq.rf.use.tolist(), strict=True)}
    assert got == expected
    assert sorted(set(got.values())) == ["e", "r"]
