"""Logit lens and attribution: the top tokens after each layer, and each component's direct push toward a token."""

import streamlit as st

from probes.logit_lens import direct_logit_attribution, logit_attribution_figure, logit_lens, logit_lens_figure
from views.common import download, page_context

st.title("Logit lens and attribution")
st.caption(
    "The logit lens reads the residual stream after each layer through the final LayerNorm and unembedding: which "
    "tokens it would predict there. Attribution splits the target token's logit into each component's direct part."
)
ctx = page_context()
if ctx is None:
    st.stop()
model, tok = ctx.run.model, ctx.run.tokenizer
n = ctx.tokens.shape[1]

a, b = st.columns(2)
if st.session_state.get("lens_pos") not in range(n):
    st.session_state["lens_pos"] = n - 1
pos = a.selectbox("Position", range(n), key="lens_pos", format_func=lambda i: ctx.labels[i])
predicted = int(ctx.logits[0, pos].argmax())
if st.session_state.get("lens_target") not in tok.vocab:
    st.session_state["lens_target"] = tok.vocab[predicted]
target_str = b.selectbox("Target token", tok.vocab, key="lens_target")
target = tok.vocab.index(target_str)
probs = ctx.logits[0, pos].softmax(-1)
st.markdown(
    f"The model predicts **{tok.vocab[predicted]}** after {ctx.labels[pos]} "
    f"(p = {float(probs[predicted]):.3f}); the target **{target_str}** has p = {float(probs[target]):.3f}."
)

lens = logit_lens(model, ctx.tokens, k=3, target=target)
st.plotly_chart(logit_lens_figure(lens, tok.token_strs(ctx.tokens[0]), tok.vocab), key="lens_fig")
download(
    "Download the lens (JSON)",
    {
        "streams": lens.labels,
        "prompt": tok.token_strs(ctx.tokens[0]),
        "target": target_str,
        "top_tokens": [[[tok.vocab[int(t)] for t in row] for row in stream] for stream in lens.top_tokens],
        "top_probs": lens.top_probs,
        "target_probs": lens.target_probs,
    },
    "logit_lens",
    "lens_download",
)
st.dataframe(
    {
        "stream": lens.labels,
        "top token": [tok.vocab[int(t)] for t in lens.top_tokens[:, pos, 0]],
        "top p": [round(float(p), 4) for p in lens.top_probs[:, pos, 0]],
        "target p": [round(float(p), 4) for p in lens.target_probs[:, pos]],
    },
    hide_index=True,
)

attribution = direct_logit_attribution(model, ctx.tokens, target, pos=pos)
st.plotly_chart(
    logit_attribution_figure(attribution, f"direct logit attribution to {target_str!r} at {ctx.labels[pos]}"),
    key="lens_dla",
)
st.caption(f"The parts add up to the logit of {target_str!r}: {attribution.total:.4f}.")
