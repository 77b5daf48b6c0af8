import pytest
import torch

from probes.head_detection import (
    detect_head,
    duplicate_token_pattern,
    induction_pattern,
    pattern_match_scores,
    previous_token_pattern,
)
from probes.head_scores import head_scores


def test_scores_average_over_the_scored_queries_and_exclude_bos_drops_the_first_key():
    pos = 6
    previous = previous_token_pattern(pos)[None, None]  # a perfect previous-token head (query 0 on itself)
    previous[0, 0, 0, 0] = 1.0
    to_bos = torch.zeros(1, 1, pos, pos)
    to_bos[..., 0] = 1.0  # a head that always attends to the first token
    pattern = torch.cat([previous, to_bos], dim=1)  # batch n_heads q k
    detection = previous_token_pattern(pos)
    scores = pattern_match_scores(pattern, detection)
    # queries 1..5 are scored; TransformerLens's sum(pattern * detection) / sum(pattern) would give 5/6 and 1/6
    torch.testing.assert_close(scores, torch.tensor([1.0, 1 / 5]))
    torch.testing.assert_close(pattern_match_scores(pattern, detection, exclude_bos=True), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"detection pattern has shape \(5, 5\).*pos = 6"):
        pattern_match_scores(pattern, torch.ones(5, 5))
    with pytest.raises(ValueError, match="scores no query"):
        pattern_match_scores(pattern, torch.eye(pos)[:, :1].expand(pos, pos) * 0)


def test_token_patterns_mark_copies_and_the_tokens_after_them():
    tokens = torch.tensor([[5, 1, 2, 1, 2]])
    dup = duplicate_token_pattern(tokens)[0]
    assert dup.nonzero().tolist() == [[3, 1], [4, 2]]
    assert induction_pattern(tokens)[0].nonzero().tolist() == [[3, 2], [4, 3]]


def test_detect_head_agrees_with_the_fixed_head_scores(mlp_model):
    n, batch = 5, 4
    r = torch.stack([torch.randperm(11, generator=torch.Generator().manual_seed(s))[:n] + 1 for s in range(batch)])
    tokens = torch.cat([torch.zeros(batch, 1, dtype=torch.long), r, r], dim=1)  # [BOS] + r + r, r without repeats
    fixed = head_scores(mlp_model, tokens, n)
    torch.testing.assert_close(
        detect_head(mlp_model, tokens, previous_token_pattern(2 * n + 1)), fixed["previous_token"]
    )
    torch.testing.assert_close(detect_head(mlp_model, tokens, induction_pattern(tokens)), fixed["induction"])
    torch.testing.assert_close(
        detect_head(mlp_model, tokens, duplicate_token_pattern(tokens)), fixed["duplicate_token"]
    )
