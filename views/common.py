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
| `flow_compare`, `heads_compare` | a second checkpoint step drawn beside the chosen one (None: no comparison) |
| `head` | selected head, "L{layer}H{head}" |
| `neuron_layer`, `neuron_pos`, `neuron` | neuron page: layer, position, neuron index |
| `heads_score` | head score mapped on the heads page |
| `heads_circuit_tokens` | "in the prompt" or "all": the tokens the QK and OV circuits show |
| `lens_pos`, `lens_target` | position and token (string) the lens and attribution follow |
| `ablate_heads`, `ablate_neurons` | lists of "L0H1" and "L0N5" labels to ablate |
| `ablate_mode` | "zero", "mean" or "resample" |
| `ablate_pos`, `ablate_answer`, `ablate_wrong` | the position whose next token is measured, the answer and the wrong token |
| `patch_corrupted` | the corrupted prompt the clean activations are patched into |
| `patch_kind` | what one patching cell is: a head, a head at one position, or the residual stream at one position |
| `circuit_method`, `circuit_metric` | circuit page: "eap-ig"/"eap"/"exact", and "default" or a metric kind |
| `circuit_edges`, `circuit_pick` | circuit page: edges kept (int), the edge clicked for path patching ("L0H1 -> L1H2.k") |
| `generate_prompt` | overview of a text run: the text generation starts from |
| `circuit_for` | (run, step, mtime, method, metric) the edge count belongs to; a change resets it to that circuit's |
| `sae_source`, `sae_name` | SAE features page: the run whose SAEs are listed, and the SAE (its folder name) |
| `sae_feature`, `sae_sort`, `sae_alpha` | SAE features page: the feature shown, the list's order, the steering multiple |

Every key but `run` belongs to the run it was chosen on: `_per_run` holds, for each run
visited in this session, the values its keys had when one switched away, and switching back
restores them (a new run starts from its own defaults: its latest checkpoint, its task's
first example). The run, the step, the prompt and the page's own selections (`URL_KEYS`) are
also written to the address bar's query string, and a link read at the start of a session
restores them.
"""

from __future__ import annotations

import json
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
    "flow_compare",
    "head",
    "heads_score",
    "heads_circuit_tokens",
    "heads_compare",
    "neuron_layer",
    "neuron_pos",
    "neuron",
    "lens_pos",
    "lens_target",
    "ablate_heads",
    "ablate_neurons",
    "ablate_mode",
    "ablate_pos",
    "ablate_answer",
    "ablate_wrong",
    "patch_corrupted",
    "patch_kind",
    "circuit_method",
    "circuit_metric",
    "circuit_edges",
    "circuit_pick",
    "circuit_for",
    "generate_prompt",
    "sae_source",
    "sae_name",
    "sae_feature",
    "sae_sort",
    "sae_alpha",
)
PER_RUN_KEYS = tuple(k for k in STATE_KEYS if k != "run")
# what a link carries, and how each value reads back from its text in the query string
URL_KEYS: dict[str, type] = {
    "run": str,
    "step": int,
    "prompt": str,
    "overview_score": str,
    "flow_threshold": float,
    "flow_target": int,
    "flow_pick": dict,
    "flow_compare": int,
    "head": str,
    "heads_score": str,
    "heads_circuit_tokens": str,
    "heads_compare": int,
    "neuron_layer": int,
    "neuron_pos": int,
    "neuron": int,
    "lens_pos": int,
    "lens_target": str,
    "ablate_heads": list,
    "ablate_neurons": list,
    "ablate_mode": str,
    "ablate_pos": int,
    "ablate_answer": str,
    "ablate_wrong": str,
    "patch_corrupted": str,
    "patch_kind": str,
}
# the selections of each page that its link carries, beside run, step and prompt
PAGE_URL_KEYS = {
    "": ("overview_score",),
    "overview": ("overview_score",),
    "flow": ("flow_target", "flow_threshold", "flow_pick", "flow_compare"),
    "heads": ("head", "heads_score", "heads_circuit_tokens", "heads_compare"),
    "neurons": ("neuron_layer", "neuron_pos", "neuron"),
    "lens": ("lens_pos", "lens_target"),
    "ablate": (
        "ablate_pos",
        "ablate_answer",
        "ablate_wrong",
        "ablate_heads",
        "ablate_neurons",
        "ablate_mode",
        "patch_corrupted",
        "patch_kind",
    ),
}
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


def _url_value(key: str, text: str) -> Any:
    """A query-string value read back as the type its session-state key holds (ValueError when it cannot be)."""
    kind = URL_KEYS[key]
    if kind is list:
        return [x for x in text.split(",") if x]
    if kind is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return value
    return kind(text)


def _url_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(x) for x in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def read_url() -> None:
    """Once per session: the link's run, step, prompt and selections become the session's (what is set wins)."""
    if st.session_state.get("_url_read"):
        return
    st.session_state["_url_read"] = True
    for key, text in st.query_params.items():
        if key not in URL_KEYS or key in st.session_state:
            continue
        try:
            st.session_state[key] = _url_value(key, text)
        except ValueError:
            kind = {int: "a whole number", float: "a number", dict: "a JSON object"}.get(URL_KEYS[key], "readable")
            st.warning(f"The link's {key}={text!r} is not {kind}; using the default instead.")


def write_url() -> None:
    """Put the run, step, prompt and this page's selections in the query string, so the address reopens this view.

    Called once the sidebar is drawn, before the page can stop: a widget a person just changed is
    already in the session state then, so the address always names the view on screen.
    """
    keys = ("run", "step", "prompt", *PAGE_URL_KEYS.get(st.session_state.get("_page", ""), ()))
    shown = {k: _url_text(st.session_state[k]) for k in keys if st.session_state.get(k) not in (None, [], {})}
    if dict(st.query_params) != shown:
        st.query_params.from_dict(shown)


def switch_run_state(name: str) -> None:
    """Keep each run's own prompt, step and selections: park the last run's, bring back (or clear) this one's."""
    shown = st.session_state.get("_state_of")
    if shown == name:
        return
    parked = st.session_state.setdefault("_per_run", {})
    if shown is not None:  # the first run of a session keeps what a link or a test set
        parked[shown] = {k: st.session_state[k] for k in PER_RUN_KEYS if k in st.session_state}
        for key in PER_RUN_KEYS:
            st.session_state.pop(key, None)
        st.session_state.update(parked.get(name, {}))
    st.session_state["_state_of"] = name


