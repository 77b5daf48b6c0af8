"""Hugging Face GPT-2 interop, held to small randomly initialised GPT2LMHeadModels built here (nothing is downloaded).

Every one of our hook points is compared with what the transformers model computes: its
`output_hidden_states`, its attention weights, and forward hooks on its modules (the LayerNorms'
outputs, c_attn's queries, keys and values, c_proj's input, the MLP's neurons).
"""

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a dev dependency: `make venv` installs it

from blocks import Transformer, TransformerConfig  # noqa: E402
from blocks.interop import (  # noqa: E402
    center_unembed,
    fold_layer_norm,
    from_hugging_face,
    from_hugging_face_config,
    load_gpt2,
    save_hugging_face,
    to_hugging_face,
)

GPT2S = {
    "tied_gelu_new": dict(),
    "untied_gelu_inner": dict(activation_function="gelu", n_inner=48, tie_word_embeddings=False),
    "relu_3l": dict(activation_function="relu", n_layer=3, n_head=2),
}


def make_gpt2(**overrides: object) -> "transformers.GPT2LMHeadModel":
    torch.manual_seed(0)
    fields = dict(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=50, bos_token_id=0, eos_token_id=0)
    cfg = transformers.GPT2Config(**{**fields, **overrides})
    cfg._attn_implementation = "eager"  # the path that returns attention weights
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # GPT-2 starts with unit LayerNorms and zero biases: make each of them show
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def hf_activations(hf: "transformers.GPT2LMHeadModel", tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The transformers model's logits and its activations under our hook names."""
    d_head = hf.config.n_embd // hf.config.n_head
    acts, handles = {}, []

    def save(name, pick=lambda inputs, out: out, pre=False):
        def hook(module, inputs, out=None):
            acts[name] = pick(inputs, out).detach()

        return hook

    heads = lambda x: x.reshape(*x.shape[:2], -1, d_head)  # batch pos (n_heads d_head) -> batch pos n_heads d_head
    t = hf.transformer
    handles.append(t.wte.register_forward_hook(save("hook_embed")))
    handles.append(t.wpe.register_forward_hook(save("hook_pos_embed")))
    for l, block in enumerate(t.h):
        p = f"blocks.{l}."
        handles.append(block.ln_1.register_forward_hook(save(p + "ln1.hook_normalized")))
        for i, part in enumerate("qkv"):
            pick = lambda inputs, out, i=i: heads(out.split(hf.config.n_embd, dim=-1)[i])
            handles.append(block.attn.c_attn.register_forward_hook(save(f"{p}attn.hook_{part}", pick)))
        handles.append(block.attn.c_proj.register_forward_pre_hook(save(p + "attn.hook_z", lambda i, o: heads(i[0]))))
        handles.append(block.attn.register_forward_hook(save(p + "hook_attn_out", lambda i, o: o[0])))
        handles.append(block.attn.register_forward_hook(save(p + "attn.hook_pattern", lambda i, o: o[1])))
        handles.append(block.ln_2.register_forward_hook(save(p + "ln2.hook_normalized")))
        handles.append(block.mlp.c_fc.register_forward_hook(save(p + "mlp.hook_pre")))
        handles.append(block.mlp.act.register_forward_hook(save(p + "mlp.hook_post")))
        handles.append(block.mlp.register_forward_hook(save(p + "hook_mlp_out")))
        handles.append(
            block.register_forward_hook(save(p + "hook_resid_post", lambda i, o: o[0] if isinstance(o, tuple) else o))
        )
    try:
        with torch.no_grad():
            out = hf(tokens, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    hidden = out.hidden_states  # the embeddings, each block's output but the last, then ln_f of the last
    n = hf.config.n_layer
    assert len(hidden) == n + 1
    for l in range(n):
        acts[f"blocks.{l}.hook_resid_pre"] = hidden[l]
    acts["ln_final.hook_normalized"] = hidden[n]
    acts["hook_pos_embed"] = acts["hook_pos_embed"].expand(tokens.shape[0], -1, -1)
    return out.logits, acts


def derived(acts: dict, hf: "transformers.GPT2LMHeadModel", n_layers: int) -> dict:
    """The hook points transformers has no module for, computed from its own activations and weights."""
    out = {}
    eps = hf.config.layer_norm_epsilon
    scale = lambda x: (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    for l in range(n_layers):
        p = f"blocks.{l}."
        out[p + "ln1.hook_scale"] = scale(acts[p + "hook_resid_pre"])
        out[p + "hook_resid_mid"] = acts[p + "hook_resid_pre"] + acts[p + "hook_attn_out"]
        out[p + "ln2.hook_scale"] = scale(out[p + "hook_resid_mid"])
        q, k = acts[p + "attn.hook_q"], acts[p + "attn.hook_k"]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        n = q.shape[1]
        out[p + "attn.hook_attn_scores"] = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -torch.inf)
        w_o = hf.transformer.h[l].attn.c_proj.weight.reshape(q.shape[2], q.shape[3], -1)  # Conv1D: [in, out]
        out[p + "attn.hook_result"] = torch.einsum("bphd,hdm->bphm", acts[p + "attn.hook_z"], w_o)
    out["ln_final.hook_scale"] = scale(acts[f"blocks.{n_layers - 1}.hook_resid_post"])
    return out


@pytest.mark.parametrize("name", GPT2S)
def test_logits_and_every_hook_point_match_transformers(name: str) -> None:
    hf = make_gpt2(**GPT2S[name])
    model = from_hugging_face(hf)
    tokens = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(1))
    hf_logits, acts = hf_activations(hf, tokens)
    acts.update(derived(acts, hf, model.cfg.n_layers))
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, hf_logits, atol=1e-5, rtol=1e-5)
    assert set(cache) == set(model.hook_names()) == set(acts), set(model.hook_names()) ^ set(acts)
    for key, want in acts.items():
        got = cache[key]
        if key.endswith("hook_attn_scores"):  # -inf above the diagonal in both; compare the rest
            keep = torch.isfinite(want)
            got, want = got[keep], want[keep]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    assert model.cfg.tie_unembed == hf.config.tie_word_embeddings
    assert model.cfg.act_fn == {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}[hf.config.activation_function]


