"""The app in a real browser: Chromium loads the flow page, a click on a node shows the heads behind it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from app_server import CHROMIUM, CHROMIUM_ARGS, serve
from playwright.sync_api import sync_playwright

pytestmark = pytest.mark.slow  # a real browser against a served app


def test_click_a_flow_node_shows_its_heads(runs_dir: Path, tmp_path: Path):
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: run scripts/ensure_chromium.py (make test does)"
    shot = tmp_path / "flow_clicked.png"
    with serve(runs_dir) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"{url}/flow?run=attn", timeout=60_000)
            points = page.locator(".js-plotly-plot .scatterlayer .points path")
            points.first.wait_for(timeout=60_000)
            assert page.locator("h3", has_text="Behind ").count() == 0
            # .streamlit/config.toml's toolbarMode = "viewer": the toolbar is drawn, without its Deploy button
            page.locator('[data-testid="stMainMenu"]').wait_for(timeout=60_000)
            assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
            # the topmost marker is the target position's final stream: attention edges lead into it
            boxes = [points.nth(i).bounding_box() for i in range(points.count())]
            top = min((b for b in boxes if b), key=lambda b: b["y"])
            page.mouse.click(top["x"] + top["width"] / 2, top["y"] + top["height"] / 2)
            heading = page.locator("h3", has_text="Behind resid_pre[L2, 12]")
            heading.wait_for(timeout=60_000)
            page.get_by_text("attention pattern").first.wait_for(timeout=60_000)
            page.get_by_text("contribution (flow importance)").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)  # let the two heatmaps paint before the screenshot
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
