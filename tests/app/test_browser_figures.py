"""What Chromium draws: token axes are categories, every bar and label is there, values are the library's.

Numbers as token names (modular addition's "0".."6") once made plotly draw numeric axes; these
tests read plotly's own resolved layout (`_fullLayout`) in the page, which is what a person sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from app_server import CHROMIUM, CHROMIUM_ARGS, serve
from playwright.sync_api import Page, sync_playwright

from blocks.tasks.common import dataset_tensors
from blocks.training.runs import load_run
from probes.neurons import neuron_logit_effects

pytestmark = pytest.mark.slow  # a real browser against a served app


def plot_titled(page: Page, title: str):
    """The plotly chart whose title starts with `title`, once drawn."""
    plot = page.locator(".js-plotly-plot", has=page.locator(".gtitle", has_text=title)).first
    plot.locator(".gtitle").first.wait_for(timeout=60_000)
    return plot


def full_layout(plot) -> dict:
    return plot.evaluate(
        """el => ({x: el._fullLayout.xaxis.type, y: el._fullLayout.yaxis.type,
            xtitle: el._fullLayout.xaxis.title.text, ytitle: el._fullLayout.yaxis.title.text,
            xcats: el._fullLayout.xaxis._categories, ycats: el._fullLayout.yaxis._categories,
            ticks: Array.from(el.querySelectorAll('.xtick text')).map(t => t.textContent),
            data: el.data.map(t => ({x: t.x, y: t.y, type: t.type}))})"""
    )


@pytest.fixture(scope="module")
def browser_page(runs_dir: Path):
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: run scripts/ensure_chromium.py (make test does)"
    with serve(runs_dir) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1800})
            yield url, page
        finally:
            browser.close()


def test_numbered_tokens_get_categorical_axes(browser_page, runs_dir: Path):
    url, page = browser_page
    run = load_run(runs_dir / "modadd")
    vocab = run.tokenizer.vocab
    assert all(t.isdigit() for t in vocab[:7])  # the case that broke: token names that read as numbers

    # neurons page: the logit-effect bars, one per token (the vocabulary is under 2k = 20), most up to most down
    page.goto(f"{url}/neurons?run=modadd&neuron_layer=0&neuron=3", timeout=60_000)
    drawn = full_layout(plot_titled(page, "direct logit effect of neuron 3"))
    assert drawn["x"] == "category"
    tokens = dataset_tensors(run.task.dataset("test"))[0][:256][:64]
    effects = neuron_logit_effects(run.model, 0, tokens)[3]
    order = effects.argsort(descending=True).tolist()
    assert drawn["data"][0]["x"] == [vocab[i] for i in order]
    torch.testing.assert_close(torch.tensor(drawn["data"][0]["y"]), effects[order], atol=1e-5, rtol=1e-4)
    assert drawn["xcats"] == [vocab[i] for i in order]  # the axis keeps the bars' order, not numeric order

    # heads page: QK and OV circuits over the whole vocabulary, "=" included, as categories
    page.goto(f"{url}/heads?run=modadd&head=L0H1&heads_circuit_tokens=all", timeout=60_000)
    for title in ("L0H1 QK circuit", "L0H1 OV circuit"):
        plot = plot_titled(page, title)
        page.wait_for_timeout(500)
        drawn = full_layout(plot)
        assert drawn["x"] == "category" and drawn["y"] == "category", (title, drawn["x"], drawn["y"])
        assert drawn["xcats"] == list(vocab) and drawn["ycats"] == list(vocab)
        assert drawn["xtitle"] and drawn["ytitle"]


def test_a_heads_pattern_is_drawn_full_size_with_every_token_labelled(browser_page, runs_dir: Path):
    url, page = browser_page
    prompt = "BOS 1 2 3 4 5 6 7 8 1 2 3 4 5 6 7 8"
    page.goto(f"{url}/heads?run=attn&head=L1H0&prompt={prompt.replace(' ', '+')}", timeout=60_000)
    plot = plot_titled(page, "L1H0 attention pattern")
    page.wait_for_timeout(500)
    drawn = full_layout(plot)
    labels = [f"{i}:{t}" for i, t in enumerate(prompt.split())]
    assert drawn["x"] == "category" and drawn["xcats"] == labels
    assert drawn["ticks"] == labels  # every token labelled, none hidden for want of room
    assert drawn["xtitle"] == "key position" and drawn["ytitle"] == "query position"
    assert plot.bounding_box()["width"] > 600

    # the text view: hovering a token shades the tokens it attends to by the head's weights
    run = load_run(runs_dir / "attn")
    _, cache = run.model.run_with_cache(torch.tensor([run.tokenizer.encode(prompt)]))
    weights = cache["blocks.1.attn.hook_pattern"][0, 0, 12]
    view = page.locator("#attn-1-0")
    view.locator(".q12").hover()
    page.wait_for_timeout(200)
    alphas = view.locator(".t").evaluate_all(
        "els => els.map(e => { const m = getComputedStyle(e).backgroundColor.match(/rgba?\\(([^)]*)\\)/);"
        " const p = m ? m[1].split(',') : []; return p.length === 4 ? parseFloat(p[3]) : (p.length ? 1 : 0); })"
    )
    assert len(alphas) == len(labels)
    for k in range(13):
        want = round(float(weights[k]), 2)
        assert alphas[k] == pytest.approx(want if want >= 0.01 else 0.0, abs=0.011), (k, alphas[k], want)
    assert all(a == 0 for a in alphas[13:])  # no attention to later tokens


def test_the_flow_graph_spans_the_prompt_and_has_a_colour_legend(browser_page, runs_dir: Path):
    url, page = browser_page
    prompt = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"
    page.goto(f"{url}/flow?run=attn&flow_target=5&prompt={prompt.replace(' ', '+')}", timeout=60_000)
    plot = plot_titled(page, "information flow into position 5")
    page.wait_for_timeout(500)
    drawn = plot.evaluate(
        """el => ({range: el._fullLayout.xaxis.range, xtitle: el._fullLayout.xaxis.title.text,
            ytitle: el._fullLayout.yaxis.title.text,
            legend: Array.from(el.querySelectorAll('.legendtext')).map(t => t.textContent),
            ticks: Array.from(el.querySelectorAll('.xtick text')).map(t => t.textContent)})"""
    )
    assert drawn["range"][0] < 0 and drawn["range"][1] > 12  # the routes end at 5; the axis still shows 0..12
    assert drawn["ticks"] == [f"{i}: {t}" for i, t in enumerate(prompt.split())]
    assert drawn["xtitle"] == "position: token" and drawn["ytitle"] == "layer"
    assert any(t.startswith("edge: attention") for t in drawn["legend"]), drawn["legend"]


def test_a_download_holds_the_numbers_drawn(browser_page, runs_dir: Path):
    import json

    url, page = browser_page
    prompt = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"
    page.goto(f"{url}/heads?run=attn&head=L1H0&prompt={prompt.replace(' ', '+')}", timeout=60_000)
    plot_titled(page, "L1H0 attention pattern")
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="Download this pattern (JSON)").click()
    data = json.loads(Path(info.value.path()).read_text())
    run = load_run(runs_dir / "attn")
    _, cache = run.model.run_with_cache(torch.tensor([run.tokenizer.encode(prompt)]))
    assert data["step"] == 8 and data["tokens"] == [f"{i}:{t}" for i, t in enumerate(prompt.split())]
    torch.testing.assert_close(torch.tensor(data["pattern"]), cache["blocks.1.attn.hook_pattern"][0, 0])
