"""SAE features: pick an SAE of the run, list its features, and open one: where it fires, what it does, ablate or steer it."""

import html

import pandas as pd
import streamlit as st
import torch

from blocks.tasks.common import dataset_tensors
from probes.sae.evaluate import check_fits
from probes.sae.features import (
    ablated_logits,
    feature_codes,
    feature_frequency,
    logit_effect,
    prediction_change,
    steered_logits,
    top_examples,
)
from probes.sae.figures import activation_histogram, logit_effect_figure
from probes.sae.files import SAES, list_saes, load_sae
from probes.sae.known import KNOWN_TASKS, known_variables, match_variables
from views.common import page_context
from views.paths import list_runs, resolve_run, runs_root

SORTS = ("frequency", "match to a known variable", "index")


@st.cache_resource(max_entries=8, show_spinner="Loading the SAE...")
def cached_sae(path: str, mtime: float):
    return load_sae(path)


@st.cache_resource(max_entries=8, show_spinner="Reading the task's test data...")
def task_tokens(_task, key: tuple) -> torch.Tensor:
    return dataset_tensors(_task.dataset("test"))[0][:256]


@st.cache_resource(max_entries=8, show_spinner="Encoding the test data...")
def codes_of(_model, _sae, _tokens, key: tuple) -> torch.Tensor:
    return feature_codes(_model, _sae, _tokens)


@st.cache_resource(max_entries=8, show_spinner="Matching features to the task's known variables...")
def matches_of(_model, _sae, _task, key: tuple):
    prompts, variables = known_variables(_task, n=400)
    return match_variables(feature_codes(_model, _sae, prompts), variables)


def highlighted(tokens: list[str], pos: int, value: float) -> str:
    """The example's tokens with the activating one marked (escaped: token strings come from the run's files)."""
    cells = [
        f'<mark title="{value:.3f}">{html.escape(t)}</mark>' if i == pos else html.escape(t)
        for i, t in enumerate(tokens)
    ]
    return " ".join(cells)


st.title("SAE features")
ctx = page_context()
if ctx is None:
    st.stop()
model, run = ctx.run.model, ctx.run
root = runs_root()
current = run.path.name
with_saes = [name for name in list_runs(root) if name == current or list_saes(root / name)]
if current not in with_saes:
    with_saes.insert(0, current)
if st.session_state.get("sae_source") not in with_saes:
    st.session_state["sae_source"] = current
source = st.selectbox("SAEs of run", with_saes, key="sae_source", help="An SAE of another run opens only if it fits")
source_path = resolve_run(root, source)
names = list_saes(source_path)
if not names:
    st.info(
        f"Run {source} has no SAEs yet. Train one with `python -m probes.sae --run {source_path} "
        f"--hook blocks.0.hook_resid_post --out out/sae`; it is saved in {source_path / SAES}."
    )
    st.stop()
if st.session_state.get("sae_name") not in names:
    st.session_state["sae_name"] = names[0]
name = st.selectbox("SAE", names, key="sae_name")
folder = source_path / SAES / name
try:
    sae, cfg_json = cached_sae(str(folder), (folder / "sae_weights.safetensors").stat().st_mtime)
    check_fits(model, sae)
except (ValueError, OSError) as err:
    st.error(f"Cannot open SAE {name} of run {source} on run {current}: {err}")
    st.stop()
trained = cfg_json.get("sandbox", {})
kind = "transcoder" if sae.cfg.is_transcoder else f"{sae.cfg.kind} SAE"
st.caption(
    f"{kind}: {sae.cfg.d_in} -> {sae.cfg.width} features at `{sae.cfg.hook_name}`"
    + (f" -> `{sae.cfg.hook_name_out}`" if sae.cfg.is_transcoder else "")
    + (
        f"; trained on run {trained.get('run')} at step {trained.get('step')}"
        if trained.get("step") is not None
        else ""
    )
)
evaluation = trained.get("evaluation")
if evaluation:
    cols = st.columns(4)
    cols[0].metric("L0", f"{evaluation['l0']:.2f}")
    cols[1].metric("explained variance", f"{evaluation['explained_variance']:.3f}")
    cols[2].metric("dead features", evaluation["dead"])
    if evaluation.get("loss_recovered") is not None:
        cols[3].metric("loss recovered", f"{evaluation['loss_recovered']:.3f}")

key = (*ctx.key, str(folder), sae.cfg.hook_name)
try:
    data = task_tokens(run.task, ctx.key[:1])
