"""Software hardware (installed as ``scanctl.simulators``); never imports ``scanctl.drivers``."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks here that each class an entry point names meets its interface (no run-time cost)
    from scanctl.simulators.gradient import SimulatedGradient
    from scanctl.simulators.rf import SimulatedRF
    from scanctl.simulators.table import SimulatedTable

    from scanctl.hw.interfaces import GradientSystem, RFSystem, TableSystem
    from scanctl.hw.registry import Factory

    _gradient: Factory[GradientSystem] = SimulatedGradient
    _rf: Factory[RFSystem] = SimulatedRF
    _table: Factory[TableSystem] = SimulatedTable
