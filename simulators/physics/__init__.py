"""MR signal physics for the RF simulator's receiver: numerical phantoms and a Bloch simulator.

:class:`SpinSystem` turns the gradient, RF and ADC programs of a scan into ADC samples of a
:class:`Phantom` (default: :func:`shepp_logan`; files: :func:`load_phantom`, format in docs/phantom.md).
"""

from .bloch import SpinSystem
from .phantom import Phantom, load_phantom, shepp_logan

__all__ = ["Phantom", "SpinSystem", "load_phantom", "shepp_logan"]
