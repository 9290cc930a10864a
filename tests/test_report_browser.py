"""The exam report viewed as a person would: rendered by a real headless Chromium (Debian's ``chromium``,
driven by Playwright for Python; never Playwright's own browser download) and checked for what is shown:
the patient's name as text (its ``<script>`` not run), one decoded image per series, the SAR row, the
flagged series' warning, and no request leaving the page (docs/report.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scanctl.report import write_exam_report
from tests.test_report import HOSTILE_NAME, make_exam

CHROMIUM = Path("/usr/bin/chromium")
#: As the machine notes say for a closed network: no background connections of Chromium's own.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is not installed: run ./setup-env test as root"
    report = write_exam_report(make_exam(tmp_path_factory.mktemp("browser")))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            pg.on("request", lambda r: requests.append(r.url))
            pg.goto(report.as_uri(), wait_until="load")
            pg.requests = requests  # type: ignore[attr-defined]
            yield pg
        finally:
            browser.close()


def test_the_patient_name_is_shown_as_text_and_its_script_not_run(page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    cell = page.locator("#patient td", has_text="pwned").first
    assert cell.is_visible()
    assert cell.inner_text() == HOSTILE_NAME
    assert "pwned" not in page.title()
    assert page.locator("script").count() == 0 and page.locator("#patient b").count() == 0


def test_one_decoded_visible_image_per_series(page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    for n in (1, 2):
        image = page.locator(f"#series-{n} img.key")
        assert image.count() == 1
        image.scroll_into_view_if_needed()
        assert image.is_visible()
        natural = image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
        assert natural[0] is True and natural[1] == 32 and natural[2] == 32  # the 32 x 32 image, decoded
        box = image.bounding_box()
        assert box is not None and box["width"] >= 200  # drawn at a size a person can see
    assert page.locator("#series-3 img").count() == 0  # the skipped step has no image


def test_the_sar_row_is_shown_with_its_limit(page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    row = page.locator("#series-1 tr.safety-row", has_text="SAR whole body (6 min)")
    row.scroll_into_view_if_needed()
    assert row.is_visible()
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == "SAR whole body (6 min)" and cells[2] == "2 W/kg" and cells[4] == "ok"


def test_the_flagged_series_warning_is_visible(page: object) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    warning = page.locator("#series-2 .quality-flag")
    warning.scroll_into_view_if_needed()
    assert warning.is_visible() and "looks wrong" in warning.inner_text() and "low SNR" in warning.inner_text()
    assert page.locator("#series-1 .quality-flag").count() == 0
    top = page.locator("#flags")
    assert top.is_visible() and "gre_noisy" in top.inner_text()
    # red, as a warning: its computed style, not only its class
    colour = warning.evaluate("el => getComputedStyle(el).borderLeftColor")
    assert colour == "rgb(204, 0, 0)"


def test_nothing_is_fetched_but_the_page_itself(page: object) -> None:
    requests = page.requests  # type: ignore[attr-defined]
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
