"""The Pulseq reader's id index: file ids to table rows, the same whichever way it is built."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from scanctl.sequence.pulseq_tables import IdIndex

_IDS = st.lists(st.integers(1, 300), unique=True, max_size=40)
_REFS = st.lists(st.integers(-(2**62), 2**62) | st.integers(-3, 310), max_size=60)


@given(_IDS, _REFS)
def test_rows_are_each_references_row_or_minus_one(ids, refs):
    """Dense ids (a lookup table), references below, inside and far beyond the ids: the row of the id, or
    -1 where the table has no such id."""
    index = IdIndex(np.array(ids, np.int64))
    expected = [ids.index(r) if r in ids else -1 for r in refs]
    assert index.rows(np.array(refs, np.int64)).tolist() == expected


@given(_IDS, _REFS)
def test_sparse_ids_give_the_same_rows(ids, refs):
    """Ids too sparse for a lookup table (searched instead) answer as the dense ones do."""
    sparse = [i * 10**12 for i in ids]
    index = IdIndex(np.array(sparse, np.int64))
    assert index.lut is None or not sparse
    expected = [sparse.index(r * 10**12) if r * 10**12 in sparse else -1 for r in refs if abs(r) < 2**20]
    got = index.rows(np.array([r * 10**12 for r in refs if abs(r) < 2**20], np.int64))
    assert got.tolist() == expected
