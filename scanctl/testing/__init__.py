"""Test your driver against the interface contracts: pytest base classes, one suite per interface.

A driver author subclasses the suite of their subsystem's kind and gives a factory; pytest collects every
contract test for it (docs/testing-drivers.md)::

    from scanctl.testing import TableContract

    class TestMyTable(TableContract):
        def make(self, **options):
            return MyTable("serial:///dev/ttyUSB0")   # new and unconnected: construction does no I/O

Suites: :class:`GradientContract`, :class:`RFContract`, :class:`TableContract`; for implementations that
can be told to fault, the mixins :class:`SequencerFaults` and :class:`TableFaults`. Needs pytest (the
``test`` extras).
"""

from scanctl.testing.contracts import (
    GradientContract,
    RFAdjustmentsContract,
    RFContract,
    SequencerContract,
    SequencerFaults,
    ShimContract,
    SubsystemContract,
    TableContract,
    TableFaults,
    contract_segments,
    load_ahead,
)

__all__ = [
    "GradientContract",
    "RFAdjustmentsContract",
    "RFContract",
    "SequencerContract",
    "SequencerFaults",
    "ShimContract",
    "SubsystemContract",
    "TableContract",
    "TableFaults",
    "contract_segments",
    "load_ahead",
]
