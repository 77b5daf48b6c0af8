"""Attention heads: every head's pattern on the prompt, the head scores, and a chosen head's QK and OV circuits."""

import streamlit as st
import torch

from probes.head_scores import SCORE_NAMES, head_scores, head_scores_figure, score_batch
from probes.token_circuits import circuit_figure, copying_score, ov_circuit, qk_circuit
from views.common import page_context
from views.figures import matrix_figure


@st.cache_resource(max_entries=32, show_spinner=False)
def scores_of(_model, _tokenizer, key: tuple) -> tuple[dict[str, torch.Tensor], int] | None:
    """The head scores of one checkpoint and the r length they used; None when the context is too short."""
    scored = score_batch(_tokenizer.vocab, _model.cfg.n_ctx)
    return None if scored is None else (head_scores(_model, *scored), scored[1])


st.title("Attention heads")
ctx = page_context()
if ctx is None:
    st.stop()
model, cfg, tok = ctx.run.model, ctx.run.model.cfg, ctx.run.tokenizer
labels = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]

scored = scores_of(model, tok, ctx.key)
if scored is not None:
    scores, n = scored
    st.subheader("Head scores")
    st.caption(f"On 16 sequences [BOS] + r + r with r of {n} random tokens (a head 'is' one of these above 0.4).")
    st.dataframe(
        {"head": labels, **{s: [round(float(v), 4) for v in scores[s].flatten()] for s in SCORE_NAMES}}, hide_index=True
    )
    st.session_state.setdefault("heads_score", "induction")
    which = st.selectbox("Score to map", SCORE_NAMES, key="heads_score")
    st.plotly_chart(head_scores_figure(scores[which], f"{which} score"), key="heads_scores_fig")
else:
    st.caption("The context is too short for [BOS] + r + r with r of 4 tokens, so no head scores.")

st.subheader("Patterns on the prompt")
for layer, tab in enumerate(st.tabs([f"layer {l}" for l in range(cfg.n_layers)])):
    pattern = ctx.cache[f"blocks.{layer}.attn.hook_pattern"][0]
    cols = tab.columns(min(cfg.n_heads, 4))
    for h in range(cfg.n_heads):
        cols[h % len(cols)].plotly_chart(
            matrix_figure(pattern[h], ctx.labels, ctx.labels, f"L{layer}H{h}", 0, 1), key=f"heads_pattern_{layer}_{h}"
        )

st.subheader("Circuits of one head (token space)")
if st.session_state.get("head") not in labels:
    st.session_state["head"] = labels[-1]
head = st.selectbox("Head", labels, key="head")
layer, h = labels.index(head) // cfg.n_heads, labels.index(head) % cfg.n_heads
ov = ov_circuit(model, layer, h)
st.metric(f"{head} copying score (OV eigenvalues)", f"{copying_score(ov):.4f}")
a, b = st.columns(2)
a.plotly_chart(
    circuit_figure(qk_circuit(model, layer, h), tok.vocab, f"{head} QK circuit", "key token", "query token"),
    key="heads_qk",
)
b.plotly_chart(circuit_figure(ov, tok.vocab, f"{head} OV circuit", "output token", "source token"), key="heads_ov")
