"""nanoGPT checkpoints (`ckpt.pt` as its train.py writes it) into a Transformer with the same logits.

Such a file is a dict: `model_args` (n_layer, n_head, n_embd, block_size, bias, vocab_size,
dropout), `model` (the state dict in GPT-2's layout with nn.Linear weights, each name prefixed
`_orig_mod.` when the model was compiled), and the optimizer's state. It is read with
`torch.load(weights_only=True)` only: tensors, dicts, numbers and strings come back, and a file
that needs code to unpickle is refused. nanoGPT's blocks are GPT-2's with exact GELU, LayerNorm
eps 1e-5, a tied lm_head without bias, and (with bias=False) no biases, which we hold as zeros.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from blocks.config import TransformerConfig
from blocks.interop_fold import center_unembed as center_unembed_of
from blocks.interop_fold import fold_layer_norm
from blocks.interop_gpt2 import from_gpt2_layout, strip_prefixes
from blocks.transformer import Transformer

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict in a torch checkpoint file, read with weights_only=True; a file that needs code to unpickle is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        reason = f"it names {found.group(1)}" if found else type(err).__name__
        raise ValueError(
            f"{path} holds Python objects that only running code could rebuild ({reason}); checkpoints are read with "
            "torch.load(weights_only=True) and nothing else. Re-save it as plain data (tensors, dicts, lists, "
            "numbers, strings), e.g. torch.save({'model_args': dict(...), 'model': model.state_dict()}, path)"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable torch checkpoint ({err}); it may be truncated or corrupt") from err
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{path} holds a {type(ckpt).__name__}, not a dict (of tensors, or nanoGPT's model_args and model)"
        )
    return ckpt


def nanogpt_config(model_args: dict[str, Any], tie_unembed: bool = True) -> TransformerConfig:
    """Our config for nanoGPT's `model_args`; a key nanoGPT's GPTConfig does not have is refused, named."""
    if not isinstance(model_args, dict):
        raise ValueError(f"model_args must be a dict of nanoGPT's GPTConfig fields, got {type(model_args).__name__}")
    missing = [k for k in MODEL_ARGS if k not in model_args and k != "dropout"]
    unknown = sorted(set(model_args) - set(MODEL_ARGS))
    if missing or unknown:
        raise ValueError(
            "unsupported nanoGPT model_args: "
            + "; ".join(([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else []))
            + f"; nanoGPT's GPTConfig has exactly {list(MODEL_ARGS)} (a fork that adds rotary positions, RMSNorm "
            "or other changes is not a model this sandbox can reproduce)"
        )
    return TransformerConfig(
        n_layers=model_args["n_layer"],
        d_model=model_args["n_embd"],
        n_heads=model_args["n_head"],
        d_vocab=model_args["vocab_size"],
        n_ctx=model_args["block_size"],
        d_mlp=4 * model_args["n_embd"],
        act_fn="gelu",
        normalization="LN",
        init_range=0.02,
        tie_unembed=tie_unembed,
    )


def load_nanogpt(
    checkpoint: str | Path | dict[str, Any], fold_ln: bool = False, center_unembed: bool = False
) -> Transformer:
    """A Transformer with a nanoGPT checkpoint's weights: a `ckpt.pt` path, or the dict torch.load returned.

    The unembedding is tied to the embedding when the checkpoint's lm_head equals wte (nanoGPT
    ties them), else kept apart. `fold_ln` and `center_unembed` as in blocks.interop_fold.
    """
    source = f"nanoGPT checkpoint {checkpoint}" if isinstance(checkpoint, (str, Path)) else "nanoGPT checkpoint"
    ckpt = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"the {source} has {keys}; nanoGPT's train.py writes a dict with 'model_args' and 'model'")
    state: dict[str, Tensor] = strip_prefixes(ckpt["model"])
    args = ckpt["model_args"]
    lm_head, wte = state.get("lm_head.weight"), state.get("wte.weight")
    tied = lm_head is None or (wte is not None and lm_head.shape == wte.shape and torch.equal(lm_head, wte))
    bias = args.get("bias", True) if isinstance(args, dict) else True
    if not isinstance(bias, bool):
        raise ValueError(f"nanoGPT model_args bias must be True or False, got {bias!r}")
    model = from_gpt2_layout(state, nanogpt_config(args, tie_unembed=tied), "linear", source, bias=bias)
    if fold_ln:
        model = fold_layer_norm(model)
    if center_unembed:
        model = center_unembed_of(model)
    return model
