"""Information flow: the routes graph (tokens across, layers up); click a node for the heads or neurons behind it."""

import streamlit as st
import torch

from probes.information_flow import TAU, FlowGraph, flow_figure, head_importance_map, information_flow
from views.common import page_context
from views.figures import matrix_figure


@st.cache_resource(max_entries=64, show_spinner=False)
def routes(_model, key: tuple, tokens: tuple[int, ...], target: int, tau: float) -> FlowGraph:
    """The routes of one prompt on one checkpoint (`key` stands for the model in the cache key)."""
    return information_flow(_model, torch.tensor([tokens]), target_pos=target, tau=tau)


st.title("Information flow")
ctx = page_context()
if ctx is None:
    st.stop()
model, n = ctx.run.model, ctx.tokens.shape[1]
strs = ctx.run.tokenizer.token_strs(ctx.tokens[0])

left, right = st.columns(2)
if st.session_state.get("flow_target") not in range(n):
    st.session_state["flow_target"] = n - 1
target = left.selectbox(
    "Target position (routes into its prediction)", range(n), key="flow_target", format_func=lambda i: ctx.labels[i]
)
st.session_state.setdefault("flow_threshold", TAU)
tau = right.slider("Threshold tau (edges below it are dropped)", 0.0, 0.2, step=0.01, key="flow_threshold")
graph = routes(model, ctx.key, tuple(ctx.tokens[0].tolist()), int(target), float(tau))

n_attn = sum(e.kind == "attn" for e in graph.edges)
st.caption(
    f"{len(graph.nodes)} nodes and {len(graph.edges)} edges ({n_attn} attention edges) on the routes into "
    f"position {ctx.labels[target]}. Click a node to see the heads or neurons behind it."
)
event = st.plotly_chart(flow_figure(graph, strs), key="flow_chart", on_select="rerun", selection_mode="points")
points = [p for p in (event.selection.points if event else []) if p.get("customdata")]
if points:
    index, layer, pos, kind = points[0]["customdata"][:4]
    if kind == "edge":  # an edge's midpoint marker: remember the edge by its two ends
        e = graph.edges[int(index)]
        ends = [graph.nodes[e.src], graph.nodes[e.dst]]
        st.session_state["flow_pick"] = {"edge": [{"layer": v.layer, "pos": v.pos, "kind": v.kind} for v in ends]}
    else:
        st.session_state["flow_pick"] = {"layer": int(layer), "pos": int(pos), "kind": str(kind)}

pick = st.session_state.get("flow_pick")
if not pick:
    st.stop()
try:
    if "edge" in pick:
        src, dst = (graph.node_index(v["layer"], v["pos"], v["kind"]) for v in pick["edge"])
        chosen = [i for i, e in enumerate(graph.edges) if (e.src, e.dst) == (src, dst)]
        if not chosen:
            raise KeyError("that edge is below the threshold now")
        edge = graph.edges[chosen[0]]
        # an MLP edge is explained by the MLP node's neurons, an attention edge by its heads
        picked = edge.src if graph.nodes[edge.src].kind == "mlp" else edge.dst
    else:
        chosen = None
        picked = graph.node_index(pick["layer"], pick["pos"], pick["kind"])
except KeyError as err:
    st.info(f"The node or edge picked before is not on these routes: {err}")
    st.stop()
node = graph.nodes[picked]
if chosen is not None:
    e = graph.edges[chosen[0]]
    st.subheader(
        f"Edge {graph.nodes[e.src].label} -> {graph.nodes[e.dst].label} ({e.kind}, importance {e.importance:.3f})"
    )
else:
    st.subheader(f"Behind {node.label} ({ctx.labels[node.pos]})")

if node.kind == "mlp":
    contrib = graph.neuron_contributions[picked]
    top = contrib.topk(min(10, contrib.numel()))
    st.dataframe(
        {
            "neuron": [f"L{node.layer}N{i}" for i in top.indices.tolist()],
            "importance": [round(v, 4) for v in top.values.tolist()],
        },
        hide_index=True,
        key="flow_neurons",
    )
    st.stop()
if node.kind in ("b_O", "b_out"):
    st.write("An output bias: a constant part of the stream, with no heads or neurons behind it.")
    st.stop()

if chosen is not None and graph.edges[chosen[0]].kind in ("resid", "bias"):
    st.write("A residual or bias edge: the stream carried forward, with no heads or neurons behind it.")
    st.stop()
edges = (
    chosen
    if chosen is not None
    else [i for i, e in enumerate(graph.edges) if e.kind == "attn" and picked in (e.src, e.dst)]
)
if not edges:
    st.write("No attention edge on these routes touches this node; lower the threshold to see more.")
    st.stop()
rows = []
for i in edges:
    e = graph.edges[i]
    src, dst = graph.nodes[e.src], graph.nodes[e.dst]
    heads = graph.head_contributions[i]
    rows.append(
        {
            "edge": f"{ctx.labels[src.pos]} -> {ctx.labels[dst.pos]}",
            "layer": src.layer,
            "importance": round(e.importance, 4),
            "top head": f"L{src.layer}H{int(heads.argmax())}",
            **{f"H{h}": round(float(v), 4) for h, v in enumerate(heads.tolist())},
        }
    )
st.dataframe(rows, hide_index=True, key="flow_heads")

first = graph.edges[edges[0]]
layer = graph.nodes[first.src].layer
best = f"L{layer}H{int(graph.head_contributions[edges[0]].argmax())}"
head_labels = [f"L{layer}H{h}" for h in range(model.cfg.n_heads)]
head = st.radio("Head", head_labels, index=head_labels.index(best), horizontal=True, key="flow_head")
h = head_labels.index(head)
a, b = st.columns(2)
pattern = ctx.cache[f"blocks.{layer}.attn.hook_pattern"][0, h]
a.plotly_chart(matrix_figure(pattern, ctx.labels, ctx.labels, f"{head} attention pattern", 0, 1), key="flow_pattern")
imp = head_importance_map(model, ctx.cache, layer, h)
b.plotly_chart(
    matrix_figure(imp, ctx.labels, ctx.labels, f"{head} contribution (flow importance)", 0, None, colorscale="Oranges"),
    key="flow_contrib",
)
