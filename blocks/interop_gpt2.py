"""GPT-2's weight layout (Hugging Face's `GPT2LMHeadModel`, and nanoGPT, which copies its names) to and from ours.

Both name a block's parts `h.{l}.ln_1`, `attn.c_attn` (queries, keys and values fused into one
map, in that order), `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, with `wte`, `wpe`, `ln_f`
and an unembedding `lm_head` tied to `wte`. They differ in orientation: Hugging Face's Conv1D
stores a weight [in, out] (x @ W), nanoGPT's nn.Linear [out, in] as ours does. Hugging Face's
own config and folder format live in blocks.interop_hf; nanoGPT's checkpoints in
blocks.interop_nanogpt.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from blocks.config import TransformerConfig
from blocks.transformer import Transformer
from blocks.weights import check_tensors

Orientation = Literal["conv1d", "linear"]

# Buffers some checkpoints keep (the causal mask, a masking constant); we build our own mask.
_BUFFERS = (".attn.bias", ".attn.masked_bias")
# Prefixes put in front of every name: GPT2LMHeadModel's `transformer.`, torch.compile's `_orig_mod.`.
_PREFIXES = ("_orig_mod.", "module.", "transformer.")


def strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` with the wrappers' prefixes removed (`_orig_mod.`, `module.`, `transformer.`) and mask buffers left out."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:  # in any order and nesting: `module._orig_mod.transformer.wte.weight`
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        if not key.endswith(_BUFFERS):
            out[key] = value
    return out


def gpt2_shapes(cfg: TransformerConfig, orientation: Orientation, bias: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2-layout state dict of `cfg` holds (prefixes stripped), with its shape; lm_head when untied."""
    d, inner, mlp = cfg.d_model, cfg.n_heads * cfg.d_head, cfg.d_mlp

    def linear(name: str, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
        shapes = {f"{name}.weight": (d_in, d_out) if orientation == "conv1d" else (d_out, d_in)}
        return {**shapes, f"{name}.bias": (d_out,)} if bias else shapes

    def norm(name: str) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (d,), **({f"{name}.bias": (d,)} if bias else {})}

    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (cfg.d_vocab, d), "wpe.weight": (cfg.n_ctx, d)}
    for l in range(cfg.n_layers):
        h = f"h.{l}."
        shapes.update(norm(h + "ln_1") | linear(h + "attn.c_attn", d, 3 * inner) | linear(h + "attn.c_proj", inner, d))
        shapes.update(norm(h + "ln_2") | linear(h + "mlp.c_fc", d, mlp) | linear(h + "mlp.c_proj", mlp, d))
    shapes.update(norm("ln_f"))
    if not cfg.tie_unembed:
        shapes["lm_head.weight"] = (cfg.d_vocab, d)  # an nn.Linear in both
    return shapes


@torch.no_grad()
def from_gpt2_layout(
    state: dict[str, Tensor], cfg: TransformerConfig, orientation: Orientation, source: str, bias: bool = True
) -> Transformer:
    """A Transformer for `cfg` holding a GPT-2-layout state dict's weights (as float32).

    Prefixes and mask buffers are dropped first; a tied `lm_head.weight` may be present or not.
    Missing, unexpected and misshapen tensors are named, with both shapes, in one error.
    Without biases (nanoGPT's `bias=False`) ours are set to zero, which computes the same.
    """
    state = strip_prefixes(state)
    if cfg.tie_unembed:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    expected = {k: torch.empty(shape, device="meta") for k, shape in gpt2_shapes(cfg, orientation, bias).items()}
    check_tensors(expected, state, source)

    def w(name: str) -> Tensor:  # a weight in our [out, in] orientation
        weight = state[f"{name}.weight"].to(torch.float32)
        conv1d = orientation == "conv1d" and weight.dim() == 2 and not name.startswith(("lm_head", "wte", "wpe"))
        return weight.T if conv1d else weight

    def b(name: str, size: int) -> Tensor:
        return state[f"{name}.bias"].to(torch.float32) if bias else torch.zeros(size)

    d, inner = cfg.d_model, cfg.n_heads * cfg.d_head
    ours = {"embed.weight": w("wte"), "pos_embed.weight": w("wpe")}
    for l in range(cfg.n_layers):
        h, blk = f"h.{l}.", f"blocks.{l}."
        q, k, v = w(h + "attn.c_attn").split(inner, dim=0)
        b_q, b_k, b_v = b(h + "attn.c_attn", 3 * inner).split(inner)
        for ours_name, theirs, size in (("ln1", "ln_1", d), ("ln2", "ln_2", d)):
            ours[f"{blk}{ours_name}.weight"] = w(h + theirs)
            ours[f"{blk}{ours_name}.bias"] = b(h + theirs, size)
        for part, weight, bias_ in (("query", q, b_q), ("key", k, b_k), ("value", v, b_v)):
            ours[f"{blk}attn.{part}.weight"], ours[f"{blk}attn.{part}.bias"] = weight, bias_
        ours[f"{blk}attn.output.weight"] = w(h + "attn.c_proj")
        ours[f"{blk}attn.output.bias"] = b(h + "attn.c_proj", d)
        ours[f"{blk}mlp.linear_in.weight"] = w(h + "mlp.c_fc")
        ours[f"{blk}mlp.linear_in.bias"] = b(h + "mlp.c_fc", cfg.d_mlp)
        ours[f"{blk}mlp.linear_out.weight"] = w(h + "mlp.c_proj")
        ours[f"{blk}mlp.linear_out.bias"] = b(h + "mlp.c_proj", d)
    ours["ln_final.weight"], ours["ln_final.bias"] = w("ln_f"), b("ln_f", d)
    ours["unembed.weight"] = ours["embed.weight"] if cfg.tie_unembed else w("lm_head")
    ours["unembed.bias"] = torch.zeros(cfg.d_vocab)  # GPT-2's unembedding has no bias
    model = Transformer(cfg)
    model.load_state_dict(ours)
    return model.eval()


