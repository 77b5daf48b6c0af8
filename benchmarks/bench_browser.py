"""How fast the app answers in a real browser: from the input event to the updated chart on screen.

    python benchmarks/bench_browser.py [--run runs/induction] [--repeats 3]

bench_app.py times the server's rerun through AppTest; this one serves the app with
`streamlit run`, drives Chromium with Playwright and times what a person waits for: the first
chart of a new session (cold server caches, then a second session on a warm server), and each
interaction on the flow and heads pages, from the key press or click to the moment the chart
on screen shows the new state (its title, or its tick labels, read from the DOM). Targets:
first chart of a new session <= 3 s, every interaction <= 1 s. Without a trained run it builds
one with the default induction model's shape and random weights (bench_app.default_run).
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Page, sync_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "app"))  # the test server helper: streamlit run on a free port
sys.path.insert(0, str(REPO / "benchmarks"))
from app_server import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402
from bench_app import run_or_default  # noqa: E402

from blocks.tasks import get_task  # noqa: E402
from blocks.training.runs import load_run  # noqa: E402

TARGET_FIRST_S, TARGET_INTERACTION_S = 3.0, 1.0


def chart_shows(page: Page, js_condition: str, timeout_s: float = 60.0) -> None:
    """Wait until some plotly chart on the page satisfies `js_condition` (a JS expression over `el`)."""
    page.wait_for_function(
        f"() => Array.from(document.querySelectorAll('.js-plotly-plot')).some(el => {{ try {{ return {js_condition}; }}"
        " catch (e) { return false; } })",
        timeout=timeout_s * 1000,
        polling="raf",
    )


def title_is(text: str) -> str:
    return f"(el.querySelector('.gtitle') || {{}}).textContent === {text!r}"


def timed(action, page: Page, condition: str) -> float:
    start = time.perf_counter()
    action()
    chart_shows(page, condition)
    return time.perf_counter() - start


def pick_option(page: Page, label: str, option: str) -> None:
    """Open the selectbox labelled `label` and click `option` (Streamlit's combobox and its listbox)."""
    page.locator(f'input[role="combobox"][aria-label^="{label}"]').first.click()
    page.get_by_role("option", name=option, exact=True).first.click()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(REPO / "runs" / "induction"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    root, name, tmp = run_or_default(Path(args.run))
    run = load_run(root / name)
    task = get_task(run.config["task"]["name"], **run.config["task"]["options"])
    prompts = [task.tokenizer.decode(task.example(1000 + i)) for i in range(args.repeats + 1)]
    n = len(task.example(0))
    results: dict[str, list[float]] = {}

    with serve(root, timeout=120) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for session in ("cold server", "warm server"):
                page = browser.new_page(viewport={"width": 1500, "height": 1400})
                start = time.perf_counter()
                page.goto(f"{url}/flow?run={name}&prompt={quote(prompts[0])}", timeout=120_000)
                chart_shows(page, f"{title_is(f'information flow into position {n - 1} (tau=0.04)')}", 120)
                results[f"first chart of a new session ({session})"] = [time.perf_counter() - start]
                if session == "cold server":
                    page.close()

            slider = page.locator('input[type="range"][aria-label^="Threshold tau"]').first
            taus = []
            for i in range(args.repeats):
                tau = f"{0.05 + 0.01 * i:.2f}"
                slider.focus()
                taus.append(
                    timed(
                        lambda: page.keyboard.press("ArrowRight"),
                        page,
                        title_is(f"information flow into position {n - 1} (tau={float(tau):g})"),
                    )
                )
            results["flow: threshold tau (arrow key)"] = taus

            targets = []
            for i in range(args.repeats):
                pos = n - 2 - i
                label = f"{pos}:{task.tokenizer.decode([task.example(1000)[pos]])}"
                targets.append(
                    timed(
                        lambda: pick_option(page, "Target position", label),
                        page,
                        f"(el.querySelector('.gtitle') || {{}}).textContent.startsWith('information flow into position {pos} ')",
                    )
                )
            results["flow: target position (select)"] = targets

            new_prompts = []
            box = page.locator('[data-testid="stTextArea"] textarea').first
            for i in range(1, args.repeats + 1):
                text = prompts[i]
                first_tick = f"0: {text.split()[0]}"
                last_tick = f"{len(text.split()) - 1}: {text.split()[-1]}"

                def type_prompt(text: str = text) -> None:
                    box.fill(text)
                    box.press("Control+Enter")

                new_prompts.append(
                    timed(
                        type_prompt,
                        page,
                        "(() => { const t = Array.from(el.querySelectorAll('.xtick text')).map(x => x.textContent);"
                        f" return t[0] === {first_tick!r} && t[t.length - 1] === {last_tick!r}"
                        f" && {title_is(f'information flow into position {n - 1} (tau={0.04 + 0.01 * args.repeats:g})')}; }})()",
                    )
                )
            results["flow: new prompt (typed, Ctrl+Enter)"] = new_prompts

            page.goto(f"{url}/heads?run={name}&prompt={quote(prompts[0])}", timeout=120_000)
            cfg = run.model.cfg
            last = f"L{cfg.n_layers - 1}H{cfg.n_heads - 1}"
            chart_shows(page, title_is(f"{last} attention pattern"), 120)
            heads = []
            for i in range(args.repeats):
                head = f"L{i % cfg.n_layers}H{i % cfg.n_heads}"
                heads.append(
                    timed(lambda: pick_option(page, "Head", head), page, title_is(f"{head} attention pattern"))
                )
            results["heads: pick a head (select)"] = heads
        finally:
            browser.close()

    ok = True
    for label, xs in results.items():
        target = TARGET_FIRST_S if label.startswith("first chart") else TARGET_INTERACTION_S
        met = max(xs) <= target
        ok &= met
        print(
            f"{label:52s} median {statistics.median(xs):.2f} s, max {max(xs):.2f} s over {len(xs)}"
            f"  (target <= {target} s){'' if met else '  MISSED'}"
        )
    print("PASS" if ok else "FAIL")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
