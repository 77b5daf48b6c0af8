"""SAEs and transcoders against answers known by construction: activations, gradients, files, splicing, features."""

import json

import pytest
import torch
from conftest import random_model

from blocks import Transformer, TransformerConfig
from blocks.tasks import get_task
from probes.sae.activations import hook_width, run_batches, shuffled_batches, tensor_chunks
from probes.sae.evaluate import check_fits, evaluate_activations, evaluate_sae, splice_hooks
from probes.sae.features import ablated_logits, feature_codes, logit_effect, steered_logits, top_examples
from probes.sae.files import CFG, WEIGHTS, list_saes, load_sae, sae_dir, save_sae
from probes.sae.known import known_variables, match_variables, single_feature_accuracy
from probes.sae.sae import SAEConfig, SparseAutoencoder
from probes.sae.train import JumpReLUFunction, SAETrainConfig, StepFunction, batch_topk, train_sae


def exact_sae(d: int, hook: str) -> SparseAutoencoder:
    """A ReLU SAE of width 2d that reconstructs any x exactly: relu(x) - relu(-x)."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, width=2 * d, kind="relu", hook_name=hook))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


# -- the module ----------------------------------------------------------------------------


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="k=20 makes no sense"):
        SAEConfig(d_in=4, width=16, kind="topk", k=20)
    with pytest.raises((TypeError, ValueError), match="kind"):  # jaxtyping checks the Literal when tests run
        SAEConfig(d_in=4, width=16, kind="gated")
    with pytest.raises(ValueError, match="width must be a positive int"):
        SAEConfig(d_in=4, width=0)
    with pytest.raises(ValueError, match="both d_out and hook_name_out"):
        SAEConfig(d_in=4, width=8, kind="relu", d_out=4)


def test_topk_keeps_at_most_k_codes_and_they_are_the_largest():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, width=32, kind="topk", k=3))
    x = torch.randn(50, 8)
    acts = sae.encode(x)
    assert int((acts > 0).sum(-1).max()) <= 3
    pre = sae.pre_acts(x)
    kth = pre.topk(3, dim=-1).values[:, -1:]
    assert bool(((acts > 0) <= (pre >= kth)).all())
    torch.testing.assert_close(acts[acts > 0], pre[acts > 0])


def test_hook_points_see_the_codes_and_the_reconstruction():
    sae = SparseAutoencoder(SAEConfig(d_in=6, width=12, kind="relu"))
    assert sae.hook_names() == ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons"]
    x = torch.randn(5, 6)
    out, cache = sae.cache_activations(lambda: sae(x))
    torch.testing.assert_close(cache["hook_sae_acts_post"], cache["hook_sae_acts_pre"].relu())
    torch.testing.assert_close(cache["hook_sae_recons"], out)


def test_normalizing_the_decoder_keeps_the_output():
    sae = SparseAutoencoder(SAEConfig(d_in=6, width=12, kind="relu"))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(12, 1) * 3 + 0.1)
    x = torch.randn(7, 6)
    before = sae(x)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(12))
    torch.testing.assert_close(sae(x), before)


def test_jumprelu_pseudo_derivatives_follow_the_paper():
    """Only codes within bandwidth/2 of the threshold move it: -(theta/eps) for the jump, -(1/eps) for the step."""
    z = torch.tensor([[0.5, 1.02, 2.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    out = JumpReLUFunction.apply(z, theta, 0.1)
    torch.testing.assert_close(out.detach(), torch.tensor([[0.0, 1.02, 2.0]]))
    out.sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -10.0, 0.0]))
    torch.testing.assert_close(z.grad, torch.tensor([[0.0, 1.0, 1.0]]))
    theta.grad = None
    StepFunction.apply(z.detach(), theta * 2, 0.1).sum().backward()  # theta 2: only z = 2.0 is near
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, 0.0, -20.0]))


def testbatch_topk_keeps_k_per_row_on_average():
    pre = torch.rand(10, 40) + 0.01
    acts = batch_topk(pre, 4)
    assert int((acts > 0).sum()) == 40
    assert float(acts[acts > 0].min()) >= float(pre.flatten().topk(40).values.min())


# -- training ------------------------------------------------------------------------------


def test_nan_stops_training_and_keeps_the_last_good_state():
    torch.manual_seed(0)
    data = torch.randn(64, 8)

    def batches():
        for step in range(100):
            yield data.clone() if step != 5 else torch.full_like(data, float("nan"))

    sae = SparseAutoencoder(SAEConfig(d_in=8, width=16, kind="relu"))
    result = train_sae(sae, batches(), SAETrainConfig(steps=20, batch_size=64))
    assert result.steps_done == 5
    assert result.diverged is not None and "step 5" in result.diverged
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    assert len(result.losses) == 5 and all(torch.isfinite(torch.tensor(result.losses)))


def test_training_reduces_loss_and_batchtopk_sets_a_threshold():
    torch.manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(32, 8), dim=-1)
    x = (torch.rand(20_000, 32) < 0.05) * torch.rand(20_000, 32) @ dirs
    sae = SparseAutoencoder(SAEConfig(d_in=8, width=64, kind="batchtopk", k=2))
    result = train_sae(sae, shuffled_batches(tensor_chunks(x), 512, 4096), SAETrainConfig(steps=300, batch_size=512))
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert float(sae.threshold) > 0
    stats = evaluate_activations(sae, x[:4000])
    assert stats.explained_variance > 0.5
    assert 0.5 < stats.l0 < 6  # inference thresholds at about the training batches' k-th code


def test_shuffled_batches_draw_only_real_rows_and_refuse_a_small_buffer():
    data = torch.arange(100.0)[:, None].repeat(1, 3)
    got = torch.cat([b for _, b in zip(range(20), shuffled_batches(tensor_chunks(data, 7), 10, 40))])
    assert set(got[:, 0].tolist()) <= set(range(100))
    assert got[:, 0].unique().numel() > 50  # mixed across the data, and the data repeats
    with pytest.raises(ValueError, match="at least two batches"):
        next(shuffled_batches(tensor_chunks(data), 10, 15))
    with pytest.raises(ValueError, match="no activations"):
        next(shuffled_batches(lambda: [], 2, 8))


def test_run_batches_read_the_hook_and_respect_the_buffer():
    model = random_model()
    tokens = torch.randint(0, 12, (20, 8))
    batch = next(run_batches(model, tokens, "blocks.0.attn.hook_z", 16, 64, model_batch=4))
    assert batch.shape == (16, 32)  # 4 heads x d_head 8, concatenated
    x, y = next(run_batches(model, tokens, "blocks.0.ln2.hook_normalized", 16, 64, 4, "blocks.0.hook_mlp_out"))
    assert x.shape == (16, 32) and y.shape == (16, 32)
    with pytest.raises(ValueError, match="larger than the buffer"):
        run_batches(model, tokens, "blocks.0.hook_resid_post", 16, 64, model_batch=16)
    with pytest.raises(ValueError, match="did you mean blocks.0.hook_resid_post"):
        run_batches(model, tokens, "blocks.0.hook_resid_pst", 16, 64, model_batch=2)


# -- splicing and evaluation ----------------------------------------------------------------


def test_an_exact_sae_recovers_all_the_loss():
    model = random_model()
    hook = "blocks.1.hook_resid_mid"
    sae = exact_sae(32, hook)
    tokens = torch.randint(0, 12, (6, 10))
    mask = torch.ones_like(tokens)
    ev = evaluate_sae(model, sae, tokens, mask)
    assert ev.loss_spliced == pytest.approx(ev.loss_clean, abs=1e-5)
    assert abs(ev.loss_zero - ev.loss_clean) > 1e-3  # zeroing the stream changes the (random) model's loss
    assert ev.loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert ev.explained_variance == pytest.approx(1.0, abs=1e-5)
    assert ev.l0 == pytest.approx(32.0)  # each coordinate is positive in one half, negative in the other


def test_a_transcoder_copying_the_mlp_splices_in_without_loss():
    model = random_model(act_fn="relu")
    mlp = model.blocks[0].mlp
    cfg = SAEConfig(
        d_in=32,
        width=48,
        kind="relu",
        hook_name="blocks.0.ln2.hook_normalized",
        d_out=32,
        hook_name_out="blocks.0.hook_mlp_out",
    )
    tc = SparseAutoencoder(cfg)
    with torch.no_grad():
        tc.W_enc.copy_(mlp.W_in)
        tc.b_enc.copy_(mlp.b_in)
        tc.W_dec.copy_(mlp.W_out)
        tc.b_dec.copy_(mlp.b_out)
    tokens = torch.randint(0, 12, (4, 9))
    clean = model(tokens)
    with model.hooks(fwd=splice_hooks(tc)):
        torch.testing.assert_close(model(tokens), clean, atol=1e-5, rtol=1e-5)
    ev = evaluate_sae(model, tc, tokens, torch.ones_like(tokens))
    assert ev.loss_recovered == pytest.approx(1.0, abs=1e-4)


def test_check_fits_names_both_sides():
    model = random_model()
    with pytest.raises(ValueError, match="d_in is 16 but the model's blocks.0.hook_resid_post has 32"):
        check_fits(model, SparseAutoencoder(SAEConfig(d_in=16, width=32, hook_name="blocks.0.hook_resid_post")))
    with pytest.raises(ValueError, match="no hook point named 'blocks.5.hook_resid_post'"):
        check_fits(model, SparseAutoencoder(SAEConfig(d_in=32, width=64, hook_name="blocks.5.hook_resid_post")))
    assert hook_width(model, "blocks.0.mlp.hook_post") == 48


# -- files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu"])
def test_files_round_trip_in_saelens_layout(tmp_path, kind):
    torch.manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=6, width=20, kind=kind, k=3, hook_name="blocks.0.hook_resid_post"))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if kind == "batchtopk":
            sae.threshold.fill_(0.05)
    folder = save_sae(sae, sae_dir(tmp_path, "s1"), {"run": "r", "step": 3})
    cfg = json.loads((folder / CFG).read_text())
    assert (
        cfg["architecture"]
        == {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}[kind]
    )
    assert (cfg["d_in"], cfg["d_sae"], cfg["meta"]["hook_name"], cfg["meta"]["hook_layer"]) == (
        6,
        20,
        sae.cfg.hook_name,
        0,
    )
    from safetensors.torch import load_file

    weights = load_file(folder / WEIGHTS)
    assert weights["W_enc"].shape == (6, 20) and weights["W_dec"].shape == (20, 6)
    assert ("threshold" in weights) == (kind in ("batchtopk", "jumprelu"))
    back, data = load_sae(folder)
    assert back.cfg == sae.cfg and data["sandbox"]["step"] == 3
    x = torch.randn(9, 6)
    torch.testing.assert_close(back(x), sae.eval()(x))
    assert list_saes(tmp_path) == ["s1"]


def test_a_plain_saelens_file_loads(tmp_path):
    """A cfg.json as SAELens writes it, with no sandbox section, loads as the kind its architecture names."""
    from safetensors.torch import save_file

    save_file(
        {
            "W_enc": torch.randn(4, 10),
            "b_enc": torch.zeros(10),
            "W_dec": torch.randn(10, 4),
            "b_dec": torch.zeros(4),
            "threshold": torch.full((10,), 0.3),
        },
        tmp_path / WEIGHTS,
    )
    (tmp_path / CFG).write_text(
        json.dumps(
            {"architecture": "jumprelu", "d_in": 4, "d_sae": 10, "meta": {"hook_name": "blocks.0.hook_resid_pre"}}
        )
    )
    sae, _ = load_sae(tmp_path)
    assert (sae.cfg.kind, sae.cfg.hook_name) == ("jumprelu", "blocks.0.hook_resid_pre")
    torch.testing.assert_close(sae.jump_threshold, torch.full((10,), 0.3))
    (tmp_path / CFG).write_text(json.dumps({"architecture": "gated", "d_in": 4, "d_sae": 10}))
    with pytest.raises(ValueError, match="architecture 'gated' is not one this sandbox runs"):
        load_sae(tmp_path)


# -- features ------------------------------------------------------------------------------


def test_steering_adds_the_direction_through_the_unembedding():
    """With no LayerNorm, adding alpha * d to the last residual stream moves the logits by alpha * d @ W_U."""
    model = random_model(normalization=None)
    sae = exact_sae(32, "blocks.1.hook_resid_post")
    tokens = torch.randint(0, 12, (3, 7))
    clean = model(tokens)
    steered = steered_logits(model, sae, 5, 2.5, tokens)
    torch.testing.assert_close(steered - clean, (2.5 * sae.W_dec[5] @ model.W_U).expand_as(clean), atol=1e-4, rtol=0)
    effect = logit_effect(model, sae, 5, tokens, 2.5)
    assert effect.shape == (12,)
    assert int(effect.argmax()) == int((sae.W_dec[5] @ model.W_U).argmax())


def test_ablating_a_feature_removes_only_its_part():
    """Ablating feature f of the exact SAE zeroes coordinate f where it was positive, nothing else."""
    model = random_model(normalization=None)
    hook = "blocks.1.hook_resid_post"
    sae = exact_sae(32, hook)
    tokens = torch.randint(0, 12, (3, 7))
    _, cache = model.run_with_cache(tokens, names=hook)
    resid = cache[hook]
    expected = resid.clone()
    expected[..., 4] = expected[..., 4].clamp(max=0)
    want = model.unembed(model.ln_final(expected))
    torch.testing.assert_close(ablated_logits(model, sae, 4, tokens), want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="feature 64 is outside"):
        ablated_logits(model, sae, 64, tokens)


def test_top_examples_find_the_largest_codes():
    codes = torch.zeros(4, 5, 3)
    codes[2, 3, 1] = 5.0
    codes[0, 1, 1] = 2.0
    top = top_examples(codes, 1, k=5)
    assert top.rows.tolist() == [2, 0] and top.positions.tolist() == [3, 1] and top.values.tolist() == [5.0, 2.0]


def test_feature_codes_match_encoding_the_cache():
    model = random_model()
    sae = SparseAutoencoder(SAEConfig(d_in=32, width=64, kind="topk", k=4, hook_name="blocks.0.hook_resid_post"))
    tokens = torch.randint(0, 12, (5, 6))
    codes = feature_codes(model, sae, tokens, batch_size=2)
    _, cache = model.run_with_cache(tokens, names=sae.cfg.hook_name)
    torch.testing.assert_close(codes, sae.encode(cache[sae.cfg.hook_name].reshape(30, 32)).reshape(5, 6, 64))


# -- known variables -----------------------------------------------------------------------


def test_single_feature_accuracy_finds_the_feature_that_is_the_label():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (400,), generator=gen)
    codes = torch.rand(400, 4, generator=gen)
    codes[:, 2] = labels.float() * 2 + 0.1 * torch.rand(400, generator=gen)
    accuracy, chance = single_feature_accuracy(codes, labels)
    assert float(accuracy[2]) == 1.0
    assert float(accuracy[[0, 1, 3]].max()) < 0.5
    assert 0.3 < chance < 0.45


def test_sycophancy_variables_are_read_off_the_prompts():
    task = get_task("sycophancy", n_train=64, n_test=64)
    tokens, variables = known_variables(task, n=50)
    by_name = {v.name: v for v in variables}
    assert set(by_name) == {"opinion present", "opinion value", "queried key", "true value"}
    present = by_name["opinion present"].labels.bool()
    assert torch.equal(present, tokens[:, task.opinion_pos] != task.none)
    assert torch.equal(task.key_ids[by_name["queried key"].labels], tokens[:, task.answer_pos])
    with pytest.raises(ValueError, match="has no known variables"):
        known_variables(get_task("induction"), n=4)


def test_sort_ranks_match_the_sorted_list():
    task = get_task("sort", list_len=4, n_values=8, n_train=8, n_test=8)
    tokens, variables = known_variables(task, n=10)
    rank = {v.name: v for v in variables}["token rank"]
    values = tokens[rank.rows, rank.positions]
    sorted_lists = tokens[:, 6:10]
    for r, value, label in zip(rank.rows.tolist(), values.tolist(), rank.labels.tolist()):
        assert sorted_lists[r, label] == value
    model = Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=10, n_ctx=10, attn_only=True))
    sae = SparseAutoencoder(SAEConfig(d_in=16, width=32, kind="relu", hook_name="blocks.0.hook_resid_post"))
    matches = match_variables(feature_codes(model, sae, tokens), variables)
    assert [m.name for m in matches] == ["position", "token rank"]
    assert all(m.accuracy.shape == (32,) and 0 <= m.best_accuracy <= 1 for m in matches)
