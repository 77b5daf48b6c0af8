"""Heads, neurons, lens and ablation pages: every number shown equals what probes returns for the same input."""

from __future__ import annotations

import json

import torch

from blocks.tasks.common import dataset_tensors, next_token_nll
from blocks.training.runs import load_run
from probes.ablation import head_ablation, neuron_ablation, run_ablated
from probes.head_scores import head_scores, score_batch
from probes.logit_lens import direct_logit_attribution, logit_lens
from probes.patching import (
    answer_prob_metric,
    logit_diff_metric,
    patch_by_layer_pos,
    patch_heads,
    patch_heads_by_pos,
)
from probes.token_circuits import copying_score, ov_circuit

PROMPT = "BOS 1 2 3 4 5 6 1 2 3 4 5 6"


def tokens_of(run, text=PROMPT):
    return torch.tensor([run.tokenizer.encode(text)])


def test_heads_page_scores_and_circuits(app, runs_dir):
    at = app("heads", run="attn", prompt=PROMPT, head="L1H0")
    assert not at.exception, at.exception
    run = load_run(runs_dir / "attn")
    batch, n = score_batch(run.tokenizer.vocab, run.model.cfg.n_ctx)
    scores = head_scores(run.model, batch, n)
    table = at.dataframe[0].value.set_index("head")
    for layer in range(2):
        for h in range(2):
            assert table.loc[f"L{layer}H{h}", "induction"] == round(float(scores["induction"][layer, h]), 4)
            assert table.loc[f"L{layer}H{h}", "previous_token"] == round(float(scores["previous_token"][layer, h]), 4)
    assert at.metric[0].value == f"{copying_score(ov_circuit(run.model, 1, 0)):.4f}"
    at.selectbox(key="head").set_value("L0H1").run()
    assert at.metric[0].value == f"{copying_score(ov_circuit(run.model, 0, 1)):.4f}"
    assert len(at.tabs) == 2


def test_neurons_page(app, runs_dir):
    at = app("neurons", run="mlp", prompt=PROMPT, neuron_layer=0, neuron_pos=3)
    assert not at.exception, at.exception
    run = load_run(runs_dir / "mlp")
    _, cache = run.model.run_with_cache(tokens_of(run))
    post = cache["blocks.0.mlp.hook_post"][0, 3]
    top = post.topk(10)
    table = at.dataframe[0].value
    assert table["neuron"].tolist() == [f"L0N{i}" for i in top.indices.tolist()]
    assert table["activation"].tolist() == [round(v, 4) for v in top.values.tolist()]
    assert at.number_input(key="neuron").value == int(top.indices[0])
    at.number_input(key="neuron").set_value(5).run()
    assert not at.exception
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["y"]
    torch.testing.assert_close(torch.tensor(bars), cache["blocks.0.mlp.hook_post"][0, :, 5])

    at = app("neurons", run="attn", prompt=PROMPT)
    assert "attention-only" in at.info[0].value


def test_lens_page(app, runs_dir):
    at = app("lens", run="attn", prompt=PROMPT, lens_target="4")
    assert not at.exception, at.exception
    run = load_run(runs_dir / "attn")
    tokens = tokens_of(run)
    target = run.tokenizer.id("4")
    lens = logit_lens(run.model, tokens, k=3, target=target)
    table = at.dataframe[0].value
    assert table["top token"].tolist() == [run.tokenizer.vocab[int(t)] for t in lens.top_tokens[:, -1, 0]]
    assert table["target p"].tolist() == [round(float(p), 4) for p in lens.target_probs[:, -1]]
    dla = direct_logit_attribution(run.model, tokens, target, pos=12)
    assert f"{dla.total:.4f}" in at.main.caption[-1].value
    predicted = run.tokenizer.vocab[int(run.model(tokens)[0, -1].argmax())]
    assert f"predicts **{predicted}**" in at.markdown[0].value


def scored_loss(run, logits, tokens) -> float:
    """Mean next-token loss over the positions the task scores (the repeats, on induction)."""
    where = run.task.scored_positions(tokens[0].tolist())
    return float(next_token_nll(logits, tokens)[0, where].mean())


