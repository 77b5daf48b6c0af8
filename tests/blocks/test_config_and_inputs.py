"""Configs that run, configs that raise, bad inputs named clearly, and the safetensors round trip."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformer_helpers import make_model, tokens_for

from blocks import Transformer, TransformerConfig
from blocks.training.saving import load_model, save_model
from blocks.weights import check_state_dict, save_tensors


def test_derived_sizes_and_dict_round_trip() -> None:
    cfg = TransformerConfig(d_model=64, n_heads=4)
    assert (cfg.d_head, cfg.d_mlp) == (16, 256)
    assert cfg.init_range == pytest.approx(0.1)
    assert TransformerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(d_model=30, n_heads=4), r"d_model=30 is not divisible by n_heads=4"),
        (dict(n_layers=0), r"n_layers must be a positive int, got 0"),
        (dict(d_mlp=-1), r"d_mlp must be a positive int, got -1"),
        (dict(d_head=0), r"d_head must be a positive int, got 0"),
        (dict(init_range=-0.1), r"init_range must be a positive number"),
    ],
)
def test_invalid_values_raise_clearly(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**fields)


@pytest.mark.parametrize(
    "fields",
    [dict(d_model=32.0), dict(n_heads=True), dict(act_fn="swish"), dict(normalization="RMS"),
     dict(positional="rotary"), dict(attn_only="yes"), dict(tie_unembed=1), dict(normalization="LNPost")],
)  # fmt: skip
def test_wrong_types_and_unknown_choices_name_the_field(fields: dict) -> None:
    # at test time the runtime type check answers first (TypeError); in use our own ValueError does
    (name,) = fields
    with pytest.raises((TypeError, ValueError), match=name):
        TransformerConfig(**fields)


def test_tied_unembedding_is_the_embeddings_tensor() -> None:
    model = make_model(tie_unembed=True)
    assert model.unembed.weight is model.embed.weight
    with torch.no_grad():
        model.W_U[3, 5] = 7.0  # W_U is W_E transposed: writing one writes the other
    assert model.W_E[5, 3] == 7.0
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in make_model().parameters()) - 13 * 16


def test_attention_only_models_have_no_d_mlp() -> None:
    cfg = TransformerConfig(d_model=32, attn_only=True)
    assert cfg.d_mlp is None and TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"d_mlp=64 contradicts attn_only=True: an attention-only model has no MLP"):
        TransformerConfig(d_model=32, attn_only=True, d_mlp=64)
    # configs saved before this rule carried the derived 4 * d_model: they load as the same model
    legacy = {**cfg.to_dict(), "d_mlp": 128}
    assert TransformerConfig.from_dict(legacy) == cfg
    with pytest.raises(ValueError, match="contradicts attn_only"):
        TransformerConfig.from_dict({**legacy, "d_mlp": 100})


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown TransformerConfig field\(s\) \['n_layer'\]"):
        TransformerConfig.from_dict({"n_layer": 2})


def test_d_head_may_differ_from_d_model_over_n_heads() -> None:
    model = make_model(n_heads=3, d_head=5)
    _, cache = model.run_with_cache(tokens_for(model), names="blocks.0.attn.hook_z")
    assert cache["blocks.0.attn.hook_z"].shape == (3, 7, 3, 5)


@pytest.mark.parametrize(
    "tokens, error, message",
    [
        (torch.tensor([[1, 2, 13]]), ValueError, r"token id 13 is outside the vocabulary.*\[0, 13\)"),
        (torch.tensor([[1, -1, 2]]), ValueError, r"token id -1 is outside the vocabulary.*\[0, 13\)"),
        (torch.zeros(1, 11, dtype=torch.long), ValueError, r"11 positions but the model's n_ctx is 10"),
        (torch.zeros(2, 5), TypeError, r"integer ids, got dtype torch.float32"),
        (torch.zeros(5, dtype=torch.long), ValueError, r"\[batch, pos\], got \(5,\).*tokens\[None\]"),
        (torch.zeros(2, 3, 4, dtype=torch.long), ValueError, r"\[batch, pos\], got \(2, 3, 4\)"),
        (torch.zeros(2, 0, dtype=torch.long), ValueError, r"0 positions"),
        ([[1, 2]], TypeError, r"torch.Tensor of ids, got list"),
    ],
)
def test_bad_tokens_are_named_before_any_einsum(tokens: object, error: type, message: str) -> None:
    model = make_model()
    with pytest.raises(error, match=message):
        model.check_tokens(tokens)
    # through forward too (at test time the shape annotations may catch it first; both are TypeError/ValueError)
    with pytest.raises((TypeError, ValueError)):
        model(tokens)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = make_model(act_fn="gelu", positional="shortformer")
    save_model(model, tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"model.safetensors", "config.json"}
    again = load_model(tmp_path / "m")
    assert again.cfg == model.cfg
    tokens = tokens_for(model)
    torch.testing.assert_close(again(tokens), model(tokens), atol=0, rtol=0)


def test_load_names_missing_extra_and_misshapen_keys(tmp_path: Path) -> None:
    model = make_model()
    state = dict(model.state_dict())
    del state["blocks.1.mlp.linear_in.weight"]
    state["blocks.0.attn.W_rogue"] = torch.zeros(2)
    state["unembed.weight"] = torch.zeros(12, 16)
    with pytest.raises(ValueError) as info:
        check_state_dict(model, state)
    text = str(info.value)
    assert "missing keys ['blocks.1.mlp.linear_in.weight']" in text
    assert "unexpected keys ['blocks.0.attn.W_rogue']" in text
    assert "unembed.weight: (12, 16) in the state dict, (13, 16) in the model" in text
    save_model(model, tmp_path / "m")
    save_tensors(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors.*missing keys"):
        load_model(tmp_path / "m")


def test_corrupt_or_missing_files_are_named(tmp_path: Path) -> None:
    save_model(make_model(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="config"):
        load_model(tmp_path / "nowhere")


def test_state_dict_loads_into_a_fresh_model_with_strict_keys() -> None:
    model = make_model(attn_only=True, normalization=None)
    fresh = Transformer(model.cfg)
    fresh.load_state_dict(model.state_dict())
    tokens = tokens_for(model)
    torch.testing.assert_close(fresh.eval()(tokens), model(tokens), atol=0, rtol=0)
