"""Attention heads: one head's pattern at full size, a grid of all heads, a text view, the head scores, QK and OV circuits."""

import html

import streamlit as st
import torch

from probes.head_scores import SCORE_NAMES, head_scores, head_scores_figure, score_batch
from probes.token_circuits import circuit_figure, copying_score, ov_circuit, qk_circuit
from views.common import compare_checkpoint, download, page_context
from views.figures import matrix_figure

SCORE_HELP = (
    "Each score is a mean of the head's attention pattern on 16 random sequences [BOS] + r + r: "
    "previous_token = mean pattern[q, q-1]; current_token = mean pattern[q, q]; first_token = mean pattern[q, 0]; "
    "induction = mean pattern[q, q-n+1] over the second copy (attending to the token after the earlier copy of "
    "the current one); duplicate_token = mean pattern[q, q-n] over the second copy. A head 'is' one above 0.4."
)
COPYING_HELP = (
    "Sum of the real parts of the OV circuit's eigenvalues over the sum of their absolute values, in [-1, 1]: "
    "near 1 the head writes the token it attends to (copies), near -1 it suppresses it."
)


@st.cache_resource(max_entries=32, show_spinner=False)
def scores_of(_model, _tokenizer, key: tuple) -> tuple[dict[str, torch.Tensor], int] | None:
    """The head scores of one checkpoint and the r length they used; None when the context is too short."""
    scored = score_batch(_tokenizer.vocab, _model.cfg.n_ctx)
    return None if scored is None else (head_scores(_model, *scored), scored[1])


def text_view(strs: list[str], pattern: torch.Tensor, key: str) -> None:
    """The prompt as text; hovering a token shades each earlier token by how much the head attends to it from there.

    Pure CSS (`:has(:hover)`), one rule per query and key, so it works without scripts; each token's tooltip
    names the three keys it attends to most.
    """
    n = len(strs)
    rules, spans = [], []
    for q in range(n):
        top = pattern[q].topk(min(3, n))
        tip = ", ".join(f"{k}:{strs[k]} {w:.2f}" for k, w in zip(top.indices.tolist(), top.values.tolist()))
        spans.append(
            f'<span class="t q{q}" title="{html.escape(f"{q}:{strs[q]} attends to {tip}")}">{html.escape(strs[q])}</span>'
        )
        for k in range(q + 1):
            w = float(pattern[q, k])
            if w >= 0.01:
                rules.append(f"#{key}:has(.q{q}:hover) .q{k}{{background:rgba(37,99,235,{w:.2f})}}")
    style = (
        f"#{key} .t{{padding:2px 3px;margin:1px;border-radius:3px;display:inline-block;font-family:monospace;"
        f"border:1px solid #ddd;cursor:default}}#{key} .t:hover{{outline:2px solid #c53030}}" + "".join(rules)
    )
    st.html(f'<style>{style}</style><div id="{key}" data-testid="attention-text">{"".join(spans)}</div>')


st.title("Attention heads")
st.caption(
    "Where each head looks on the prompt (rows: the query position, columns: the key it reads from, each row sums "
    "to 1), how heads score on standard patterns, and what a head's QK (where to look) and OV (what to write) "
    "circuits do in token space."
)
ctx = page_context()
if ctx is None:
    st.stop()
model, cfg, tok = ctx.run.model, ctx.run.model.cfg, ctx.run.tokenizer
labels = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
strs = tok.token_strs(ctx.tokens[0])

if st.session_state.get("head") not in labels:
    st.session_state["head"] = labels[-1]
head = st.selectbox("Head", labels, key="head", help="The head the full-size pattern, text view and circuits show.")
layer, h = labels.index(head) // cfg.n_heads, labels.index(head) % cfg.n_heads
pattern = ctx.cache[f"blocks.{layer}.attn.hook_pattern"][0]


def full_pattern(z: torch.Tensor, title: str):
    fig = matrix_figure(z, ctx.labels, ctx.labels, title, 0, 1, x_title="key position", y_title="query position")
    fig.update_xaxes(dtick=1, tickangle=-60)  # every token labelled, however many
    fig.update_yaxes(dtick=1)
    fig.update_layout(height=max(420, 18 * len(ctx.labels) + 160))
    return fig


other = compare_checkpoint(ctx, "heads_compare")
if other is not None:
    a, b = st.columns(2)
    a.plotly_chart(full_pattern(pattern[h], f"{head} attention pattern, step {ctx.key[1]}"), key="heads_pattern_big")
    pattern_b = other.cache[f"blocks.{layer}.attn.hook_pattern"][0, h]
    b.plotly_chart(full_pattern(pattern_b, f"{head} attention pattern, step {other.key[1]}"), key="heads_pattern_b")
    download(
        "Download both patterns (JSON)",
        {"tokens": ctx.labels, f"step {ctx.key[1]}": pattern[h], f"step {other.key[1]}": pattern_b},
        f"{head}_patterns",
        "heads_pattern_download",
    )
    big, text = st.columns([3, 2])