def _choose_run(root: Path) -> Path | None:
    read_url()
    runs = list_runs(root)
    if not runs:
        st.info(f"The runs folder {root} holds no runs yet. {TRAIN_HINT}")
        return None
    asked = st.session_state.get("run")
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
    switch_run_state(name)
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
    st.sidebar.text_area(
        "Prompt",
        key="prompt",
        height=90,
        help=f"Task {run.task.name}: {run.task.prompt_format} Typed through the run's tokenizer.",
    )
    st.sidebar.caption(f"Format: {run.task.prompt_format}")
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
    write_url()
    return run, (str(run_path), step, mtime)


def page_context() -> PageContext | None:
    """Draw the sidebar (run, checkpoint, prompt) and return the page's context, or None after saying why not."""
    chosen = run_only()
    if chosen is None:
        return None
    run, key = chosen
    ids = _prompt_tokens(run)
    write_url()
    if ids is None:
        return None
    logits, cache = activations(*key, tuple(ids))
    return PageContext(run, key, torch.tensor([ids]), position_labels(run.tokenizer, ids), logits, cache)


def compare_checkpoint(ctx: PageContext, key: str, where: Any = st) -> PageContext | None:
    """A selectbox of the run's other usable checkpoints; the prompt's context on the one chosen (None: none chosen).

    The second checkpoint is loaded and run through the same caches as the first, so a comparison
    costs one forward the first time and nothing after.
    """
    run_path, step = Path(ctx.key[0]), ctx.key[1]
    others = [s for s, err in cached_checkpoint_status(run_path) if err is None and s != step]
    if not others:
        return None
    if st.session_state.get(key) not in [None, *others]:
        st.session_state[key] = None
    other = where.selectbox(
        "Compare with checkpoint",
        [None, *others],
        key=key,
        format_func=lambda s: "no comparison" if s is None else f"step {s}",
        help="Draw the same view for a second checkpoint of this run beside the chosen one.",
    )
    if other is None:
        return None
    mtime = max(checkpoint_file(run_path, other).stat().st_mtime, (run_path / "config.json").stat().st_mtime)
    run = load_cached(str(run_path), other, mtime)
    ids = tuple(ctx.tokens[0].tolist())
    logits, cache = activations(str(run_path), other, mtime, ids)
    return PageContext(run, (str(run_path), other, mtime), ctx.tokens, ctx.labels, logits, cache)


def download(label: str, data: Any, name: str, key: str, where: Any = st) -> None:
    """A button that downloads the numbers behind a figure as JSON (lists of numbers, tensors as nested lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.detach().cpu().tolist()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    # deferred: the JSON is made only when the button is clicked, not on every rerun of the page
    where.download_button(
        label,
        lambda: json.dumps(plain(data), indent=1),
        file_name=f"{name}.json",
        mime="application/json",
        key=key,
        on_click="ignore",
    )