def test_ablation_changes_prediction_and_loss(app, runs_dir):
    at = app("ablate", run="mlp", prompt=PROMPT)
    assert not at.exception, at.exception
    run = load_run(runs_dir / "mlp")
    tokens = tokens_of(run)
    clean = run.model(tokens).detach()
    assert run.task.scored_positions(tokens[0].tolist()) == [7, 8, 9, 10, 11]  # the repeat, not the random half
    assert at.metric[3].label == "Mean loss on the 5 scored position(s)"
    assert at.metric[3].value == f"{scored_loss(run, clean, tokens):.4f}"
    # nothing ablated: no arrows at +0.0000
    assert [m.delta for m in at.metric] == ["", "", "", ""]

    at.multiselect(key="ablate_heads").select("L1H0").select("L0H1")
    at.multiselect(key="ablate_neurons").select("L0N3")
    at.run()
    assert not at.exception, at.exception
    logits = run_ablated(
        run.model,
        tokens,
        [head_ablation(run.model, 0, [1]), neuron_ablation(run.model, 0, [3]), head_ablation(run.model, 1, [0])],
    )
    assert at.metric[3].value == f"{scored_loss(run, logits, tokens):.4f}"
    assert at.metric[3].delta == f"{scored_loss(run, logits, tokens) - scored_loss(run, clean, tokens):+.4f}"
    assert at.metric[0].value == run.tokenizer.vocab[int(logits[0, -1].argmax())]
    # p(answer) compares the same token, the answer, before and after (not the new top token with itself)
    answer = int(clean[0, -1].argmax())
    p_clean, p_abl = clean[0, -1].softmax(-1)[answer], logits[0, -1].softmax(-1)[answer]
    assert at.metric[1].label == f"p({run.tokenizer.vocab[answer]})"
    assert at.metric[1].value == f"{float(p_abl):.4f}" and at.metric[1].delta == f"{float(p_abl - p_clean):+.4f}"

    for mode in ("mean", "resample"):
        at.radio(key="ablate_mode").set_value(mode).run()
        ref = dataset_tensors(run.task.dataset("test"))[0][:64]
        logits = run_ablated(
            run.model,
            tokens,
            [
                head_ablation(run.model, 0, [1], mode, ref),
                neuron_ablation(run.model, 0, [3], mode, ref),
                head_ablation(run.model, 1, [0], mode, ref),
            ],
        )
        assert at.metric[3].value == f"{scored_loss(run, logits, tokens):.4f}", mode


def test_the_answer_and_wrong_token_are_chosen(app, runs_dir):
    at = app("ablate", run="attn", prompt=PROMPT, ablate_pos=9, ablate_answer="5", ablate_wrong="2")
    assert not at.exception, at.exception
    run = load_run(runs_dir / "attn")
    logits = run.model(tokens_of(run)).detach()
    tok = run.tokenizer
    diff = logits[0, 9, tok.id("5")] - logits[0, 9, tok.id("2")]
    assert at.metric[2].label == "logit[5] - logit[2]" and at.metric[2].value == f"{float(diff):.4f}"
    assert at.metric[1].value == f"{float(logits[0, 9].softmax(-1)[tok.id('5')]):.4f}"
    # the defaults: the prompt's own next token, and the model's best other choice
    at = app("ablate", run="attn", prompt=PROMPT, ablate_pos=9)
    assert at.selectbox(key="ablate_answer").value == "4"  # PROMPT's token after position 9
    others = [t for t in logits[0, 9].argsort(descending=True).tolist() if t != tok.id("4")]
    assert at.selectbox(key="ablate_wrong").value == tok.vocab[others[0]]


