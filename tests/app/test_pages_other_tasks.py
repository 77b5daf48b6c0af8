"""Every page on runs of other tasks than induction: the sycophancy capstone and modular addition.

One AppTest session per run walks all six pages (as a person clicking through the sidebar
would), and each page's numbers are checked against the probes and the run's tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest

from blocks.training.runs import load_run
from probes.ablation import head_ablation, run_ablated
from probes.head_scores import head_scores, score_batch
from probes.information_flow import TAU, information_flow
from probes.logit_lens import logit_lens
from probes.patching import logit_diff_metric, patch_heads
from probes.token_circuits import copying_score, ov_circuit


def mean_loss(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean next-token cross-entropy over the prompt, computed here independently of the app's probe."""
    return float(F.cross_entropy(logits[0, :-1], tokens[0, 1:]))


@pytest.mark.parametrize("name", ["sycophancy", "modadd"])
def test_every_page_on_a_non_induction_run(app, runs_dir, name):
    run = load_run(runs_dir / name)
    model, cfg, tok = run.model, run.model.cfg, run.tokenizer
    lines = [json.loads(x) for x in (runs_dir / name / "metrics.jsonl").read_text().splitlines()]

    # Overview: the run's own task and config, and the logged numbers
    at = app(run=name)
    assert not at.exception, at.exception
    assert f"task `{run.config['task']['name']}`" in at.markdown[0].value and "step **8**" in at.markdown[0].value
    assert f"{cfg.n_heads} heads" in at.markdown[0].value
    last_loss = [x["train_loss"] for x in lines if "train_loss" in x and x["step"] <= 8][-1]  # at the checkpoint
    assert at.dataframe[0].value.set_index("metric").loc["train_loss", "value at step 8"] == round(last_loss, 4)
    logged = [x for x in lines if "head_scores" in x]
    fits = (cfg.n_ctx - 1) // 2 >= 4
    assert bool(logged) == fits  # sycophancy's 9 tokens fit [BOS] + r + r with r = 4; modular addition's 4 do not
    if fits:
        z = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]["z"]
        last = [v for row in logged[-1]["head_scores"]["induction"] for v in row]
        assert [r[-1] for r in z] == last
    else:
        assert any("No head scores were logged" in c.value for c in at.caption)

    at.switch_page("views/flow.py")
    at.run()
    assert not at.exception, at.exception
    # the sidebar drew the task's first example as the prompt, read through the run's tokenizer
    prompt = at.session_state["prompt"]
    assert prompt == tok.decode(run.task.example(0))
    tokens = torch.tensor([tok.encode(prompt)])
    n = tokens.shape[1]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    predicted = int(logits[0, -1].argmax())

    graph = information_flow(model, tokens, target_pos=n - 1, tau=TAU)
    assert any(f"{len(graph.nodes)} nodes and {len(graph.edges)} edges" in c.value for c in at.caption)

    at.switch_page("views/heads.py")
    at.run()
    assert not at.exception, at.exception
    assert len(at.tabs) == cfg.n_layers
    if fits:
        batch, r = score_batch(tok.vocab, cfg.n_ctx)
        scores = head_scores(model, batch, r)
        table = at.dataframe[0].value
        assert len(table) == cfg.n_layers * cfg.n_heads
        assert table["head"].tolist() == [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
        assert table["induction"].tolist() == [round(float(v), 4) for v in scores["induction"].flatten()]
    else:
        assert len(at.dataframe) == 0
        assert any("too short" in c.value for c in at.caption)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    patterns = [c for c in charts if c["layout"]["title"]["text"] == "L0H1"]
    torch.testing.assert_close(torch.tensor(patterns[0]["data"][0]["z"]), cache["blocks.0.attn.hook_pattern"][0, 1])
    last_head = ov_circuit(model, cfg.n_layers - 1, cfg.n_heads - 1)
    assert at.metric[0].value == f"{copying_score(last_head):.4f}"

    at.switch_page("views/neurons.py")
    at.run()
    assert not at.exception, at.exception
    top = cache[f"blocks.{cfg.n_layers - 1}.mlp.hook_post"][0, n - 1].topk(10)
    table = at.dataframe[0].value
    assert table["neuron"].tolist() == [f"L{cfg.n_layers - 1}N{i}" for i in top.indices.tolist()]
    assert table["activation"].tolist() == [round(v, 4) for v in top.values.tolist()]

    at.switch_page("views/lens.py")
    at.run()
    assert not at.exception, at.exception
    assert f"predicts **{tok.decode([predicted])}**" in at.markdown[0].value
    lens = logit_lens(model, tokens, k=3, target=predicted)
    table = at.dataframe[0].value
    assert len(table) == len(lens.labels)
    assert table["top token"].tolist() == [tok.decode([int(t)]) for t in lens.top_tokens[:, -1, 0]]

    at.switch_page("views/ablate.py")
    at.run()
    assert not at.exception, at.exception
    assert at.metric[0].value == tok.decode([predicted])
    second = int(logits[0, -1].argsort(descending=True)[1])
    assert at.metric[1].value == f"{float(logits[0, -1].softmax(-1)[predicted]):.4f}"
    assert at.metric[2].value == f"{float(logits[0, -1, predicted] - logits[0, -1, second]):.4f}"
    assert len(at.metric) == 3  # the task scores only the answer after the prompt: no loss on the prompt
    # the default corrupted prompt is the task's minimal pair for this prompt
    corrupted_ids = run.task.corrupted_prompt(tokens[0].tolist())
    assert at.session_state["patch_corrupted"] == tok.decode(corrupted_ids)
    result = patch_heads(model, tokens, torch.tensor([corrupted_ids]), logit_diff_metric(predicted, second))
    table = at.dataframe[-1].value.set_index("run")
    column = f"logit[{tok.vocab[predicted]}] - logit[{tok.vocab[second]}]"
    assert table.loc["clean", column] == round(result.clean, 4)
    assert table.loc["corrupted", column] == round(result.corrupted, 4)

    at.multiselect(key="ablate_heads").select("L0H1")
    at.run()
    assert not at.exception, at.exception
    ablated = run_ablated(model, tokens, [head_ablation(model, 0, [1])])
    assert at.metric[1].value == f"{float(ablated[0, -1].softmax(-1)[predicted]):.4f}"
    assert at.metric[0].value == tok.decode([int(ablated[0, -1].argmax())])


def test_skipped_checkpoints_are_warned_in_the_sidebar(runs_dir, tmp_path, monkeypatch):
    """Messages load_run leaves in Run.skipped show in the sidebar (a fresh run folder, so no cached Run is reused)."""
    import views.common

    root = tmp_path / "runs"
    shutil.copytree(runs_dir / "modadd", root / "modadd")
    real = views.common.load_run
    message = "step 3: not a safetensors file; skipped"

    def load_with_skips(*args, **kwargs):
        run = real(*args, **kwargs)
        run.skipped = [message]
        return run

    monkeypatch.setattr(views.common, "load_run", load_with_skips)
    monkeypatch.setenv("SANDBOX_RUNS", str(root))
    at = AppTest.from_file(str(Path(views.common.__file__).parents[1] / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert [w.value for w in at.sidebar.warning] == [message]
