"""Which calibrations a scan needs first (``scanctl run`` runs them unless ``--no-prescan``; docs/prescan.md).

- ``gain`` and ``frequency``: every scan (a receiver that clips, or a centre frequency off by the patient's
  B0 shift, spoils any image: shifted along the read and, for EPI, the phase direction);
- ``transmit``: every scan with RF (the flip angle sets the contrast: a 0.7 B1 turns a spin echo's 180° into
  126°);
- ``shim``: the scans off-resonance distorts or darkens: gradient echoes (T2*, phase) and EPI (distortion along
  the phase direction); not the spin-echo family, which refocuses static off-resonance;
- ``noise``: only with more than one receive channel (its covariance is for combining them).
"""

from __future__ import annotations

from typing import Any

from scanctl.hw.interfaces import RFAdjustments
from scanctl.prescan.runner import Prescan, ordered
from scanctl.sequence.model import Sequence

#: Builder names (a protocol's ``sequence``) whose contrast a static B0 inhomogeneity spoils.
SHIM_SENSITIVE = ("gre", "epi")


def steps_for(seq: Sequence, protocol: Any, channels: int = 1) -> tuple[str, ...]:
    """The prescan steps ``seq`` (built from ``protocol``, or a Pulseq file when None) needs, in order."""
    steps = {"gain", "frequency"}
    if bool((seq.blocks.rf >= 0).any()):
        steps.add("transmit")
    name = str(getattr(protocol, "sequence_type", None) or seq.definitions.get("Name", "")).lower()
    if any(name.startswith(kind) for kind in SHIM_SENSITIVE):
        steps.add("shim")
    if channels > 1:
        steps.add("noise")
    return ordered(steps)


def before_run(scanner: Any, seq: Sequence, protocol: Any, patient_weight_kg: float | None,
               mode: str) -> dict[str, Any]:
    """Run the steps ``seq`` needs on ``scanner`` (for ``scanctl.engine.session.LocalPort``'s ``prescan`` hook):
    the report's ``prescan`` entry. A scanner whose RF system has no adjustments is left alone (and said so)."""
    if not isinstance(scanner.rf, RFAdjustments):
        return {"skipped": "the RF system offers no adjustments"}
    steps = steps_for(seq, protocol, channels=int(getattr(scanner.rf, "channels", 1)))
    result = Prescan(scanner, patient_weight_kg=patient_weight_kg, mode=mode).run(steps)
    return {"steps_run": list(steps), **result.to_json()}
