"""Neurons: the most active neurons at a position, one neuron over the prompt, its top examples, its logit effect."""

import plotly.graph_objects as go
import streamlit as st

from blocks.tasks.common import dataset_tensors
from probes.neurons import neuron_logit_effects, neuron_logit_figure, top_activating_examples, top_examples_figure
from views.common import download, page_context


@st.cache_resource(max_entries=8, show_spinner="Reading the task's test data...")
def task_tokens(_task, key: tuple):
    """The task's test split as a [rows, pos] tensor (`key` names the run)."""
    return dataset_tensors(_task.dataset("test"))[0][:256]


@st.cache_resource(max_entries=64, show_spinner=False)
def top_examples(_model, _task, key: tuple, layer: int, neuron: int, k: int = 8):
    return top_activating_examples(_model, task_tokens(_task, key[:1]), layer, neuron, k=k)


@st.cache_resource(max_entries=32, show_spinner=False)
def logit_effects(_model, _task, key: tuple, layer: int):
    return neuron_logit_effects(_model, layer, task_tokens(_task, key[:1])[:64])


st.title("Neurons")
st.caption(
    "What the MLP neurons of one layer do on the prompt: the most active at a position, one neuron across the "
    "prompt, the task sequences that excite it most, and the tokens its output pushes up and down directly."
)
ctx = page_context()
if ctx is None:
    st.stop()
model, cfg, run = ctx.run.model, ctx.run.model.cfg, ctx.run
if cfg.attn_only:
    st.info("This model is attention-only: it has no MLP neurons. Open a run trained with MLPs.")
    st.stop()
n = ctx.tokens.shape[1]

a, b = st.columns(2)
if st.session_state.get("neuron_layer") not in range(cfg.n_layers):
    st.session_state["neuron_layer"] = cfg.n_layers - 1
layer = a.selectbox("Layer", range(cfg.n_layers), key="neuron_layer")
if st.session_state.get("neuron_pos") not in range(n):
    st.session_state["neuron_pos"] = n - 1
pos = b.selectbox("Position", range(n), key="neuron_pos", format_func=lambda i: ctx.labels[i])

post = ctx.cache[f"blocks.{layer}.mlp.hook_post"][0]  # pos d_mlp
top = post[pos].topk(min(10, cfg.d_mlp))
st.subheader(f"Most active neurons at {ctx.labels[pos]}")
st.dataframe(
    {
        "neuron": [f"L{layer}N{i}" for i in top.indices.tolist()],
        "activation": [round(v, 4) for v in top.values.tolist()],
    },
    hide_index=True,
)

if st.session_state.get("neuron") not in range(cfg.d_mlp):
    st.session_state["neuron"] = int(top.indices[0])
neuron = st.number_input("Neuron", 0, cfg.d_mlp - 1, step=1, key="neuron")
acts = post[:, neuron]
fig = go.Figure(go.Bar(x=ctx.labels, y=acts.tolist(), hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
fig.update_layout(
    title=f"L{layer}N{neuron} over the prompt", xaxis_title="position", yaxis_title="activation", height=320
)
fig.update_xaxes(type="category")
st.plotly_chart(fig, key="neuron_over_prompt")

left, right = st.columns(2)
try:
    data = task_tokens(run.task, ctx.key[:1])
except (OSError, ValueError) as err:  # a text run opened where its source text is not: the rest still works
    st.info(f"Top examples and logit effects need the task's test data, which cannot be read here: {err}")
else:
    examples = top_examples(model, run.task, ctx.key, layer, neuron)
    left.plotly_chart(top_examples_figure(examples, data, run.tokenizer.vocab), key="neuron_top_examples")
    effects = logit_effects(model, run.task, ctx.key, layer)
    right.plotly_chart(neuron_logit_figure(effects, neuron, run.tokenizer.vocab), key="neuron_logits")
    download(
        "Download its logit effects (JSON)",
        {"neuron": f"L{layer}N{neuron}", "tokens": run.tokenizer.vocab, "effect": effects[neuron]},
        f"L{layer}N{neuron}_logit_effects",
        "neuron_logits_download",
        right,
    )