@pytest.mark.parametrize("name", GPT2S)
def test_export_round_trips_through_an_object_and_a_folder(name: str, tmp_path: Path) -> None:
    hf = make_gpt2(**GPT2S[name])
    model = from_hugging_face(hf)
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(tokens).logits
        torch.testing.assert_close(to_hugging_face(model)(tokens).logits, want, atol=1e-5, rtol=1e-5)
        save_hugging_face(model, tmp_path / "gpt2")
        assert sorted(p.name for p in (tmp_path / "gpt2").iterdir()) == ["config.json", "model.safetensors"]
        loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
        torch.testing.assert_close(loaded(tokens).logits, want, atol=1e-5, rtol=1e-5)
        again = from_hugging_face(tmp_path / "gpt2")
        torch.testing.assert_close(again(tokens), want, atol=1e-5, rtol=1e-5)
        hf.save_pretrained(tmp_path / "theirs")  # the folder transformers itself writes
        torch.testing.assert_close(from_hugging_face(tmp_path / "theirs")(tokens), want, atol=1e-5, rtol=1e-5)


def test_our_own_models_export_when_gpt2_shaped() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=11, n_ctx=8, act_fn="gelu"))
    tokens = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(to_hugging_face(model)(tokens).logits, model(tokens), atol=1e-5, rtol=1e-5)
        model.unembed.bias.fill_(0.5)
    with pytest.raises(ValueError, match="b_U is not zero"):
        to_hugging_face(model)
    for fields, problem in [
        (dict(attn_only=True), "attn_only=True"),
        (dict(positional="shortformer"), "positional='shortformer'"),
        (dict(normalization=None), "normalization=None"),
        (dict(n_heads=2, d_head=4), r"n_heads \* d_head = 8 != d_model = 16"),
    ]:
        other = Transformer(TransformerConfig(n_layers=1, d_model=16, d_vocab=11, n_ctx=8, **fields))
        with pytest.raises(ValueError, match=problem):
            save_hugging_face(other, Path("/nonexistent/never-written"))


