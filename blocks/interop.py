"""Weights and configs to and from TransformerLens's HookedTransformer format, and from our own earlier layout.

This module is also the one place to import interop from: Hugging Face GPT-2 (blocks.interop_hf),
nanoGPT checkpoints (blocks.interop_nanogpt) and the weight rewrites `fold_layer_norm` and
`center_unembed` (blocks.interop_fold) are re-exported here.

The community's toy models (attention-only and GELU models of 1 to 4 layers) are published
in that format, so a person can load one here and compare caches name by name. Only the
configurations this sandbox builds are accepted; anything else raises naming the field.

Runs saved before the model was built from scratchnn's Linear modules stored the attention,
MLP and unembedding weights under TransformerLens's names and orientation;
`load_state_dict` recognises that layout and upgrades it, so old runs still load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from blocks.config import TransformerConfig
from blocks.hub import hub_files
from blocks.interop_fold import center_unembed, fold_layer_norm
from blocks.interop_hf import (
    from_hugging_face,
    from_hugging_face_config,
    load_gpt2,
    save_hugging_face,
    to_hugging_face,
    to_hugging_face_config,
    to_hugging_face_state_dict,
)
from blocks.interop_nanogpt import load_nanogpt, read_checkpoint
from blocks.transformer import Transformer
from blocks.weights import check_state_dict, check_tensors, load_tensors
from scratchnn import LayerNorm

# Buffers a HookedTransformer keeps in its state dict; we rebuild them, so they are skipped on import.
_TL_BUFFERS = ("attn.mask", "attn.IGNORE")

# TransformerLens config fields we cannot honour, with the value (or test) that we can.
_UNSUPPORTED_UNLESS: dict[str, Any] = {
    "use_attn_scale": True,
    "use_split_qkv_input": False,
    "use_attn_in": False,
    "use_qk_norm": False,
    "use_local_attn": False,
    "window_size": None,
    "attn_types": None,
    "attention_dir": "causal",
    "scale_attn_by_inverse_layer_idx": False,
    "final_rms": False,
    "parallel_attn_mlp": False,
    "rotary_dim": None,
    "gated_mlp": False,
    "n_key_value_heads": None,
    "post_embedding_ln": False,
    "num_experts": None,
    "tie_word_embeddings": False,
    "use_normalization_before_and_after": False,
    "attn_scores_soft_cap": -1.0,
    "output_logits_soft_cap": -1.0,
    "relative_attention_max_distance": None,
    "eps": 1e-5,
}
_NORMALIZATION = {"LN": "LN", "LNPre": "LNPre", None: None}
_POSITIONAL = {"standard": "learned", "shortformer": "shortformer"}
_ACT_FN = ("relu", "gelu", "gelu_new")

# The published toy models: short name -> Hugging Face repository (TransformerLens's own aliases).
TOY_MODELS: dict[str, str] = {
    **{f"attn-only-{n}l": f"NeelNanda/Attn_Only_{n}L512W_C4_Code" for n in range(1, 5)},
    **{f"gelu-{n}l": f"NeelNanda/GELU_{n}L512W_C4_Code" for n in range(1, 5)},
    "attn-only-2l-demo": "NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr",
}


@torch.no_grad()
def transformer_lens_views(model: Transformer) -> dict[str, Tensor]:
    """Every weight of `model` under its TransformerLens name, as a view of our parameter (writing one writes the weight).

    The attention's and MLP's weights are Linear weights here; their TransformerLens names are
    the per-head (`attn.W_Q`, ...) and per-neuron (`mlp.W_in`, ...) views those modules expose.
    """
    views = {"embed.W_E": model.W_E, "pos_embed.W_pos": model.W_pos}
    norms = [(f"blocks.{i}.ln1", block.ln1) for i, block in enumerate(model.blocks)]
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}."
        views.update({f"{prefix}attn.{name}": getattr(block.attn, name) for name in _ATTENTION})
        if not model.cfg.attn_only:
            views.update({f"{prefix}mlp.{name}": getattr(block.mlp, name) for name in _MLP})
            norms.append((f"{prefix}ln2", block.ln2))
    norms.append(("ln_final", model.ln_final))
    for name, norm in norms:
        if isinstance(norm, LayerNorm) and norm.elementwise_affine:  # LNPre has no weights
            views.update({f"{name}.w": norm.weight, f"{name}.b": norm.bias})
    views.update({"unembed.W_U": model.W_U, "unembed.b_U": model.b_U})
    return views


_ATTENTION = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
_MLP = ("W_in", "b_in", "W_out", "b_out")


def to_transformer_lens(model: Transformer) -> dict[str, Tensor]:
    """The model's weights as a HookedTransformer state dict, including its mask and IGNORE buffers.

    The buffers are included so that `HookedTransformer.load_state_dict(..., strict=True)` accepts it.
    """
    _check_exportable(model.cfg)
    state = {
        k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in transformer_lens_views(model).items()
    }
    mask = torch.ones(model.cfg.n_ctx, model.cfg.n_ctx, dtype=torch.bool).tril()
    for layer in range(model.cfg.n_layers):
        state[f"blocks.{layer}.attn.mask"] = mask.clone()
        state[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(-torch.inf)
    return state


def _check_exportable(cfg: TransformerConfig) -> None:
    # Every TransformerConfig we build is a HookedTransformer configuration; kept as one place to say so.
    _check_choice("act_fn", cfg.act_fn, _ACT_FN)


def from_transformer_lens(state_dict: dict[str, Tensor], cfg: TransformerConfig) -> Transformer:
    """Build a Transformer for `cfg` holding a HookedTransformer state dict's weights (as float32).

    Missing, unexpected or misshapen keys raise one error that lists them with both shapes.
    """
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(
            f"cfg must be a blocks.TransformerConfig, got {type(cfg).__name__}; "
            "for a TransformerLens config dict use from_transformer_lens_config(...) first"
        )
    model = Transformer(cfg)
    load_into_views(
        transformer_lens_views(model), state_dict, f"TransformerLens state dict (config: {cfg})", skip=_TL_BUFFERS
    )
    return model.eval()


@torch.no_grad()
def load_into_views(
    views: dict[str, Tensor], state: dict[str, Tensor], source: str, skip: tuple[str, ...] = ()
) -> None:
    """Copy each tensor of `state` into the view of the same name; one error lists missing, unexpected and misshapen keys."""
    given = {k: v for k, v in state.items() if not k.endswith(skip)}
    check_tensors(views, given, source)
    for name, view in views.items():
        view.copy_(given[name].to(torch.float32))


def load_state_dict(model: Transformer, state: dict[str, Tensor], source: str = "state dict") -> None:
    """Load `state` into `model` after checking every key and shape; a state dict in our earlier layout is upgraded first."""
    model.load_state_dict(checked_state_dict(model, state, source))


def checked_state_dict(model: Transformer, state: dict[str, Tensor], source: str = "state dict") -> dict[str, Tensor]:
    """`state` in today's layout (upgraded if it is in our earlier one), every key and shape checked against `model`."""
    if is_earlier_layout(state):
        state = upgrade_state_dict(state, model.cfg, source)
    check_state_dict(model, state, source)
    return state


