"""How scanctl's acquisitions map onto ISMRMRD: Pulseq labels to encoding counters and flags, the
first/last flag groups, the time-stamp unit, and each ADC window's labels and k-space centre from a sequence.

The mapping is documented in ``docs/rawdata.md``. What a sequence's trajectory says about its windows
(``LIN`` / ``PAR`` / ``SLC`` where it sets no label, centre sample, reversal, position, trajectory) is in
:mod:`scanctl.data.rawdata.encoding`, re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from ismrmrd import constants as C

from scanctl.data.rawdata.encoding import Encoding, centre_samples, encoding_of, sequence_labels

#: Pulseq counter labels and the ISMRMRD encoding counter (``head.idx`` field) each one fills.
LABEL_COUNTERS: dict[str, str] = {
    "LIN": "kspace_encode_step_1",
    "PAR": "kspace_encode_step_2",
    "AVG": "average",
    "SLC": "slice",
    "ECO": "contrast",
    "PHS": "phase",
    "REP": "repetition",
    "SET": "set",
    "SEG": "segment",
}
#: Pulseq flag labels (set when non-zero) and the ISMRMRD acquisition flag (1-based bit) each sets.
#: ``REF`` together with ``IMA`` also sets ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``.
LABEL_FLAGS: dict[str, int] = {
    "NOISE": C.ACQ_IS_NOISE_MEASUREMENT,
    "NAV": C.ACQ_IS_NAVIGATION_DATA,
    "REV": C.ACQ_IS_REVERSE,
    "REF": C.ACQ_IS_PARALLEL_CALIBRATION,
}
#: Pulseq labels that steer how a sequence is played, not what its data are: not stored.
UNSTORED_LABELS = frozenset({"IMA", "SMS", "PMC", "NOROT", "NOPOS", "NOSCL", "ONCE", "TRID"})
#: Unit of ``acquisition_time_stamp`` in the files scanctl writes, and the one assumed for other files.
TIME_STAMP_TICK_S = 1e-6
FOREIGN_TIME_STAMP_TICK_S = 2.5e-3
TICK_PARAMETER = "acquisition_time_stamp_tick_s"
#: XML user parameters: the echo train length (ISMRMRD's sequenceParameters has no element for it), and
#: where the receive channels' noise covariance is (ISMRMRD's XML has no element for it either).
ETL_PARAMETER = "EchoTrainLength"
NOISE_PARAMETER = "noise_covariance"
#: The HDF5 dataset holding the noise covariance (channels x channels complex64), beside ``data`` and ``xml``.
NOISE_DATASET = "noise_covariance"
#: ``head.user_int`` slot holding the sequence block index of the acquisition.
USER_INT_BLOCK = 0

COUNTERS = tuple(LABEL_COUNTERS.values())
#: XML ``encodingLimits`` element of each counter (the XML says "encoding", the header "encode").
LIMIT_ELEMENTS = {c: c.replace("encode_step", "encoding_step") for c in ("kspace_encode_step_0", *COUNTERS)}
ORDER = ("kspace_encode_step_1", "kspace_encode_step_2", "average", "slice", "contrast", "phase", "set",
          "repetition")
#: (first flag, last flag, counters that identify the group). The k-space steps mark the first and last
#: acquisition of their loop (each 2D k-space / each volume); the other counters mark the first and last
#: acquisition having each value (within the enclosing counters). See docs/rawdata.md.
FLAG_GROUPS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (C.ACQ_FIRST_IN_ENCODE_STEP1, C.ACQ_LAST_IN_ENCODE_STEP1, ORDER[1:]),
    (C.ACQ_FIRST_IN_ENCODE_STEP2, C.ACQ_LAST_IN_ENCODE_STEP2, ORDER[2:]),
    (C.ACQ_FIRST_IN_AVERAGE, C.ACQ_LAST_IN_AVERAGE, ORDER[2:]),
    (C.ACQ_FIRST_IN_SLICE, C.ACQ_LAST_IN_SLICE, ORDER[3:]),
    (C.ACQ_FIRST_IN_CONTRAST, C.ACQ_LAST_IN_CONTRAST, ORDER[4:]),
    (C.ACQ_FIRST_IN_PHASE, C.ACQ_LAST_IN_PHASE, ORDER[5:]),
    (C.ACQ_FIRST_IN_SET, C.ACQ_LAST_IN_SET, ORDER[6:]),
    (C.ACQ_FIRST_IN_REPETITION, C.ACQ_LAST_IN_REPETITION, ORDER[7:]),
    (C.ACQ_FIRST_IN_SEGMENT, C.ACQ_LAST_IN_SEGMENT, ("segment", *ORDER[2:])),
)
U16_MAX = 0xFFFF
DATASET = "dataset"


def bit(flag: int) -> int:
    """The bit of ISMRMRD ``flag`` (a 1-based ``ismrmrd.ACQ_*`` constant) in a flag word."""
    return 1 << (flag - 1)


def is_set(flags: int | np.integer[Any], flag: int) -> bool:
    """Whether ISMRMRD ``flag`` (a 1-based ``ismrmrd.ACQ_*`` constant) is set in a flag word."""
    return bool(int(flags) & bit(flag))


def channel_mask(channels: int) -> npt.NDArray[np.uint64]:
    """ISMRMRD's channel mask (16 x 64 bits) with channels ``0..channels-1`` active."""
    mask = np.zeros(16, dtype=np.uint64)
    for c in range(min(channels, 1024)):
        mask[c // 64] |= np.uint64(1 << (c % 64))
    return mask


__all__ = [
    "COUNTERS", "DATASET", "ETL_PARAMETER", "NOISE_DATASET", "NOISE_PARAMETER",
    "FLAG_GROUPS", "FOREIGN_TIME_STAMP_TICK_S", "LABEL_COUNTERS", "LABEL_FLAGS",
    "LIMIT_ELEMENTS", "TICK_PARAMETER", "TIME_STAMP_TICK_S", "U16_MAX", "UNSTORED_LABELS", "USER_INT_BLOCK",
    "Encoding", "bit", "centre_samples", "channel_mask", "encoding_of", "is_set", "sequence_labels",
]
