"""Head detectors with a pattern of one's own: how much of each head's attention falls where a detection pattern says.

`detection[q, k]` (0/1, or weights) marks the keys a query "should" attend to; it may be one
[pos, pos] pattern for every prompt or one per prompt ([batch, pos, pos], e.g. built from the
tokens by `induction_pattern`). A head's score is the mean, over the *scored* queries (those
whose detection row is not all zero) and the batch, of sum_k pattern[q, k] * detection[q, k].

How this differs from TransformerLens's `detect_head` (error_measure="mul"): there the score
is sum(pattern * detection) / sum(pattern) over *every* query, so queries that the detection
pattern leaves empty still count in the denominator and pull the score towards 0 (a perfect
induction head on [BOS] + r + r scores about 1/2 there, and 1 here). With `exclude_bos`, both
drop key 0 (the first token), and here queries left with an empty row are no longer scored.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer


def previous_token_pattern(pos: int) -> Float[Tensor, "pos pos"]:
    """1 at [q, q - 1]: each query's previous token."""
    return torch.ones(pos - 1).diag(-1)


def duplicate_token_pattern(tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos pos"]:
    """1 at [q, k] for k < q where tokens[k] == tokens[q]: earlier copies of the query's own token."""
    same = tokens[:, :, None] == tokens[:, None, :]
    return (same & torch.ones_like(same[0]).tril(-1)).float()


def induction_pattern(tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos pos"]:
    """1 at [q, k] for k <= q where tokens[k - 1] == tokens[q]: the token after an earlier copy of the query's token."""
    after_copy = torch.zeros(tokens.shape[0], tokens.shape[1], tokens.shape[1], dtype=torch.bool)
    after_copy[:, :, 1:] = duplicate_token_pattern(tokens)[:, :, :-1].bool()
    return after_copy.float()


def pattern_match_scores(
    pattern: Float[Tensor, "batch n_heads query_pos key_pos"],
    detection: Float[Tensor, "*det_batch det_q det_k"],  # checked against the pattern below, with a clear error
    exclude_bos: bool = False,
) -> Float[Tensor, " n_heads"]:
    """Each head's attention on the detection pattern, averaged over the scored queries and the batch."""
    batch_ok = detection.dim() == 2 or detection.shape[0] in (1, pattern.shape[0])
    if detection.shape[-2:] != pattern.shape[-2:] or detection.dim() not in (2, 3) or not batch_ok:
        raise ValueError(
            f"detection pattern has shape {tuple(detection.shape)}; it must be [pos, pos] or [batch, pos, pos] "
            f"with pos = {pattern.shape[-1]}, the prompts' length, and batch 1 or {pattern.shape[0]}, the prompts' count"
        )
    detection = detection.to(pattern.device, pattern.dtype).expand(pattern.shape[0], -1, -1).clone()
    if exclude_bos:
        detection[..., 0] = 0
    scored = detection.sum(-1) > 0  # batch query_pos
    if not scored.any():
        raise ValueError("the detection pattern scores no query (every row is zero); mark at least one key")
    per_query = torch.einsum("bhqk,bqk->bhq", pattern, detection)
    return (per_query * scored[:, None]).sum((0, 2)) / scored.sum()


@torch.no_grad()
def detect_head(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    detection: Float[Tensor, "*det_batch det_q det_k"],
    exclude_bos: bool = False,
) -> Float[Tensor, "layer n_heads"]:
    """Every head's `pattern_match_scores` on `tokens`, as [layer, n_heads]."""
    model.check_tokens(tokens)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens.to(model.W_E.device), names=names, stop_early=True)
    return torch.stack([pattern_match_scores(cache[n], detection, exclude_bos) for n in names]).cpu()
