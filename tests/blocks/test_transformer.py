"""Shapes at every hook point, the residual-stream identities, causality, and fused == explicit attention."""

import pytest
import torch

import blocks.attention
import blocks.block

from blocks import Transformer, TransformerConfig
from transformer_helpers import BATCH, POS, make_model, tokens_for

CONFIGS = {
    "ln_relu": dict(),
    "attn_only": dict(attn_only=True),
    "no_norm": dict(normalization=None),
    "gelu": dict(act_fn="gelu"),
    "shortformer": dict(positional="shortformer", act_fn="gelu"),
    "d_head_16": dict(d_model=32, n_heads=2, d_head=16),  # where blocks.attention_kernel's own kernel runs
}


def expected_shape(name: str, cfg: TransformerConfig) -> tuple[int, ...]:
    last = name.rsplit(".", 1)[-1]
    if last == "hook_scale":
        return (BATCH, POS, 1)
    if last in ("hook_q", "hook_k", "hook_v", "hook_z"):
        return (BATCH, POS, cfg.n_heads, cfg.d_head)
    if last in ("hook_attn_scores", "hook_pattern"):
        return (BATCH, cfg.n_heads, POS, POS)
    if last == "hook_result":
        return (BATCH, POS, cfg.n_heads, cfg.d_model)
    if last in ("hook_pre", "hook_post"):
        return (BATCH, POS, cfg.d_mlp)
    return (BATCH, POS, cfg.d_model)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_hook_point_has_its_documented_shape(config: str) -> None:
    model = make_model(**CONFIGS[config])
    logits, cache = model.run_with_cache(tokens_for(model))
    assert logits.shape == (BATCH, POS, model.cfg.d_vocab)
    assert list(cache) == model.hook_names()
    for name, act in cache.items():
        assert act.shape == expected_shape(name, model.cfg), name
    per_block = {n.split(".", 2)[2] for n in model.hook_names() if n.startswith("blocks.0.")}
    has_ln = model.cfg.normalization == "LN"
    has_mlp = not model.cfg.attn_only
    expected = {"hook_resid_pre", "hook_attn_out", "hook_resid_post"}
    expected |= {f"attn.hook_{x}" for x in ("q", "k", "v", "z", "attn_scores", "pattern", "result")}
    expected |= {"ln1.hook_scale", "ln1.hook_normalized"} if has_ln else set()
    expected |= {"hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out"} if has_mlp else set()
    expected |= {"ln2.hook_scale", "ln2.hook_normalized"} if has_ln and has_mlp else set()
    assert per_block == expected
    top = {n for n in model.hook_names() if not n.startswith("blocks.")}
    assert top == {"hook_embed", "hook_pos_embed"} | ({"ln_final.hook_scale", "ln_final.hook_normalized"} if has_ln else set())


@pytest.mark.parametrize("config", CONFIGS)
def test_residual_stream_identities(config: str) -> None:
    model = make_model(**CONFIGS[config])
    _, c = model.run_with_cache(tokens_for(model))
    cfg = model.cfg
    close = dict(atol=1e-5, rtol=1e-5)
    first = c["hook_embed"] + (c["hook_pos_embed"] if cfg.positional == "learned" else 0)
    torch.testing.assert_close(c["blocks.0.hook_resid_pre"], first, **close)
    for layer in range(cfg.n_layers):
        b, block = f"blocks.{layer}.", model.blocks[layer]
        head_sum = c[b + "attn.hook_result"].sum(-2) + block.attn.b_O
        torch.testing.assert_close(c[b + "hook_attn_out"], head_sum, **close)
        if cfg.attn_only:
            torch.testing.assert_close(c[b + "hook_resid_post"], c[b + "hook_resid_pre"] + c[b + "hook_attn_out"], **close)
        else:
            torch.testing.assert_close(c[b + "hook_resid_mid"], c[b + "hook_resid_pre"] + c[b + "hook_attn_out"], **close)
            torch.testing.assert_close(c[b + "hook_resid_post"], c[b + "hook_resid_mid"] + c[b + "hook_mlp_out"], **close)
            mlp_out = c[b + "mlp.hook_post"] @ block.mlp.W_out + block.mlp.b_out
            torch.testing.assert_close(c[b + "hook_mlp_out"], mlp_out, **close)
        pattern = c[b + "attn.hook_pattern"]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(BATCH, cfg.n_heads, POS), **close)
        above = torch.ones(POS, POS, dtype=torch.bool).triu(1)
        assert (pattern[..., above] == 0).all()
        if layer + 1 < cfg.n_layers:
            assert torch.equal(c[b + "hook_resid_post"], c[f"blocks.{layer + 1}.hook_resid_pre"])


@pytest.mark.parametrize("config", ["ln_relu", "shortformer"])
def test_changing_a_later_token_changes_no_earlier_logit(config: str) -> None:
    model = make_model(**CONFIGS[config])
    tokens = tokens_for(model)
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % model.cfg.d_vocab
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-6, rtol=1e-6)
    assert (a[:, 4:] - b[:, 4:]).abs().amax() > 1e-3


