"""One transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

from jaxtyping import Float
from torch import Tensor, nn

from blocks.attention import Attention
from blocks.config import TransformerConfig
from blocks.mlp import MLP
from blocks.norm import HookedLayerNorm
from scratchnn import HookPoint


class TransformerBlock(nn.Module):
    """A pre-norm residual block. Attention-only blocks have no ln2, MLP or resid_mid."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.ln1 = HookedLayerNorm(cfg.d_model) if cfg.normalization == "LN" else nn.Identity()
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
            self.ln2 = HookedLayerNorm(cfg.d_model) if cfg.normalization == "LN" else nn.Identity()
            self.mlp = MLP(cfg)
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], pos_embed: Float[Tensor, "batch pos d_model"] | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """`pos_embed` is given only for shortformer models, which add positions to queries and keys."""
        resid_pre = self.hook_resid_pre(x)
        normed = self.ln1(resid_pre)
        if pos_embed is None:
            attn_out = self.attn(normed, normed)
        else:
            # TransformerLens adds shortformer positions after ln1 (to queries' and keys' input only);
            # we follow it so that its published shortformer models load and agree.
            attn_out = self.attn(normed + pos_embed, normed)
        attn_out = self.hook_attn_out(attn_out)
        if self.cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)
