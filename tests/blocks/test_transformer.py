"""Shapes at every hook point, the residual-stream identities, causality, generation, and torch.func transforms."""

import pytest
import torch
from transformer_helpers import BATCH, CONFIGS, POS, make_model, tokens_for

from blocks import TransformerConfig


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
    has_ln = model.cfg.normalization is not None  # LN or LNPre
    has_mlp = not model.cfg.attn_only
    expected = {"hook_resid_pre", "hook_attn_out", "hook_resid_post"}
    expected |= {f"attn.hook_{x}" for x in ("q", "k", "v", "z", "attn_scores", "pattern", "result")}
    expected |= {"ln1.hook_scale", "ln1.hook_normalized"} if has_ln else set()
    expected |= {"hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out"} if has_mlp else set()
    expected |= {"ln2.hook_scale", "ln2.hook_normalized"} if has_ln and has_mlp else set()
    assert per_block == expected
    top = {n for n in model.hook_names() if not n.startswith("blocks.")}
    assert top == {"hook_embed", "hook_pos_embed"} | (
        {"ln_final.hook_scale", "ln_final.hook_normalized"} if has_ln else set()
    )


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
            torch.testing.assert_close(
                c[b + "hook_resid_post"], c[b + "hook_resid_pre"] + c[b + "hook_attn_out"], **close
            )
        else:
            torch.testing.assert_close(
                c[b + "hook_resid_mid"], c[b + "hook_resid_pre"] + c[b + "hook_attn_out"], **close
            )
            torch.testing.assert_close(
                c[b + "hook_resid_post"], c[b + "hook_resid_mid"] + c[b + "hook_mlp_out"], **close
            )
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


def test_generate_runs_with_the_hooks_of_its_scope() -> None:
    model = make_model()
    prompt = tokens_for(model)[:, :3]
    zero = lambda act, hook: torch.zeros_like(act)
    with model.hooks([("hook_embed", zero), ("hook_pos_embed", zero)]):
        blind = model.generate(prompt, max_new_tokens=6, temperature=0)
        seen = []
        with model.hooks([("blocks.1.hook_resid_post", lambda act, hook: seen.append(act.shape[1]))]):
            model.generate(prompt, max_new_tokens=3, temperature=0)
    # with the embeddings zeroed every position reads the same stream, so every new token is the same one
    assert (blind[:, 3:] == blind[:, 3:4]).all()
    assert seen == [3, 4, 5]  # one forward per new token, each over the whole context so far
    free = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert not torch.equal(free, blind)  # the hooks are gone after their scope
    assert torch.equal(free[:, 3], model(prompt)[:, -1].argmax(-1))


def test_vmap_and_jvp_through_the_model_without_gradients() -> None:
    """torch.func transforms take the fast backend's torch fallbacks on wrapped tensors: same values as plain calls."""
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