@pytest.mark.parametrize("name", GPT2S)
def test_fold_ln_keeps_logits_and_center_unembed_keeps_log_probs(name: str) -> None:
    hf = make_gpt2(**GPT2S[name])
    model = from_hugging_face(hf)
    tokens = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(tokens)
        folded = from_hugging_face(hf, fold_ln=True)
        assert folded.cfg.normalization == "LNPre" and not folded.cfg.tie_unembed
        assert not any("ln" in k for k in folded.state_dict())  # no LayerNorm weights are left
        torch.testing.assert_close(folded(tokens), logits, atol=1e-4, rtol=1e-4)
        centred = from_hugging_face(hf, fold_ln=True, center_unembed=True)
        torch.testing.assert_close(centred.W_U.mean(-1), torch.zeros(32), atol=1e-6, rtol=0)
        torch.testing.assert_close(centred(tokens).log_softmax(-1), logits.log_softmax(-1), atol=1e-4, rtol=1e-4)
        assert (centred(tokens) - logits).abs().max() > 1e-3  # the logits themselves did move, by a constant
        # the functions leave their input alone
        torch.testing.assert_close(fold_layer_norm(model)(tokens), logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            center_unembed(model)(tokens).log_softmax(-1), logits.log_softmax(-1), atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(model(tokens), logits, atol=0, rtol=0)


def test_misshapen_tensor_is_named_with_both_shapes() -> None:
    hf = make_gpt2()
    state = hf.state_dict()
    state["transformer.h.1.attn.c_attn.weight"] = torch.zeros(32, 90)

    class Fake:
        config = hf.config

        def state_dict(self):
            return state

    with pytest.raises(ValueError, match=r"h\.1\.attn\.c_attn\.weight: \(32, 90\) in the .*, \(32, 96\) in the model"):
        from_hugging_face(Fake())


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(model_type="llama"), r"model_type='llama' \(rotary positions, RMSNorm, a gated MLP"),
        (dict(model_type="gpt_neox"), r"rotary positions, attention and MLP in parallel"),
        (dict(model_type="mamba"), r"model_type='mamba' \(an architecture this sandbox does not know\)"),
        (dict(scale_attn_by_inverse_layer_idx=True), r"scale_attn_by_inverse_layer_idx=True \(supported: False\)"),
        (
            dict(activation_function="silu", layer_norm_epsilon=1e-6),
            r"activation_function='silu'.*layer_norm_epsilon=1e-06",
        ),
        (dict(add_cross_attention=True), "add_cross_attention=True"),
    ],
)
def test_unsupported_architectures_say_what_is_unsupported(fields: dict, message: str) -> None:
    hf_cfg = make_gpt2().config.to_dict()
    with pytest.raises(ValueError, match=message):
        from_hugging_face_config({**hf_cfg, **fields})


def test_folders_without_safetensors_are_refused(tmp_path: Path) -> None:
    make_gpt2().config.save_pretrained(tmp_path)
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors.*pytorch_model.bin.*pickles"):
        from_hugging_face(tmp_path)
    with pytest.raises(TypeError, match="GPT2LMHeadModel or a folder"):
        from_hugging_face(42)


def test_gpt2_by_name_says_what_to_pass_offline(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match=r"openai-community/gpt2.*from_hugging_face\(folder\).*GPT2LMHeadModel"):
        load_gpt2("gpt2", cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(ValueError, match="unknown GPT-2 name 'gpt5'.*gpt2-medium"):
        load_gpt2("gpt5")


def test_the_original_gpt2_file_layout_loads(tmp_path: Path) -> None:
    # openai-community/gpt2's model.safetensors: names without "transformer.", no lm_head (tied),
    # and each block's causal-mask buffers attn.bias [1, 1, n_ctx, n_ctx] and attn.masked_bias
    from safetensors.torch import save_file

    hf = make_gpt2()
    state = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for l in range(hf.config.n_layer):
        state[f"h.{l}.attn.bias"] = torch.ones(1, 1, 16, 16).tril()
        state[f"h.{l}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    hf.config.save_pretrained(tmp_path)
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(from_hugging_face(tmp_path)(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
