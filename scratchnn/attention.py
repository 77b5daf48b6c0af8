"""Causal multi-head self-attention written from scratch, with a hook at every activation worth reading."""

import math

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from scratchnn import backend
from scratchnn.hooks import HookPoint
from scratchnn.linear import Linear


class Attention(nn.Module):
    """Each position mixes the values of the positions up to it, weighted by softmax(q . k / sqrt(d_head)), per head.

    Four of the chapter's Linear maps and the attention arithmetic between them: `query`, `key`
    and `value` take the residual stream to every head's queries, keys and values at once
    (out_features = n_heads * d_head, head-major), `output` takes the heads' mixed values back.
    Analysis reads one head at a time, so the per-head weights are views in TransformerLens's
    layout: W_Q, W_K, W_V [n_heads, d_model, d_head] (x @ W_Q[h] is head h's query, read left to
    right as the stream flows) and W_O [n_heads, d_head, d_model]; b_Q, b_K, b_V [n_heads, d_head].
    Writing into a view writes the Linear's weight.

    Each head's write to the residual stream (`hook_result`, [batch, pos, n_heads, d_model]) is
    the costliest activation, so it is computed only when someone listens to it. When nobody
    listens to the scores or the pattern, a registered backend (scratchnn.backend) may compute
    the weighted sum without forming them: causal attention as written below, so after editing
    these lines or `causal_mask`, switch the backend off (SANDBOX_FAST=0 or reference_only()).
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, n_ctx: int, init_std: float = 0.02) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("d_head", d_head), ("n_ctx", n_ctx)):
            if value <= 0:
                raise ValueError(f"Attention needs positive sizes, got {name}={value}")
        self.d_model, self.n_heads, self.d_head, self.n_ctx = d_model, n_heads, d_head, n_ctx
        self.query = Linear(d_model, n_heads * d_head, init_std=init_std)
        self.key = Linear(d_model, n_heads * d_head, init_std=init_std)
        self.value = Linear(d_model, n_heads * d_head, init_std=init_std)
        self.output = Linear(n_heads * d_head, d_model, init_std=init_std)
        # True above the diagonal: the later keys a query may not see
        self.register_buffer("causal_mask", torch.ones(n_ctx, n_ctx, dtype=torch.bool).triu(1), persistent=False)
        self.hook_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_k = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_v = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_result = HookPoint()  # [batch, pos, n_heads, d_model]

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], x_qk: Float[Tensor, "batch pos d_model"] | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """`x_qk`, when given, is what queries and keys read instead of `x` (shortformer models add positions there)."""
        if x.shape[1] > self.n_ctx:
            raise ValueError(f"the input has {x.shape[1]} positions but this attention's n_ctx is {self.n_ctx}")
        x_qk = x if x_qk is None else x_qk
        heads = "batch pos (n_heads d_head) -> batch pos n_heads d_head"
        q = self.hook_q(einops.rearrange(self.query(x_qk), heads, n_heads=self.n_heads))
        k = self.hook_k(einops.rearrange(self.key(x_qk), heads, n_heads=self.n_heads))
        v = self.hook_v(einops.rearrange(self.value(x), heads, n_heads=self.n_heads))

        fused = backend.fast("causal_attention")
        if fused and not (self.hook_attn_scores.is_listened() or self.hook_pattern.is_listened()):
            z = fused(q, k, v)
        else:
            n = q.shape[1]
            # q / sqrt(d_head) . k is (q . k) / sqrt(d_head); scaling q touches d_head numbers a row instead of pos
            scores = einops.einsum(
                q / math.sqrt(self.d_head),
                k,
                "batch query_pos n_heads d_head, batch key_pos n_heads d_head -> batch n_heads query_pos key_pos",
            )
            scores = self.hook_attn_scores(torch.where(self.causal_mask[:n, :n], float("-inf"), scores))
            pattern = self.hook_pattern(scores.softmax(-1))
            z = einops.einsum(
                pattern,
                v,
                "batch n_heads query_pos key_pos, batch key_pos n_heads d_head -> batch query_pos n_heads d_head",
            )
        z = self.hook_z(z)

        if self.hook_result.is_listened():
            result = einops.einsum(
                z, self.W_O, "batch pos n_heads d_head, n_heads d_head d_model -> batch pos n_heads d_model"
            )
            return self.hook_result(result).sum(-2) + self.b_O
        return self.output(einops.rearrange(z, "batch pos n_heads d_head -> batch pos (n_heads d_head)"))

    @property
    def W_Q(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._per_head(self.query.weight)

    @property
    def W_K(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._per_head(self.key.weight)

    @property
    def W_V(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._per_head(self.value.weight)

    @property
    def W_O(self) -> Float[Tensor, "n_heads d_head d_model"]:
        return einops.rearrange(
            self.output.weight, "d_model (n_heads d_head) -> n_heads d_head d_model", n_heads=self.n_heads
        )

    @property
    def b_Q(self) -> Float[Tensor, "n_heads d_head"]:
        return self.query.bias.view(self.n_heads, self.d_head)

    @property
    def b_K(self) -> Float[Tensor, "n_heads d_head"]:
        return self.key.bias.view(self.n_heads, self.d_head)

    @property
    def b_V(self) -> Float[Tensor, "n_heads d_head"]:
        return self.value.bias.view(self.n_heads, self.d_head)

    @property
    def b_O(self) -> Float[Tensor, " d_model"]:
        return self.output.bias

    def _per_head(self, weight: Float[Tensor, "all d_model"]) -> Float[Tensor, "n_heads d_model d_head"]:
        return einops.rearrange(weight, "(n_heads d_head) d_model -> n_heads d_model d_head", n_heads=self.n_heads)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, d_head={self.d_head}, n_ctx={self.n_ctx}"
