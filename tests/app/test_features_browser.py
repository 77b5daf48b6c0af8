"""The SAE features page in a real browser: the highlighted examples, the histogram and logit bars are drawn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from app_server import CHROMIUM, CHROMIUM_ARGS, serve
from playwright.sync_api import sync_playwright
from sae_fixtures import NAME, saes  # noqa: F401  (the fixture every test here uses)

from blocks.tasks.common import dataset_tensors
from blocks.training.runs import load_run
from probes.sae.features import feature_codes, feature_frequency, top_examples
from probes.sae.files import load_sae

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("saes")]  # a real browser against a served app


def test_features_page_draws_examples_histogram_and_logit_effect(runs_dir: Path, tmp_path: Path):
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: run scripts/ensure_chromium.py (make test does)"
    run = load_run(runs_dir / "sycophancy")
    sae, _ = load_sae(runs_dir / "sycophancy" / "saes" / NAME)
    data = dataset_tensors(run.task.dataset("test"))[0][:256]
    with torch.no_grad():
        codes = feature_codes(run.model, sae, data)
    feature = int(feature_frequency(codes).argmax())  # the page opens on the most frequent feature
    top = top_examples(codes, feature, k=8)
    row, pos = int(top.rows[0]), int(top.positions[0])
    shot = tmp_path / "features.png"
    with serve(runs_dir) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(f"{url}/features?run=sycophancy", timeout=60_000)
            page.locator("h3", has_text=f"Feature {feature}").wait_for(timeout=60_000)
            marks = page.locator("mark")
            marks.first.wait_for(timeout=60_000)
            assert marks.count() == top.values.numel()
            assert marks.first.inner_text() == run.tokenizer.vocab[int(data[row, pos])]
            assert marks.first.get_attribute("title") == f"{float(top.values[0]):.3f}"
            plots = page.locator(".js-plotly-plot")
            plots.nth(1).wait_for(timeout=60_000)
            # Streamlit's theme wraps titles in <b>
            titles = [
                plots.nth(i).evaluate("el => el._fullLayout.title.text").replace("<b>", "").replace("</b>", "")
                for i in range(plots.count())
            ]
            assert any(t.startswith(f"Feature {feature}: codes where it fires") for t in titles), titles
            assert "Tokens the feature raises and lowers" in titles
            bars = plots.nth(titles.index("Tokens the feature raises and lowers")).evaluate("el => el.data[0].x.length")
            assert bars == 2 * min(10, run.tokenizer.d_vocab)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
