"""The drawing page in a real browser: Debian's Chromium driven by Playwright, against a live
server on 127.0.0.1. A screenshot is kept in test-artifacts/."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.mnist

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def chromium() -> str:
    if shutil.which(CHROMIUM) is None:
        message = f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def server_url(trained_mlp: Path) -> Iterator[str]:
    import uvicorn

    from nnx.web.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(trained_mlp), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Strokes in canvas fractions (0-1), drawn with the mouse."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()


def shown_prediction(page) -> str:
    """The class on show once the last request (sent on pointerup) has been answered."""
    page.wait_for_function(
        "document.body.dataset.busy === '0' && document.getElementById('prediction').dataset.class !== ''",
        timeout=15_000,
    )
    return page.locator("#prediction").get_attribute("data-class")


def bar_total(page) -> float:
    texts = page.locator(".bar .p").all_inner_texts()
    return sum(float(t.rstrip("%")) for t in texts)


@pytest.mark.parametrize(
    ("digit", "strokes"),
    [
        ("1", [[(0.5, 0.15), (0.5, 0.85)]]),
        ("7", [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]),
        (
            "0",
            [
                [
                    (0.5, 0.15),
                    (0.72, 0.3),
                    (0.75, 0.6),
                    (0.55, 0.85),
                    (0.32, 0.75),
                    (0.26, 0.4),
                    (0.45, 0.15),
                    (0.5, 0.15),
                ]
            ],
        ),
    ],
)
def test_drawn_digits_are_recognised(server_url: str, digit: str, strokes) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 600})
            page.goto(server_url)
            page.wait_for_selector("#model:not(:empty)")
            draw(page, strokes)
            assert shown_prediction(page) == digit
            assert abs(bar_total(page) - 100) < 1.5  # rounded percentages
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"draw-{digit}.png"))
            page.click("#undo")
            assert page.locator("#prediction").inner_text() == "-"
        finally:
            browser.close()
