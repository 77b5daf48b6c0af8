import math

import pytest
import torch

from probes.factored_circuits import ov_factored, qk_factored


def ones(x):
    return torch.cat([x, torch.ones(*x.shape[:-1], 1)], -1)


@pytest.mark.parametrize("which", ["mlp_model", "attn_only_model"])
def test_factored_circuits_give_the_heads_scores_and_writes(which, request):
    model = request.getfixturevalue(which)
    tokens = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    layer, head = 1, 2
    resid = cache[f"blocks.{layer}.hook_resid_pre"]
    if model.cfg.normalization is not None:
        x_hat = (resid - resid.mean(-1, keepdim=True)) / cache[f"blocks.{layer}.ln1.hook_scale"]
    else:
        x_hat = resid
    x_in = cache[f"blocks.{layer}.ln1.hook_normalized"] if model.cfg.normalization else resid
    scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][:, head] * math.sqrt(model.cfg.d_head)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    for fold in (False, True) if model.cfg.normalization else (False,):
        x = x_hat if fold else x_in
        qk = qk_factored(model, layer, head, biases=True, fold_ln=fold)
        assert qk.shape == (model.cfg.d_model + 1, model.cfg.d_model + 1)
        x_qk = (
            x + cache["hook_pos_embed"] if model.cfg.positional == "shortformer" else x
        )  # queries and keys see positions
        got = torch.einsum("bqi,ij,bkj->bqk", ones(x_qk), qk.AB, ones(x_qk))
        torch.testing.assert_close(got[:, causal], scores[:, causal], atol=1e-4, rtol=1e-4)
        # the query at position 0 attends only to itself: the head's write there is its OV circuit of that stream
        ov = ov_factored(model, layer, head, biases=True, fold_ln=fold)
        write = cache[f"blocks.{layer}.attn.hook_result"][:, 0, head]
        torch.testing.assert_close(ones(x[:, 0]) @ ov.A @ ov.B, write, atol=1e-5, rtol=1e-5)
    plain = qk_factored(model, layer, head)
    assert plain.shape == (model.cfg.d_model, model.cfg.d_model)
    torch.testing.assert_close(plain.AB, model.blocks[layer].attn.W_Q[head] @ model.blocks[layer].attn.W_K[head].T)
    ev = plain.eigenvalues()
    full = torch.linalg.eigvals(plain.AB)
    assert ev.shape == (model.cfg.d_head,)
    top = full[full.abs().argsort(descending=True)][: model.cfg.d_head]
    torch.testing.assert_close(ev.abs().sort().values, top.abs().sort().values, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        plain.singular_values(), torch.linalg.svdvals(plain.AB)[: model.cfg.d_head], atol=1e-4, rtol=1e-4
    )
    with pytest.raises(ValueError, match=r"head must lie in \[0, 4\)"):
        qk_factored(model, 0, 9)
