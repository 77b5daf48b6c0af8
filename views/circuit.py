"""Circuits: every edge scored by attribution (or exactly), the fewest edges that carry the task, and path patching of one edge."""

import json

import streamlit as st

from probes.circuit.attribution import edge_attribution
from probes.circuit.contrast import METRIC_KINDS, Contrast
from probes.circuit.discovery import Circuit, circuit_from_scores, evaluate_circuit, top_edges
from probes.circuit.exact import EXACT_AUTO_LIMIT, exact_cost, exact_edge_patching, path_patching
from probes.circuit.figures import circuit_figure, faithfulness_figure
from probes.circuit.graph import Graph
from probes.circuit.scores import EdgeScores, rank_agreement
from views.common import run_only

N_PROMPTS = 64


@st.cache_resource(max_entries=16, show_spinner="Scoring every edge...")
def scored(_run, key: tuple, method: str, metric: str) -> tuple[Contrast, EdgeScores, EdgeScores | None, Circuit]:
    """The contrast, the method's scores, exact scores (small graphs) and the circuit reaching 0.8, per checkpoint."""
    contrast = _run.task.circuit_contrast(N_PROMPTS)
    if metric != "default":
        contrast = contrast.with_metric(metric)
    model = _run.model.eval()
    exact = (
        exact_edge_patching(model, contrast) if exact_cost(Graph.of(model.cfg), contrast) <= EXACT_AUTO_LIMIT else None
    )
    scores = exact if method == "exact" and exact is not None else edge_attribution(model, contrast, method)
    return contrast, scores, exact, circuit_from_scores(model, contrast, scores)


@st.cache_resource(max_entries=256, show_spinner=False)
def circuit_of(_run, _contrast, _scores, key: tuple, k: int) -> Circuit:
    """The top-k edges evaluated (one batched forward pass), cached per size."""
    return evaluate_circuit(
        _run.model, _contrast, top_edges(_scores, k), method=_scores.method, scores=_scores, top_k=k
    )


@st.cache_resource(max_entries=64, show_spinner=False)
def path_patched(_run, _contrast, key: tuple, sender: str, receiver: str):
    """Path patching of one edge, once per (run, checkpoint, score, metric, edge)."""
    return path_patching(_run.model, _contrast, [sender], [receiver])


st.title("Circuits")
st.caption(
    "Which edges (one node's write reaching another node's input: `L0H3 -> L1H2.k`) carry the task? Each edge is "
    "scored by how much patching it from clean to corrupted prompts changes the metric; a circuit keeps the top "
    "edges and is run with every other edge patched."
)
chosen = run_only()
if chosen is None:
    st.stop()
run, key = chosen
prompts = run.task.circuit_contrast(N_PROMPTS)  # built once a rerun: what exact patching would cost
if prompts is None:
    st.info(
        f"Task {run.config['task']['name']!r} has no default clean and corrupted prompts; use probes.circuit "
        "with a Contrast of your own in a script or notebook."
    )
    st.stop()

exact_ok = exact_cost(Graph.of(run.model.cfg), prompts) <= EXACT_AUTO_LIMIT
methods = ("eap-ig", "eap", "exact") if exact_ok else ("eap-ig", "eap")
if st.session_state.get("circuit_method") not in methods:
    st.session_state["circuit_method"] = "eap-ig"
a, b = st.columns(2)
st.session_state.setdefault("circuit_metric", "default")
method = a.selectbox(
    "Scores",
    methods,
    key="circuit_method",
    help="eap: (corrupted - clean write) x the gradient at the clean run; eap-ig: that gradient averaged over 5 "
    "runs with token embeddings between corrupted and clean; exact: each edge patched alone (offered when "
    f"edges x prompts x positions is at most {EXACT_AUTO_LIMIT:,}).",
)
metric = b.selectbox(
    "Metric",
    ("default", *METRIC_KINDS),
    key="circuit_metric",
    help="default: the task's own. logit_diff: logit[clean answer] - logit[corrupted answer]; log_prob and prob: "
    "of the clean answer, averaged over the positions the task scores.",
)
try:
    contrast, scores, exact, found = scored(run, key, method, metric)
