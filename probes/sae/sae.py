"""A sparse autoencoder (or a transcoder) as a module: encode to a wide sparse code, decode back.

    acts_pre = (x - b_dec) @ W_enc + b_enc        # [batch, width]; a transcoder does not subtract b_dec
    acts     = activation(acts_pre)               # relu | top-k | a batch's top k | JumpReLU
    recons   = acts @ W_dec + b_dec               # [batch, d_out]

The weights carry the names and orientation SAELens uses (`W_enc: [d_in, width]`,
`W_dec: [width, d_out]`), so its files load here and back (probes.sae.files). A trained
BatchTopK SAE runs at inference as a JumpReLU with one threshold for every feature (Bussmann
et al. 2024), so a forward never depends on which other activations share its batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from scratchnn import HookedModule, HookPoint

SAEKind = Literal["relu", "topk", "batchtopk", "jumprelu"]
KINDS: tuple[str, ...] = get_args(SAEKind)


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is: its sizes, its activation, and the hook point(s) it reads (and, for a transcoder, writes)."""

    d_in: int
    width: int
    kind: SAEKind = "topk"
    k: int = 16  # active features per activation (topk), or on average over a batch (batchtopk)
    hook_name: str = ""
    d_out: int | None = None  # a transcoder predicts d_out numbers at hook_name_out; None: an SAE (d_out = d_in)
    hook_name_out: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SAE kind must be one of {list(KINDS)}, got {self.kind!r}")
        for name in ("d_in", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.kind in ("topk", "batchtopk") and not 1 <= self.k <= self.width:
            raise ValueError(
                f"k={self.k} makes no sense for a {self.kind} SAE of width {self.width}; give 1 <= k <= width"
            )
        if self.d_out is not None and (not isinstance(self.d_out, int) or self.d_out < 1):
            raise ValueError(f"d_out must be a positive int or None, got {self.d_out!r}")
        if (self.d_out is None) != (self.hook_name_out is None):
            raise ValueError("a transcoder needs both d_out and hook_name_out; an SAE gives neither")

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def out_features(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    @property
    def normalize_decoder(self) -> bool:
        """Whether training keeps each decoder row at unit norm.

        An L1 penalty can be dodged by shrinking codes and growing decoder rows, and TopK training
        is steadier with fixed-norm rows (Gao et al. 2024); JumpReLU's L0 penalty counts active
        features whatever their scale, so it needs no such constraint (Rajamanoharan et al. 2024).
        """
        return self.kind != "jumprelu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        return cls(**data)


class SparseAutoencoder(HookedModule):
    """An SAE (or transcoder) with a HookPoint at its input, codes before and after the activation, and output."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d_out = cfg.out_features
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.width))
        self.b_enc = nn.Parameter(torch.empty(cfg.width))
        self.W_dec = nn.Parameter(torch.empty(cfg.width, d_out))
        self.b_dec = nn.Parameter(torch.empty(d_out))
        if cfg.kind == "jumprelu":
            # learned in log space so that it stays positive
            self.log_threshold = nn.Parameter(torch.empty(cfg.width))
        if cfg.kind == "batchtopk":
            # set during training from the batches' k-th largest codes; what inference thresholds at
            self.register_buffer("threshold", torch.zeros(()))
        self.hook_sae_input = HookPoint()  # [batch, d_in]
        self.hook_sae_acts_pre = HookPoint()  # [batch, width]
        self.hook_sae_acts_post = HookPoint()  # [batch, width]
        self.hook_sae_recons = HookPoint()  # [batch, d_out]
        self.reset_parameters()
        self.setup_hooks()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Decoder rows at unit norm, encoder their transpose (a good start for all four kinds), biases zero."""
        W = torch.randn(self.cfg.width, self.cfg.out_features)
        self.W_dec.copy_(W / W.norm(dim=-1, keepdim=True))
        if self.cfg.is_transcoder:
            self.W_enc.copy_(torch.randn(self.cfg.d_in, self.cfg.width) / self.cfg.d_in**0.5)
        else:
            self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.cfg.kind == "jumprelu":
            self.log_threshold.fill_(torch.tensor(0.001).log().item())

    @property
    def jump_threshold(self) -> Float[Tensor, " width"] | None:
        """The per-feature threshold below which a code is zero (JumpReLU, and BatchTopK at inference)."""
        if self.cfg.kind == "jumprelu":
            return self.log_threshold.exp()
        if self.cfg.kind == "batchtopk":
            return self.threshold.expand(self.cfg.width)
        return None

    def pre_acts(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch width"]:
        """The codes before the activation."""
        x = self.hook_sae_input(x)
        if not self.cfg.is_transcoder:  # an SAE's b_dec is the point it reconstructs around
            x = x - self.b_dec
        return self.hook_sae_acts_pre(x @ self.W_enc + self.b_enc)

    def activate(self, pre: Float[Tensor, "batch width"]) -> Float[Tensor, "batch width"]:
        """The inference activation of this SAE's kind."""
        if self.cfg.kind == "relu":
            return pre.relu()
        if self.cfg.kind == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        threshold = self.jump_threshold
        return pre * (pre > threshold)

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch width"]:
        """The sparse code of each activation."""
        return self.hook_sae_acts_post(self.activate(self.pre_acts(x)))

    def decode(self, acts: Float[Tensor, "batch width"]) -> Float[Tensor, "batch d_out"]:
        return self.hook_sae_recons(acts @ self.W_dec + self.b_dec)

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_out"]:
        """The reconstruction (an SAE) or the prediction of the output (a transcoder)."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale each decoder row to unit norm (and its code up to match, so the output is unchanged)."""
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms[None, :])
        self.b_enc.mul_(norms)


def flatten_activation(act: Float[Tensor, "batch pos *rest"]) -> Float[Tensor, "rows d_in"]:
    """Every position's activation as one row: [batch, pos, ...] -> [batch * pos, prod(...)].

    hook_z's [batch, pos, n_heads, d_head] becomes [batch * pos, n_heads * d_head]: the heads concatenated.
    """
    return einops.rearrange(act.reshape(*act.shape[:2], -1), "batch pos d_in -> (batch pos) d_in")


def unflatten_activation(rows: Float[Tensor, "rows d_in"], like: Tensor) -> Tensor:
    """The inverse of flatten_activation, into the shape of `like`."""
    return rows.reshape(like.shape)
