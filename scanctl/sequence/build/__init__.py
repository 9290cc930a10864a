"""Build sequences in Python: event makers on a scanner's rasters and limits, and a block accumulator.

The event makers (:func:`sinc_pulse`, :func:`block_pulse`, :func:`trapezoid`, :func:`readout`,
:func:`adc`) return small immutable events in SI units (RF in Hz, gradients in Hz/m, times in s), every
time on the rasters of a :class:`System` and every gradient within its amplitude and slew limits
(``events``). :class:`SequenceBuilder` appends blocks of events and produces the columnar
:class:`~scanctl.sequence.model.Sequence` (``blocks``). These names are the documented API
(``docs/protocol.md``).

Impossible requests (a gradient beyond the limits, an area that does not fit a duration) raise
:class:`~scanctl.errors.ConfigError`.
"""

from scanctl.sequence.build.blocks import SequenceBuilder
from scanctl.sequence.build.events import (
    ADC,
    RF,
    Label,
    Readout,
    Rotation,
    Shape,
    System,
    Trap,
    adc,
    block_pulse,
    ceil_raster,
    common_duration,
    dwell_step,
    min_trapezoid_duration,
    readout,
    rf_spoil_phases,
    round_raster,
    sinc_pulse,
    slice_rephase_area,
    trapezoid,
    valid_dwell,
)

__all__ = [
    "ADC",
    "RF",
    "Label",
    "Readout",
    "Rotation",
    "SequenceBuilder",
    "Shape",
    "System",
    "Trap",
    "adc",
    "block_pulse",
    "ceil_raster",
    "common_duration",
    "dwell_step",
    "min_trapezoid_duration",
    "readout",
    "rf_spoil_phases",
    "round_raster",
    "sinc_pulse",
    "slice_rephase_area",
    "trapezoid",
    "valid_dwell",
]
