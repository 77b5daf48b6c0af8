"""Heads, neurons, lens and ablation pages: every number shown equals what probes returns for the same input."""

from __future__ import annotations

import json

import torch

from blocks.tasks.common import dataset_tensors, next_token_nll
from blocks.training.runs import load_run
from probes.ablation import head_ablation, neuron_ablation, run_ablated
from probes.head_scores import head_scores, score_batch
from probes.logit_lens import direct_logit_attribution, logit_lens
from probes.patching import logit_diff_metric, patch_heads
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
    assert f"{dla.total:.4f}" in at.caption[0].value
    predicted = run.tokenizer.vocab[int(run.model(tokens)[0, -1].argmax())]
    assert f"predicts **{predicted}**" in at.markdown[0].value


def test_ablation_changes_prediction_and_loss(app, runs_dir):
    at = app("ablate", run="mlp", prompt=PROMPT)
    assert not at.exception, at.exception
    run = load_run(runs_dir / "mlp")
    tokens = tokens_of(run)
    clean = next_token_nll(run.model(tokens).detach(), tokens).mean()
    assert at.metric[2].value == f"{float(clean):.4f}"

    at.multiselect(key="ablate_heads").select("L1H0").select("L0H1")
    at.multiselect(key="ablate_neurons").select("L0N3")
    at.run()
    assert not at.exception, at.exception
    logits = run_ablated(
        run.model,
        tokens,
        [head_ablation(run.model, 0, [1]), neuron_ablation(run.model, 0, [3]), head_ablation(run.model, 1, [0])],
    )
    ablated = next_token_nll(logits, tokens).mean()
    assert at.metric[2].value == f"{float(ablated):.4f}"
    assert at.metric[2].delta == f"{float(ablated - clean):+.4f}"
    assert at.metric[0].value == run.tokenizer.vocab[int(logits[0, -1].argmax())]

    at.radio(key="ablate_mode").set_value("mean").run()
    ref = dataset_tensors(run.task.dataset("test"))[0][:64]
    logits = run_ablated(
        run.model,
        tokens,
        [
            head_ablation(run.model, 0, [1], "mean", ref),
            neuron_ablation(run.model, 0, [3], "mean", ref),
            head_ablation(run.model, 1, [0], "mean", ref),
        ],
    )
    assert at.metric[2].value == f"{float(next_token_nll(logits, tokens).mean()):.4f}"


def test_patching_heads_between_two_prompts(app, runs_dir):
    corrupted_text = "BOS 1 2 3 4 5 6 7 8 9 0 1 2"
    at = app("ablate", run="attn", prompt=PROMPT, patch_corrupted=corrupted_text)
    assert not at.exception, at.exception
    run = load_run(runs_dir / "attn")
    clean, corrupted = tokens_of(run), tokens_of(run, corrupted_text)
    with torch.no_grad():
        answer, wrong = int(run.model(clean)[0, -1].argmax()), int(run.model(corrupted)[0, -1].argmax())
    if wrong == answer:
        wrong = int(run.model(clean)[0, -1].topk(2).indices[1])
    result = patch_heads(run.model, clean, corrupted, logit_diff_metric(answer, wrong))
    assert f"clean {result.clean:.4f}, corrupted {result.corrupted:.4f}" in at.markdown[0].value
    z = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]["z"]
    torch.testing.assert_close(torch.tensor(z), result.normalized(), atol=1e-5, rtol=1e-4)

    at.text_area(key="patch_corrupted").input("BOS 1 2").run()
    assert "patching needs the same length" in at.info[0].value


def test_scrubbing_checkpoints_changes_the_head_scores(app, runs_dir):
    at = app("heads", run="attn", prompt=PROMPT)
    for step in (0, 4):
        at.sidebar.select_slider(key="step").set_value(step).run()
        assert not at.exception, at.exception
        run = load_run(runs_dir / "attn", step=step)
        batch, n = score_batch(run.tokenizer.vocab, run.model.cfg.n_ctx)
        expected = head_scores(run.model, batch, n)["induction"].flatten()
        assert at.dataframe[0].value["induction"].tolist() == [round(float(v), 4) for v in expected]