def is_earlier_layout(state: dict[str, Tensor]) -> bool:
    """True for a state dict saved before the model was made of scratchnn's Linear modules (it has `unembed.W_U`)."""
    return "unembed.W_U" in state


def upgrade_state_dict(
    state: dict[str, Tensor], cfg: TransformerConfig, source: str = "state dict"
) -> dict[str, Tensor]:
    """A state dict in our earlier layout, in today's.

    The earlier layout is TransformerLens's but for the embeddings' and LayerNorms' names, so the
    tensors go through TransformerLens's names into a model's views and come out as its parameters.
    """
    model = Transformer(cfg)
    load_into_views(
        transformer_lens_views(model), {_earlier_to_tl(k): v for k, v in state.items()}, f"{source} (earlier layout)"
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _earlier_to_tl(key: str) -> str:
    if key in ("embed.weight", "pos_embed.weight"):
        return {"embed.weight": "embed.W_E", "pos_embed.weight": "pos_embed.W_pos"}[key]
    for ln in ("ln1", "ln2", "ln_final"):
        for long, short in (("weight", "w"), ("bias", "b")):
            if key.endswith(f"{ln}.{long}"):
                return key[: -len(long)] + short
    return key


def from_transformer_lens_config(tl_cfg: dict[str, Any]) -> TransformerConfig:
    """Map a HookedTransformerConfig (as a dict, e.g. `cfg.to_dict()` or a hub config.json) to ours.

    Raises naming the first field whose value we do not support (RMS, rotary, parallel attention, ...).
    """
    if not isinstance(tl_cfg, dict):
        raise TypeError(f"tl_cfg must be a dict of HookedTransformerConfig fields, got {type(tl_cfg).__name__}")
    for name in ("n_layers", "d_model", "n_ctx", "d_vocab"):
        if name not in tl_cfg:
            raise ValueError(f"the TransformerLens config has no {name!r}; it is required")
    for name, supported in _UNSUPPORTED_UNLESS.items():
        if name in tl_cfg and tl_cfg[name] != supported:
            if name == "eps" and math.isclose(float(tl_cfg[name]), supported):
                continue
            raise ValueError(
                f"unsupported TransformerLens config: {name}={tl_cfg[name]!r}; this sandbox supports only "
                f"{name}={supported!r}"
            )
    # Hub configs (NeelNanda's) spell two fields differently from HookedTransformerConfig.
    norm = tl_cfg["normalization_type"] if "normalization_type" in tl_cfg else tl_cfg.get("normalization", "LN")
    if "positional_embedding_type" in tl_cfg:
        pos = tl_cfg["positional_embedding_type"]
    else:
        pos = "shortformer" if tl_cfg.get("shortformer_pos") else "standard"
    _check_choice("normalization_type", norm, tuple(_NORMALIZATION))
    _check_choice("positional_embedding_type", pos, tuple(_POSITIONAL))
    act_fn = tl_cfg.get("act_fn")
    attn_only = bool(tl_cfg.get("attn_only", False))
    if attn_only:
        act_fn = act_fn if act_fn in _ACT_FN else "relu"  # unused by attention-only models
    else:
        _check_choice("act_fn", act_fn, _ACT_FN)
    d_vocab_out = tl_cfg.get("d_vocab_out", -1)
    if d_vocab_out not in (-1, None, tl_cfg["d_vocab"]):
        raise ValueError(
            f"unsupported TransformerLens config: d_vocab_out={d_vocab_out} differs from d_vocab={tl_cfg['d_vocab']}"
        )
    d_model, n_heads = tl_cfg["d_model"], tl_cfg.get("n_heads", -1)
    d_head = tl_cfg.get("d_head")
    if n_heads in (-1, None):
        if not d_head:
            raise ValueError("the TransformerLens config gives neither n_heads nor d_head")
        n_heads = d_model // d_head
    attn_scale = tl_cfg.get("attn_scale", -1.0)
    if attn_scale not in (-1.0, None) and d_head and not math.isclose(attn_scale, math.sqrt(d_head)):
        raise ValueError(
            f"unsupported TransformerLens config: attn_scale={attn_scale}; we scale scores by sqrt(d_head)="
            f"{math.sqrt(d_head):.6g}"
        )
    init_range = tl_cfg.get("initializer_range", -1.0)
    d_mlp = tl_cfg.get("d_mlp")
    return TransformerConfig(
        n_layers=tl_cfg["n_layers"],
        d_model=d_model,
        n_heads=n_heads,
        d_vocab=tl_cfg["d_vocab"],
        n_ctx=tl_cfg["n_ctx"],
        d_head=d_head,
        d_mlp=None if attn_only or d_mlp in (None, -1) else d_mlp,
        act_fn=act_fn,
        normalization=_NORMALIZATION[norm],
        attn_only=attn_only,
        positional=_POSITIONAL[pos],
        init_range=init_range if init_range and init_range > 0 else None,
    )


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unsupported TransformerLens config: {name}={value!r}; this sandbox supports {list(choices)}")


def load_transformer_lens_checkpoint(weights: str | Path, config: dict[str, Any] | str | Path) -> Transformer:
    """Load a HookedTransformer checkpoint from disk: `.safetensors`, or a `.pth` read with weights_only=True.

    `config` is a TransformerLens config dict or the path of its JSON file.
    """
    import json

    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    weights = Path(weights)
    if weights.suffix == ".safetensors":
        state = load_tensors(weights)
    else:  # weights_only: a checkpoint is data, never code to unpickle; one that needs code is refused, saying so
        state = read_checkpoint(weights)
    return from_transformer_lens(state, from_transformer_lens_config(config))


def load_toy_model(name: str, cache_dir: str | Path | None = None, local_files_only: bool = False) -> Transformer:
    """Download (or read from the local cache) one of the published toy models, e.g. "attn-only-2l".

    Needs the Hugging Face hub; offline, or with `local_files_only` and nothing cached, it
    raises a ConnectionError that says which files to fetch and how to load them by hand.
    """
    repo = TOY_MODELS.get(name, name if "/" in name else None)
    if repo is None:
        raise ValueError(f"unknown toy model {name!r}; known names are {sorted(TOY_MODELS)} (or give 'owner/repo')")
    files = hub_files(
        repo,
        ("config.json", "model_final.pth"),
        cache_dir,
        local_files_only,
        f"Download config.json and model_final.pth from https://huggingface.co/{repo} and call "
        "blocks.interop.load_transformer_lens_checkpoint(weights_path, config_path)",
    )
    return load_transformer_lens_checkpoint(files["model_final.pth"], files["config.json"])


__all__ = [
    "TOY_MODELS",
    "center_unembed",
    "checked_state_dict",
    "fold_layer_norm",
    "from_hugging_face",
    "from_hugging_face_config",
    "from_transformer_lens",
    "from_transformer_lens_config",
    "load_gpt2",
    "load_into_views",
    "load_nanogpt",
    "load_state_dict",
    "load_toy_model",
    "load_transformer_lens_checkpoint",
    "read_checkpoint",
    "save_hugging_face",
    "to_hugging_face",
    "to_hugging_face_config",
    "to_hugging_face_state_dict",
    "to_transformer_lens",
    "transformer_lens_views",
    "upgrade_state_dict",
]