else:
    big, text = st.columns([3, 2])
    big.plotly_chart(full_pattern(pattern[h], f"{head} attention pattern"), key="heads_pattern_big")
    download(
        "Download this pattern (JSON)",
        {"tokens": ctx.labels, "step": ctx.key[1], "pattern": pattern[h]},
        f"{head}_pattern",
        "heads_pattern_download",
        big,
    )
text.markdown(f"**{head} as text**: hover a token to shade the tokens it attends to.")
with text:
    text_view(strs, pattern[h], f"attn-{layer}-{h}")

st.subheader("All heads on the prompt")
st.caption("Pick one above to see it at full size. Rows: query position; columns: key position.")
for layer_i, tab in enumerate(st.tabs([f"layer {l}" for l in range(cfg.n_layers)])):
    grid = ctx.cache[f"blocks.{layer_i}.attn.hook_pattern"][0]
    cols = tab.columns(min(cfg.n_heads, 4))
    for hi in range(cfg.n_heads):
        thumb = matrix_figure(grid[hi], ctx.labels, ctx.labels, f"L{layer_i}H{hi}", 0, 1)
        thumb.update_layout(height=260, margin=dict(t=30, b=10, l=10, r=10))
        thumb.update_traces(showscale=False)
        thumb.update_xaxes(showticklabels=False, title=None)
        thumb.update_yaxes(showticklabels=False, title=None)
        cols[hi % len(cols)].plotly_chart(thumb, key=f"heads_pattern_{layer_i}_{hi}")

scored = scores_of(model, tok, ctx.key)
st.subheader("Head scores")
if scored is None:
    st.caption("The context is too short for [BOS] + r + r with r of 4 tokens, so no head scores.")
else:
    scores, n = scored
    # the scores read a head on random repeated tokens: the induction task's own setting, elsewhere only a hint
    native = ctx.run.task.name == "induction"
    where = (
        st.container()
        if native
        else st.expander(
            f"On random repeated tokens, which task {ctx.run.task.name!r} never shows: a hint only", expanded=False
        )
    )
    where.caption(
        f"On 16 sequences [BOS] + r + r with r of {n} random tokens, not on the prompt. A head 'is' one of these "
        "above 0.4."
    )
    where.dataframe(
        {"head": labels, **{s: [round(float(v), 4) for v in scores[s].flatten()] for s in SCORE_NAMES}}, hide_index=True
    )
    st.session_state.setdefault("heads_score", "induction" if native else "previous_token")
    which = where.selectbox("Score to map", SCORE_NAMES, key="heads_score", help=SCORE_HELP)
    scored_b = scores_of(other.run.model, tok, other.key) if other is not None else None
    if scored_b is None:
        where.plotly_chart(head_scores_figure(scores[which], f"{which} score"), key="heads_scores_fig")
    else:
        a, b = where.columns(2)
        a.plotly_chart(head_scores_figure(scores[which], f"{which} score, step {ctx.key[1]}"), key="heads_scores_fig")
        b.plotly_chart(
            head_scores_figure(scored_b[0][which], f"{which} score, step {other.key[1]}"), key="heads_scores_fig_b"
        )
    download(
        "Download the head scores (JSON)",
        {"heads": labels, "step": ctx.key[1], **{s: scores[s].flatten() for s in SCORE_NAMES}},
        "head_scores",
        "heads_scores_download",
        where,
    )

st.subheader(f"Circuits of {head} (token space)")
ov = ov_circuit(model, layer, h)
st.metric(f"{head} copying score (OV eigenvalues)", f"{copying_score(ov):.4f}", help=COPYING_HELP)
in_prompt = list(dict.fromkeys(ctx.tokens[0].tolist()))
shown = st.radio(
    "Tokens shown",
    ["in the prompt", "all"],
    horizontal=True,
    key="heads_circuit_tokens",
    help=f"The full matrices are {cfg.d_vocab} x {cfg.d_vocab}; the prompt's {len(in_prompt)} distinct tokens "
    "are the rows and columns that matter for this prompt.",
)
keep = in_prompt if shown == "in the prompt" else None
a, b = st.columns(2)
a.plotly_chart(
    circuit_figure(qk_circuit(model, layer, h), tok.vocab, f"{head} QK circuit", "key token", "query token", keep),
    key="heads_qk",
)
b.plotly_chart(
    circuit_figure(ov, tok.vocab, f"{head} OV circuit", "output token", "source token", keep), key="heads_ov"
)
download(
    "Download the QK and OV circuits (JSON)",
    {"tokens": [tok.vocab[i] for i in (keep or range(cfg.d_vocab))], "qk": qk_circuit(model, layer, h), "ov": ov}
    if keep is None
    else {
        "tokens": [tok.vocab[i] for i in keep],
        "qk": qk_circuit(model, layer, h)[keep][:, keep],
        "ov": ov[keep][:, keep],
    },
    f"{head}_circuits",
    "heads_circuits_download",
)
