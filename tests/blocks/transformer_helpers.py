"""Small seeded models and inputs shared by the blocks tests."""

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
}