except ValueError as err:  # e.g. logit_diff on a task whose corrupted prompt has no other answer
    st.error(str(err))
    st.stop()
graph = scores.graph
st.caption(
    f"{N_PROMPTS} prompt pairs: {contrast.description}. Metric clean {scores.clean:.3f}, corrupted "
    f"{scores.corrupted:.3f}. The graph has {len(graph.senders)} senders, {len(graph.receivers)} receivers and "
    f"{graph.n_edges} edges."
)

chosen_for = (*key, method, metric)
if (
    st.session_state.get("circuit_for") != chosen_for
    or not 1 <= st.session_state.get("circuit_edges", 0) <= graph.n_edges
):
    if st.session_state.get("circuit_for") is not None:  # an edge clicked on another model or score is not this one's
        st.session_state.pop("circuit_pick", None)
    st.session_state["circuit_for"] = chosen_for  # a new run, checkpoint or score: start at its own circuit
    st.session_state["circuit_edges"] = found.top_k
k = st.slider(
    "Edges kept (top by the size of their score)",
    1,
    graph.n_edges,
    key="circuit_edges",
    help=f"Starts at the fewest top edges whose circuit keeps 80% of the metric ({found.top_k}).",
)
circuit = circuit_of(run, contrast, scores, (*key, method, metric), k)
cols = st.columns(4)
cols[0].metric("edges after pruning", circuit.size, help="edges on no path from the embeddings to the logits drop")
cols[1].metric(
    "faithfulness",
    f"{circuit.faithfulness:.3f}",
    help="(metric of the circuit alone - metric with every edge patched) / (clean - every edge patched)",
)
cols[2].metric(
    "completeness", f"{circuit.completeness:.3f}", help="1 - the faithfulness left when only its edges are patched"
)
if exact is not None and scores is not exact:
    cols[3].metric(
        f"Spearman {method} vs exact", f"{rank_agreement(scores, exact):.3f}", help="rank correlation over every edge"
    )
if not circuit.has_path:
    st.warning("No path of these edges leads from the embeddings to the logits: the circuit computes nothing itself.")

event = st.plotly_chart(
    circuit_figure(circuit.edges, scores, exact, title=f"Top {k} edges by {method}: {circuit.size} after pruning"),
    key="circuit_chart",
    on_select="rerun",
    selection_mode="points",
)
picked = []
for point in event.selection.points if event else []:
    data = point.get("customdata")
    data = data[0] if isinstance(data, list) and data else data  # plotly may hand scalar customdata back as a list
    if isinstance(data, str) and "->" in data:
        picked.append(data)
if picked:
    st.session_state["circuit_pick"] = picked[0]
pick = st.session_state.get("circuit_pick")
if pick is not None:
    try:
        sender, receiver = (part.strip() for part in pick.split("->"))
        graph.edge(pick)
        result = path_patched(run, contrast, (*chosen_for, pick), sender, receiver)
        st.subheader(f"Path patching {pick}")
        st.write(
            f"With only this edge carrying the corrupted write, the metric moves from {result.clean:.4f} to "
            f"{result.metric:.4f} ({result.effect:+.4f}): {result.normalized():.1%} of the way to the corrupted "
            f"{result.corrupted:.4f}."
        )
    except ValueError as err:
        st.info(f"The edge picked before ({pick}) is not an edge of this model: {err}")
        st.session_state.pop("circuit_pick", None)
else:
    st.caption("Click an edge's midpoint to path-patch it.")

curves = {scores.method: found.curve}
st.plotly_chart(faithfulness_figure(curves), key="circuit_curve")
rows = [
    {
        "edge": name,
        method: round(value, 5),
        **({"exact": round(float(exact.scores[graph.edge(name)]), 5)} if exact else {}),
    }
    for name, value in scores.ranked(k)
]
st.dataframe(rows, hide_index=True)
st.download_button(
    "Download the circuit (JSON)",
    json.dumps({"circuit": circuit.to_dict(), "scores": scores.to_dict()}, indent=1),
    file_name="circuit.json",
    mime="application/json",
)
