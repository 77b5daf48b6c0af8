"""scratchnn.Attention against torch's own multi-head attention, its per-head views, and its checks."""

import pytest
import torch
from torch import nn

from scratchnn import Attention, HookedModule


def twins(d_model: int = 16, n_heads: int = 4, n_ctx: int = 12) -> tuple[Attention, nn.MultiheadAttention]:
    torch.manual_seed(0)
    ours = Attention(d_model, n_heads, d_model // n_heads, n_ctx, init_std=0.3)
    with torch.no_grad():
        for linear in (ours.query, ours.key, ours.value, ours.output):
            linear.bias.normal_(0, 0.1)
    ref = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    with torch.no_grad():  # torch packs query, key and value into one [3 d_model, d_model] weight, head-major like ours
        ref.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key.weight, ours.value.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        ref.out_proj.weight.copy_(ours.output.weight)
        ref.out_proj.bias.copy_(ours.output.bias)
    return ours, ref


def test_outputs_and_gradients_match_torch_multihead_attention(code_path: str) -> None:
    ours, ref = twins()
    x = torch.randn(3, 9, 16)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    causal = torch.ones(9, 9, dtype=torch.bool).triu(1)
    y_ours = ours(x_ours)
    y_ref, _ = ref(x_ref, x_ref, x_ref, attn_mask=causal, need_weights=False)
    torch.testing.assert_close(y_ours, y_ref, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(y_ref)
    (y_ours * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.query.weight.grad, ref.in_proj_weight.grad[:16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.output.weight.grad, ref.out_proj.weight.grad, atol=1e-5, rtol=1e-5)


def test_per_head_views_are_the_linear_weights_in_transformer_lens_layout() -> None:
    ours, _ = twins()
    x = torch.randn(2, 5, 16)
    q = ours.query(x).view(2, 5, 4, 4)  # [batch, pos, n_heads, d_head]
    for h in range(4):
        torch.testing.assert_close(x @ ours.W_Q[h] + ours.b_Q[h], q[:, :, h])
    assert ours.W_Q.shape == ours.W_K.shape == ours.W_V.shape == (4, 16, 4) and ours.W_O.shape == (4, 4, 16)
    z = torch.randn(2, 5, 4, 4)
    per_head = sum(z[:, :, h] @ ours.W_O[h] for h in range(4)) + ours.b_O
    torch.testing.assert_close(per_head, ours.output(z.flatten(-2)), atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # a view writes through to the weight
        ours.W_V[2, 3, 1] = 7.0
    assert ours.value.weight[2 * 4 + 1, 3] == 7.0


class OneAttention(HookedModule):
    def __init__(self) -> None:
        super().__init__()
        self.attn = twins()[0]
        self.setup_hooks()


def test_listening_to_the_pattern_gives_the_same_output_and_a_causal_pattern(code_path: str) -> None:
    root = OneAttention()
    x = torch.randn(2, 7, 16)
    plain = root.attn(x)
    seen: dict[str, torch.Tensor] = {}
    names = ["attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_result"]
    with root.hooks(fwd=[(n, lambda act, hook: seen.update({hook.name: act})) for n in names]):
        listened = root.attn(x)
    torch.testing.assert_close(plain, listened, atol=1e-5, rtol=1e-5)
    pattern = seen["attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 7))
    assert (pattern[..., torch.ones(7, 7, dtype=torch.bool).triu(1)] == 0).all()
    assert seen["attn.hook_attn_scores"][..., 0, 1:].isneginf().all()
    torch.testing.assert_close(seen["attn.hook_result"].sum(-2) + root.attn.b_O, listened, atol=1e-5, rtol=1e-5)


def test_bad_sizes_and_too_long_inputs_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="positive sizes.*n_heads=0"):
        Attention(16, 0, 4, 8)
    with pytest.raises(ValueError, match="13 positions but this attention's n_ctx is 12"):
        twins()[0](torch.randn(1, 13, 16))
