"""One transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

from jaxtyping import Float
from torch import Tensor, nn

from blocks.config import TransformerConfig
from scratchnn import MLP, Attention, HookPoint, LayerNorm


def normalization(cfg: TransformerConfig) -> nn.Module:
    """The config's normalisation: a LayerNorm, one without weights (LNPre), or nothing (an identity)."""
    if cfg.normalization is None:
        return nn.Identity()
    return LayerNorm(cfg.d_model, elementwise_affine=cfg.normalization == "LN")


class TransformerBlock(nn.Module):
    """A pre-norm residual block made of scratchnn's LayerNorm, Attention and MLP. Attention-only blocks have no ln2, MLP or resid_mid."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.ln1 = normalization(cfg)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_ctx, init_std=cfg.init_range)
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
            self.ln2 = normalization(cfg)
            self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.act_fn, init_std=cfg.init_range)
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], pos_embed: Float[Tensor, "batch pos d_model"] | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """`pos_embed` is given only for shortformer models, which add positions to queries' and keys' input."""
        resid_pre = self.hook_resid_pre(x)
        normed = self.ln1(resid_pre)
        # TransformerLens adds shortformer positions after ln1; we follow it so that its published models load and agree
        attn_out = self.hook_attn_out(self.attn(normed, None if pos_embed is None else normed + pos_embed))
        if self.cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)
