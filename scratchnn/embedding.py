"""Embedding written from scratch: a lookup table of learned rows."""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class Embedding(nn.Module):
    """Row `i` of `weight` [num_embeddings, embedding_dim] is the vector for id `i`.

    Rows start as N(0, init_std^2): torch.nn.Embedding's N(0, 1) by default.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float = 1.0) -> None:
        super().__init__()
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(
                f"Embedding needs positive sizes, got num_embeddings={num_embeddings}, embedding_dim={embedding_dim}"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)

    def forward(self, ids: Int[Tensor, "*shape"]) -> Float[Tensor, "*shape embedding_dim"]:
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"Embedding takes integer ids, got a tensor of dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise IndexError(
                f"Embedding ids must lie in [0, {self.num_embeddings}), got ids from "
                f"{int(ids.min())} to {int(ids.max())}"
            )
        return self.weight[ids]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"
