"""The served app watches no folder: runs and probe outputs written inside the checkout cannot flood its watcher."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from app_server import CHROMIUM, CHROMIUM_ARGS, serve
from playwright.sync_api import sync_playwright

pytestmark = pytest.mark.slow  # a served app


def inotify_watches(pid: int) -> int:
    """How many inotify watches process `pid` holds (Linux: the 'inotify wd:' lines of its fds' fdinfo)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            count += Path(f"/proc/{pid}/fdinfo/{fd}").read_text().count("inotify wd:")
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="reads Linux's /proc")
@pytest.mark.parametrize("watcher", [None, "auto"])
def test_the_configured_watcher_puts_no_inotify_watch_on_the_checkout(runs_dir: Path, watcher):
    with serve(runs_dir, watcher=watcher) as url, sync_playwright() as p:  # None: the one config.toml chooses
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/flow?run=attn", timeout=60_000)  # a session: its script's files get watched
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            watches = inotify_watches(serve.pid)
        finally:
            browser.close()
    if watcher is None:
        assert watches == 0
    else:  # the default watcher holds recursive watches on the checkout (.venv, runs, outputs included)
        assert watches > 100, watches