def check_gpt2_shaped(cfg: TransformerConfig, what: str) -> None:
    """Raise naming every part of `cfg` that a GPT-2-layout model cannot hold."""
    problems = []
    if cfg.attn_only:
        problems.append("attn_only=True (GPT-2 blocks have an MLP)")
    if cfg.normalization != "LN":
        problems.append(f"normalization={cfg.normalization!r} (GPT-2 has LayerNorms with weights: 'LN')")
    if cfg.positional != "learned":
        problems.append(f"positional={cfg.positional!r} (GPT-2 adds learned positions to the stream: 'learned')")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        problems.append(f"n_heads * d_head = {cfg.n_heads * cfg.d_head} != d_model = {cfg.d_model}")
    if problems:
        raise ValueError(f"cannot write this model as {what}: " + "; ".join(problems))


@torch.no_grad()
def to_gpt2_layout(model: Transformer, orientation: Orientation) -> dict[str, Tensor]:
    """The model's weights in GPT-2's layout (names without `transformer.`; lm_head only when untied).

    The unembedding's bias must be zero: GPT-2's has none, and dropping a non-zero one would change the model.
    """
    cfg = model.cfg
    check_gpt2_shaped(cfg, "GPT-2 weights")
    if model.b_U.abs().max() > 0:
        raise ValueError(
            "cannot write this model as GPT-2 weights: its unembedding bias b_U is not zero and GPT-2's lm_head "
            "has no bias, so the logits would change; only models with b_U = 0 (GPT-2's own, or ones trained "
            "with it frozen at zero) export exactly"
        )
    ours = model.state_dict()

    def w(name: str) -> Tensor:  # only Linears' weights reach here
        weight = ours[f"{name}.weight"]
        return weight.T if orientation == "conv1d" else weight

    out = {"wte.weight": ours["embed.weight"], "wpe.weight": ours["pos_embed.weight"]}
    for l in range(cfg.n_layers):
        h, blk = f"h.{l}.", f"blocks.{l}."
        qkv = torch.cat([ours[f"{blk}attn.{p}.weight"] for p in ("query", "key", "value")], dim=0)
        out[h + "attn.c_attn.weight"] = qkv.T if orientation == "conv1d" else qkv
        out[h + "attn.c_attn.bias"] = torch.cat([ours[f"{blk}attn.{p}.bias"] for p in ("query", "key", "value")])
        for theirs, mine in (("ln_1", "ln1"), ("ln_2", "ln2")):
            out[f"{h}{theirs}.weight"], out[f"{h}{theirs}.bias"] = (
                ours[f"{blk}{mine}.weight"],
                ours[f"{blk}{mine}.bias"],
            )
        for theirs, mine in (
            ("attn.c_proj", "attn.output"),
            ("mlp.c_fc", "mlp.linear_in"),
            ("mlp.c_proj", "mlp.linear_out"),
        ):
            out[f"{h}{theirs}.weight"], out[f"{h}{theirs}.bias"] = w(blk + mine), ours[f"{blk}{mine}.bias"]
    out["ln_f.weight"], out["ln_f.bias"] = ours["ln_final.weight"], ours["ln_final.bias"]
    if not cfg.tie_unembed:
        out["lm_head.weight"] = ours["unembed.weight"]
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in out.items()}