except (OSError, ValueError) as err:
    st.info(f"Feature pages need the task's test data, which cannot be read here: {err}")
    st.stop()
codes = codes_of(model, sae, data, key)
frequency = feature_frequency(codes)
table = {"feature": list(range(sae.cfg.width)), "frequency": [round(f, 5) for f in frequency.tolist()]}
matches = []
if run.config["task"]["name"] in KNOWN_TASKS:
    matches = matches_of(model, sae, run.task, key)
    best = torch.stack([m.accuracy - m.chance for m in matches])  # [variable, width]: above chance
    which = best.argmax(0)
    table["best variable"] = [matches[int(i)].name for i in which]
    table["accuracy"] = [round(float(matches[int(i)].accuracy[f]), 4) for f, i in enumerate(which)]
    table["above chance"] = [round(float(best[int(i), f]), 4) for f, i in enumerate(which)]
sorts = SORTS if matches else ("frequency", "index")
if st.session_state.get("sae_sort") not in sorts:
    st.session_state["sae_sort"] = "frequency"
order = st.radio("Sort features by", sorts, key="sae_sort", horizontal=True)
frame = pd.DataFrame(table)
if order == "frequency":
    frame = frame.sort_values("frequency", ascending=False, kind="stable")
elif order == "match to a known variable":
    frame = frame.sort_values("above chance", ascending=False, kind="stable")
st.dataframe(frame.head(50), hide_index=True, key="sae_feature_table")
if matches:
    st.caption(
        "Best single-feature probe per known variable: "
        + "; ".join(f"{m.name} f{m.best_feature} {m.best_accuracy:.3f} (chance {m.chance:.3f})" for m in matches)
    )

if st.session_state.get("sae_feature") not in range(sae.cfg.width):
    st.session_state["sae_feature"] = int(frame["feature"].iloc[0])
feature = st.number_input("Feature", 0, sae.cfg.width - 1, step=1, key="sae_feature")
st.subheader(f"Feature {feature}")
top = top_examples(codes, feature, k=8)
if top.values.numel() == 0:
    st.info(f"Feature {feature} never fires on the task's test data (a dead feature).")
else:
    st.markdown("**Top activating examples** (the highlighted token is where it fires)")
    lines = [
        f"{value:.3f} &nbsp; " + highlighted(run.tokenizer.token_strs(data[row]), pos, value)
        for row, pos, value in zip(top.rows.tolist(), top.positions.tolist(), top.values.tolist())
    ]
    st.markdown("<br>".join(lines), unsafe_allow_html=True)
left, right = st.columns(2)
left.plotly_chart(activation_histogram(codes[..., feature].flatten(), feature), key="sae_histogram")
if sae.cfg.is_transcoder:
    right.info("A transcoder's features write at its output hook; logit effects and steering are for SAEs.")
    st.stop()
scale = float(top.values[0]) if top.values.numel() else 1.0
effect = logit_effect(model, sae, feature, data[:64], scale)
right.plotly_chart(logit_effect_figure(effect, run.tokenizer.vocab), key="sae_logit_effect")

st.subheader("Edit the prompt's forward pass")
st.caption(
    f"Ablating removes the feature's part (its code times its decoder direction) at `{sae.cfg.hook_name}`; "
    "steering adds a multiple of its decoder direction at every position. Shown: the last position's prediction."
)
if "sae_alpha" not in st.session_state:
    st.session_state["sae_alpha"] = round(scale, 3)
a, b, c = st.columns([2, 1, 1])
alpha = a.number_input("Steering multiple", key="sae_alpha")
edited = None
if b.button("Ablate the feature", key="sae_ablate"):
    edited, what = ablated_logits(model, sae, feature, ctx.tokens), "ablated"
if c.button("Steer with the feature", key="sae_steer"):
    edited, what = steered_logits(model, sae, feature, float(alpha), ctx.tokens), f"steered x{alpha:g}"
if edited is not None:
    rows = prediction_change(ctx.logits[0, -1], edited[0, -1])
    st.markdown(f"**Prediction at {html.escape(ctx.labels[-1])}, clean and {what}**")
    st.dataframe(
        {
            "token": [run.tokenizer.vocab[i] for i, _, _ in rows],
            "p clean": [round(p, 4) for _, p, _ in rows],
            f"p {what}": [round(p, 4) for _, _, p in rows],
        },
        hide_index=True,
        key="sae_prediction",
    )