def test_patching_between_two_prompts(app, runs_dir):
    corrupted_text = "BOS 1 2 3 4 5 6 7 8 9 0 1 2"
    at = app("ablate", run="attn", prompt=PROMPT, patch_corrupted=corrupted_text)
    assert not at.exception, at.exception
    run = load_run(runs_dir / "attn")
    clean, corrupted = tokens_of(run), tokens_of(run, corrupted_text)
    ranked = run.model(clean)[0, -1].argsort(descending=True).tolist()
    answer, wrong = ranked[0], ranked[1]
    for kind, sweep in (
        ("head (all positions)", patch_heads),
        ("head x position", patch_heads_by_pos),
        ("residual stream x position", patch_by_layer_pos),
    ):
        at.radio(key="patch_kind").set_value(kind).run()
        assert not at.exception, at.exception
        result = sweep(run.model, clean, corrupted, logit_diff_metric(answer, wrong))
        probs = sweep(run.model, clean, corrupted, answer_prob_metric(answer))
        table = at.dataframe[-1].value.set_index("run")
        column = f"logit[{run.tokenizer.vocab[answer]}] - logit[{run.tokenizer.vocab[wrong]}]"
        assert table.loc["clean", column] == round(result.clean, 4)
        assert table.loc["corrupted", column] == round(result.corrupted, 4)
        p_column = f"p({run.tokenizer.vocab[answer]})"
        assert table.loc["clean", p_column] == round(probs.clean, 4)
        assert table.loc["corrupted", p_column] == round(probs.corrupted, 4)
        spec = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]
        expected = result.normalized().flatten(0, 1) if result.values.dim() == 3 else result.normalized()
        torch.testing.assert_close(torch.tensor(spec["z"]), expected, atol=1e-5, rtol=1e-4)
        assert spec["text"] == [[f"{v:.2f}" for v in row] for row in spec["z"]]  # every cell labelled

    at.text_area(key="patch_corrupted").input("BOS 1 2").run()
    assert "patching needs the same length" in at.info[0].value


def test_the_default_corrupted_prompt_is_a_minimal_pair(app, runs_dir):
    run = load_run(runs_dir / "sycophancy")
    at = app("ablate", run="sycophancy")
    assert not at.exception, at.exception
    clean = run.tokenizer.encode(at.session_state["prompt"])
    corrupted = run.tokenizer.encode(at.session_state["patch_corrupted"])
    differ = [i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b]
    assert differ == [run.task.opinion_pos]  # only the opinion, as in the task's own contrast
    assert corrupted[run.task.opinion_pos] == run.task.none


def test_scrubbing_checkpoints_changes_the_head_scores(app, runs_dir):
    at = app("heads", run="attn", prompt=PROMPT)
    for step in (0, 4):
        at.sidebar.select_slider(key="step").set_value(step).run()
        assert not at.exception, at.exception
        run = load_run(runs_dir / "attn", step=step)
        batch, n = score_batch(run.tokenizer.vocab, run.model.cfg.n_ctx)
        expected = head_scores(run.model, batch, n)["induction"].flatten()
        assert at.dataframe[0].value["induction"].tolist() == [round(float(v), 4) for v in expected]


def test_head_scores_are_a_hint_off_the_induction_task(app):
    at = app("heads", run="attn", prompt=PROMPT)
    assert not at.main.expander and at.selectbox(key="heads_score").value == "induction"
    at = app("heads", run="sycophancy")
    assert not at.exception, at.exception
    (box,) = at.main.expander
    assert "a hint only" in box.label and "sycophancy" in box.label
    assert at.selectbox(key="heads_score").value == "previous_token"


def test_heads_compare_checkpoints_and_export(app, runs_dir):
    at = app("heads", run="attn", prompt=PROMPT, head="L1H0", heads_compare=0)
    assert not at.exception, at.exception
    charts = {json.loads(c.proto.spec)["layout"]["title"]["text"]: c for c in at.get("plotly_chart")}
    for step in (8, 0):
        run = load_run(runs_dir / "attn", step=step)
        _, cache = run.model.run_with_cache(tokens_of(run))
        z = json.loads(charts[f"L1H0 attention pattern, step {step}"].proto.spec)["data"][0]["z"]
        torch.testing.assert_close(torch.tensor(z), cache["blocks.1.attn.hook_pattern"][0, 0])
    assert "induction score, step 0" in charts and "induction score, step 8" in charts
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == [
        "Download both patterns (JSON)",
        "Download the head scores (JSON)",
        "Download the QK and OV circuits (JSON)",
    ]


def test_every_figure_page_offers_its_numbers_for_download(app):
    for page, state, label in (
        ("ablate", {"patch_corrupted": "BOS 1 2 3 4 5 6 7 8 9 0 1 2"}, "Download the patching results (JSON)"),
        ("neurons", {}, "Download its logit effects (JSON)"),
        ("lens", {}, "Download the lens (JSON)"),
        ("heads", {}, "Download this pattern (JSON)"),
    ):
        at = app(page, run="mlp", prompt=PROMPT, **state)
        assert not at.exception, at.exception
        assert label in [b.proto.label for b in at.get("download_button")], page
