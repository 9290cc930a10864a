"""ADC acquisitions on the wire: a batch packed as columns — a few binary frames for any number of
acquisitions, checked without unpacking, unpacked as an :class:`AcquisitionBatch` whose data views the
received frame (docs/wire-protocol.md#acquisition-batches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scanctl.errors import WireProtocolError
from scanctl.hw.interfaces import Acquisition, AcquisitionBatch


def pack_acquisitions(acquisitions: Sequence[Acquisition]) -> dict[str, Any]:
    """A batch of acquisitions as columns: six binary frames (and one or two per label) for any number of
    them (docs/wire-protocol.md#acquisition-batches).

    ``index``, ``block`` (int64), ``start_s``, ``dwell_s`` (float64), ``shape`` (int64 ``(n, 2)``: channels,
    samples), ``data`` (complex64, every acquisition's samples one after the other), ``labels`` (name → int64
    column) and ``unlabelled`` (name → bool column, only for a label some acquisitions lack). An
    :class:`AcquisitionBatch` is in columns already: its own are returned."""
    if isinstance(acquisitions, AcquisitionBatch):
        return acquisitions.columns
    n = len(acquisitions)
    arrays = [a.data for a in acquisitions]
    shape = np.array([d.shape for d in arrays], dtype=np.int64).reshape(n, 2)
    data = (np.concatenate(arrays, axis=None).astype(np.complex64, copy=False) if n else np.zeros(0, np.complex64))
    label_dicts = [a.labels for a in acquisitions]
    names = sorted({name for labels in label_dicts for name in labels})
    columns, unlabelled = {}, {}
    for name in names:
        values = [labels.get(name) for labels in label_dicts]
        if None in values:
            unlabelled[name] = np.array([v is None for v in values], dtype=bool)
            values = [0 if v is None else v for v in values]
        columns[name] = np.array(values, dtype=np.int64)
    return {
        "index": np.array([a.index for a in acquisitions], dtype=np.int64),
        "block": np.array([a.block for a in acquisitions], dtype=np.int64),
        "start_s": np.array([a.start_s for a in acquisitions], dtype=np.float64),
        "dwell_s": np.array([a.dwell_s for a in acquisitions], dtype=np.float64),
        "shape": shape, "data": data, "labels": columns, "unlabelled": unlabelled,
    }


def check_acquisitions(batch: Any) -> int:
    """Check a packed batch of acquisitions (its columns agree with each other) without unpacking it;
    returns how many acquisitions it holds. A receiver that works on the columns (e.g. all the samples as
    one array, ``batch["data"]``) needs no more. Raises WireProtocolError naming what does not fit."""
    if not isinstance(batch, dict):
        raise WireProtocolError("acquisitions must be an object of columns")
    for key, kind, ndim in (("index", "i", 1), ("block", "i", 1), ("start_s", "f", 1), ("dwell_s", "f", 1),
                            ("shape", "i", 2), ("data", "c", 1)):
        column = batch.get(key)
        if not isinstance(column, np.ndarray) or column.dtype.kind != kind or column.ndim != ndim:
            raise WireProtocolError(f"acquisitions: {key!r} must be an array of kind {kind!r}, {ndim}-dimensional")
    n = len(batch["index"])
    if any(len(batch[key]) != n for key in ("block", "start_s", "dwell_s")) or batch["shape"].shape != (n, 2):
        raise WireProtocolError(f"acquisitions: columns disagree on the count ({n} indices)")
    shape, size = batch["shape"], batch["data"].size
    if (shape < 0).any() or (shape > np.iinfo(np.int32).max).any():
        raise WireProtocolError("acquisitions: a channel or sample count is negative or past 2**31 - 1")
    sizes = shape[:, 0].astype(np.int64) * shape[:, 1]  # exact: each factor is below 2**31
    # The sum in floating point first: once it is known to be near the data's size, the int64 sum cannot wrap.
    if float(sizes.sum(dtype=np.float64)) > 2.0 * size + 1.0 or int(sizes.sum()) != size:
        raise WireProtocolError(f"acquisitions: shapes need {float(sizes.sum(dtype=np.float64)):.0f} samples, "
                                f"data has {size}")
    labels, unlabelled = batch.get("labels", {}), batch.get("unlabelled", {})
    if not isinstance(labels, dict) or not isinstance(unlabelled, dict) or not set(unlabelled) <= set(labels):
        raise WireProtocolError("acquisitions: 'labels' and 'unlabelled' must be objects of columns")
    for name, column in (*labels.items(), *unlabelled.items()):
        if not isinstance(column, np.ndarray) or column.shape != (n,) or column.dtype.kind not in "ib":
            raise WireProtocolError(f"acquisitions: label column {name!r} must be {n} integers")
    return n


def unpack_acquisitions(batch: Any) -> AcquisitionBatch:
    """The acquisitions :func:`pack_acquisitions` packed, checked, as a batch (their ``data`` views the
    received frame; objects are made when asked for). Raises WireProtocolError naming what does not fit."""
    check_acquisitions(batch)
    return AcquisitionBatch(batch)
