import pytest
import torch

from probes.ablation import head_ablation, layer_ablation, neuron_ablation, run_ablated


def test_zero_ablating_the_previous_token_head_removes_its_prediction(prev_model):
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6]])
    clean = prev_model(tokens)
    assert (clean[0, 1:].argmax(-1) == tokens[0, :-1]).all()  # it predicts the previous token
    ablated = run_ablated(prev_model, tokens, [head_ablation(prev_model, 0, [0])])
    # without head 0 only the current token's own embedding reaches W_U
    assert (ablated[0].argmax(-1) == tokens[0]).all()
    torch.testing.assert_close(ablated[0].max(-1).values, torch.ones(6))


def test_mean_and_resample_use_the_reference_batch(mlp_model):
    ref = torch.randint(0, 12, (5, 6))
    tokens = torch.randint(0, 12, (3, 6))
    name = "blocks.1.mlp.hook_post"
    _, ref_cache = mlp_model.run_with_cache(ref, names=name)
    seen = {}

    def grab(act, hook):
        seen["act"] = act

    for method in ("mean", "resample"):
        a = neuron_ablation(mlp_model, 1, [2, 7], method, reference_tokens=ref, seed=3)
        with mlp_model.hooks(fwd=[a.pair(), (name, grab)]):
            mlp_model(tokens)
        got = seen["act"][..., [2, 7]]
        if method == "mean":
            torch.testing.assert_close(got, ref_cache[name].mean(0)[..., [2, 7]].expand_as(got))
        else:
            for row in got:  # every ablated row is some reference row
                assert any(torch.allclose(row, r[..., [2, 7]]) for r in ref_cache[name])


def test_head_ablation_at_positions_only_touches_those(mlp_model):
    tokens = torch.randint(0, 12, (2, 6))
    name = "blocks.0.attn.hook_z"
    seen = {}
    with mlp_model.hooks(
        fwd=[head_ablation(mlp_model, 0, [1], positions=[2, 4]).pair(), (name, lambda a, h: seen.setdefault("z", a))]
    ):
        mlp_model(tokens)
    z = seen["z"]
    assert (z[:, [2, 4], 1] == 0).all()
    assert (z[:, [0, 1, 3, 5], 1] != 0).all() and (z[:, :, 0] != 0).all()


def test_layer_ablation_zeroes_the_layer_output(mlp_model):
    tokens = torch.randint(0, 12, (2, 6))
    _, cache = mlp_model.run_with_cache(tokens)
    with mlp_model.hooks(fwd=[layer_ablation(mlp_model, 1, "mlp").pair()]):
        _, ablated = mlp_model.run_with_cache(tokens, names="blocks.1.hook_resid_post")
    torch.testing.assert_close(ablated["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_mid"])


def test_bad_input(mlp_model, attn_only_model):
    with pytest.raises(ValueError, match="layer must lie"):
        head_ablation(mlp_model, 5, [0])
    with pytest.raises(ValueError, match="head index 9"):
        head_ablation(mlp_model, 0, [9])
    with pytest.raises(ValueError, match="needs reference_tokens"):
        head_ablation(mlp_model, 0, [0], "mean")
    with pytest.raises(ValueError, match="unknown ablation method"):
        head_ablation(mlp_model, 0, [0], "random", torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention-only"):
        neuron_ablation(attn_only_model, 0, [0])
    short = head_ablation(mlp_model, 0, [0], "mean", torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="reference batch only 3"):
        run_ablated(mlp_model, torch.zeros(1, 5, dtype=torch.long), [short])


def test_resample_exposes_its_rows_and_run_ablated_gives_the_loss(mlp_model):
    from probes.ablation import run_ablated_with_loss

    ref = torch.randint(0, 12, (5, 6), generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 12, (3, 6), generator=torch.Generator().manual_seed(1))
    name = "blocks.1.hook_mlp_out"
    _, ref_cache = mlp_model.run_with_cache(ref, names=name)
    a = layer_ablation(mlp_model, 1, "mlp", "resample", reference_tokens=ref, seed=4)
    out = run_ablated_with_loss(mlp_model, tokens, [a])
    (rows,) = a.drawn_rows  # one forward, one draw of a row per prompt
    assert rows.shape == (3,) and int(rows.max()) < 5
    _, cache = mlp_model.run_with_cache(tokens, names=lambda n: n in ("blocks.1.hook_resid_mid",))
    # the ablated output is exactly the drawn reference rows' MLP output
    want = mlp_model.unembed(mlp_model.ln_final(cache["blocks.1.hook_resid_mid"] + ref_cache[name][rows]))
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)
    nll = -out.logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(out.loss, nll, atol=1e-5, rtol=1e-5)
    assert out.loss.shape == (3, 5)
    zero = layer_ablation(mlp_model, 1, "mlp")
    run_ablated(mlp_model, tokens, [zero])
    assert zero.drawn_rows == []  # nothing is drawn for zero (or mean) ablation
    with pytest.raises(ValueError, match="at least 2 positions"):
        run_ablated_with_loss(mlp_model, tokens[:, :1], [zero])
