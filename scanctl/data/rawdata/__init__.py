"""Raw data in ISMRMRD (HDF5): a streaming writer, a reader, and the header a sequence implies.

File layout (the one the ISMRMRD C++/Python libraries read and write): the group ``/dataset`` holds
``xml`` (one variable-length string: the ISMRMRD XML header) and ``data`` (one compound record per
acquisition, :data:`ismrmrd.hdf5.acquisition_dtype`: header, trajectory, samples as interleaved
float32). The mapping from Pulseq labels to ISMRMRD counters and flags is documented in
``docs/rawdata.md`` and encoded in :data:`LABEL_COUNTERS` and :data:`LABEL_FLAGS`.

Timing: ``acquisition_time_stamp`` counts microseconds from the start of the scan
(:data:`TIME_STAMP_TICK_S`, also recorded in the XML user parameters), modulo 2**32 (71.6 minutes);
the reader unwraps it, since acquisitions are stored in time order.

This package's names below are the documented API (``docs/rawdata.md``); the modules hold one part each:
``mapping`` (labels to counters and flags, a sequence's ADC windows), ``encoding`` (what the trajectory
says), ``placement`` (where each window images), ``seqparams`` (TR, TE, ...), ``header`` (the XML header),
``writer`` (the streaming writer), ``reader`` (reading a file back), ``errors``.
"""

from scanctl.data.rawdata.errors import RawDataError, SequenceGeometryError
from scanctl.data.rawdata.header import EncodingLimit, RawHeader, header_for, new_measurement_id
from scanctl.data.rawdata.mapping import (
    LABEL_COUNTERS,
    LABEL_FLAGS,
    TIME_STAMP_TICK_S,
    UNSTORED_LABELS,
    centre_samples,
    is_set,
    sequence_labels,
)
from scanctl.data.rawdata.reader import RawData, read_acquisitions
from scanctl.data.rawdata.writer import RawDataWriter, read_noise_covariance

__all__ = [
    "LABEL_COUNTERS",
    "LABEL_FLAGS",
    "TIME_STAMP_TICK_S",
    "UNSTORED_LABELS",
    "EncodingLimit",
    "RawData",
    "RawDataError",
    "RawDataWriter",
    "RawHeader",
    "SequenceGeometryError",
    "header_for",
    "new_measurement_id",
    "read_noise_covariance",
    "is_set",
    "read_acquisitions",
    "centre_samples",
    "sequence_labels",
]
