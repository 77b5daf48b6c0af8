"""Rewrite a model's weights without changing what it computes: fold LayerNorm weights forward, centre the unembedding.

TransformerLens does both when it loads a pretrained model, so weights read there and here
agree only after the same rewriting. Each function returns a new model and leaves its input alone.
"""

from __future__ import annotations

import dataclasses

import torch

from blocks.transformer import Transformer
from scratchnn import Linear


@torch.no_grad()
def fold_layer_norm(model: Transformer) -> Transformer:
    """The same model with every LayerNorm's weight and bias folded into the Linears that read it (it becomes LNPre).

    A Linear reading ln(x) = x_hat * w + b computes W (x_hat * w + b) + c = (W * w) x_hat + (W b + c):
    the weight's columns are scaled by w and W b joins the bias. The logits do not change (to float
    precision). Tied embeddings are untied, since W_U changes and W_E does not.
    """
    cfg = model.cfg
    if cfg.normalization is None:
        raise ValueError("fold_layer_norm: this model has no LayerNorm (normalization=None); there is nothing to fold")
    if cfg.positional == "shortformer":
        raise ValueError(
            "fold_layer_norm: a shortformer model adds positions after ln1, so ln1's weight cannot move into W_Q and "
            "W_K; fold only models with positional='learned'"
        )
    folded = _copy(model, normalization="LNPre", tie_unembed=False)
    if cfg.normalization == "LNPre":
        return folded
    pairs = [
        (block.ln1, [new.attn.query, new.attn.key, new.attn.value]) for block, new in zip(model.blocks, folded.blocks)
    ]
    if not cfg.attn_only:
        pairs += [(block.ln2, [new.mlp.linear_in]) for block, new in zip(model.blocks, folded.blocks)]
    pairs.append((model.ln_final, [folded.unembed]))
    for norm, readers in pairs:
        for linear in readers:
            _fold_into(linear, norm.weight, norm.bias)
    return folded


def _fold_into(linear: Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    linear.bias.add_(linear.weight @ bias)
    linear.weight.mul_(weight)  # [out, in] * [in]: each input column scaled by its LayerNorm weight


@torch.no_grad()
def center_unembed(model: Transformer) -> Transformer:
    """The same model with W_U's rows and b_U centred over the vocabulary.

    Every logit at a position moves by the same amount, so log-probabilities (and so the loss and
    every softmax) do not change, while differences between logits read more cleanly. Tied
    embeddings are untied.
    """
    centred = _copy(model, tie_unembed=False)
    weight = centred.unembed.weight  # d_vocab d_model: W_U transposed
    weight.sub_(weight.mean(0, keepdim=True))
    centred.unembed.bias.sub_(centred.unembed.bias.mean())
    return centred


def _copy(model: Transformer, **changes: object) -> Transformer:
    """A new model of `model.cfg` with `changes`, holding a copy of every weight the new config keeps."""
    cfg = dataclasses.replace(model.cfg, **changes)
    new = Transformer(cfg).to(device=model.W_E.device, dtype=model.W_E.dtype)
    keep = new.state_dict()
    new.load_state_dict({k: v.clone() for k, v in model.state_dict().items() if k in keep})
    return new.eval()
