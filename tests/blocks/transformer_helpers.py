"""Small seeded models and inputs shared by the blocks tests, and attention written out as the reference."""

import math

import torch

from blocks import Transformer, TransformerConfig

BATCH, POS = 3, 7


def make_model(**overrides: object) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        **{
            **dict(
                n_layers=2,
                d_model=16,
                n_heads=2,
                d_head=8,
                d_mlp=None if overrides.get("attn_only") else 24,
                d_vocab=13,
                n_ctx=10,
            ),
            **overrides,
        }
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm weights, so a dropped bias shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def tokens_for(model: Transformer, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (BATCH, POS), generator=torch.Generator().manual_seed(seed))


# The configurations the model tests build: each hook-point, identity and fast-path test runs on all of them.
CONFIGS = {
    "ln_relu": dict(),
    "attn_only": dict(attn_only=True),
    "no_norm": dict(normalization=None),
    "gelu": dict(act_fn="gelu"),
    "shortformer": dict(positional="shortformer", act_fn="gelu"),
    "d_head_16": dict(d_model=32, n_heads=2, d_head=16),  # where blocks.fast's attention kernel runs
    "lnpre_gelu_new": dict(normalization="LNPre", act_fn="gelu_new"),  # GPT-2 through TransformerLens
    "tied": dict(tie_unembed=True),  # GPT-2 and nanoGPT share W_E and W_U
}


def masked_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q . k / sqrt(d_head), -inf above the diagonal: [batch, pos, n_heads, d_head] in, [batch, n_heads, q, k] out."""
    n = q.shape[1]
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """scratchnn.Attention's own lines from the scores to the weighted sum, on [batch, pos, n_heads, d_head]."""
    return torch.einsum("bhqk,bkhe->bqhe", masked_scores(q, k).softmax(-1), v)
