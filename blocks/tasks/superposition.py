"""The toy model of superposition (Elhage et al. 2022): n sparse features squeezed into m < n dimensions and read back.

    x_i  = U[0, 1] with probability p, else 0            [batch, n_features]
    h    = x @ W                                         [batch, d_hidden]   (hook_hidden)
    x'   = ReLU(h @ W.T + b)                             [batch, n_features]
    loss = sum_i importance_i (x_i - x'_i)^2

Feature i's true direction in the hidden space is row i of W (`true_directions`): the one place
in the sandbox where we know what an SAE on an activation ought to find. Unlike the token tasks
this one has no tokenizer and trains its own two-matrix model in seconds, so it is not in
`blocks.tasks.TASKS` (whose tasks `python -m blocks.train` trains as transformers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scratchnn import HookedModule, HookPoint


@dataclass(frozen=True)
class SuperpositionTask:
    """n_features sparse features of importance `importance_decay ** i`, each present with `feature_probability`."""

    n_features: int = 40
    d_hidden: int = 10
    feature_probability: float = 0.025
    importance_decay: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.d_hidden < self.n_features:
            raise ValueError(
                f"superposition needs 1 <= d_hidden < n_features, got d_hidden={self.d_hidden}, "
                f"n_features={self.n_features}"
            )
        if not 0.0 < self.feature_probability <= 1.0:
            raise ValueError(f"feature_probability must lie in (0, 1], got {self.feature_probability}")
        if not 0.0 < self.importance_decay <= 1.0:
            raise ValueError(f"importance_decay must lie in (0, 1], got {self.importance_decay}")

    @property
    def importance(self) -> Float[Tensor, " n_features"]:
        return self.importance_decay ** torch.arange(self.n_features, dtype=torch.float32)

    def features(self, n: int, seed: int) -> Float[Tensor, "batch n_features"]:
        """n draws of the sparse feature vector."""
        gen = torch.Generator().manual_seed(seed)
        present = torch.rand(n, self.n_features, generator=gen) < self.feature_probability
        return present * torch.rand(n, self.n_features, generator=gen)

    def loss(self, model: ToyModel, x: Float[Tensor, "batch n_features"]) -> Tensor:
        return (self.importance * (model(x) - x).pow(2)).sum(-1).mean()

    def train(self, steps: int = 3000, batch_size: int = 1024, lr: float = 1e-2) -> ToyModel:
        """The toy model trained on fresh batches (a few seconds on a CPU)."""
        torch.manual_seed(self.seed)
        model = ToyModel(self.n_features, self.d_hidden)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        for step in range(steps):
            loss = self.loss(model, self.features(batch_size, seed=self.seed * 1_000_003 + step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return model.eval()

    @torch.no_grad()
    def hidden(self, model: ToyModel, n: int, seed: int = 1) -> Float[Tensor, "batch d_hidden"]:
        """The hidden activations an SAE trains on (drawn apart from the training batches)."""
        return self.features(n, seed=seed + 7_777_777) @ model.W

    @torch.no_grad()
    def true_directions(self, model: ToyModel) -> Float[Tensor, "n_features d_hidden"]:
        """Each feature's unit direction in the hidden space (a row of W)."""
        return model.W / model.W.norm(dim=-1, keepdim=True).clamp(min=1e-8)

    @torch.no_grad()
    def represented(self, model: ToyModel, threshold: float = 0.5) -> Tensor:
        """Which features the model keeps (||W_i|| above threshold); the others it drops, so no SAE can find them."""
        return model.W.norm(dim=-1) > threshold


class ToyModel(HookedModule):
    """x -> ReLU(x W W^T + b), with a hook point on the hidden layer."""

    def __init__(self, n_features: int, d_hidden: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(n_features, d_hidden))
        self.b = nn.Parameter(torch.empty(n_features))
        self.hook_hidden = HookPoint()  # [batch, d_hidden]
        self.reset_parameters()
        self.setup_hooks()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.W)
        self.b.zero_()

    def forward(self, x: Float[Tensor, "batch n_features"]) -> Float[Tensor, "batch n_features"]:
        h = self.hook_hidden(x @ self.W)
        return (h @ self.W.T + self.b).relu()


def max_cosine(
    directions: Float[Tensor, "n_features d"], decoder: Float[Tensor, "width d"]
) -> Float[Tensor, " n_features"]:
    """For each true direction, its best cosine similarity with any decoder row (1: the SAE found it)."""
    a = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    b = decoder / decoder.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return (a @ b.T).max(-1).values
