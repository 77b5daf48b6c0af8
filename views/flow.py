"""Information flow: the routes graph (tokens across, layers up); click a node for the heads or neurons behind it."""

import streamlit as st
import torch

from probes.information_flow import TAU, FlowGraph, flow_figure, head_importance_map, information_flow
from views.common import compare_checkpoint, download, page_context
from views.figures import matrix_figure


@st.cache_resource(max_entries=64, show_spinner=False)
def routes(_model, key: tuple, tokens: tuple[int, ...], target: int, tau: float) -> FlowGraph:
    """The routes of one prompt on one checkpoint (`key` stands for the model in the cache key)."""
    return information_flow(_model, torch.tensor([tokens]), target_pos=target, tau=tau)


TAU_HELP = (
    "Each edge's importance is its share of what reaches its destination: the proximity of the part it carries to "
    "the destination's sum (1 - its distance, clipped at 0), over all parts. Routes keep the edges whose importance "
    "is at least tau, traced back from the target position's final stream; tau = 0 keeps every edge."
)

st.title("Information flow")
st.caption(
    "Which parts of the model carry information into one position's prediction: tokens across, layers up; a line is "
    "an edge whose importance is at least tau. Click a node or an edge's midpoint for the heads or neurons behind it."
)
ctx = page_context()
if ctx is None:
    st.stop()
model, n = ctx.run.model, ctx.tokens.shape[1]
strs = ctx.run.tokenizer.token_strs(ctx.tokens[0])

left, right = st.columns(2)
prompt_ids = ctx.tokens[0].tolist()
if st.session_state.get("_flow_prompt", prompt_ids) != prompt_ids:
    # a new prompt: follow its last position, and forget a node picked on the old one
    st.session_state["flow_target"] = n - 1
    st.session_state.pop("flow_pick", None)
st.session_state["_flow_prompt"] = prompt_ids
if st.session_state.get("flow_target") not in range(n):
    st.session_state["flow_target"] = n - 1
target = left.selectbox(
    "Target position (routes into its prediction)", range(n), key="flow_target", format_func=lambda i: ctx.labels[i]
)
st.session_state.setdefault("flow_threshold", TAU)
tau = right.slider(
    "Threshold tau (edges below it are dropped)", 0.0, 0.2, step=0.01, key="flow_threshold", help=TAU_HELP
)
graph = routes(model, ctx.key, tuple(prompt_ids), int(target), float(tau))

probs = ctx.logits[0, target].softmax(-1)
top = probs.topk(min(3, probs.numel()))
guesses = ", ".join(f"**{ctx.run.tokenizer.vocab[int(t)]}** ({float(p):.3f})" for p, t in zip(top.values, top.indices))
st.markdown(f"After {ctx.labels[target]} the model predicts {guesses}.")
n_attn = sum(e.kind == "attn" for e in graph.edges)
st.caption(
    f"{len(graph.nodes)} nodes and {len(graph.edges)} edges ({n_attn} attention edges) on the routes into "
    f"position {ctx.labels[target]}. Click a node to see the heads or neurons behind it."
)


def remember_pick() -> None:
    """on_select: keep the clicked node, or the clicked edge by its two ends, before the page is drawn again."""
    event = st.session_state.get("flow_chart")
    points = [p for p in (event["selection"]["points"] if event else []) if p.get("customdata")]
    if not points:
        return
    data = points[0]["customdata"]
    if data[3] == "edge":
        ends = [(data[1], data[2], data[6]), (data[7], data[8], data[9])]
        st.session_state["flow_pick"] = {"edge": [{"layer": l, "pos": p, "kind": k} for l, p, k in ends]}
    else:
        st.session_state["flow_pick"] = {"layer": int(data[1]), "pos": int(data[2]), "kind": str(data[3])}


def picked_node(pick: dict | None) -> int | None:
    """The graph's index of the picked node (an edge's destination), or None when it is not on these routes."""
    if not pick:
        return None
    try:
        v = pick["edge"][1] if "edge" in pick else pick
        return graph.node_index(v["layer"], v["pos"], v["kind"])
    except (KeyError, IndexError, TypeError):
        return None


def routes_data(g: FlowGraph, step: int) -> dict:
    """The numbers behind a routes figure, for the download button."""
    return {
        "step": step,
        "prompt": strs,
        "target_pos": g.target_pos,
        "tau": g.tau,
        "nodes": [{"layer": v.layer, "pos": v.pos, "kind": v.kind} for v in g.nodes],
        "edges": [{"src": e.src, "dst": e.dst, "kind": e.kind, "importance": e.importance} for e in g.edges],
    }


other = compare_checkpoint(ctx, "flow_compare")
here, there = st.columns(2) if other is not None else (st.container(), None)
if other is not None:
    here.markdown(f"**step {ctx.key[1]}** (chosen in the sidebar)")
here.plotly_chart(
    flow_figure(graph, strs, highlight=picked_node(st.session_state.get("flow_pick"))),
    key="flow_chart",
    on_select=remember_pick,
    selection_mode="points",
)
download("Download these routes (JSON)", routes_data(graph, ctx.key[1]), "flow_routes", "flow_download", here)
if other is not None and there is not None:
    graph_b = routes(other.run.model, other.key, tuple(prompt_ids), int(target), float(tau))
    there.markdown(f"**step {other.key[1]}**: {len(graph_b.nodes)} nodes and {len(graph_b.edges)} edges")
    there.plotly_chart(flow_figure(graph_b, strs), key="flow_chart_compare")
    download(
        "Download these routes (JSON)", routes_data(graph_b, other.key[1]), "flow_routes_b", "flow_download_b", there
    )

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
except (KeyError, IndexError, TypeError):
    # the pick belongs to other routes (another threshold, target or prompt): forget it quietly
    st.session_state.pop("flow_pick", None)
    st.stop()
node = graph.nodes[picked]
if chosen is not None:
    e = graph.edges[chosen[0]]
    st.subheader(
        f"Edge {graph.nodes[e.src].label} -> {graph.nodes[e.dst].label} ({e.kind}, importance {e.importance:.3f})"
    )
else:
    st.subheader(f"Behind {node.label} ({ctx.labels[node.pos]})")


def open_page(page: str, **state: object) -> None:
    """Go to another page with its selections set to this node: the views are linked through the session state."""
    st.session_state.update(state)
    st.switch_page(page)


if st.button(f"Logit lens at {ctx.labels[node.pos]}", help="what the stream there would predict, layer by layer"):
    open_page("views/lens.py", lens_pos=node.pos)
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
    top_neuron = int(top.indices[0])
    if st.button(f"Open L{node.layer}N{top_neuron} on the neurons page", help="its activations and logit effects"):
        open_page("views/neurons.py", neuron_layer=node.layer, neuron_pos=node.pos, neuron=top_neuron)
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
if st.button(f"Open {head} on the heads page", help="its full pattern, text view, scores, QK and OV circuits"):
    open_page("views/heads.py", head=head)
a, b = st.columns(2)
pattern = ctx.cache[f"blocks.{layer}.attn.hook_pattern"][0, h]
a.plotly_chart(matrix_figure(pattern, ctx.labels, ctx.labels, f"{head} attention pattern", 0, 1), key="flow_pattern")
imp = head_importance_map(model, ctx.cache, layer, h)
b.plotly_chart(
    matrix_figure(imp, ctx.labels, ctx.labels, f"{head} contribution (flow importance)", 0, None, colorscale="Oranges"),
    key="flow_contrib",
)
