"""The chapter's MLPs, assembled from our own Linear and activations: two classifiers and a transformer's MLP."""

from typing import Literal

from jaxtyping import Float
from torch import Tensor, nn

from scratchnn.activations import GELU, Flatten, NewGELU, ReLU
from scratchnn.hooks import HookPoint
from scratchnn.linear import Linear

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": ReLU, "gelu": GELU, "gelu_new": NewGELU}


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

    def forward(self, images: Float[Tensor, "batch *image"]) -> Float[Tensor, "batch 10"]:  # noqa: F821
        if images.dim() < 2 or images[0].numel() != 784:
            raise ValueError(
                "MNISTClassifier expected images of shape [batch, 28, 28], [batch, 1, 28, 28] or "
                f"[batch, 784], got {tuple(images.shape)}"
            )
        return self.net(images)


class MLP(nn.Module):
    """A transformer block's MLP: Linear -> activation -> Linear, with a hook on the neurons before and after.

    The two Linears are the chapter's, weights [out_features, in_features]. Interpretability
    reads a neuron as a column of W_in and a row of W_out, so `W_in` [d_model, d_mlp] and
    `W_out` [d_mlp, d_model] are transposed views of those weights (TransformerLens's layout);
    writing into a view writes the weight.
    """

    def __init__(
        self, d_model: int, d_mlp: int, act_fn: Literal["relu", "gelu", "gelu_new"] = "relu", init_std: float = 0.02
    ) -> None:
        super().__init__()
        if act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {act_fn!r}")
        self.linear_in = Linear(d_model, d_mlp, init_std=init_std)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.act = ACTIVATIONS[act_fn]()
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]: the neurons
        self.linear_out = Linear(d_mlp, d_model, init_std=init_std)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(self.linear_in(x))
        post = self.hook_post(self.act(pre))
        return self.linear_out(post)

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.linear_in.weight.T

    @property
    def b_in(self) -> Float[Tensor, " d_mlp"]:
        return self.linear_in.bias

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.linear_out.weight.T

    @property
    def b_out(self) -> Float[Tensor, " d_model"]:
        return self.linear_out.bias
