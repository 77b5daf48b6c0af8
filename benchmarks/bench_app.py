"""How fast the app answers on the default induction model, timed through Streamlit's AppTest.

    python benchmarks/bench_app.py [--run runs/induction] [--repeats 5]

Measures the first load of a run (cold caches: checkpoint list, weights, first forward,
the Overview page) and of the flow page, then the redraw of the flow page after a change
of prompt and after a change of threshold. Targets: first load <= 3 s, each redraw <= 1 s.
Without a trained run it builds one with the default model's shape and random weights
(the time does not depend on the weights) in a temporary folder. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from blocks import Transformer
from blocks.tasks import get_task
from blocks.weights import save_tensors

REPO = Path(__file__).resolve().parent.parent
TARGET_FIRST_S, TARGET_REDRAW_S = 3.0, 1.0


def default_run(root: Path) -> str:
    """A run laid out as the trainer writes it, with the default induction model (random weights)."""
    task = get_task("induction")
    cfg = task.default_model_config()
    path = root / "induction"
    (path / "checkpoints").mkdir(parents=True)
    for step in (0, 100):
        torch.manual_seed(step)
        save_tensors(Transformer(cfg).state_dict(), path / "checkpoints" / f"step_{step:06d}.safetensors")
    config = {
        "model": cfg.to_dict(),
        "task": {"name": "induction", "options": task.options()},
        "train": task.default_train_config(),
        "tokenizer": task.tokenizer.to_dict(),
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text(json.dumps({"step": 0, "train_loss": 3.9, "lr": 0.0}) + "\n")
    return path.name


def run_or_default(run: Path) -> tuple[Path, str, tempfile.TemporaryDirectory | None]:
    """(runs folder, run name, the temporary folder to keep alive): `run`, or a default-shaped run with random weights."""
    if (run / "config.json").is_file():
        return run.resolve().parent, run.name, None
    tmp = tempfile.TemporaryDirectory()
    print(f"no trained run at {run}: timing a default-shaped induction model with random weights")
    return Path(tmp.name), default_run(Path(tmp.name)), tmp


def timed(at: AppTest, flow: bool = True) -> float:
    """Seconds for one rerun; checks the flow page really drew its routes (not a message instead)."""
    start = time.perf_counter()
    at.run()
    took = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"the app raised: {at.exception[0].value}")
    if flow and not any("nodes and" in c.value for c in at.caption):
        shown = [e.value for kind in ("error", "warning", "info") for e in getattr(at, kind)]
        raise RuntimeError(f"the flow page drew no routes; it showed {shown}")
    return took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(REPO / "runs" / "induction"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    root, name, tmp = run_or_default(Path(args.run))
    os.environ["SANDBOX_RUNS"] = str(root)
    sys.path.insert(0, str(REPO))
    st.cache_resource.clear()

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["run"] = name
    first_overview = timed(at, flow=False)
    at.switch_page("views/flow.py")
    first_flow = timed(at)
    task = get_task(
        json.loads((root / name / "config.json").read_text())["task"]["name"],
        **json.loads((root / name / "config.json").read_text())["task"]["options"],
    )

    prompt_s, tau_s = [], []
    for i in range(args.repeats):
        at.session_state["prompt"] = task.tokenizer.decode(task.example(1000 + i))
        prompt_s.append(timed(at))
        at.slider(key="flow_threshold").set_value([0.02, 0.06, 0.1][i % 3])
        tau_s.append(timed(at))

    print(f"first load of the run (Overview, cold caches): {first_overview:.2f} s  (target <= {TARGET_FIRST_S} s)")
    print(f"then the flow page, first time:               {first_flow:.2f} s  (target <= {TARGET_FIRST_S} s)")
    for label, xs in (("new prompt", prompt_s), ("new threshold", tau_s)):
        print(
            f"flow page redraw after a {label}: median {statistics.median(xs):.3f} s, max {max(xs):.3f} s "
            f"over {len(xs)}  (target <= {TARGET_REDRAW_S} s)"
        )
    ok = (
        first_overview <= TARGET_FIRST_S
        and first_flow <= TARGET_FIRST_S
        and statistics.median(prompt_s) <= TARGET_REDRAW_S
        and statistics.median(tau_s) <= TARGET_REDRAW_S
    )
    print("PASS" if ok else "FAIL")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
