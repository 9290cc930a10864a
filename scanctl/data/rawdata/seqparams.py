"""A scan's sequence parameters for the ISMRMRD header (``sequenceParameters``): TR, TE, TI, flip angle, echo
spacing and echo train length, from the protocol, else the file's definitions, else measured from the
sequence itself; and the slice thickness of a 2D scan (the encoded FOV's z) from its excitation.

Measured (docs/rawdata.md, "Sequence parameters"):

- TR: the time between two excitations of the same slice (same rotation and slice position; median); a
  sequence that excites each slice once: the excitation spacing times the number of slices;
- TE: from the excitation's centre to the time the readout crosses k_x = 0, for the windows at the centre
  of k-space (k_y = k_z = 0); one per contrast (``ECO``), else the distinct values after the first
  excitation that reaches the centre;
- echo spacing and echo train length: the readouts after one excitation (median gap of their k_x = 0
  times; their commonest count), where there are at least two;
- flip angle: 360 degrees times the magnitude of the excitation's integral (Hz s, small-tip);
- slice thickness: the excitation's bandwidth (full width at half maximum of its spectrum) over its
  slice-select gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from scanctl.data.rawdata.encoding import Encoding
from scanctl.data.rawdata.placement import SLICE_TOLERANCE_M, block_rotations, excitations
from scanctl.sequence.model import Sequence
from scanctl.sequence.rf_samples import rf_event_samples
from scanctl.sequence.waveforms import rf_centres

FloatArray = npt.NDArray[np.float64]
#: Times (s) closer than this are one value (TEs, echo spacings).
TIME_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class SequenceParameters:
    """Seconds and degrees; empty where unknown."""

    tr_s: tuple[float, ...] = ()
    te_s: tuple[float, ...] = ()
    ti_s: tuple[float, ...] = ()
    flip_angle_deg: tuple[float, ...] = ()
    echo_spacing_s: tuple[float, ...] = ()
    echo_train_length: int | None = None


#: Definition names read (pypulseq and scanctl's builders write SI units; FlipAngle in degrees).
DEFINITIONS = {"tr_s": ("TR",), "te_s": ("TE",), "ti_s": ("TI",), "flip_angle_deg": ("FlipAngle", "flip_angle"),
               "echo_spacing_s": ("EchoSpacing", "ESP"), "echo_train_length": ("ETL", "EchoTrainLength")}
#: Protocol parameter names read (the builders' :class:`Params`).
PROTOCOL = {"tr_s": "tr_s", "te_s": "te_s", "ti_s": "ti_s", "flip_angle_deg": "flip_angle_deg",
            "echo_spacing_s": "echo_spacing_s", "echo_train_length": "etl"}


def sequence_parameters(seq: Sequence, enc: Encoding, protocol_params: Any = None) -> SequenceParameters:
    """Each parameter from ``protocol_params`` (a builder's parameters), else ``seq``'s definitions, else
    measured from ``seq`` (module documentation)."""
    measured = measure(seq, enc)
    values: dict[str, Any] = {}
    for name in DEFINITIONS:
        given = _from_protocol(protocol_params, PROTOCOL[name])
        if given is None:
            given = _from_definitions(seq, DEFINITIONS[name])
        if given is None:
            values[name] = getattr(measured, name)
        else:
            values[name] = int(given[0]) if name == "echo_train_length" else given
    return SequenceParameters(**values)


def _from_protocol(params: Any, attribute: str) -> tuple[float, ...] | None:
    value = getattr(params, attribute, None) if params is not None else None
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return (float(value),)


def _from_definitions(seq: Sequence, keys: tuple[str, ...]) -> tuple[float, ...] | None:
    for key in keys:
        values = seq.definition_floats(key)
        if values and all(np.isfinite(values)):
            return tuple(values)
    return None


def measure(seq: Sequence, enc: Encoding) -> SequenceParameters:
    """The parameters the sequence's timing shows (module documentation)."""
    _, rot_of_block = block_rotations(seq)
    exc = excitations(seq, rot_of_block)
    if exc.t_s.size == 0:
        return SequenceParameters()
    return SequenceParameters(tr_s=_tr(exc), te_s=_te(enc), flip_angle_deg=_flip(seq),
                              echo_spacing_s=_echo_spacing(enc), echo_train_length=_train_length(enc))


def _tr(exc: Any) -> tuple[float, ...]:
    keys = np.column_stack((exc.rotation, np.rint(_points(exc) / SLICE_TOLERANCE_M)))
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    gaps = [np.diff(exc.t_s[group == g]) for g in np.unique(group).tolist()]
    within = np.concatenate(gaps) if gaps else np.zeros(0)
    if within.size:
        return (float(np.median(within)),)
    if exc.t_s.size >= 2:
        return (float(np.median(np.diff(exc.t_s))) * int(np.unique(group).size),)
    return ()


def _points(exc: Any) -> FloatArray:
    g2 = np.sum(exc.gradient ** 2, axis=1)
    return np.divide(exc.freq_hz[:, None] * exc.gradient, g2[:, None], out=np.zeros_like(exc.gradient),
                     where=g2[:, None] > 0)


def _te(enc: Encoding) -> tuple[float, ...]:
    te = enc.echo_s - enc.excitation_s
    centre = enc.imaging & np.isfinite(te) & (enc.steps_y == 0) & (enc.steps_z == 0)
    if not centre.any():
        return ()
    eco = enc.labels.get("ECO")
    if eco is not None and np.unique(eco[centre]).size > 1:
        return tuple(float(te[centre & (eco == e)][0]) for e in np.unique(eco[centre]).tolist())
    first = enc.excitation_s[centre][0]
    values = te[centre & (enc.excitation_s == first)]
    return tuple(float(v) for v in _distinct(values))


def _distinct(values: FloatArray) -> FloatArray:
    ordered = np.sort(values)
    keep = np.concatenate(([True], np.diff(ordered) > TIME_TOLERANCE_S))
    return ordered[keep]


def _per_excitation(enc: Encoding) -> list[FloatArray]:
    """The k_x = 0 times of the imaging readouts after each excitation."""
    ok = enc.imaging & np.isfinite(enc.echo_s) & np.isfinite(enc.excitation_s)
    if not ok.any():
        return []
    _, group = np.unique(enc.excitation_s[ok], return_inverse=True)
    echo = enc.echo_s[ok]
    return [np.sort(echo[group.reshape(-1) == g]) for g in range(int(group.max()) + 1)]


def _echo_spacing(enc: Encoding) -> tuple[float, ...]:
    gaps = [np.diff(t) for t in _per_excitation(enc) if t.size >= 2]
    return (float(np.median(np.concatenate(gaps))),) if gaps else ()


def _train_length(enc: Encoding) -> int | None:
    counts = np.array([t.size for t in _per_excitation(enc)], dtype=np.int64)
    if counts.size == 0 or counts.max() < 2:
        return None
    uniq, n = np.unique(counts, return_counts=True)
    return int(uniq[np.argmax(n)])


def _first_excitation_row(seq: Sequence) -> int | None:
    """The RF event row of the first excitation pulse (``e`` or ``u`` use), or None."""
    t, _, rows = rf_centres(seq)
    use = seq.rf.use[rows]
    exc = np.flatnonzero((use == ord("e")) | (use == ord("u")))
    if exc.size == 0:
        return None
    return int(rows[exc[np.argmin(t[exc])]])


def _flip(seq: Sequence) -> tuple[float, ...]:
    row = _first_excitation_row(seq)
    if row is None:
        return ()
    offsets, t, shape = rf_event_samples(seq)
    samples = shape[offsets[row]:offsets[row + 1]]
    area = abs(complex(np.sum(samples))) * seq.rasters.rf_s * float(seq.rf.amplitude_hz[row])
    return (360.0 * area,)


def slice_thickness_m(seq: Sequence) -> float:
    """The first excitation's slice thickness (m): its bandwidth (Hz, FWHM of the spectrum) over the
    magnitude of its slice-select gradient (Hz/m); 0 for a non-selective or missing excitation."""
    _, rot_of_block = block_rotations(seq)
    exc = excitations(seq, rot_of_block)
    row = _first_excitation_row(seq)
    if row is None or exc.t_s.size == 0:
        return 0.0
    g = float(np.linalg.norm(exc.gradient[0]))
    if g <= 0:
        return 0.0
    offsets, _, shape = rf_event_samples(seq)
    samples = shape[offsets[row]:offsets[row + 1]]
    if samples.size == 0:
        return 0.0
    n_fft = max(1 << 16, 1 << int(np.ceil(np.log2(samples.size * 64))))
    spectrum = np.abs(np.fft.fftshift(np.fft.fft(samples, n_fft)))
    freqs = np.fft.fftshift(np.fft.fftfreq(n_fft, seq.rasters.rf_s))
    above = np.flatnonzero(spectrum >= 0.5 * spectrum.max())
    bandwidth = float(freqs[above[-1]] - freqs[above[0]]) + float(freqs[1] - freqs[0])
    return bandwidth / g
