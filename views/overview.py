"""Overview: the run's configuration, its loss and evaluation curves, and head scores over training."""

import streamlit as st

from probes.head_scores import head_scores_over_steps_figure
from views.common import run_only
from views.generation import generation_box
from views.history import head_score_entries, metric_curves, metric_curves_figure

st.title("Overview")
st.caption(
    "The run's configuration and what it logged while training: losses, the task's own evaluation, and every "
    "head's scores over the steps. The checkpoint slider marks the step the other pages show."
)
chosen = run_only()
if chosen is None:
    st.stop()
run, (path, step, _) = chosen
cfg = run.model.cfg

st.markdown(
    f"**{run.path.name}** · task `{run.config['task']['name']}` · checkpoint step **{step}** · "
    f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
    f"{'attention-only' if cfg.attn_only else f'd_mlp {cfg.d_mlp}'}, vocabulary {cfg.d_vocab}, context {cfg.n_ctx}"
)

curves = metric_curves(run.metrics)
if not curves:
    st.info("This run has logged no metrics yet.")
else:
    left, right = st.columns(2)
    losses = [n for n in curves if n == "train_loss" or ("loss" in n and n.startswith("eval/"))]
    others = [n for n in curves if n.startswith("eval/") and n not in losses]
    if losses:
        left.plotly_chart(metric_curves_figure(curves, losses, "Losses"), key="overview_losses")
    if others:
        right.plotly_chart(metric_curves_figure(curves, others, "Evaluation"), key="overview_evals")
    # each metric's value at the checkpoint on show: the last one logged at or before its step
    at_step = {}
    for name, (steps, values) in curves.items():
        if name.startswith("eval/") or name == "train_loss":
            logged = [(s, v) for s, v in zip(steps, values) if s <= step]
            if logged:
                at_step[name] = logged[-1]
    st.dataframe(
        {
            "metric": list(at_step),
            f"value at step {step}": [round(v, 4) for _, v in at_step.values()],
            "logged at step": [s for s, _ in at_step.values()],
        },
        hide_index=True,
    )

steps, entries = head_score_entries(run.metrics)
if entries:
    scores = list(entries[-1])
    if st.session_state.get("overview_score") not in scores:
        st.session_state["overview_score"] = "induction" if "induction" in scores else scores[0]
    score = st.selectbox("Head score over training", scores, key="overview_score")
    fig = head_scores_over_steps_figure(steps, entries, score)
    nearest = min(steps, key=lambda s: abs(s - step))
    fig.update_xaxes(type="category")  # steps are labels; a numeric axis would misplace the marker
    fig.add_vline(x=steps.index(nearest), line_color="red", annotation_text=f"shown: step {step}")
    fig.update_layout(height=140 + 22 * cfg.n_layers * cfg.n_heads)
    st.plotly_chart(fig, key="overview_heads")
else:
    st.caption("No head scores were logged for this run (the task's context is too short for [BOS] + r + r).")

if run.config["task"]["name"] == "text":
    generation_box(run)

with st.expander("Configuration (config.json)"):
    st.json(run.config)