@pytest.mark.parametrize("config", CONFIGS)
def test_fused_and_explicit_attention_agree_everywhere(config: str) -> None:
    model = make_model(**CONFIGS[config])
    tokens = tokens_for(model)
    costly = ("hook_attn_scores", "hook_pattern", "hook_result")
    fused_logits, fused = model.run_with_cache(tokens, names=lambda n: not n.endswith(costly))
    # listening to the pattern forces the explicit path in every layer
    explicit_logits, explicit = model.run_with_cache(tokens)
    plain_logits = model(tokens)
    torch.testing.assert_close(fused_logits, explicit_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain_logits, explicit_logits, atol=1e-5, rtol=1e-5)
    assert len(fused) == len(model.hook_names()) - 3 * model.cfg.n_layers
    for name, act in fused.items():
        torch.testing.assert_close(act, explicit[name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_explicit_path_is_taken_only_when_someone_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model()
    calls = []
    fused = blocks.attention.causal_attention
    monkeypatch.setattr(blocks.attention, "causal_attention", lambda *a: calls.append(1) or fused(*a))
    model(tokens_for(model))
    assert len(calls) == model.cfg.n_layers
    model.run_with_cache(tokens_for(model), names="blocks.1.attn.hook_pattern")
    assert len(calls) == model.cfg.n_layers + 1  # layer 0 fused, layer 1 explicit


def test_generate_appends_tokens_and_is_greedy_at_zero_temperature() -> None:
    model = make_model()
    prompt = tokens_for(model)[:, :3]
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    assert out.shape == (BATCH, 15)
    assert torch.equal(out[:, :3], prompt)
    assert torch.equal(out[:, 3], model(prompt)[:, -1].argmax(-1))
    sampled = model.generate(prompt, 4, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    top2 = model(prompt)[:, -1].topk(2).indices
    assert (sampled[:, 3:4] == top2).any(-1).all()


@pytest.mark.parametrize("config", ["ln_relu", "d_head_16"])
def test_fused_and_explicit_attention_give_the_same_gradients(config: str) -> None:
    model = make_model(**CONFIGS[config])
    tokens = tokens_for(model)
    grads = []
    for listen in (False, True):  # listening to every pattern forces the explicit path
        model.zero_grad()
        with model.hooks(fwd=[(lambda n: n.endswith("hook_pattern"), lambda act, hook: None)] if listen else []):
            model(tokens).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")



def _record_in_place(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each residual add from now on wrote into the sublayer's output (True) or made a new tensor."""
    in_place: list[bool] = []
    add = blocks.block._residual_add

    def recording(resid: torch.Tensor, out: torch.Tensor, *rest: object) -> torch.Tensor:
        total = add(resid, out, *rest)
        in_place.append(total is out)
        return total

    monkeypatch.setattr(blocks.block, "_residual_add", recording)
    return in_place


@pytest.mark.parametrize("config", ["ln_relu", "attn_only"])
def test_residual_adds_in_place_give_the_same_bits(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(**CONFIGS[config])
    tokens = tokens_for(model)
    in_place = _record_in_place(monkeypatch)
    with torch.no_grad():
        fast = model(tokens)
        assert len(in_place) == model.cfg.n_layers * (1 if model.cfg.attn_only else 2) and all(in_place)
        in_place.clear()
        handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)  # someone may keep outputs
        try:
            plain = model(tokens)
        finally:
            handle.remove()
    assert in_place and not any(in_place)
    assert torch.equal(fast, plain)
    assert torch.equal(fast, model(tokens))  # with gradients: new tensors


def test_residual_adds_never_overwrite_a_tensor_someone_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model()
    tokens = tokens_for(model)
    in_place = _record_in_place(monkeypatch)
    with torch.no_grad():
        # a cache of the sublayer outputs: the residual identities must hold exactly
        names = [f"blocks.0.{n}" for n in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")]
        _, c = model.run_with_cache(tokens, names=names)
        assert torch.equal(c["blocks.0.hook_resid_mid"], c["blocks.0.hook_resid_pre"] + c["blocks.0.hook_attn_out"])
        assert torch.equal(c["blocks.0.hook_resid_post"], c["blocks.0.hook_resid_mid"] + c["blocks.0.hook_mlp_out"])
        assert in_place[:2] == [False, False] and all(in_place[2:])  # block 1 unlistened: in place
        # a patch that returns its own tensor
        patch = torch.randn(BATCH, POS, model.cfg.d_model)
        kept = patch.clone()
        with model.hooks(fwd=[("blocks.1.hook_mlp_out", lambda act, hook: patch)]):
            model(tokens)
        assert torch.equal(patch, kept)
        # a plain torch forward hook on a sublayer
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        handle = model.blocks[1].attn.register_forward_hook(lambda mod, inputs, out: saved.append((out, out.clone())))
        try:
            model(tokens)
        finally:
            handle.remove()
        assert torch.equal(*saved[0])


def test_vmap_and_jvp_through_the_model_without_gradients() -> None:
    """torch.func transforms run the in-place residual adds on wrapped tensors: same values as plain calls."""
    model = make_model(act_fn="gelu")
    tokens = tokens_for(model)
    params = {name: p.detach() for name, p in model.named_parameters()}
    W_E = params["embed.weight"]

    def logits(weight: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {**params, "embed.weight": weight}, (tokens,))

    with torch.no_grad():
        stacked = torch.stack([W_E, 1.5 * W_E])
        batched = torch.func.vmap(logits)(stacked)
        for i in range(2):
            torch.testing.assert_close(batched[i], logits(stacked[i]), atol=1e-5, rtol=1e-5)
        direction = torch.randn_like(W_E)
        out, tangent = torch.func.jvp(logits, (W_E,), (direction,))
        torch.testing.assert_close(out, logits(W_E), atol=1e-5, rtol=1e-5)
        # the tangent against a float64 central difference of the same function
        model.double()
        params = {name: p.detach() for name, p in model.named_parameters()}
        eps, W_E = 1e-5, params["embed.weight"]
        expected = (logits(W_E + eps * direction.double()) - logits(W_E - eps * direction.double())) / (2 * eps)
        torch.testing.assert_close(tangent.double(), expected, atol=1e-3, rtol=1e-3)
