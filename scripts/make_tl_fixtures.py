"""Make golden fixtures with TransformerLens 2.18 itself, for tests/blocks/test_interop.py.

Run with the python of a separate virtual environment that holds TransformerLens (never the
project's own; TransformerLens 4 removed HookedTransformer):

    python3 -m venv .tlvenv
    .tlvenv/bin/pip install torch==2.13.0 transformer-lens==2.18.0 "datasets<3" "pyarrow<18"
    .tlvenv/bin/python scripts/make_tl_fixtures.py

For each small configuration it writes tests/fixtures/tl/NAME.config.json (the
HookedTransformerConfig fields that are JSON) and NAME.safetensors holding the model's state
dict (`state.*`), the tokens, the logits and cached activations (`cache.*`).
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tl"

BASE = dict(d_model=32, n_heads=4, d_head=8, d_vocab=23, n_ctx=16, use_attn_result=True, seed=0)
CONFIGS = {
    "attn_only_2l": dict(n_layers=2, attn_only=True, act_fn="relu", normalization_type="LN"),
    "ln_gelu_2l": dict(n_layers=2, d_mlp=64, act_fn="gelu", normalization_type="LN"),
    "nonorm_relu_1l": dict(n_layers=1, d_mlp=64, act_fn="relu", normalization_type=None),
    "shortformer_gelu_2l": dict(
        n_layers=2, d_mlp=64, act_fn="gelu", normalization_type="LN", positional_embedding_type="shortformer"
    ),
}
BATCH, POS = 2, 12
# Names we keep (all layers); the rest of TransformerLens's cache repeats these.
KEEP = (
    "hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
    "hook_attn_out", "hook_mlp_out", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z",
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_result", "mlp.hook_pre", "mlp.hook_post",
    "hook_scale", "hook_normalized",
)  # fmt: skip


def jsonable(cfg: HookedTransformerConfig) -> dict:
    out = {}
    for key, value in cfg.to_dict().items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def make(name: str, fields: dict) -> None:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(**BASE, **fields)
    model = HookedTransformer(cfg).eval()
    # TransformerLens initialises biases to 0 and LayerNorm weights to 1; perturb every weight so
    # that a swapped bias or a dropped LayerNorm weight shows in the logits.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    tokens = torch.randint(0, cfg.d_vocab, (BATCH, POS))
    logits, cache = model.run_with_cache(tokens)
    tensors = {f"state.{k}": v.clone().contiguous() for k, v in model.state_dict().items()}
    tensors["tokens"] = tokens
    tensors["logits"] = logits.contiguous()
    for key, value in cache.items():
        if key.endswith(KEEP):
            tensors[f"cache.{key}"] = value.clone().contiguous()
    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata={"transformer_lens": version("transformer_lens")})
    (OUT / f"{name}.config.json").write_text(json.dumps(jsonable(cfg), indent=1, sort_keys=True))
    print(f"{name}: {len(tensors)} tensors, {(OUT / f'{name}.safetensors').stat().st_size / 1e3:.0f} kB")


def main() -> None:
    if not version("transformer_lens").startswith("2.18"):
        sys.exit(f"these fixtures are defined by TransformerLens 2.18, found {version('transformer_lens')}")
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fields in CONFIGS.items():
        make(name, fields)


if __name__ == "__main__":
    main()
