"""Hugging Face `transformers` GPT-2 models to and from ours: a GPT2LMHeadModel object, or a folder of config.json + safetensors.

Reading needs no `transformers` at all (a folder is JSON and safetensors); building a
GPT2LMHeadModel from ours imports it. Only GPT-2's architecture is read: any other model type,
or a GPT-2 config with an option we do not model, raises listing what is unsupported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from blocks.config import TransformerConfig
from blocks.hub import hub_files
from blocks.interop_fold import center_unembed as center_unembed_of
from blocks.interop_fold import fold_layer_norm
from blocks.interop_gpt2 import check_gpt2_shaped, from_gpt2_layout, to_gpt2_layout
from blocks.transformer import Transformer
from blocks.weights import atomic_write_bytes, load_tensors, read_json, save_tensors

# Hugging Face's activation names -> ours ("gelu_pytorch_tanh" is the same tanh approximation as "gelu_new").
_ACT_FN = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_ACT_FN_OUT = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}

# What other decoder families do that a GPT-2-style model does not, so the error can say it.
OTHER_ARCHITECTURES: dict[str, str] = {
    "gpt_neox": "rotary positions, attention and MLP in parallel",
    "gptj": "rotary positions, attention and MLP in parallel",
    "llama": "rotary positions, RMSNorm, a gated MLP, grouped-query attention",
    "mistral": "rotary positions, RMSNorm, a gated MLP, grouped-query and sliding-window attention",
    "qwen2": "rotary positions, RMSNorm, a gated MLP, grouped-query attention",
    "gemma": "rotary positions, RMSNorm, a gated MLP, multi-query attention",
    "phi": "rotary positions, attention and MLP in parallel",
    "gpt_neo": "local-attention layers and unscaled attention scores",
    "bloom": "ALiBi position biases, a LayerNorm after the embedding",
    "opt": "positions offset by 2, ReLU, a final projection",
    "bert": "bidirectional attention (an encoder)",
    "t5": "an encoder-decoder with relative position biases",
}
SUPPORTED = (
    "model_type 'gpt2': learned absolute positions, LayerNorm (eps 1e-5), attention then MLP, full causal attention "
    f"scaled by 1/sqrt(d_head), activation one of {sorted(_ACT_FN)}"
)
GPT2_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


def from_hugging_face_config(hf_cfg: dict[str, Any]) -> TransformerConfig:
    """Our config for a GPT2Config (as a dict, e.g. `config.to_dict()` or config.json); raises listing what we do not model."""
    if not isinstance(hf_cfg, dict):
        raise TypeError(f"hf_cfg must be a dict of GPT2Config fields, got {type(hf_cfg).__name__}")
    model_type = hf_cfg.get("model_type")
    if model_type != "gpt2":
        what = OTHER_ARCHITECTURES.get(str(model_type), "an architecture this sandbox does not know")
        raise ValueError(f"unsupported architecture model_type={model_type!r} ({what}); this sandbox reads {SUPPORTED}")
    problems = []
    act = hf_cfg.get("activation_function", "gelu_new")
    if act not in _ACT_FN:
        problems.append(f"activation_function={act!r} (supported: {sorted(_ACT_FN)})")
    eps = hf_cfg.get("layer_norm_epsilon", 1e-5)
    if not math.isclose(float(eps), 1e-5):
        problems.append(f"layer_norm_epsilon={eps} (supported: 1e-05)")
    for name, supported in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if hf_cfg.get(name, supported) != supported:
            problems.append(f"{name}={hf_cfg[name]!r} (supported: {supported})")
    missing = [k for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions") if k not in hf_cfg]
    if missing:
        problems.append(f"missing fields {missing}")
    if problems:
        raise ValueError("unsupported GPT-2 config: " + "; ".join(problems) + f"; this sandbox reads {SUPPORTED}")
    d_model, n_heads = hf_cfg["n_embd"], hf_cfg["n_head"]
    if not isinstance(d_model, int) or not isinstance(n_heads, int) or n_heads <= 0 or d_model % n_heads:
        raise ValueError(f"GPT-2 config: n_embd={d_model!r} must be a positive multiple of n_head={n_heads!r}")
    return TransformerConfig(
        n_layers=hf_cfg["n_layer"],
        d_model=d_model,
        n_heads=n_heads,
        d_vocab=hf_cfg["vocab_size"],
        n_ctx=hf_cfg["n_positions"],
        d_mlp=hf_cfg.get("n_inner") or 4 * d_model,
        act_fn=_ACT_FN[act],
        normalization="LN",
        init_range=hf_cfg.get("initializer_range") or None,
        tie_unembed=bool(hf_cfg.get("tie_word_embeddings", True)),
    )


def to_hugging_face_config(cfg: TransformerConfig) -> dict[str, Any]:
    """A GPT2Config (as a dict, what config.json holds) for `cfg`; raises naming what GPT-2 cannot express."""
    check_gpt2_shaped(cfg, "a Hugging Face GPT-2 model")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.d_vocab,
        "n_positions": cfg.n_ctx,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "activation_function": _ACT_FN_OUT[cfg.act_fn],
        "layer_norm_epsilon": 1e-5,
        "initializer_range": cfg.init_range,
        "tie_word_embeddings": cfg.tie_unembed,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "bos_token_id": cfg.d_vocab - 1,
        "eos_token_id": cfg.d_vocab - 1,
    }


def from_hugging_face(source: Any, fold_ln: bool = False, center_unembed: bool = False) -> Transformer:
    """A Transformer with the weights of a GPT-2: a `GPT2LMHeadModel` (or `GPT2Model`) object, or a folder.

    A folder holds config.json and model.safetensors (or shards listed in model.safetensors.index.json),
    as `save_pretrained` writes them. `fold_ln` folds each LayerNorm's weights into the next layer
    (the model becomes LNPre); `center_unembed` subtracts each W_U row's mean. Neither changes the
    log-probabilities (folding keeps the logits too).
    """
    if isinstance(source, (str, Path)):
        hf_cfg, state, where = _read_folder(Path(source))
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        hf_cfg, state, where = source.config.to_dict(), source.state_dict(), f"{type(source).__name__}'s state dict"
    else:
        raise TypeError(
            f"source must be a transformers GPT2LMHeadModel or a folder with config.json and model.safetensors, "
            f"got {type(source).__name__}"
        )
    cfg = from_hugging_face_config(hf_cfg)
    model = from_gpt2_layout(state, cfg, "conv1d", where)
    if fold_ln:
        model = fold_layer_norm(model)
    if center_unembed:
        model = center_unembed_of(model)
    return model


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}; give a folder with config.json and model.safetensors")
    hf_cfg = read_json(folder / "config.json", "Hugging Face config")
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return hf_cfg, load_tensors(folder / "model.safetensors"), str(folder / "model.safetensors")
    if index.is_file():
        state: dict[str, Tensor] = {}
        for shard in sorted(set(read_json(index, "safetensors index")["weight_map"].values())):
            state.update(load_tensors(folder / shard))
        return hf_cfg, state, str(index)
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
    hint = (
        f"; it has {pickled}, which are pickles: convert them with transformers' save_pretrained(...)"
        if pickled
        else ""
    )
    raise FileNotFoundError(f"{folder} has no model.safetensors (nor a safetensors index){hint}")


def to_hugging_face_state_dict(model: Transformer) -> dict[str, Tensor]:
    """The model's weights as a GPT2LMHeadModel state dict (Conv1D orientation, `transformer.` names, lm_head)."""
    layout = to_gpt2_layout(model, "conv1d")
    state = {f"transformer.{k}": v for k, v in layout.items() if k != "lm_head.weight"}
    state["lm_head.weight"] = layout.get("lm_head.weight", layout["wte.weight"])
    return state


