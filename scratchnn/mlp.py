"""The chapter's MLPs, assembled from our own Linear and ReLU."""

from jaxtyping import Float
from torch import Tensor, nn

from scratchnn.activations import Flatten, ReLU
from scratchnn.linear import Linear


class SimpleMLP(nn.Module):
    """in_dim -> hidden_dim -> hidden_dim -> out_dim: three Linear layers, two ReLUs."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.net = nn.Sequential(
            Linear(in_dim, hidden_dim),
            ReLU(),
            Linear(hidden_dim, hidden_dim),
            ReLU(),
            Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Float[Tensor, "batch in_dim"]) -> Float[Tensor, "batch out_dim"]:
        if x.dim() != 2 or x.shape[-1] != self.in_dim:
            raise ValueError(f"SimpleMLP expected input of shape [batch, {self.in_dim}], got {tuple(x.shape)}")
        return self.net(x)


class MNISTClassifier(nn.Module):
    """Flatten, 784 -> 256, ReLU, 256 -> 128, ReLU, 128 -> 10: logits over the ten digits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Flatten(),
            Linear(784, 256),
            ReLU(),
            Linear(256, 128),
            ReLU(),
            Linear(128, 10),
        )

    def forward(self, images: Float[Tensor, "batch *image"]) -> Float[Tensor, "batch 10"]:
        if images.dim() < 2 or images[0].numel() != 784:
            raise ValueError(
                "MNISTClassifier expected images of shape [batch, 28, 28], [batch, 1, 28, 28] or "
                f"[batch, 784], got {tuple(images.shape)}"
            )
        return self.net(images)
