import pytest
import torch

from probes.logit_lens import direct_logit_attribution, logit_attribution_figure, logit_lens, logit_lens_figure


@pytest.mark.parametrize("which", ["mlp_model", "attn_only_model"])
def test_components_sum_to_the_logit(which, request):
    model = request.getfixturevalue(which)
    tokens = torch.randint(0, 12, (7,))
    with torch.no_grad():
        logits = model(tokens[None])[0]
    for distractor in (None, 4):
        for pos in (-1, 2):
            dla = direct_logit_attribution(model, tokens, target=3, distractor=distractor, pos=pos)
            want = logits[pos, 3] - (logits[pos, 4] if distractor is not None else 0.0)
            assert dla.total == pytest.approx(float(want), abs=1e-5)
            assert float(dla.values.sum()) == pytest.approx(dla.total, abs=1e-4)
            assert len(dla.labels) == len(dla.values)
    labels = direct_logit_attribution(model, tokens, 3).labels
    assert "L1H3" in labels and labels[-1] == "b_U"
    assert ("L1.mlp" in labels) == (which == "mlp_model")


def test_previous_token_head_carries_the_logit(prev_model):
    tokens = torch.tensor([1, 2, 3, 4])
    dla = direct_logit_attribution(prev_model, tokens, target=3)  # the token before the last
    values = dict(zip(dla.labels, dla.values.tolist()))
    assert values["L0H0"] == pytest.approx(2.0, abs=1e-3)  # W_O copies the previous one-hot, doubled
    assert values["embed"] == 0.0 and values["L0H1"] == 0.0


def test_logit_lens_final_row_is_the_model_output(mlp_model):
    tokens = torch.randint(0, 12, (6,))
    lens = logit_lens(mlp_model, tokens, k=3, target=2)
    assert lens.labels == ["0_pre", "1_pre", "final_post"]
    probs = mlp_model(tokens[None])[0].softmax(-1)
    torch.testing.assert_close(lens.top_probs[-1], probs.topk(3).values)
    torch.testing.assert_close(lens.target_probs[-1], probs[:, 2])
    fig = logit_lens_figure(lens, [str(t) for t in tokens.tolist()], vocab=[f"t{i}" for i in range(12)])
    assert len(fig.data[0].z) == 3
    assert logit_attribution_figure(direct_logit_attribution(mlp_model, tokens, 1)).data[0].x[0] == "embed"


def test_bad_input(mlp_model):
    tokens = torch.randint(0, 12, (6,))
    with pytest.raises(ValueError, match="one prompt"):
        logit_lens(mlp_model, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        direct_logit_attribution(mlp_model, tokens, target=99)
    with pytest.raises(ValueError, match="outside a prompt"):
        direct_logit_attribution(mlp_model, tokens, target=1, pos=6)


@pytest.mark.parametrize("which", ["mlp_model", "attn_only_model"])
def test_batched_logit_lens_and_attribution_agree_with_the_model_and_the_one_prompt_versions(which, request):
    from probes.logit_lens import batch_logit_attribution, logit_lens_logits

    model = request.getfixturevalue(which)
    tokens = torch.randint(0, 12, (4, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens)
    lens = logit_lens_logits(model, tokens)
    assert lens.logits.shape == (model.cfg.n_layers + 1, 4, 7, 12)
    torch.testing.assert_close(lens.logits[-1], logits)
    indices, _ = lens.top_k(3)
    assert torch.equal(indices[:, 2], logit_lens(model, tokens[2], k=3).top_tokens)  # top-k is a view of the logits
    positions = torch.tensor([[0, 6], [3, 3], [6, 1], [2, 5]])
    targets, distractors = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]]), torch.full((4, 2), 9)
    dla = batch_logit_attribution(model, tokens, positions, targets, distractors)
    assert dla.values.shape == (len(dla.labels), 4, 2)
    rows = torch.arange(4)[:, None]
    want = logits[rows, positions].gather(-1, targets[..., None])[..., 0] - logits[rows, positions, 9]
    torch.testing.assert_close(dla.totals, want)
    torch.testing.assert_close(dla.values.sum(0), want, atol=1e-4, rtol=1e-4)
    one = direct_logit_attribution(model, tokens[2], target=5, distractor=9, pos=6)
    batch = dict(zip(dla.labels, dla.values[:, 2, 0].tolist()))
    for label, value in zip(one.labels, one.values.tolist()):
        if label.endswith(".bias"):  # b_O and b_out together there, apart here
            layer = label.split(".")[0]
            value -= batch[f"{layer}.b_O"] + batch.get(f"{layer}.b_out", 0.0)
            assert value == pytest.approx(0.0, abs=1e-4)
        else:
            assert batch[label] == pytest.approx(value, abs=1e-4), label
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 12\)"):
        batch_logit_attribution(model, tokens, positions, targets + 10)
    # at test time the runtime shape check answers first (TypeError); in use our own ValueError does
    with pytest.raises((TypeError, ValueError), match="distractors"):
        batch_logit_attribution(model, tokens, positions, targets, torch.zeros(4, 3, dtype=torch.long))
