"""The report as PDF, by the same headless Chromium the tests view it with (Debian ``chromium``,
``--print-to-pdf``): no PDF library of our own. Raises :class:`~scanctl.report.collect.ReportError` when
Chromium is not installed or fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from scanctl.report.collect import ReportError

#: Where Debian's package puts it; ``chromium`` on PATH first.
CHROMIUM = ("chromium", "/usr/bin/chromium", "chromium-browser")
#: Headless, no network of its own (updates, sync, metrics), no sandbox (it runs as root in CI).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium() -> str | None:
    """The Chromium executable, or None."""
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    return None


def print_pdf(html_path: str | os.PathLike[str], pdf_path: str | os.PathLike[str], *, timeout_s: float = 120.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium. Returns the PDF's path."""
    exe = chromium()
    if exe is None:
        raise ReportError("PDF needs Chromium (Debian: apt-get install chromium); the HTML report is written")
    src, out = Path(html_path).resolve(), Path(pdf_path).resolve()
    with tempfile.TemporaryDirectory(prefix="scanctl-chromium-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", "--no-pdf-header-footer", f"--print-to-pdf={out}",
               src.as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ReportError(f"{out}: Chromium did not print the PDF within {timeout_s:g} s") from None
    if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-2:])
        raise ReportError(f"{out}: Chromium could not print the PDF (exit {done.returncode}: {tail})")
    return out
