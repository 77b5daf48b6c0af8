"""The decoder-only transformer whose every activation has a name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from blocks.block import TransformerBlock, normalization
from blocks.cache import ActivationCache
from blocks.config import TransformerConfig
from blocks.size import check_fits
from scratchnn import Embedding, HookedModule, HookPoint, Linear


class Transformer(HookedModule):
    """Embeddings, `n_layers` TransformerBlocks, a final LayerNorm and the unembedding, all scratchnn modules.

    `forward(tokens)` returns logits. Read or change activations by name with
    `run_with_cache` and `with model.hooks(...)`; `hook_names()` lists the names.
    The weights interpretability reads have their usual names: `W_E` [d_vocab, d_model],
    `W_pos` [n_ctx, d_model], `W_U` [d_model, d_vocab] and `b_U` (the unembedding is a Linear,
    weight [d_vocab, d_model]; `W_U` is its transposed view, so that x @ W_U reads left to right).
    With `cfg.tie_unembed` the unembedding's weight is the embedding's (writing W_U writes W_E).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        check_fits(cfg, batch=0)  # before allocating: a crafted config must not take the machine's memory
        self.cfg = cfg
        self.embed = Embedding(cfg.d_vocab, cfg.d_model, init_std=cfg.init_range)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.pos_embed = Embedding(cfg.n_ctx, cfg.d_model, init_std=cfg.init_range)
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = normalization(cfg)
        self.unembed = Linear(cfg.d_model, cfg.d_vocab, init_std=cfg.init_range)
        if cfg.tie_unembed:  # one tensor read both ways: W_E's rows are W_U's columns (GPT-2, nanoGPT)
            self.unembed.weight = self.embed.weight
        self.setup_hooks()

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.weight

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.pos_embed.weight

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.weight.T

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        return self.unembed.bias

    def check_tokens(self, tokens: object) -> None:
        """Raise a clear error for anything that is not a [batch, pos] tensor of ids this model knows."""
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of ids, got {type(tokens).__name__}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must hold integer ids, got dtype {tokens.dtype}; use tokens.long()")
        if tokens.dim() != 2:
            hint = " (use tokens[None] for one sequence)" if tokens.dim() == 1 else ""
            raise ValueError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}{hint}")
        if tokens.shape[1] == 0:
            raise ValueError("tokens has 0 positions; give at least one token")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"tokens has {tokens.shape[1]} positions but the model's n_ctx is {self.cfg.n_ctx}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary: ids must lie in [0, {self.cfg.d_vocab})")

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        self.check_tokens(tokens)
        embed = self.hook_embed(self.embed(tokens))
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        pos = self.hook_pos_embed(self.pos_embed(positions).expand(tokens.shape[0], -1, -1))
        if self.cfg.positional == "shortformer":
            resid, qk_pos = embed, pos
        else:
            resid, qk_pos = embed + pos, None
        for block in self.blocks:
            resid = block(resid, qk_pos)
        return self.unembed(self.ln_final(resid))

    def run_with_cache(
        self,
        tokens: Int[Tensor, "batch pos"],
        names: str | Iterable[str] | Callable[[str], bool] | None = None,
        device: torch.device | str | None = None,
        stop_early: bool = False,
    ) -> tuple[Float[Tensor, "batch pos d_vocab"] | None, ActivationCache]:
        """Run the model and return (logits, cache of the named activations, detached).

        `names`: None for every hook point, a name, a list of names, or a predicate on names.
        `device`: where cached tensors go (e.g. "cpu" to keep GPU memory free).
        `stop_early`: end the pass after the last block any requested name lives in; logits
        are then None. Costly points (patterns, per-head results) are computed only if asked.
        """
        wanted = self.resolve(names)
        stop_after = self._last_needed(wanted) if stop_early else None
        logits, cache = self.cache_activations(lambda: self(tokens), wanted, device, stop_after)
        return logits, ActivationCache(cache, self)

    def _last_needed(self, names: list[str]) -> str | None:
        layers = [self._hook_points[n].layer() for n in names]
        if any(layer is None and not n.startswith(("hook_embed", "hook_pos_embed")) for n, layer in zip(names, layers)):
            return None  # something after the last block (ln_final) is wanted
        last = max((layer for layer in layers if layer is not None), default=0)
        return f"blocks.{last}.hook_resid_post"

    @torch.no_grad()
    def generate(
        self,
        tokens: Int[Tensor, "batch pos"],
        max_new_tokens: int,
        temperature: float | int = 1.0,  # int too, so temperature=0 passes the runtime type check
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, "batch new_pos"]:
        """Append `max_new_tokens` sampled tokens (greedy when temperature is 0), keeping the last n_ctx as context.

        Every step is a plain forward, so the hooks of an enclosing `with model.hooks(...)` (an
        ablation, a steering vector) act on each of them.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and not 1 <= top_k <= self.cfg.d_vocab:
            raise ValueError(f"top_k must lie in [1, {self.cfg.d_vocab}], got {top_k}")
        for _ in range(max_new_tokens):
            logits = self(tokens[:, -self.cfg.n_ctx :])[:, -1]
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            tokens = torch.cat([tokens, nxt], dim=1)
        return tokens
