"""Ablate and patch: knock out heads or neurons and see the prediction and loss change; patch heads between two prompts."""

import plotly.graph_objects as go
import streamlit as st
import torch

from blocks.tasks.base import UnknownTokenError
from blocks.tasks.common import dataset_tensors
from probes.ablation import head_ablation, neuron_ablation, run_ablated
from probes.patching import logit_diff_metric, patch_heads, patching_figure
from views.common import page_context
from views.history import prompt_losses


@st.cache_resource(max_entries=8, show_spinner=False)
def reference_tokens(_task, key: tuple) -> torch.Tensor:
    """64 rows of the task's test split: the batch mean ablation averages over."""
    return dataset_tensors(_task.dataset("test"))[0][:64]


def parse(label: str, letter: str) -> tuple[int, int]:
    layer, index = label[1:].split(letter)
    return int(layer), int(index)


st.title("Ablate and patch")
ctx = page_context()
if ctx is None:
    st.stop()
model, cfg, tok = ctx.run.model, ctx.run.model.cfg, ctx.run.tokenizer
head_labels = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
neuron_labels = [] if cfg.attn_only else [f"L{l}N{n}" for l in range(cfg.n_layers) for n in range(cfg.d_mlp)]

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
st.session_state.setdefault("ablate_mode", "zero")
mode = c.radio("Replace with", ["zero", "mean"], key="ablate_mode")
ref = reference_tokens(ctx.run.task, ctx.key[:1]) if mode == "mean" else None
if ref is not None and ref.shape[1] < ctx.tokens.shape[1]:
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
clean_nll, ablated_nll = prompt_losses(clean, ctx.tokens)[0], prompt_losses(ablated, ctx.tokens)[0]
p_clean, p_ablated = clean[0, -1].softmax(-1), ablated[0, -1].softmax(-1)
top_clean, top_ablated = int(p_clean.argmax()), int(p_ablated.argmax())

m1, m2, m3 = st.columns(3)
m1.metric(
    "Prediction after the last token",
    tok.vocab[top_ablated],
    delta=None if top_ablated == top_clean else f"was {tok.vocab[top_clean]}",
    delta_color="off",
)
m2.metric(
    "Its probability",
    f"{float(p_ablated[top_ablated]):.4f}",
    delta=f"{float(p_ablated[top_ablated] - p_clean[top_ablated]):+.4f}",
)
if clean_nll.numel():
    m3.metric(
        "Mean next-token loss on the prompt",
        f"{float(ablated_nll.mean()):.4f}",
        delta=f"{float(ablated_nll.mean() - clean_nll.mean()):+.4f}",
        delta_color="inverse",
    )
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
        title="loss of predicting the next token, per position",
        barmode="group",
        height=340,
        xaxis_title="position",
        yaxis_title="nats",
    )
    fig.update_xaxes(type="category")
    st.plotly_chart(fig, key="ablate_losses")

st.subheader("Patch: which heads carry the difference between two prompts")
st.caption(
    "Run a corrupted prompt with one head's output (all positions) taken from the clean prompt above; "
    "1 means that head alone restores the clean logit difference, 0 that it changes nothing."
)
if "patch_corrupted" not in st.session_state:
    seed = st.session_state.get("example_seed", 0) + 1000
    st.session_state["patch_corrupted"] = tok.decode(ctx.run.task.example(seed))
corrupted_text = st.text_area("Corrupted prompt (same number of tokens)", key="patch_corrupted", height=70)
try:
    corrupted = torch.tensor([tok.encode(corrupted_text)])
except UnknownTokenError as err:
    st.error(f"The corrupted prompt holds unknown tokens: {err}")
    st.stop()
if corrupted.shape != ctx.tokens.shape:
    st.info(
        f"The corrupted prompt has {corrupted.shape[1]} tokens and the clean one {ctx.tokens.shape[1]}; "
        "patching needs the same length."
    )
    st.stop()
answer = top_clean
with torch.no_grad():
    wrong = int(model(corrupted)[0, -1].argmax())
if wrong == answer:
    wrong = int(p_clean.topk(2).indices[1])
result = patch_heads(model, ctx.tokens, corrupted, logit_diff_metric(answer, wrong))
st.markdown(
    f"Metric: logit of **{tok.vocab[answer]}** minus logit of **{tok.vocab[wrong]}** after the last token: "
    f"clean {result.clean:.4f}, corrupted {result.corrupted:.4f}."
)
if result.clean == result.corrupted:
    st.info("The two prompts give the same logit difference, so there is nothing to restore.")
else:
    st.plotly_chart(patching_figure(result), key="patch_fig")
