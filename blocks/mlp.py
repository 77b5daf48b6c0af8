"""The MLP of a transformer block, with a hook on every neuron."""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from blocks.config import TransformerConfig
from blocks.linear_ops import ACTIVATIONS, affine
from scratchnn import HookPoint


class MLP(nn.Module):
    """post = act(x @ W_in + b_in); out = post @ W_out + b_out. W_in [d_model, d_mlp], W_out [d_mlp, d_model]."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.empty(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.empty(cfg.d_model))
        self.act = ACTIVATIONS[cfg.act_fn]  # one pass over [batch, pos, d_mlp] instead of scratchnn's five
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.W_in, std=self.cfg.init_range)
        nn.init.normal_(self.W_out, std=self.cfg.init_range)
        nn.init.zeros_(self.b_in)
        nn.init.zeros_(self.b_out)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.hook_pre.is_listened():
            post = self.hook_post(self.act(self.hook_pre(affine(x, self.W_in, self.b_in))))
        else:  # nobody reads the pre-activation: the activation runs inside the matmul's kernel where it can
            post = self.hook_post(affine(x, self.W_in, self.b_in, act=self.cfg.act_fn))
        return affine(post, self.W_out, self.b_out)
