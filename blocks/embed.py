"""Token and position embeddings, and the unembedding, in TransformerLens's orientation."""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from blocks.linear_ops import affine
from scratchnn import Embedding


class Embed(Embedding):
    """Token embedding: row `t` of `weight` (W_E, [d_vocab, d_model]) is token t's vector."""

    def __init__(self, d_vocab: int, d_model: int, init_range: float) -> None:
        self.init_range = init_range
        super().__init__(d_vocab, d_model)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_range)


class PosEmbed(Embed):
    """Learned position embedding W_pos [n_ctx, d_model], broadcast over the batch."""

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.weight[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)


class Unembed(nn.Module):
    """logits = x @ W_U + b_U, W_U [d_model, d_vocab]."""

    def __init__(self, d_model: int, d_vocab: int, init_range: float) -> None:
        super().__init__()
        self.init_range = init_range
        self.W_U = nn.Parameter(torch.empty(d_model, d_vocab))
        self.b_U = nn.Parameter(torch.empty(d_vocab))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.W_U, std=self.init_range)
        nn.init.zeros_(self.b_U)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return affine(x, self.W_U, self.b_U)
