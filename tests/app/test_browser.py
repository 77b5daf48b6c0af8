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


def test_circuit_page_draws_the_librarys_edges_and_path_patches_a_clicked_one(runs_dir: Path):
    from blocks.training.runs import load_run
    from probes.circuit.attribution import edge_attribution
    from probes.circuit.discovery import circuit_from_scores
    from probes.circuit.exact import path_patching

    run = load_run(runs_dir / "sycophancy")
    contrast = run.task.circuit_contrast(64)
    found = circuit_from_scores(run.model, contrast, edge_attribution(run.model, contrast, "eap-ig"))
    with serve(runs_dir) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"{url}/circuit?run=sycophancy", timeout=60_000)
            plot = page.locator(".js-plotly-plot").first
            plot.locator(".scatterlayer .points path").first.wait_for(timeout=60_000)
            drawn = plot.evaluate(
                """el => ({ticks: el._fullLayout.xaxis.ticktext, ytitle: el._fullLayout.yaxis.title.text,
                    edges: el.data.filter(t => t.name === 'edges')[0].customdata,
                    nodes: el.data.filter(t => t.name === 'nodes')[0].text})"""
            )
            assert drawn["ticks"] == ["embeddings", "layer 0", "layer 1", "logits"] and drawn["ytitle"] == "head"
            assert sorted(drawn["edges"]) == sorted(found.edge_names())  # every kept edge, each once
            assert {"embed", "L0H0", "MLP1", "logits"} <= set(drawn["nodes"])
            # click the midpoint of the largest edge: the page path-patches that edge
            first = found.scores.ranked(1)[0][0]
            index = drawn["edges"].index(first)
            marker = plot.locator(".scatterlayer .trace").nth(len(drawn["edges"])).locator(".points path").nth(index)
            marker.scroll_into_view_if_needed()
            box = marker.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_timeout(300)  # plotly picks the point under the cursor on hover, then the click selects it
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            heading = page.locator("h3", has_text=f"Path patching {first.replace('->', '→')}")  # markdown's arrow
            heading.wait_for(timeout=60_000)
            sender, receiver = (part.strip() for part in first.split("->"))
            result = path_patching(run.model, contrast, [sender], [receiver])
            page.get_by_text(f"({result.effect:+.4f})").first.wait_for(timeout=30_000)
        finally:
            browser.close()
