"""ActivationCache views: accumulated and decomposed residual streams, head results, the final LayerNorm."""

import pytest
import torch
from transformer_helpers import make_model, tokens_for

from blocks import ComponentStack

CLOSE = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [dict(), dict(attn_only=True), dict(positional="shortformer")])
def test_accumulated_resid(overrides: dict) -> None:
    model = make_model(**overrides)
    _, cache = model.run_with_cache(tokens_for(model))
    stack = cache.accumulated_resid()
    assert stack.labels == ["0_pre", "1_pre", "final_post"]
    torch.testing.assert_close(stack.values[1], cache["blocks.1.hook_resid_pre"], atol=0, rtol=0)
    torch.testing.assert_close(stack.values[-1], cache["blocks.1.hook_resid_post"], atol=0, rtol=0)
    upto1 = cache.accumulated_resid(layer=1, incl_mid=True)
    mid = [] if model.cfg.attn_only else ["0_mid"]
    assert upto1.labels == ["0_pre", *mid, "1_pre"]
    with pytest.raises(ValueError, match=r"\[0, 2\].*5"):
        cache.accumulated_resid(layer=5)


@pytest.mark.parametrize("overrides", [dict(), dict(attn_only=True), dict(positional="shortformer")])
def test_decompose_resid_sums_to_the_residual_stream(overrides: dict) -> None:
    model = make_model(**overrides)
    _, cache = model.run_with_cache(tokens_for(model))
    full = cache.decompose_resid()
    torch.testing.assert_close(full.values.sum(0), cache["blocks.1.hook_resid_post"], **CLOSE)
    before1 = cache.decompose_resid(layer=1)
    torch.testing.assert_close(before1.values.sum(0), cache["blocks.1.hook_resid_pre"], **CLOSE)
    assert len(before1) == len(before1.values)
    assert before1.labels[0] == "embed"


def test_head_results_plus_b_O_sum_to_attn_out() -> None:
    model = make_model()
    _, cache = model.run_with_cache(tokens_for(model))
    stack = cache.stack_head_results()
    assert isinstance(stack, ComponentStack)
    assert stack.labels == ["L0H0", "L0H1", "L1H0", "L1H1"]
    for layer in range(2):
        heads = stack.values[2 * layer : 2 * layer + 2].sum(0)
        torch.testing.assert_close(
            heads + model.blocks[layer].attn.b_O, cache[f"blocks.{layer}.hook_attn_out"], **CLOSE
        )


def test_apply_ln_to_stack_reproduces_the_final_layernorm() -> None:
    model = make_model()
    _, cache = model.run_with_cache(tokens_for(model))
    parts = cache.apply_ln_to_stack(cache.decompose_resid())
    ln = model.ln_final
    torch.testing.assert_close(parts.sum(0) * ln.weight + ln.bias, cache["ln_final.hook_normalized"], **CLOSE)
    # the same map on the whole stream, through the logits
    logits = model(tokens_for(model))
    final = cache.apply_ln_to_stack(cache["blocks.1.hook_resid_post"][None])[0]
    torch.testing.assert_close((final * ln.weight + ln.bias) @ model.W_U + model.b_U, logits, **CLOSE)
    # before layer 1: ln1's scale of that layer
    parts1 = cache.apply_ln_to_stack(cache.decompose_resid(layer=1), layer=1)
    ln1 = model.blocks[1].ln1
    torch.testing.assert_close(parts1.sum(0) * ln1.weight + ln1.bias, cache["blocks.1.ln1.hook_normalized"], **CLOSE)


def test_apply_ln_without_normalization_is_the_identity() -> None:
    model = make_model(normalization=None)
    _, cache = model.run_with_cache(tokens_for(model))
    stack = cache.decompose_resid()
    assert torch.equal(cache.apply_ln_to_stack(stack), stack.values)


def test_full_cache_holds_more_bytes_than_a_filtered_one() -> None:
    model = make_model()
    _, full = model.run_with_cache(tokens_for(model))
    _, small = model.run_with_cache(tokens_for(model), names=lambda n: n.endswith("hook_resid_post"))
    assert small.nbytes() == 2 * 3 * 7 * 16 * 4
    assert full.nbytes() > 10 * small.nbytes()


@pytest.mark.parametrize("overrides", [dict(), dict(attn_only=True), dict(positional="shortformer")])
def test_full_resid_decomposition_sums_to_the_stream_with_heads_neurons_and_biases(overrides: dict) -> None:
    model = make_model(**overrides)
    _, cache = model.run_with_cache(tokens_for(model))
    for expand in (False, True):
        full = cache.full_resid_decomposition(expand_neurons=expand)
        torch.testing.assert_close(full.values.sum(0), cache["blocks.1.hook_resid_post"], **CLOSE)
        before1 = cache.full_resid_decomposition(layer=1, expand_neurons=expand)
        torch.testing.assert_close(before1.values.sum(0), cache["blocks.1.hook_resid_pre"], **CLOSE)
        assert len(full) == len(full.values) and "L1H1" in full.labels and "L1.b_O" in full.labels
        assert ("pos_embed" in full.labels) == (model.cfg.positional == "learned")
        if not model.cfg.attn_only:
            assert ("L0N23" in full.labels) == expand and ("L0.mlp" in full.labels) == (not expand)
    if model.cfg.attn_only:
        with pytest.raises(ValueError, match="attention-only; it has no neurons"):
            cache.stack_neuron_results()
        return
    neurons = cache.stack_neuron_results()
    assert neurons.values.shape == (2 * 24, *tokens_for(model).shape, 16) and neurons.labels[24] == "L1N0"
    b_out = model.blocks[1].mlp.b_out
    torch.testing.assert_close(neurons.values[24:].sum(0) + b_out, cache["blocks.1.hook_mlp_out"], **CLOSE)
