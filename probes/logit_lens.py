"""Logit lens over the accumulated residual stream, and direct logit attribution of every component."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer


def _one_prompt(model: Transformer, tokens: Tensor) -> Tensor:
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"give one prompt as [pos] or [1, pos] token ids, got shape {tuple(tokens.shape)}")
    model.check_tokens(tokens)
    return tokens.to(next(model.parameters()).device)


def _check_pos(pos: int, n: int) -> int:
    if not -n <= pos < n:
        raise ValueError(f"position {pos} is outside a prompt of {n} tokens (use 0..{n - 1} or -1 for the last)")
    return pos % n


@dataclass(frozen=True)
class LogitLens:
    """The most likely next tokens read off the residual stream before each block and at the end.

    `labels[i]` names stream i ("0_pre", ..., "final_post"); `top_tokens`/`top_probs` are
    [stream, pos, k]; `target_probs` [stream, pos] is the probability of `target` if one was given.
    """

    labels: list[str]
    top_tokens: Int[Tensor, "stream pos k"]
    top_probs: Float[Tensor, "stream pos k"]
    target_probs: Float[Tensor, "stream pos"] | None


@dataclass(frozen=True)
class LensLogits:
    """The full logits read off the residual stream before each block and at the end, for a batch of prompts.

    `labels[i]` names stream i ("0_pre", ..., "final_post"); the last stream's logits are the model's.
    """

    labels: list[str]
    logits: Float[Tensor, "stream batch pos d_vocab"]

    def top_k(self, k: int) -> tuple[Int[Tensor, "stream batch pos k"], Float[Tensor, "stream batch pos k"]]:
        """The k most likely tokens per stream, prompt and position, and their probabilities."""
        top = self.logits.softmax(-1).topk(k, dim=-1)
        return top.indices, top.values


@torch.no_grad()
def logit_lens_logits(model: Transformer, tokens: Int[Tensor, "batch pos"]) -> LensLogits:
    """Unembed the accumulated residual stream (through the final LayerNorm) at every layer, prompt and position.

    Holds stream x batch x pos x d_vocab floats: for a large vocabulary, give a few prompts at a time.
    """
    model.check_tokens(tokens)
    _, cache = model.run_with_cache(tokens.to(model.W_E.device), names=lambda n: "resid" in n)
    stack = cache.accumulated_resid()
    return LensLogits(stack.labels, model.unembed(model.ln_final(stack.values)))


@torch.no_grad()
def logit_lens(model: Transformer, tokens: Int[Tensor, "*one pos"], k: int = 5, target: int | None = None) -> LogitLens:
    """Unembed the accumulated residual stream (through the final LayerNorm) at every layer and position."""
    tokens = _one_prompt(model, tokens)
    if not 1 <= k <= model.cfg.d_vocab:
        raise ValueError(f"k must lie in [1, {model.cfg.d_vocab}], got {k}")
    if target is not None and not 0 <= target < model.cfg.d_vocab:
        raise ValueError(f"target token {target} is outside the vocabulary [0, {model.cfg.d_vocab})")
    lens = logit_lens_logits(model, tokens)
    logits = lens.logits[:, 0]  # stream pos d_vocab
    probs = logits.softmax(-1)
    top = probs.topk(k, dim=-1)
    target_probs = probs[..., target] if target is not None else None
    return LogitLens(
        lens.labels, top.indices.cpu(), top.values.cpu(), None if target_probs is None else target_probs.cpu()
    )


def logit_lens_figure(lens: LogitLens, token_labels: Sequence[str], vocab: Sequence[str] | None = None) -> go.Figure:
    """A stream x position grid coloured by the top-1 probability and labelled with the top-1 token."""
    top = lens.top_tokens[..., 0].tolist()
    name = (lambda t: vocab[t]) if vocab is not None else str
    text = [[name(t) for t in row] for row in top]
    z = lens.top_probs[..., 0].tolist() if lens.target_probs is None else lens.target_probs.tolist()
    hover = [
        [
            "<br>".join(f"{name(int(t))}: {float(p):.2f}" for t, p in zip(lens.top_tokens[s, q], lens.top_probs[s, q]))
            for q in range(lens.top_tokens.shape[1])
        ]
        for s in range(lens.top_tokens.shape[0])
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"{i}: {t}" for i, t in enumerate(token_labels)],
            y=lens.labels,
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{y}, %{x}<br>%{customdata}<extra></extra>",
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0,
        )
    )
    what = "top-1 probability" if lens.target_probs is None else "probability of the target"
    fig.update_layout(title=f"logit lens (colour: {what})", xaxis_title="position", yaxis_title="residual stream")
    return fig


@dataclass(frozen=True)
class LogitAttribution:
    """Each component's direct contribution to one logit (or logit difference) at one position.

    `values` sum to `total`, the model's actual logit (difference), up to float error.
    """

    labels: list[str]
    values: Float[Tensor, " component"]
    total: float


@torch.no_grad()
def direct_logit_attribution(
    model: Transformer,
    tokens: Int[Tensor, "*one pos"],
    target: int,
    distractor: int | None = None,
    pos: int = -1,
) -> LogitAttribution:
    """Split logit[target] (minus logit[distractor]) at `pos` over the components writing to the final stream.

    Components: embed, pos_embed (learned positions only), every head (L{l}H{h}), every MLP
    (L{l}.mlp, without its bias), the biases b_O + b_out of each layer (L{l}.bias), the final
    LayerNorm's bias and b_U. Each part goes through the final LayerNorm with its scale frozen
    at the value the full stream had, which is linear, so the parts sum to the logit exactly.
    """
    tokens = _one_prompt(model, tokens)
    for what, t in (("target", target), ("distractor", distractor)):
        if t is not None and not 0 <= t < model.cfg.d_vocab:
            raise ValueError(f"{what} token {t} is outside the vocabulary [0, {model.cfg.d_vocab})")
    p = _check_pos(pos, tokens.shape[1])
    logits, cache = model.run_with_cache(tokens, names=lambda n: not n.endswith(("hook_pattern", "hook_attn_scores")))
    assert logits is not None
    W_U, b_U = model.W_U, model.b_U
    direction = W_U[:, target] - (W_U[:, distractor] if distractor is not None else 0.0)
    bias_U = b_U[target] - (b_U[distractor] if distractor is not None else 0.0)

    parts, labels = [cache["hook_embed"][0, p]], ["embed"]
    if model.cfg.positional == "learned":
        parts.append(cache["hook_pos_embed"][0, p])
        labels.append("pos_embed")
    for layer, block in enumerate(model.blocks):
        result = cache[f"blocks.{layer}.attn.hook_result"][0, p]  # n_heads d_model
        for h in range(model.cfg.n_heads):
            parts.append(result[h])
            labels.append(f"L{layer}H{h}")
        bias = block.attn.b_O
        if not model.cfg.attn_only:
            post = cache[f"blocks.{layer}.mlp.hook_post"][0, p]
            parts.append(post @ block.mlp.W_out)
            labels.append(f"L{layer}.mlp")
            bias = bias + block.mlp.b_out
        parts.append(bias)
        labels.append(f"L{layer}.bias")
    stack = torch.stack(parts)  # component d_model
    if model.cfg.normalization == "LN":
        scale = cache["ln_final.hook_scale"][0, p]
        stack = (stack - stack.mean(-1, keepdim=True)) / scale * model.ln_final.weight
        values = torch.cat([stack @ direction, (model.ln_final.bias @ direction)[None]])
        labels.append("ln_final.b")
    elif model.cfg.normalization == "LNPre":  # the same linear map without a weight or bias
        scale = cache["ln_final.hook_scale"][0, p]
        values = (stack - stack.mean(-1, keepdim=True)) / scale @ direction
    else:
        values = stack @ direction
    values = torch.cat([values, bias_U.reshape(1)])
    labels.append("b_U")
    total = logits[0, p, target] - (logits[0, p, distractor] if distractor is not None else 0.0)
    return LogitAttribution(labels, values.cpu(), float(total))


@dataclass(frozen=True)
class BatchLogitAttribution:
    """Each component's direct contribution to logit[target] (minus logit[distractor]) at chosen positions of a batch.

    `values` [component, batch, n] sum over components to `totals` [batch, n], the model's own
    logits (differences), up to float error.
    """

    labels: list[str]
    values: Float[Tensor, "component batch n"]
    totals: Float[Tensor, "batch n"]


@torch.no_grad()
def batch_logit_attribution(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    positions: Int[Tensor, "batch n"],
    targets: Int[Tensor, "batch n"],
    distractors: Int[Tensor, "batch n"] | None = None,
) -> BatchLogitAttribution:
    """Direct logit attribution for a batch, at any positions of each prompt, with each layer's biases apart.

    Components: embed, pos_embed (learned positions only), every head (L{l}H{h}), every MLP
    (L{l}.mlp, without its bias), each layer's attention bias (L{l}.b_O) and MLP bias (L{l}.b_out),
    the final LayerNorm's bias and b_U. As in `direct_logit_attribution`, each part goes through
    the final LayerNorm with the full stream's scale frozen, so the parts sum to the logit.
    """
    model.check_tokens(tokens)
    n_pos, vocab = tokens.shape[1], model.cfg.d_vocab
    for name, t, bound in (
        ("positions", positions, n_pos),
        ("targets", targets, vocab),
        ("distractors", distractors, vocab),
    ):
        if t is None:
            continue
        if t.shape != positions.shape or t.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; positions, targets and distractors must all be [batch={tokens.shape[0]}, n]"
            )
        if int(t.min()) < 0 or int(t.max()) >= bound:
            raise ValueError(f"{name} must lie in [0, {bound}), got values from {int(t.min())} to {int(t.max())}")
    device = model.W_E.device
    tokens, positions, targets = tokens.to(device), positions.to(device), targets.to(device)
    logits, cache = model.run_with_cache(tokens, names=lambda n: not n.endswith(("hook_pattern", "hook_attn_scores")))
    rows = torch.arange(tokens.shape[0], device=device)[:, None]  # batch 1, beside positions' batch n
    pick = lambda act: act[rows, positions]  # batch pos ... -> batch n ...
    direction = model.W_U.T[targets]  # batch n d_model
    total = logits[rows, positions].gather(-1, targets[..., None])[..., 0]
    bias_U = model.b_U[targets]
    if distractors is not None:
        distractors = distractors.to(device)
        direction = direction - model.W_U.T[distractors]
        total = total - logits[rows, positions].gather(-1, distractors[..., None])[..., 0]
        bias_U = bias_U - model.b_U[distractors]

    parts, labels = [pick(cache["hook_embed"])], ["embed"]
    if model.cfg.positional == "learned":
        parts.append(pick(cache["hook_pos_embed"]))
        labels.append("pos_embed")
    for layer, block in enumerate(model.blocks):
        result = pick(cache[f"blocks.{layer}.attn.hook_result"])  # batch n n_heads d_model
        parts += list(result.unbind(-2))
        labels += [f"L{layer}H{h}" for h in range(model.cfg.n_heads)]
        parts.append(block.attn.b_O.expand_as(parts[0]))
        labels.append(f"L{layer}.b_O")
        if not model.cfg.attn_only:
            parts.append(pick(cache[f"blocks.{layer}.mlp.hook_post"]) @ block.mlp.W_out)
            parts.append(block.mlp.b_out.expand_as(parts[0]))
            labels += [f"L{layer}.mlp", f"L{layer}.b_out"]
    stack = torch.stack(parts)  # component batch n d_model
    extra = []
    if model.cfg.normalization is not None:
        stack = (stack - stack.mean(-1, keepdim=True)) / pick(cache["ln_final.hook_scale"])
        if model.cfg.normalization == "LN":
            stack = stack * model.ln_final.weight
            extra.append((model.ln_final.bias * direction).sum(-1))
            labels.append("ln_final.b")
    values = torch.cat([(stack * direction).sum(-1), torch.stack([*extra, bias_U])])
    labels.append("b_U")
    return BatchLogitAttribution(labels, values.cpu(), total.cpu())


def logit_attribution_figure(attribution: LogitAttribution, title: str = "direct logit attribution") -> go.Figure:
    """A bar per component; the title carries the total they add up to."""
    v = attribution.values.tolist()
    fig = go.Figure(
        go.Bar(
            x=attribution.labels,
            y=v,
            marker_color=["#2b6cb0" if x >= 0 else "#c53030" for x in v],
            customdata=attribution.labels,
            hovertemplate="%{x}: %{y:.3f}<extra></extra>",
        )
    )
    fig.update_layout(title=f"{title} (total {attribution.total:.3f})", xaxis_title="component", yaxis_title="logit")
    return fig
