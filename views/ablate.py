"""Ablate and patch: one experiment on one answer. Knock out heads or neurons, or patch clean activations into a
corrupted prompt, and read the logit difference and p(answer) clean, corrupted, ablated and patched."""

import plotly.graph_objects as go
import streamlit as st
import torch

from blocks.tasks.base import UnknownTokenError
from blocks.tasks.common import dataset_tensors
from probes.ablation import METHODS, head_ablation, neuron_ablation, run_ablated
from probes.patching import (
    answer_prob_metric,
    logit_diff_metric,
    patch_by_layer_pos,
    patch_heads,
    patch_heads_by_pos,
    patching_figure,
)
from views.common import download, page_context
from views.history import prompt_losses

PATCH_KINDS = {
    "head (all positions)": patch_heads,
    "head x position": patch_heads_by_pos,
    "residual stream x position": patch_by_layer_pos,
}
ABLATE_HELP = (
    "zero: the output set to 0. mean: replaced by its mean over 64 sequences of the task's test split, position by "
    "position. resample: replaced by its value on one of those sequences, drawn at random (seed 0)."
)


@st.cache_resource(max_entries=8, show_spinner=False)
def reference_tokens(_task, key: tuple) -> torch.Tensor:
    """64 rows of the task's test split: the batch mean and resample ablation draw from."""
    return dataset_tensors(_task.dataset("test"))[0][:64]


@st.cache_resource(max_entries=32, show_spinner="Patching...")
def patched(_model, key: tuple, kind: str, clean: tuple, corrupted: tuple, answer: int, wrong: int, pos: int):
    """The patching sweep of one kind under the logit difference and under p(answer), per (checkpoint, prompts)."""
    sweep = PATCH_KINDS[kind]
    c, k = torch.tensor([clean]), torch.tensor([corrupted])
    return sweep(_model, c, k, logit_diff_metric(answer, wrong, pos)), sweep(
        _model, c, k, answer_prob_metric(answer, pos)
    )


def parse(label: str, letter: str) -> tuple[int, int]:
    layer, index = label[1:].split(letter)
    return int(layer), int(index)


def delta(now: float, before: float) -> str | None:
    """A metric's change, or None (no arrow) when it rounds to zero at the precision shown."""
    text = f"{now - before:+.4f}"
    return None if float(text) == 0 else text


st.title("Ablate and patch")
st.caption(
    "Choose the answer the model should give after one position and a wrong token to compare it with. Ablation "
    "removes heads or neurons on the prompt; patching runs a corrupted prompt with one piece of the clean run put back."
)
ctx = page_context()
if ctx is None:
    st.stop()
model, cfg, tok = ctx.run.model, ctx.run.model.cfg, ctx.run.tokenizer
n, ids = ctx.tokens.shape[1], ctx.tokens[0].tolist()
head_labels = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
neuron_labels = [] if cfg.attn_only else [f"L{l}N{n}" for l in range(cfg.n_layers) for n in range(cfg.d_mlp)]

# -- the experiment: which prediction, which answer, which wrong token --------------------------------------------
st.subheader("The prediction measured")
if st.session_state.get("ablate_pos") not in range(n):
    st.session_state["ablate_pos"] = n - 1
a, b, c = st.columns(3)
pos = a.selectbox(
    "After position",
    range(n),
    key="ablate_pos",
    format_func=lambda i: ctx.labels[i],
    help="the prediction of the next token",
)
p_clean = ctx.logits[0, pos].softmax(-1)
ranked = p_clean.argsort(descending=True).tolist()
if st.session_state.get("ablate_answer") not in tok.vocab:
    # the prompt's own next token where it has one, else the model's prediction
    st.session_state["ablate_answer"] = tok.vocab[ids[pos + 1] if pos + 1 < n else ranked[0]]
answer_str = b.selectbox("Answer", tok.vocab, key="ablate_answer")
answer = tok.vocab.index(answer_str)
if st.session_state.get("ablate_wrong") not in tok.vocab or st.session_state["ablate_wrong"] == answer_str:
    st.session_state["ablate_wrong"] = tok.vocab[next(t for t in ranked if t != answer)]