def save_hugging_face(model: Transformer, folder: str | Path) -> Path:
    """Write config.json and model.safetensors, a folder `GPT2LMHeadModel.from_pretrained` (and from_hugging_face) reads."""
    config = to_hugging_face_config(model.cfg)
    state = to_hugging_face_state_dict(model)
    if model.cfg.tie_unembed:  # transformers stores a tied lm_head once, as wte
        del state["lm_head.weight"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    atomic_write_bytes(folder / "config.json", json.dumps(config, indent=2).encode())
    return folder


def to_hugging_face(model: Transformer, attn_implementation: str = "eager") -> Any:
    """A transformers GPT2LMHeadModel with the model's weights (in eval mode); needs the transformers package."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:
        raise ImportError(
            "building a GPT2LMHeadModel needs the transformers package: pip install transformers "
            "(or write a folder without it: blocks.interop.save_hugging_face(model, folder))"
        ) from err
    hf_cfg = GPT2Config(**to_hugging_face_config(model.cfg))
    hf_cfg._attn_implementation = attn_implementation
    hf = GPT2LMHeadModel(hf_cfg)
    hf.load_state_dict(to_hugging_face_state_dict(model), strict=True)
    return hf.eval()


def load_gpt2(
    name: str = "gpt2",
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    fold_ln: bool = False,
    center_unembed: bool = False,
) -> Transformer:
    """GPT-2 by name ("gpt2", "gpt2-medium", ..., or "owner/repo") from the Hugging Face hub or its local cache.

    Offline, or with `local_files_only` and nothing cached, raises a ConnectionError that says
    what to download and what to pass instead.
    """
    repo = GPT2_REPOS.get(name, name if "/" in name else None)
    if repo is None:
        raise ValueError(f"unknown GPT-2 name {name!r}; known names are {sorted(GPT2_REPOS)} (or give 'owner/repo')")
    paths = hub_files(
        repo,
        ("config.json", "model.safetensors"),
        cache_dir,
        local_files_only,
        f"Put config.json and model.safetensors from https://huggingface.co/{repo} in a folder and call "
        "blocks.interop.from_hugging_face(folder), or pass a GPT2LMHeadModel you already have",
    )
    return from_hugging_face(paths["config.json"].parent, fold_ln=fold_ln, center_unembed=center_unembed)
