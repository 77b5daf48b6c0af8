import pytest
import torch

from blocks import Transformer, TransformerConfig
from probes.neurons import (
    neuron_logit_effects,
    neuron_logit_figure,
    top_activating_examples,
    top_examples_figure,
)
from probes.token_circuits import circuit_figure, copying_fraction, copying_score, ov_circuit, qk_circuit


def test_top_examples_match_a_brute_force_search(mlp_model):
    tokens = torch.randint(0, 12, (10, 7))
    ex = top_activating_examples(mlp_model, tokens, layer=1, neuron=5, k=4, batch_size=3)
    _, cache = mlp_model.run_with_cache(tokens, names="blocks.1.mlp.hook_post")
    acts = cache["blocks.1.mlp.hook_post"][..., 5]
    torch.testing.assert_close(ex.values, acts.flatten().sort(descending=True).values[:4])
    torch.testing.assert_close(acts[ex.rows, ex.positions], ex.values)
    fig = top_examples_figure(ex, tokens, [f"t{i}" for i in range(12)])
    assert fig.data[0].cells.values[3][0].endswith("]")


def test_neuron_logit_effect_is_its_direct_path(mlp_model):
    tokens = torch.randint(0, 12, (4, 6))
    effects = neuron_logit_effects(mlp_model, 0, tokens)
    # one unit of neuron 3 added to the final stream moves the logits by effects[3] (scale frozen at its mean)
    mlp = mlp_model.blocks[0].mlp
    _, cache = mlp_model.run_with_cache(tokens, names="ln_final.hook_scale")
    w = mlp.W_out[3] - mlp.W_out[3].mean()
    want = (w / cache["ln_final.hook_scale"].mean() * mlp_model.ln_final.weight) @ mlp_model.W_U
    torch.testing.assert_close(effects[3], want.detach())
    assert len(neuron_logit_figure(effects, 3, [f"t{i}" for i in range(12)], k=2).data[0].x) == 4


def _copier(sign: float) -> Transformer:
    """One head whose OV circuit is sign * identity in token space; its QK prefers equal tokens."""
    cfg = TransformerConfig(n_layers=1, d_model=6, n_heads=1, d_vocab=6, n_ctx=4, attn_only=True, normalization=None)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        eye = torch.eye(6)
        model.embed.weight.copy_(eye)
        model.W_U.copy_(eye)
        attn = model.blocks[0].attn
        attn.W_V[0].copy_(eye)
        attn.W_O[0].copy_(sign * eye)
        attn.W_Q[0].copy_(eye)
        attn.W_K[0].copy_(2 * eye)
    return model


def test_a_copying_head_scores_one_and_a_suppressing_head_minus_one():
    ov = ov_circuit(_copier(1.0), 0, 0)
    torch.testing.assert_close(ov, torch.eye(6))
    assert copying_score(ov) == pytest.approx(1.0) and copying_fraction(ov) == 1.0
    assert copying_score(ov_circuit(_copier(-1.0), 0, 0)) == pytest.approx(-1.0)
    torch.testing.assert_close(qk_circuit(_copier(1.0), 0, 0), 2 * torch.eye(6))
    fig = circuit_figure(ov, list("abcdef"), "OV", "output token", "source token")
    assert fig.data[0].z[0][0] == 1.0


def test_bad_input(mlp_model, attn_only_model):
    with pytest.raises(ValueError, match="attention-only"):
        neuron_logit_effects(attn_only_model, 0)
    with pytest.raises(ValueError, match="neuron must lie"):
        top_activating_examples(mlp_model, torch.zeros(1, 3, dtype=torch.long), 0, 999)
    with pytest.raises(ValueError, match="head must lie"):
        ov_circuit(mlp_model, 0, 7)
    with pytest.raises(ValueError, match="square"):
        copying_score(torch.zeros(2, 3))


def test_token_axes_are_categories_even_when_tokens_are_numbers():
    """Numbers as token names made plotly draw numeric axes: BOS had no place and bars merged or sorted by number."""
    vocab = [str(i) for i in range(7)] + ["=", "BOS"]
    effects = torch.tensor([[0.5, -2.0, 3.0, 0.1, -0.3, 1.0, 0.0, -1.0, 2.0]])
    fig = neuron_logit_figure(effects, 0, vocab, k=10)  # 2k >= 9 tokens: each drawn once, most up to most down
    assert list(fig.data[0].x) == ["2", "BOS", "5", "0", "3", "6", "4", "=", "1"]
    assert list(fig.data[0].y) == sorted(effects[0].tolist(), reverse=True)
    assert fig.layout.xaxis.type == "category"
    fig = neuron_logit_figure(effects, 0, vocab, k=2)  # two up, two down, the suppressed ones kept
    assert list(fig.data[0].x) == ["2", "BOS", "=", "1"]

    ov = torch.arange(81, dtype=torch.float).view(9, 9)
    fig = circuit_figure(ov, vocab, "OV", "output token", "source token")
    assert fig.layout.xaxis.type == "category" and fig.layout.yaxis.type == "category"
    fig = circuit_figure(ov, vocab, "OV", "output token", "source token", keep=[8, 3, 3, 1])
    assert list(fig.data[0].x) == ["BOS", "3", "1"] and list(fig.data[0].y) == ["BOS", "3", "1"]
    assert fig.data[0].z[0] == [ov[8, 8].item(), ov[8, 3].item(), ov[8, 1].item()]
    with pytest.raises(ValueError, match="keep must name tokens"):
        circuit_figure(ov, vocab, "OV", "output token", "source token", keep=[9])
