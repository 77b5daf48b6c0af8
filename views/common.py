"""What every page shares: the sidebar (run, checkpoint, prompt), cached loading, and the page context.

Every selection lives in `st.session_state` under these keys, which tests may set before a run:

| key | meaning |
| --- | --- |
| `run` | name of the run folder inside the runs folder |
| `step` | checkpoint step (int) of that run |
| `prompt` | the prompt text, read through the run's tokenizer |
| `example_seed` | seed of the last example drawn from the task (int) |
| `overview_score` | head score shown over training steps (e.g. "induction") |
| `flow_threshold` | information-flow edge threshold tau (float) |
| `flow_target` | position whose routes are drawn (int) |
| `flow_pick` | the clicked node or edge, as {"kind": "attn"/"mlp"/..., "layer", "src", "dst"} |
| `head` | selected head, "L{layer}H{head}" |
| `neuron_layer`, `neuron_pos`, `neuron` | neuron page: layer, position, neuron index |
| `heads_score` | head score mapped on the heads page |
| `lens_pos`, `lens_target` | position and token (string) the lens and attribution follow |
| `ablate_heads`, `ablate_neurons` | lists of "L0H1" and "L0N5" labels to ablate |
| `ablate_mode` | "zero" or "mean" |
| `patch_corrupted` | the corrupted prompt the heads are patched into |
| `circuit_method`, `circuit_metric` | circuit page: "eap-ig"/"eap"/"exact", and "default" or a metric kind |
| `circuit_edges`, `circuit_pick` | circuit page: edges kept (int), the edge clicked for path patching ("L0H1 -> L1H2.k") |
| `circuit_for` | (run, step, mtime, method, metric) the edge count belongs to; a change resets it to that circuit's |
| `sae_source`, `sae_name` | SAE features page: the run whose SAEs are listed, and the SAE (its folder name) |
| `sae_feature`, `sae_sort`, `sae_alpha` | SAE features page: the feature shown, the list's order, the steering multiple |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
import torch
from torch import Tensor

from blocks.cache import ActivationCache
from blocks.tasks.base import UnknownTokenError
from blocks.training.checkpoints import checkpoint_files
from blocks.training.runs import Run, checkpoint_status, load_run
from views.paths import RunPathError, list_runs, resolve_run, runs_root

STATE_KEYS = (
    "run",
    "step",
    "prompt",
    "example_seed",
    "overview_score",
    "flow_threshold",
    "flow_target",
    "flow_pick",
    "head",
    "heads_score",
    "neuron_layer",
    "neuron_pos",
    "neuron",
    "lens_pos",
    "lens_target",
    "ablate_heads",
    "ablate_neurons",
    "ablate_mode",
    "patch_corrupted",
    "circuit_method",
    "circuit_metric",
    "circuit_edges",
    "circuit_pick",
    "circuit_for",
    "sae_source",
    "sae_name",
    "sae_feature",
    "sae_sort",
    "sae_alpha",
)
TRAIN_HINT = "Train one with `make app` (it trains the default induction model first) or `python -m blocks.train --task induction --out runs/induction`."


@dataclass(frozen=True)
class PageContext:
    """Everything a page needs about the chosen run, checkpoint and prompt."""

    run: Run
    key: tuple[str, int, float]  # (run path, step, checkpoint or config mtime): the cache key of this model
    tokens: Tensor  # [1, pos] ids of the prompt
    labels: list[str]  # one unique, readable label per position ("3:a")
    logits: Tensor  # [1, pos, d_vocab]
    cache: ActivationCache  # every hook point of the prompt's forward pass


def checkpoint_file(run_path: Path, step: int) -> Path:
    return checkpoint_files(run_path, step)[0]


@st.cache_resource(max_entries=32, show_spinner=False)
def _status(path: str, stamp: tuple[tuple[str, float, int], ...]) -> list[tuple[int, str | None]]:
    """checkpoint_status, read again only when a weights file appears, changes or goes (`stamp`)."""
    return checkpoint_status(Path(path), root=runs_root())


def cached_checkpoint_status(run_path: Path) -> list[tuple[int, str | None]]:
    # config.json too: a run whose config is rewritten (or replaced by a crafted one) is read again
    files = [run_path / "config.json", *sorted((run_path / "checkpoints").glob("step_*.safetensors"))]
    stamp = tuple((f.name, f.stat().st_mtime, f.stat().st_size) for f in files)
    return _status(str(run_path), stamp)


@st.cache_resource(max_entries=16, show_spinner="Loading the checkpoint...")
def load_cached(path: str, step: int, mtime: float) -> Run:
    """The run at `step`; `mtime` is in the key so a checkpoint rewritten in place is read again.

    Nothing outside the runs folder is read: a run's symlink that leads out is refused, naming it.
    """
    return load_run(Path(path), step=step, device="cpu", root=runs_root())


@st.cache_resource(max_entries=64, show_spinner=False)
def activations(path: str, step: int, mtime: float, tokens: tuple[int, ...]) -> tuple[Tensor, ActivationCache]:
    """Logits and the full activation cache of one prompt on one checkpoint (shared read-only across sessions)."""
    model = load_cached(path, step, mtime).model
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor([tokens]))
    return logits, cache


def position_labels(tokenizer: Any, ids: list[int]) -> list[str]:
    """'pos:token' labels, unique even when a token repeats (plotly merges equal category labels)."""
    return [f"{i}:{t}" for i, t in enumerate(tokenizer.token_strs(ids))]


def _choose_run(root: Path) -> Path | None:
    runs = list_runs(root)
    if not runs:
        st.info(f"The runs folder {root} holds no runs yet. {TRAIN_HINT}")
        return None
    asked = st.session_state.get("run", st.query_params.get("run"))
    if asked is not None and asked not in runs:
        try:
            resolve_run(root, str(asked))
            runs.append(str(asked))  # a valid run that appeared after listing
        except RunPathError as err:
            st.error(f"Cannot open that run: {err}")
            asked = None
        st.session_state.pop("run", None)
    if asked is not None:
        st.session_state["run"] = asked
    name = st.sidebar.selectbox("Run", runs, key="run")
    return resolve_run(root, name)


def _choose_step(run_path: Path) -> int | None:
    try:
        status = cached_checkpoint_status(run_path)
    except (ValueError, OSError, KeyError) as err:
        st.error(f"Run {run_path.name} cannot be read: {err}")
        return None
    usable = [step for step, err in status if err is None]
    broken = [(step, err) for step, err in status if err is not None]
    if broken:
        with st.sidebar.expander(f"{len(broken)} unusable checkpoint(s)", expanded=True):
            for step, err in broken:
                st.warning(f"step {step}: {err}")
    if not usable:
        st.error(f"Run {run_path.name} has no readable checkpoint. {TRAIN_HINT}")
        return None
    if st.session_state.get("step") not in usable:
        if "step" in st.session_state:
            st.warning(
                f"Step {st.session_state['step']} is not a usable checkpoint of {run_path.name}; showing the latest."
            )
        st.session_state["step"] = usable[-1]
    if len(usable) == 1:
        st.sidebar.caption(f"Checkpoint: step {usable[0]} (the only one)")
        return usable[0]
    return st.sidebar.select_slider("Checkpoint (scrub to watch heads form)", usable, key="step")


def _draw_example(run: Run) -> None:
    seed = st.session_state.get("example_seed", -1) + 1
    st.session_state["example_seed"] = seed
    st.session_state["prompt"] = run.tokenizer.decode(run.task.example(seed))


def _prompt_tokens(run: Run) -> list[int] | None:
    tok, n_ctx = run.tokenizer, run.model.cfg.n_ctx
    if "prompt" not in st.session_state:
        _draw_example(run)
    st.sidebar.text_area("Prompt", key="prompt", height=90, help="Typed through the run's tokenizer.")
    st.sidebar.button("Draw an example from the task", on_click=_draw_example, args=(run,))
    text = st.session_state["prompt"]
    if not tok.split(text):
        st.info("The prompt is empty: type some text in the sidebar or draw an example from the task.")
        return None
    try:
        ids = tok.encode(text)
    except UnknownTokenError as err:
        unknown = ", ".join(repr(u) for u in dict.fromkeys(err.unknown))
        st.error(f"The prompt holds tokens this run's tokenizer does not know: {unknown}. Nothing was dropped; {err}")
        return None
    if len(ids) > n_ctx:
        st.warning(f"The prompt has {len(ids)} tokens but the model's context is {n_ctx}; showing the first {n_ctx}.")
        ids = ids[:n_ctx]
    return ids


def run_only() -> tuple[Run, tuple[str, int, float]] | None:
    """Draw the run and checkpoint choice; return the loaded run and its cache key (None after saying why not)."""
    root = runs_root()
    run_path = _choose_run(root)
    if run_path is None:
        return None
    step = _choose_step(run_path)
    if step is None:
        return None
    # the newer of the checkpoint's and the config's times: rewriting either reads the run again
    mtime = max(checkpoint_file(run_path, step).stat().st_mtime, (run_path / "config.json").stat().st_mtime)
    try:
        run = load_cached(str(run_path), step, mtime)
    except (ValueError, OSError) as err:
        st.error(f"Could not load step {step} of {run_path.name}: {err}")
        return None
    for message in run.skipped + run.metrics_skipped:  # newer checkpoints passed over, unreadable metrics lines
        st.sidebar.warning(message)
    return run, (str(run_path), step, mtime)


def page_context() -> PageContext | None:
    """Draw the sidebar (run, checkpoint, prompt) and return the page's context, or None after saying why not."""
    chosen = run_only()
    if chosen is None:
        return None
    run, key = chosen
    ids = _prompt_tokens(run)
    if ids is None:
        return None
    logits, cache = activations(*key, tuple(ids))
    return PageContext(run, key, torch.tensor([ids]), position_labels(run.tokenizer, ids), logits, cache)
