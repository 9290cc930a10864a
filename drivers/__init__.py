"""Real-hardware drivers (installed as ``scanctl.drivers``); they depend only on scanctl's interfaces."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks here that each class an entry point names meets its interface (no run-time cost)
    from scanctl.drivers.serial_table import SerialTable
    from scanctl.drivers.zmq_proxy import ProxyGradient, ProxyRF, ProxyTable

    from scanctl.hw.interfaces import GradientSystem, RFSystem, TableSystem
    from scanctl.hw.registry import Factory

    _proxy_gradient: Factory[GradientSystem] = ProxyGradient
    _proxy_rf: Factory[RFSystem] = ProxyRF
    _proxy_table: Factory[TableSystem] = ProxyTable
    _serial_table: Factory[TableSystem] = SerialTable
