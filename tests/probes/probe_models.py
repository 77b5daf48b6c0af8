"""Tiny models for the probe tests, some with hand-set weights whose answers are known.

A module of its own (not conftest), so that test files can import these by a name no other tests folder uses."""

import torch

from blocks import Transformer, TransformerConfig
from probes.circuit.contrast import Contrast


def random_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(
        n_layers=2, d_model=32, n_heads=4, d_vocab=12, n_ctx=16, d_mlp=None if overrides.get("attn_only") else 48
    )
    cfg.update(overrides)
    return Transformer(TransformerConfig(**cfg)).eval()


def blank_attention_model(n_layers: int, d_model: int, d_vocab: int, n_ctx: int) -> Transformer:
    """An attention-only model without LayerNorm, two heads of d_head = d_model, every weight zero: set by hand."""
    cfg = TransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=2,
        d_head=d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        attn_only=True,
        normalization=None,
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def previous_token_model(n_ctx: int = 8, d_vocab: int = 8, strength: float = 60.0) -> Transformer:
    """1 attention-only layer, no LayerNorm; head 0 attends from each position to the one before it.

    Positions are one-hot in dims [0, n_ctx), tokens one-hot in [n_ctx, n_ctx + d_vocab); head 0's
    query at i is e_i and its key at j is e_{j+1}, so only j = i - 1 scores high. Head 0 copies the
    previous token's one-hot to the output, which W_U reads, so the model predicts "the previous token".
    """
    model = blank_attention_model(1, n_ctx + d_vocab, d_vocab, n_ctx)
    with torch.no_grad():
        model.pos_embed.weight[:, :n_ctx] = torch.eye(n_ctx)
        model.embed.weight[:, n_ctx:] = torch.eye(d_vocab)
        attn = model.blocks[0].attn
        attn.W_Q[0, :n_ctx, :n_ctx] = strength * torch.eye(n_ctx)
        attn.W_K[0, :n_ctx, :n_ctx] = torch.diag(torch.ones(n_ctx - 1), 1)  # pos j -> key e_{j+1}
        attn.W_V[0, n_ctx:, n_ctx:] = torch.eye(d_vocab)
        attn.W_O[0, n_ctx:, n_ctx:] = 2 * torch.eye(
            d_vocab
        )  # outweighs the current token, which the stream also carries
        # head 1 attends uniformly (zero scores) and writes nothing
        model.W_U[n_ctx:] = torch.eye(d_vocab)
    return model


def induction_model(n_ctx: int = 16, d_vocab: int = 8, strength: float = 30.0) -> Transformer:
    """2 attention-only layers, no LayerNorm, whose only route is a previous-token head feeding an induction head.

    Subspaces of the stream: positions P, tokens T, "the previous token" R, the output O.
    L0H0 attends from position i to i - 1 and writes that token into R; L1H0's query is the
    current token (T), its key the previous token (R), so it attends to the position after an
    earlier copy of the current token and writes the token there into O, which alone W_U reads.
    Heads L0H1 and L1H1 are zero. The circuit is exactly embed -> L0H0.v, L0H0 -> L1H0.k,
    embed -> L1H0.v and L1H0 -> logits (positions never differ between prompts of one length).
    """
    P, T, R, O = 0, n_ctx, n_ctx + d_vocab, n_ctx + 2 * d_vocab
    model = blank_attention_model(2, n_ctx + 3 * d_vocab, d_vocab, n_ctx)
    eye = torch.eye(d_vocab)
    with torch.no_grad():
        model.pos_embed.weight[:, P : P + n_ctx] = torch.eye(n_ctx)
        model.embed.weight[:, T : T + d_vocab] = eye
        first, second = model.blocks[0].attn, model.blocks[1].attn
        first.W_Q[0, P : P + n_ctx, :n_ctx] = strength * torch.eye(n_ctx)
        first.W_K[0, P : P + n_ctx, :n_ctx] = torch.diag(torch.ones(n_ctx - 1), 1)  # pos j -> key e_{j+1}
        first.W_V[0, T : T + d_vocab, :d_vocab] = eye
        first.W_O[0, :d_vocab, R : R + d_vocab] = eye
        second.W_Q[0, T : T + d_vocab, :d_vocab] = strength * eye
        second.W_K[0, R : R + d_vocab, :d_vocab] = eye
        second.W_V[0, T : T + d_vocab, :d_vocab] = eye
        second.W_O[0, :d_vocab, O : O + d_vocab] = eye
        model.W_U[O : O + d_vocab] = 4 * eye
    return model


# -- models and prompts for the circuit tests ----------------------------------------------

CONFIGS = {
    "mlp_ln": {},
    "attn_only_shortformer": dict(attn_only=True, normalization=None, positional="shortformer"),
    "mlp_no_ln": dict(normalization=None),
    "attn_only_ln_shortformer": dict(attn_only=True, positional="shortformer"),  # the default induction shape
    "lnpre_gelu_new_tied": dict(normalization="LNPre", act_fn="gelu_new", tie_unembed=True),  # GPT-2 as imported
}


def model_of(name: str) -> Transformer:
    """A random float64 model of one of CONFIGS, its LayerNorms given random weights and biases too."""
    model = random_model(**CONFIGS[name]).double()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if ".ln" in name_ or name_.startswith("ln_final"):
                p.copy_((1.0 if name_.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=gen))
    return model


def contrast_for(model, batch: int = 6, pos: int = 9, seed: int = 1, kind: str = "logit_diff") -> Contrast:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=gen)
    corrupted = torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=gen)
    mask = torch.zeros(batch, pos, dtype=torch.bool)
    mask[:, -3:] = True
    return Contrast.of_answers(clean, corrupted, clean.roll(-1, 1), corrupted.roll(-1, 1), mask, kind)
