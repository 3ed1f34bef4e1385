"""The web page in headless Chromium (Debian's chromium, installed by `make browser-deps`, driven by Playwright):
upload an image, see it, and see the top class and the probability bars the service computed."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from test_serve import files, live  # noqa: F401  (fixtures: a trained digits model served by a live uvicorn)

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
        "--disable-dev-shm-usage", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def page(live):  # noqa: F811
    assert CHROMIUM.is_file(), "Chromium is missing: run `make browser-deps` (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def test_upload_shows_image_top_class_and_bars(page, live, files):  # noqa: F811
    expected = httpx.post(live["url"] + "/v1/predict", content=files["png"]).json()["predictions"]
    page.goto(live["url"] + "/")
    page.wait_for_selector("#model:has-text('lenet5_relu')")
    page.set_input_files("#file", str(files["digit_path"]))
    page.wait_for_selector(f"#top-class:has-text('Top class: {expected[0]['class']}')")
    assert expected[0]["class"] == "7"
    rows = page.locator("#results li")
    assert rows.count() == 5
    assert rows.nth(0).locator(".class").inner_text() == expected[0]["class"]
    width = rows.nth(0).locator(".bar > span").evaluate("e => e.style.width")
    assert width == f"{100 * expected[0]['probability']:.1f}%"
    assert page.locator("#preview").is_visible()
    assert page.locator("#error").inner_text() == ""


def test_bad_upload_shows_the_error(page, live, tmp_path):  # noqa: F811
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    page.goto(live["url"] + "/")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:has-text('not an image')")
    assert page.locator("#results li").count() == 0


def _png(size: tuple[int, int], colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


# True when an <img> is drawn at its own aspect ratio: its box has it, or object-fit scales it into the box
UNDISTORTED = """e => ["contain", "scale-down"].includes(getComputedStyle(e).objectFit)
                     || Math.abs((e.clientWidth / e.clientHeight) / (e.naturalWidth / e.naturalHeight) - 1) < 0.02"""


def test_images_keep_their_aspect_beside_the_overlay(page, live, tmp_path):  # noqa: F811
    """A wide photo beside a square CAM overlay (what a torch service answers, simulated here): neither image is
    stretched to the other's height, and the overlay says what it shows."""
    def model_card(route):
        card = route.fetch().json()
        route.fulfill(json={**card, "explain": True})

    overlay = "data:image/png;base64," + base64.b64encode(_png((224, 224), "red")).decode()
    page.route("**/v1/model", model_card)
    page.route("**/v1/explain", lambda route: route.fulfill(body=json.dumps({"overlay": overlay}),
                                                           content_type="application/json"))
    wide = tmp_path / "wide.png"
    wide.write_bytes(_png((300, 40), "white"))
    try:
        page.goto(live["url"] + "/")
        page.wait_for_selector("#model:has-text('lenet5_relu')")
        page.set_input_files("#file", str(wide))
        page.wait_for_selector("#cam:visible")
        for image in ("#preview", "#cam"):
            assert page.locator(image).evaluate(UNDISTORTED), image
        top = page.locator("#top-class").inner_text().split(": ")[1].split()[0]
        assert top in page.locator("#cam-caption").inner_text()
    finally:
        page.unroute("**/v1/model")
        page.unroute("**/v1/explain")