wrong_str = c.selectbox(
    "Wrong token", tok.vocab, key="ablate_wrong", help="logit difference = logit[answer] - logit[wrong token]"
)
wrong = tok.vocab.index(wrong_str)
if wrong == answer:
    st.error("The answer and the wrong token are the same token; pick two different ones.")
    st.stop()
diff_metric, prob_metric = logit_diff_metric(answer, wrong, pos), answer_prob_metric(answer, pos)

# -- ablation ------------------------------------------------------------------------------------------------------
st.subheader("Ablate")
for key, valid in (("ablate_heads", head_labels), ("ablate_neurons", neuron_labels)):
    bad = [x for x in st.session_state.get(key, []) if x not in valid]
    if bad:
        st.warning(f"Ignoring {bad}: this model's choices look like {valid[:3]}.")
        st.session_state[key] = [x for x in st.session_state[key] if x in valid]
a, b, c = st.columns([2, 2, 1])
heads = a.multiselect("Heads to ablate", head_labels, key="ablate_heads")
neurons = b.multiselect(
    "Neurons to ablate",
    neuron_labels,
    key="ablate_neurons",
    disabled=cfg.attn_only,
    help="attention-only model: no neurons" if cfg.attn_only else None,
)
if st.session_state.get("ablate_mode") not in METHODS:
    st.session_state["ablate_mode"] = "zero"
mode = c.radio("Replace with", METHODS, key="ablate_mode", help=ABLATE_HELP)
ref = None
if mode != "zero":
    try:
        ref = reference_tokens(ctx.run.task, ctx.key[:1])
    except (OSError, ValueError) as err:  # a text run whose source is gone: zero ablation still works
        st.warning(f"The task's test data cannot be read here ({err}); using zero ablation.")
        mode = "zero"
if ref is not None and ref.shape[1] < n:
    st.warning(f"The task's sequences ({ref.shape[1]} tokens) are shorter than the prompt; using zero ablation.")
    mode, ref = "zero", None

ablations = []
for layer in range(cfg.n_layers):
    hs = [parse(x, "H")[1] for x in heads if parse(x, "H")[0] == layer]
    if hs:
        ablations.append(head_ablation(model, layer, hs, mode, ref))
    ns = [parse(x, "N")[1] for x in neurons if parse(x, "N")[0] == layer]
    if ns:
        ablations.append(neuron_ablation(model, layer, ns, mode, ref))

clean = ctx.logits
ablated = run_ablated(model, ctx.tokens, ablations) if ablations else clean
p_ablated = ablated[0, pos].softmax(-1)
top_clean, top_ablated = int(p_clean.argmax()), int(p_ablated.argmax())
diff_clean, diff_ablated = float(diff_metric(clean)), float(diff_metric(ablated))
prob_clean, prob_ablated = float(prob_metric(clean)), float(prob_metric(ablated))

m1, m2, m3, m4 = st.columns(4)
m1.metric(
    f"Prediction after {ctx.labels[pos]}",
    tok.vocab[top_ablated],
    delta=None if top_ablated == top_clean else f"was {tok.vocab[top_clean]}",
    delta_color="off",
)
m2.metric(f"p({answer_str})", f"{prob_ablated:.4f}", delta=delta(prob_ablated, prob_clean), help="clean -> ablated")
m3.metric(
    f"logit[{answer_str}] - logit[{wrong_str}]",
    f"{diff_ablated:.4f}",
    delta=delta(diff_ablated, diff_clean),
    help="clean -> ablated",
)
scored = ctx.run.task.scored_positions(ids)
clean_nll, ablated_nll = prompt_losses(clean, ctx.tokens)[0], prompt_losses(ablated, ctx.tokens)[0]
where = list(range(n - 1)) if scored is None else [t for t in scored if t < n - 1]
if where:
    loss_clean, loss_ablated = float(clean_nll[where].mean()), float(ablated_nll[where].mean())
    m4.metric(
        f"Mean loss on the {len(where)} scored position(s)",
        f"{loss_ablated:.4f}",
        delta=delta(loss_ablated, loss_clean),
        delta_color="inverse",
        help="next-token loss (nats) averaged over the positions the task's loss scores"
        + ("" if scored is None else "; the others are unpredictable by design"),
    )
