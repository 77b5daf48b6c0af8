import plotly.graph_objects as go
import pytest
import torch

from probes.head_scores import (
    head_scores,
    head_scores_figure,
    head_scores_over_steps_figure,
    pattern_scores,
    repeated_tokens,
    top_heads,
)


def test_hand_built_patterns_have_known_scores():
    n = 3
    pos = 2 * n + 1
    prev = torch.zeros(pos, pos)
    prev[0, 0] = 1.0
    prev[torch.arange(1, pos), torch.arange(0, pos - 1)] = 1.0
    first = torch.zeros(pos, pos)
    first[:, 0] = 1.0
    induction = torch.eye(pos)  # second copy: query 1+n+i attends to key 2+i
    for i in range(n):
        induction[1 + n + i] = 0.0
        induction[1 + n + i, 2 + i] = 1.0
    pattern = torch.stack([prev, first, induction])[None]
    s = pattern_scores(pattern, n)
    torch.testing.assert_close(s["previous_token"], torch.tensor([1.0, 1 / pos * 1, 0.0]), atol=0.2, rtol=0)
    assert s["previous_token"][0] == 1.0
    assert s["first_token"][1] == 1.0
    assert s["current_token"][1] == pytest.approx(1 / pos)
    # docs/reference.md averages the offset 1-n diagonal over the second copy only: a perfect
    # induction head scores exactly 1, and its first-copy queries (n-1 and n) do not dilute it
    assert s["induction"][2] == pytest.approx(1.0)
    assert s["induction"][0] == 0.0
    dup = torch.eye(pos)
    for i in range(n):
        dup[1 + n + i] = 0.0
        dup[1 + n + i, 1 + i] = 1.0
    assert pattern_scores(dup[None, None], n)["duplicate_token"][0] == pytest.approx(1.0)


def test_a_hand_set_previous_token_head_scores_one(prev_model):
    tokens = repeated_tokens(n=3, batch=4, low=1, high=8, bos=0)
    scores = head_scores(prev_model, tokens, n=3)
    assert scores["previous_token"][0, 0] > 0.99
    assert scores["previous_token"][0, 1] < 0.4  # the uniform head
    assert top_heads(scores["previous_token"], k=1)[0][:2] == (0, 0)


def test_figures(prev_model):
    scores = head_scores(prev_model, repeated_tokens(3, 2, 1, 8, 0), n=3)
    fig = head_scores_figure(scores["previous_token"])
    assert isinstance(fig, go.Figure) and fig.data[0].z[0][0] > 0.99
    per_step = [{k: v.tolist() for k, v in scores.items()}] * 2
    fig = head_scores_over_steps_figure([0, 10], per_step, "previous_token")
    assert len(fig.data[0].z) == 2  # one row per head
    with pytest.raises(KeyError, match="scores logged"):
        head_scores_over_steps_figure([0], per_step[:1], "nope")
    with pytest.raises(ValueError, match="one dict per step"):
        head_scores_over_steps_figure([0], per_step, "induction")


def test_score_batch_finds_bos_and_refuses_short_contexts():
    from probes.head_scores import score_batch

    tokens, n = score_batch(["a", "b", "c", "d", "e", "BOS"], n_ctx=11)
    assert n == 5 and tokens.shape == (16, 11)
    assert (tokens[:, 0] == 5).all() and tokens[:, 1:].max() < 5  # r never draws BOS
    assert torch.equal(tokens[:, 1:6], tokens[:, 6:])
    assert score_batch(["BOS", "x"], n_ctx=8) is None  # r would be 3 tokens
