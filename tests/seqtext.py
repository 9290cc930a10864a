"""Hand-written Pulseq 1.5.1 text for tests that need exact, deliberately wrong sequences.

Rows are given as tuples in the file's own units (µs for delays and trapezoid times, ns for the ADC
dwell, Hz and Hz/m for amplitudes), so a test reads like the file it produces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DEFAULT_DEFINITIONS = {
    "AdcRasterTime": "1e-07",
    "BlockDurationRaster": "1e-05",
    "GradientRasterTime": "1e-05",
    "RadiofrequencyRasterTime": "1e-06",
}


def _rows(rows: Iterable[Sequence[object]]) -> str:
    return "".join(" ".join(str(v) for v in row) + "\n" for row in rows)


def pulseq_text(
    blocks: Iterable[Sequence[int]],
    *,
    rf: Iterable[Sequence[object]] = (),
    gradients: Iterable[Sequence[object]] = (),
    traps: Iterable[Sequence[object]] = (),
    adc: Iterable[Sequence[object]] = (),
    shapes: dict[int, Sequence[float]] | None = None,
    definitions: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    """A Pulseq 1.5.1 file without signature.

    ``blocks``: ``(id, duration_ticks, rf, gx, gy, gz, adc, ext)``;
    ``rf``: ``(id, amp_hz, mag_id, phase_id, time_id, center_us, delay_us, freq_ppm, phase_ppm, freq_hz,
    phase_rad, use)``; ``gradients``: ``(id, amp, first, last, shape_id, time_id, delay_us)``;
    ``traps``: ``(id, amp, rise_us, flat_us, fall_us, delay_us)``; ``adc``: ``(id, num, dwell_ns,
    delay_us, freq_ppm, phase_ppm, freq_hz, phase_rad, phase_id)``; ``shapes``: id → uncompressed
    samples (written uncompressed, which the format allows); ``extra``: more sections, verbatim.
    """
    defs = {**DEFAULT_DEFINITIONS, **(definitions or {})}
    out = ["[VERSION]\nmajor 1\nminor 5\nrevision 1\n\n[DEFINITIONS]\n"]
    out.append("".join(f"{k} {v}\n" for k, v in sorted(defs.items())))
    out.append("\n[BLOCKS]\n" + _rows(blocks))
    for header, rows in (("[RF]", rf), ("[GRADIENTS]", gradients), ("[TRAP]", traps), ("[ADC]", adc)):
        text = _rows(rows)
        if text:
            out.append(f"\n{header}\n{text}")
    out.append(extra)
    if shapes:
        out.append("\n[SHAPES]\n")
        for sid, samples in shapes.items():
            out.append(f"\nshape_id {sid}\nnum_samples {len(samples)}\n" + "".join(f"{v:.9g}\n" for v in samples))
    return "".join(out) + "\n"
