"""Prescan: frequency, transmit scale, shim, receiver gain and noise, calibrated by small sequences run through
the scanner like any scan (docs/prescan.md)."""

from scanctl.prescan.runner import (
    STEPS,
    CalibrationFailed,
    CalibrationRefused,
    Prescan,
    PrescanResult,
    StepResult,
    ordered,
)

__all__ = ["STEPS", "CalibrationFailed", "CalibrationRefused", "Prescan", "PrescanResult", "StepResult", "ordered"]
