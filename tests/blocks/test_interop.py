"""TransformerLens interop, checked against fixtures that TransformerLens 2.18 itself made.

scripts/make_tl_fixtures.py (run in a separate venv with transformer-lens==2.18.0) wrote
tests/fixtures/tl/: for each config, the HookedTransformer state dict, tokens, logits and
cached activations.
"""

import json
from pathlib import Path

import pytest
import torch

from blocks import Transformer, TransformerConfig
from blocks.interop import (
    fold_layer_norm,
    from_transformer_lens,
    from_transformer_lens_config,
    load_toy_model,
    load_transformer_lens_checkpoint,
    to_transformer_lens,
)
from blocks.weights import load_tensors, save_tensors

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tl"
NAMES = ["attn_only_2l", "ln_gelu_2l", "nonorm_relu_1l", "shortformer_gelu_2l"]


def load_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    tl_cfg = json.loads((FIXTURES / f"{name}.config.json").read_text())
    return tl_cfg, load_tensors(FIXTURES / f"{name}.safetensors")


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_cache_match_transformer_lens(name: str) -> None:
    tl_cfg, tensors = load_fixture(name)
    model = from_transformer_lens(split(tensors, "state."), from_transformer_lens_config(tl_cfg))
    logits, cache = model.run_with_cache(tensors["tokens"])
    torch.testing.assert_close(logits, tensors["logits"], atol=1e-5, rtol=1e-5)
    expected = split(tensors, "cache.")
    assert set(expected) <= set(cache), sorted(set(expected) - set(cache))
    pos = tensors["tokens"].shape[1]
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    for key, want in expected.items():
        got = cache[key]
        if key.endswith("hook_attn_scores"):  # masked entries are -inf in both, or a big negative: compare the rest
            got, want = got[..., causal], want[..., causal]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    assert len(expected) >= 15


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_gives_the_transformer_lens_state_dict_back(name: str) -> None:
    tl_cfg, tensors = load_fixture(name)
    state = split(tensors, "state.")
    back = to_transformer_lens(from_transformer_lens(state, from_transformer_lens_config(tl_cfg)))
    assert set(back) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(back[key], value, atol=0, rtol=0)


def test_config_mapping() -> None:
    tl_cfg, _ = load_fixture("shortformer_gelu_2l")
    cfg = from_transformer_lens_config(tl_cfg)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (2, 32, 4, 8, 64)
    assert (cfg.act_fn, cfg.normalization, cfg.positional, cfg.attn_only) == ("gelu", "LN", "shortformer", False)
    nonorm = from_transformer_lens_config(load_fixture("nonorm_relu_1l")[0])
    assert nonorm.normalization is None and nonorm.act_fn == "relu"
    # the hub's config.json spells normalization and shortformer differently
    hub = {"n_layers": 2, "d_model": 512, "d_head": 64, "n_heads": 8, "d_mlp": -1, "d_vocab": 48262,
           "n_ctx": 1024, "act_fn": "solu_ln", "attn_only": True, "normalization": "LN", "shortformer_pos": True}  # fmt: skip
    hub_cfg = from_transformer_lens_config(hub)
    assert hub_cfg.attn_only and hub_cfg.positional == "shortformer" and hub_cfg.normalization == "LN"


@pytest.mark.parametrize(
    "field, value",
    [
        ("normalization_type", "RMSPre"),
        ("normalization_type", "RMS"),
        ("act_fn", "solu_ln"),
        ("positional_embedding_type", "rotary"),
        ("attention_dir", "bidirectional"),
        ("parallel_attn_mlp", True),
        ("n_key_value_heads", 2),
        ("eps", 1e-6),
    ],
)
def test_unsupported_config_names_the_field(field: str, value: object) -> None:
    tl_cfg, _ = load_fixture("ln_gelu_2l")
    with pytest.raises(ValueError, match=field):
        from_transformer_lens_config({**tl_cfg, field: value})


def test_state_dict_problems_are_named() -> None:
    tl_cfg, tensors = load_fixture("ln_gelu_2l")
    cfg = from_transformer_lens_config(tl_cfg)
    state = split(tensors, "state.")
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.W_in"):
        from_transformer_lens({k: v for k, v in state.items() if k != "blocks.1.mlp.W_in"}, cfg)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.W_rogue"):
        from_transformer_lens({**state, "blocks.0.attn.W_rogue": torch.zeros(1)}, cfg)
    with pytest.raises(ValueError, match=r"\(23, 31\).*\(23, 32\)"):
        from_transformer_lens({**state, "embed.W_E": torch.zeros(23, 31)}, cfg)


def test_checkpoint_file_loads(tmp_path: Path) -> None:
    tl_cfg, tensors = load_fixture("attn_only_2l")
    state = split(tensors, "state.")
    torch.save(state, tmp_path / "model_final.pth")
    save_tensors(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(tl_cfg))
    for weights in ("model_final.pth", "model.safetensors"):
        model = load_transformer_lens_checkpoint(tmp_path / weights, tmp_path / "config.json")
        torch.testing.assert_close(model(tensors["tokens"]), tensors["logits"], atol=1e-5, rtol=1e-5)


def test_hub_loader_fails_clearly_without_the_files(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match=r"NeelNanda/Attn_Only_2L512W_C4_Code.*load_transformer_lens_checkpoint"):
        load_toy_model("attn-only-2l", cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(ValueError, match="attn-only-2l"):
        load_toy_model("no-such-model")


def test_export_of_our_own_model_loads_back() -> None:
    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=11, n_ctx=8, act_fn="gelu")
    model = Transformer(cfg)
    again = from_transformer_lens(to_transformer_lens(model), cfg)
    tokens = torch.randint(0, 11, (2, 8))
    torch.testing.assert_close(again(tokens), model(tokens), atol=0, rtol=0)


def test_lnpre_models_load_from_transformer_lens_and_keep_the_logits() -> None:
    # TransformerLens's from_pretrained folds each LayerNorm into the next layer and leaves LNPre:
    # fold the fixture's LN model, write it in TransformerLens's format with that config, read it back
    tl_cfg, tensors = load_fixture("ln_gelu_2l")
    folded = fold_layer_norm(from_transformer_lens(split(tensors, "state."), from_transformer_lens_config(tl_cfg)))
    state = to_transformer_lens(folded)
    assert not any(k.endswith((".w", ".b")) and ".ln" in k or k.startswith("ln_final") for k in state)
    lnpre_cfg = from_transformer_lens_config({**tl_cfg, "normalization_type": "LNPre"})
    assert lnpre_cfg.normalization == "LNPre"
    model = from_transformer_lens(state, lnpre_cfg)
    torch.testing.assert_close(model(tensors["tokens"]), tensors["logits"], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks\.0\.ln1\.w'\]"):
        from_transformer_lens({**state, "blocks.0.ln1.w": torch.ones(32)}, lnpre_cfg)
    with pytest.raises(ValueError, match="shortformer model adds positions after ln1"):
        fold_layer_norm(Transformer(from_transformer_lens_config(load_fixture("shortformer_gelu_2l")[0])))
    with pytest.raises(ValueError, match="no LayerNorm"):
        fold_layer_norm(Transformer(from_transformer_lens_config(load_fixture("nonorm_relu_1l")[0])))