else:
    m4.caption("The task scores no next token inside this prompt (its answer comes after it), so no loss is shown.")
st.caption(
    "Ablated: "
    + ("; ".join(x.description for x in ablations) if ablations else "nothing (pick heads or neurons above).")
)

if clean_nll.numel():
    fig = go.Figure(
        [
            go.Bar(x=ctx.labels[:-1], y=clean_nll.tolist(), name="clean"),
            go.Bar(x=ctx.labels[:-1], y=ablated_nll.tolist(), name="ablated"),
        ]
    )
    fig.update_layout(
        title="loss of predicting the next token, per position"
        + ("" if scored is None else f" (the task scores {len(where)} of them)"),
        barmode="group",
        height=340,
        xaxis_title="position (predicting the token after it)",
        yaxis_title="loss (nats)",
    )
    fig.update_xaxes(type="category")
    st.plotly_chart(fig, key="ablate_losses")

# -- patching ------------------------------------------------------------------------------------------------------
st.subheader("Patch: which parts carry the difference between two prompts")
st.caption(
    "Run the corrupted prompt with one piece of the clean run's activations put back; 1 means that piece alone "
    "restores the clean logit difference, 0 that it changes nothing. Each cell is labelled with that fraction."
)
minimal = ctx.run.task.corrupted_prompt(ids)
if "patch_corrupted" not in st.session_state:
    if minimal is not None:
        st.session_state["patch_corrupted"] = tok.decode(minimal)
    else:
        seed = st.session_state.get("example_seed", 0) + 1000
        st.session_state["patch_corrupted"] = tok.decode(ctx.run.task.example(seed))
if minimal is not None and st.button(
    "Use the task's minimal pair", help="the prompt with only what the task's own corruption changes rewritten"
):
    st.session_state["patch_corrupted"] = tok.decode(minimal)
corrupted_text = st.text_area("Corrupted prompt (same number of tokens)", key="patch_corrupted", height=70)
try:
    corrupted = torch.tensor([tok.encode(corrupted_text)])
except UnknownTokenError as err:
    st.error(f"The corrupted prompt holds unknown tokens: {err}")
    st.stop()
if corrupted.shape != ctx.tokens.shape:
    st.info(
        f"The corrupted prompt has {corrupted.shape[1]} tokens and the clean one {n}; patching needs the same length."
    )
    st.stop()
kind = st.radio("Patch", list(PATCH_KINDS), horizontal=True, key="patch_kind")
by_diff, by_prob = patched(model, ctx.key, kind, tuple(ids), tuple(corrupted[0].tolist()), answer, wrong, pos)
# the cell that moves the metric furthest toward the clean run's value
best = int(
    ((by_diff.values - by_diff.corrupted) * (1 if by_diff.clean >= by_diff.corrupted else -1)).flatten().argmax()
)
st.dataframe(
    {
        "run": ["clean", "corrupted", "patched (best cell)"],
        f"logit[{answer_str}] - logit[{wrong_str}]": [
            round(by_diff.clean, 4),
            round(by_diff.corrupted, 4),
            round(float(by_diff.values.flatten()[best]), 4),
        ],
        f"p({answer_str})": [
            round(by_prob.clean, 4),
            round(by_prob.corrupted, 4),
            round(float(by_prob.values.flatten()[best]), 4),
        ],
    },
    hide_index=True,
    key="patch_table",
)
if by_diff.clean == by_diff.corrupted:
    st.info("The two prompts give the same logit difference, so there is nothing to restore.")
else:
    st.plotly_chart(patching_figure(by_diff, tok.token_strs(ids)), key="patch_fig")
    download(
        "Download the patching results (JSON)",
        {
            "kind": kind,
            "axes": by_diff.axes,
            "prompt": tok.token_strs(ids),
            "corrupted": tok.token_strs(corrupted[0].tolist()),
            "answer": answer_str,
            "wrong": wrong_str,
            "position": pos,
            "logit_diff": {"clean": by_diff.clean, "corrupted": by_diff.corrupted, "patched": by_diff.values},
            "p_answer": {"clean": by_prob.clean, "corrupted": by_prob.corrupted, "patched": by_prob.values},
        },
        "patching",
        "patch_download",
    )
