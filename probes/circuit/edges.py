"""Run a model with its receivers' inputs edited edge by edge, through hooks.

In an ordinary forward pass every receiver reads the whole residual stream. Here a receiver
reads the stream plus a correction of its own: for each patched edge s -> r, the sender's
patched value minus its value in this run, so that r sees s's patched write while every other
receiver still sees s's own. A head's three inputs get separate corrections, so the hook on
`hook_q` (`hook_k`, `hook_v`) recomputes each head's queries from its own input with the
layer's ln1 and W_Q. Nothing else changes: the stream itself, the biases and the senders that
are not patched are the model's.

`EdgePatch` says which edges carry which values, one set per copy of the batch; all copies go
through one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from blocks.transformer import Transformer
from probes.circuit.graph import QKV, Graph
from scratchnn import HookPoint


@dataclass(frozen=True)
class EdgePatch:
    """Edges to patch: copy c of the batch has edge (s, r) carry `values[:, :, s]` where `masks[c, s, r]` is set."""

    masks: Float[Tensor, "copies sender receiver"]
    values: Float[Tensor, "batch pos sender d_model"]


def sender_hooks(model: Transformer) -> list[tuple[str, int | None]]:
    """(hook name, head or None) of each sender of the model's graph, in the graph's order."""
    graph = Graph.of(model.cfg)
    out: list[tuple[str, int | None]] = []
    for name in graph.senders:
        if name in ("embed", "pos_embed"):
            out.append((f"hook_{name}", None))
        elif name.startswith("MLP"):
            out.append((f"blocks.{name[3:]}.hook_mlp_out", None))
        else:
            layer, head = name[1:].split("H")
            out.append((f"blocks.{layer}.attn.hook_result", int(head)))
    return out


@torch.no_grad()
def sender_values(
    model: Transformer, tokens: Int[Tensor, "batch pos"]
) -> tuple[Float[Tensor, "batch pos d_vocab"], Float[Tensor, "batch pos sender d_model"]]:
    """Logits and every sender's write to the residual stream, stacked in the graph's order."""
    hooks = sender_hooks(model)
    logits, cache = model.run_with_cache(tokens, names=sorted({name for name, _ in hooks}))
    values = [cache[name] if head is None else cache[name][:, :, head] for name, head in hooks]
    return logits, torch.stack(values, dim=2)


class _Run:
    """The hooks of one edited forward pass over `rows` = copies x batch sequences."""

    def __init__(self, model: Transformer, patch: EdgePatch) -> None:
        self.model, self.graph, self.patch = model, Graph.of(model.cfg), patch
        self.current: list[Tensor] = []  # each sender's write in this run, in graph order
        self.carrier: Tensor | None = None  # the residual stream where the next receivers read it
        self.pos_embed: Tensor | None = None
        self.copies = patch.masks.shape[0]

    def hooks(self) -> list[tuple[str, Callable]]:
        cfg = self.model.cfg
        out: list[tuple[str, Callable]] = [("hook_embed", self.on_embed), ("hook_pos_embed", self.on_pos_embed)]
        for layer in range(cfg.n_layers):
            b = f"blocks.{layer}"
            out += [(f"{b}.hook_resid_pre", self.on_carrier)]
            out += [(f"{b}.attn.hook_{x}", self.on_head_input(layer, x)) for x in QKV]
            out += [(f"{b}.attn.hook_result", self.on_heads)]
            if not cfg.attn_only:
                out += [(f"{b}.hook_resid_mid", self.on_carrier), (f"{b}.mlp.hook_pre", self.on_mlp_input(layer))]
                out += [(f"{b}.hook_mlp_out", self.on_sender)]
        out += [(f"blocks.{cfg.n_layers - 1}.hook_resid_post", self.on_logits_input)]
        return out

    # -- senders and the stream -------------------------------------------------------------

    def on_embed(self, act: Tensor, hook: HookPoint) -> None:
        self.current.append(act)

    def on_pos_embed(self, act: Tensor, hook: HookPoint) -> None:
        self.pos_embed = act
        if self.graph.has_pos_embed:
            self.current.append(act)

    def on_carrier(self, act: Tensor, hook: HookPoint) -> None:
        self.carrier = act

    def on_heads(self, act: Tensor, hook: HookPoint) -> None:
        self.current.extend(act.unbind(2))

    def on_sender(self, act: Tensor, hook: HookPoint) -> None:
        self.current.append(act)

    # -- receivers ---------------------------------------------------------------------------

    def correction(self, receivers: list[int]) -> tuple[Tensor, Tensor] | None:
        """(rows, what those rows' receiver inputs get added to the stream: [rows, pos, n_receivers, d_model]), or None.

        Only the copies whose masks patch one of these receivers are computed: in exact edge
        patching each copy patches one edge, so each hook touches a few copies out of many.
        """
        upstream = len(self.current)
        masks = self.patch.masks[:, :upstream, receivers]
        touched = masks.flatten(1).any(1).nonzero().flatten()
        if len(touched) == 0:
            return None
        batch = self.patch.values.shape[0]
        current = torch.stack([c.unflatten(0, (self.copies, batch))[touched] for c in self.current], dim=3)
        diff = self.patch.values[None, :, :, :upstream] - current  # [touched, batch, pos, upstream, d_model]
        delta = einops.einsum(
            masks[touched].to(diff.dtype),
            diff,
            "copies sender receiver, copies batch pos sender d_model -> copies batch pos receiver d_model",
        )
        rows = (touched[:, None] * batch + torch.arange(batch, device=touched.device)).flatten()
        return rows, delta.flatten(0, 1)

    def replace_rows(
        self, act: Tensor, receivers: list[int], new_rows: Callable[[Tensor, Tensor], Tensor]
    ) -> Tensor | None:
        """`act` with the patched rows recomputed by `new_rows(rows, correction)`; None when no copy patches these."""
        found = self.correction(receivers)
        if found is None:
            return None
        rows, delta = found
        out = act.clone()
        out[rows] = new_rows(rows, delta)
        return out

    def on_head_input(self, layer: int, which: str) -> Callable[[Tensor, HookPoint], Tensor | None]:
        receivers = [self.graph.receivers.index(f"L{layer}H{h}.{which}") for h in range(self.model.cfg.n_heads)]
        block = self.model.blocks[layer]
        attn = block.attn

        def heads(rows: Tensor, delta: Tensor) -> Tensor:
            assert self.carrier is not None
            normed = block.ln1(self.carrier[rows][:, :, None] + delta)  # [rows, pos, n_heads, d_model]
            if which != "v" and not self.graph.has_pos_embed:  # shortformer: positions join q and k after ln1
                assert self.pos_embed is not None
                normed = normed + self.pos_embed[rows][:, :, None]
            weight, bias = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K), "v": (attn.W_V, attn.b_V)}[which]
            per_head = "batch pos n_heads d_model, n_heads d_model d_head -> batch pos n_heads d_head"
            return einops.einsum(normed, weight, per_head) + bias

        return lambda act, point: self.replace_rows(act, receivers, heads)

    def on_mlp_input(self, layer: int) -> Callable[[Tensor, HookPoint], Tensor | None]:
        receivers = [self.graph.receivers.index(f"MLP{layer}")]
        block = self.model.blocks[layer]

        def pre(rows: Tensor, delta: Tensor) -> Tensor:
            assert self.carrier is not None
            return block.mlp.linear_in(block.ln2(self.carrier[rows] + delta[:, :, 0]))

        return lambda act, point: self.replace_rows(act, receivers, pre)

    def on_logits_input(self, act: Tensor, hook: HookPoint) -> Tensor | None:
        return self.replace_rows(act, [len(self.graph.receivers) - 1], lambda rows, delta: act[rows] + delta[:, :, 0])


def run_edges(
    model: Transformer, tokens: Int[Tensor, "batch pos"], patch: EdgePatch
) -> Float[Tensor, "rows pos d_vocab"]:
    """Logits of `tokens`, copied once per mask of `patch` (copy-major), with each copy's edges patched."""
    device = model.W_E.device
    run = _Run(model, EdgePatch(patch.masks.to(device), patch.values.to(device)))
    graph = run.graph
    if patch.masks.shape[1:] != graph.valid.shape:
        raise ValueError(
            f"masks have shape {tuple(patch.masks.shape)}; this model's graph needs [copies, "
            f"{len(graph.senders)} senders, {len(graph.receivers)} receivers]"
        )
    with model.hooks(fwd=run.hooks()):
        return model(tokens.to(device).repeat(run.copies, 1))
