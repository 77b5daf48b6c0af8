"""What issue 16 says circuit discovery must find, on the default induction and sycophancy runs trained inside the tests."""

import pytest
import torch

from blocks.tasks import get_task
from blocks.training.config import TrainConfig
from blocks.training.runs import load_run
from blocks.training.trainer import Trainer
from probes.circuit.attribution import edge_attribution
from probes.circuit.discovery import circuit_from_scores
from probes.circuit.exact import exact_edge_patching
from probes.circuit.scores import rank_agreement
from probes.head_scores import THRESHOLD, head_scores, repeated_tokens
from probes.sycophancy import opinion_attention

pytestmark = pytest.mark.slow  # each test trains a default model: about 20 s on two cores


def trained(task_name: str, folder):
    task = get_task(task_name)
    train = TrainConfig(**{**task.default_train_config(), "device": "cpu", "bf16": False, "n_checkpoints": 2})
    Trainer(task, task.default_model_config(), train, folder, progress=False).run()
    return task, load_run(folder).model.eval()


def test_the_default_induction_circuit_is_previous_token_heads_into_induction_keys(tmp_path):
    task, model = trained("induction", tmp_path / "induction")
    n = task.eval_n
    scores = head_scores(model, repeated_tokens(n, 64, 1, task.n_symbols + 1, 0, seed=5), n)
    previous = {f"L0H{h}" for h in range(model.cfg.n_heads) if scores["previous_token"][0, h] > THRESHOLD}
    induction = {f"L1H{h}" for h in range(model.cfg.n_heads) if scores["induction"][1, h] > THRESHOLD}
    assert previous and induction, "the default run must form both kinds of head"

    contrast = task.circuit_contrast(256)
    exact = exact_edge_patching(model, contrast)
    ig = edge_attribution(model, contrast, "eap-ig", steps=5)
    circuit = circuit_from_scores(model, contrast, ig)
    edges = set(circuit.edge_names())
    assert circuit.faithfulness >= 0.8
    k_composition = {f"{p} -> {i}.k" for p in previous for i in induction}
    assert k_composition & edges, f"no previous-token head feeds an induction head's keys in {sorted(edges)}"
    assert any(f"{i} -> logits" in edges for i in induction)
    assert rank_agreement(ig, exact) >= 0.8
    with torch.no_grad():
        assert contrast.value(model(contrast.clean)) > contrast.value(model(contrast.corrupted)) + 2.0


def test_the_default_sycophancy_circuit_holds_the_opinion_head_and_what_it_feeds(tmp_path):
    task, model = trained("sycophancy", tmp_path / "sycophancy")
    attention = opinion_attention(model, task, task.prompts(256, "wrong").tokens)
    layer, h = divmod(int(attention.argmax()), model.cfg.n_heads)
    head = f"L{layer}H{h}"  # the head that reads the opinion slot from the answer position
    contrast = task.circuit_contrast(256)
    circuit = circuit_from_scores(model, contrast, edge_attribution(model, contrast, "eap-ig", steps=5))
    edges = set(circuit.edge_names())
    assert circuit.faithfulness >= 0.8
    assert f"embed -> {head}.v" in edges, f"the opinion head's value input is not in {sorted(edges)}"
    assert any(edge.startswith(f"{head} -> ") for edge in edges)
