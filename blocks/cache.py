"""The activations of one forward pass, by hook name, with the residual-stream views analysis needs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from blocks.transformer import Transformer


@dataclass(frozen=True)
class ComponentStack:
    """Tensors stacked on a leading `component` axis, each with a readable label."""

    values: Float[Tensor, "component ..."]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)


class ActivationCache(Mapping[str, Tensor]):
    """A read-only map from hook name to activation, plus residual-stream decompositions."""

    def __init__(self, cache: dict[str, Tensor], model: Transformer) -> None:
        self._cache = cache
        self.model = model
        self.cfg = model.cfg

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._cache[name]
        except KeyError:
            have = ", ".join(list(self._cache)[:8]) or "nothing"
            raise KeyError(
                f"{name!r} is not in this cache (it holds {len(self._cache)} names: {have}...); "
                "pass it in run_with_cache(names=...)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def nbytes(self) -> int:
        """Memory held by the cached tensors, in bytes."""
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    def _layer(self, layer: int | None) -> int:
        n = self.cfg.n_layers
        if layer is None:
            return n
        if not 0 <= layer <= n:
            raise ValueError(f"layer must lie in [0, {n}], got {layer}")
        return layer

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False) -> ComponentStack:
        """The residual stream before each block up to `layer` (all blocks and the final stream by default)."""
        upto = self._layer(layer)
        values, labels = [], []
        for i in range(upto):
            values.append(self[f"blocks.{i}.hook_resid_pre"])
            labels.append(f"{i}_pre")
            if incl_mid and not self.cfg.attn_only:
                values.append(self[f"blocks.{i}.hook_resid_mid"])
                labels.append(f"{i}_mid")
        if upto == self.cfg.n_layers:
            values.append(self[f"blocks.{upto - 1}.hook_resid_post"])
            labels.append("final_post")
        else:
            values.append(self[f"blocks.{upto}.hook_resid_pre"])
            labels.append(f"{upto}_pre")
        return ComponentStack(torch.stack(values), labels)

    def decompose_resid(self, layer: int | None = None) -> ComponentStack:
        """The parts that add up to the residual stream before `layer`: embeddings, then each attn and MLP output."""
        upto = self._layer(layer)
        values = [self["hook_embed"]]
        labels = ["embed"]
        if self.cfg.positional == "learned":
            values.append(self["hook_pos_embed"])
            labels.append("pos_embed")
        for i in range(upto):
            values.append(self[f"blocks.{i}.hook_attn_out"])
            labels.append(f"{i}_attn_out")
            if not self.cfg.attn_only:
                values.append(self[f"blocks.{i}.hook_mlp_out"])
                labels.append(f"{i}_mlp_out")
        return ComponentStack(torch.stack(values), labels)

    def stack_head_results(self, layer: int | None = None) -> ComponentStack:
        """Each head's write to the residual stream (`hook_result`), for every head of the blocks before `layer`.

        The attention biases b_O are not in any head's result; see `attn_biases`.
        """
        upto = self._layer(layer)
        values, labels = [], []
        for i in range(upto):
            result = self[f"blocks.{i}.attn.hook_result"]  # batch pos n_heads d_model
            for h in range(self.cfg.n_heads):
                values.append(result[:, :, h])
                labels.append(f"L{i}H{h}")
        return ComponentStack(torch.stack(values), labels)

    def stack_neuron_results(self, layer: int | None = None) -> ComponentStack:
        """Each MLP neuron's write to the residual stream (hook_post[n] * W_out[n]), for every neuron of the blocks before `layer`.

        Holds n_layers x d_mlp x batch x pos x d_model floats. The MLP biases b_out are in no neuron's write.
        """
        if self.cfg.attn_only:
            raise ValueError("stack_neuron_results: this model is attention-only; it has no neurons")
        upto = self._layer(layer)
        values, labels = [], []
        for i in range(upto):
            post = self[f"blocks.{i}.mlp.hook_post"]  # batch pos d_mlp
            W_out = self.model.blocks[i].mlp.W_out.detach().to(post.device)  # d_mlp d_model
            values.append(torch.einsum("bpn,nd->nbpd", post, W_out))
            labels += [f"L{i}N{n}" for n in range(self.cfg.d_mlp)]
        if not values:
            return ComponentStack(torch.empty(0, *self["hook_embed"].shape), [])
        return ComponentStack(torch.cat(values), labels)

    def full_resid_decomposition(self, layer: int | None = None, expand_neurons: bool = False) -> ComponentStack:
        """Parts that sum to the residual stream before `layer` (the final stream by default), to float precision.

        The embeddings (positions only where they join the stream), every head's result, each
        layer's attention bias b_O, then each MLP's output without its bias (or, with
        `expand_neurons`, every neuron's write) and its bias b_out. Needs hook_result (and
        hook_post) in the cache.
        """
        upto = self._layer(layer)
        embed = self["hook_embed"]
        values, labels = [embed], ["embed"]
        if self.cfg.positional == "learned":
            values.append(self["hook_pos_embed"])
            labels.append("pos_embed")
        for i in range(upto):
            block = self.model.blocks[i]
            values += list(self[f"blocks.{i}.attn.hook_result"].unbind(-2))  # batch pos d_model each
            labels += [f"L{i}H{h}" for h in range(self.cfg.n_heads)]
            values.append(block.attn.b_O.detach().to(embed.device).expand_as(embed))
            labels.append(f"L{i}.b_O")
            if self.cfg.attn_only:
                continue
            b_out = block.mlp.b_out.detach().to(embed.device)
            if expand_neurons:
                post = self[f"blocks.{i}.mlp.hook_post"]
                W_out = block.mlp.W_out.detach().to(post.device)
                values += list(torch.einsum("bpn,nd->nbpd", post, W_out))
                labels += [f"L{i}N{n}" for n in range(self.cfg.d_mlp)]
            else:
                values.append(self[f"blocks.{i}.hook_mlp_out"] - b_out)
                labels.append(f"L{i}.mlp")
            values.append(b_out.expand_as(embed))
            labels.append(f"L{i}.b_out")
        return ComponentStack(torch.stack(values), labels)

    def apply_ln_to_stack(
        self, stack: ComponentStack | Float[Tensor, "component batch pos d_model"], layer: int | None = None
    ) -> Float[Tensor, "component batch pos d_model"]:
        """Centre each component and divide by the LayerNorm scale of the full stream (the final LN by default).

        This is the linear map the LayerNorm applies to each part once its scale is frozen,
        so the parts still add up to the normalised stream (before the LN's weight and bias).
        """
        values = stack.values if isinstance(stack, ComponentStack) else stack
        if self.cfg.normalization is None:
            return values
        name = (
            "ln_final.hook_scale" if layer is None or layer == self.cfg.n_layers else f"blocks.{layer}.ln1.hook_scale"
        )
        scale = self[name]
        return (values - values.mean(-1, keepdim=True)) / scale
