"""The computational graph of a transformer: which node writes into which node's input through the residual stream.

Senders are what writes into the residual stream: the token embedding (`embed`), the position
embedding (`pos_embed`, absent for shortformer models, whose positions go straight into queries
and keys), each head (`L1H2`, its `hook_result`) and each MLP (`MLP1`, its `hook_mlp_out`).
Receivers are what reads it: each head's query, key and value input separately (`L1H2.q`,
`L1H2.k`, `L1H2.v`), each MLP (`MLP1`) and the unembedding (`logits`). An edge `L0H3 -> L1H2.k`
is head L0H3's write as it reaches the residual-stream input of head L1H2's keys; every sender
upstream of a receiver has an edge to it. The attention output bias b_O is a constant, not a
node; b_out is inside `hook_mlp_out` and so part of the MLP's write, but it is the same in
every run and cancels in every patched difference.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from blocks.config import TransformerConfig

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    """Nodes and edges of one model shape; `valid[s, r]` is True where sender s reaches receiver r."""

    n_layers: int
    n_heads: int
    has_mlp: bool
    has_pos_embed: bool

    @classmethod
    def of(cls, cfg: TransformerConfig) -> Graph:
        return cls(cfg.n_layers, cfg.n_heads, not cfg.attn_only, cfg.positional != "shortformer")

    # -- nodes ------------------------------------------------------------------------------

    @cached_property
    def senders(self) -> list[str]:
        names = ["embed"] + (["pos_embed"] if self.has_pos_embed else [])
        for layer in range(self.n_layers):
            names += [f"L{layer}H{h}" for h in range(self.n_heads)]
            names += [f"MLP{layer}"] if self.has_mlp else []
        return names

    @cached_property
    def receivers(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [f"L{layer}H{h}.{x}" for x in QKV for h in range(self.n_heads)]
            names += [f"MLP{layer}"] if self.has_mlp else []
        return names + ["logits"]

    def sender_stage(self, name: str) -> int:
        """Where in the forward pass a sender writes: 0 embeddings, 2l+1 layer l's heads, 2l+2 its MLP."""
        if name in ("embed", "pos_embed"):
            return 0
        layer = int(name[3:] if name.startswith("MLP") else name[1 : name.index("H")])
        return 2 * layer + (2 if name.startswith("MLP") else 1)

    def receiver_stage(self, name: str) -> int:
        """Where a receiver reads: 2l+1 layer l's heads, 2l+2 its MLP, the end for the logits."""
        if name == "logits":
            return 2 * self.n_layers + 1
        return self.sender_stage(name.split(".")[0])

    @cached_property
    def valid(self) -> Tensor:
        """[n_senders, n_receivers] bool: True where the sender writes before the receiver reads."""
        s = torch.tensor([self.sender_stage(n) for n in self.senders])
        r = torch.tensor([self.receiver_stage(n) for n in self.receivers])
        return s[:, None] < r[None, :]

    @property
    def n_nodes(self) -> int:
        """Distinct nodes: senders, plus each head's three inputs counted as part of its head, plus the logits."""
        return len(self.senders) + 1

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    # -- edges ------------------------------------------------------------------------------

    @cached_property
    def edges(self) -> list[tuple[int, int]]:
        """Every edge as (sender index, receiver index), in sender-major order."""
        return [(int(s), int(r)) for s, r in self.valid.nonzero()]

    def edge_name(self, sender: int, receiver: int) -> str:
        return f"{self.senders[sender]} -> {self.receivers[receiver]}"

    @cached_property
    def edge_names(self) -> list[str]:
        return [self.edge_name(s, r) for s, r in self.edges]

    def sender_index(self, name: str) -> int:
        return _index(name, self.senders, "sender")

    def receiver_index(self, name: str) -> int:
        return _index(name, self.receivers, "receiver")

    def receiver_indices(self, name: str) -> list[int]:
        """A receiver name, or a head's name (`L1H2`) for its three inputs."""
        if name in self.senders and name.startswith("L"):
            return [self.receivers.index(f"{name}.{x}") for x in QKV]
        return [self.receiver_index(name)]

    def edge(self, name: str) -> tuple[int, int]:
        """(sender, receiver) of an edge written `L0H3 -> L1H2.k`; a bad name lists what is valid."""
        if "->" not in name:
            raise ValueError(f"an edge is written 'SENDER -> RECEIVER' (e.g. {self.edge_names[0]!r}), got {name!r}")
        left, right = (part.strip() for part in name.split("->", 1))
        s, r = self.sender_index(left), self.receiver_index(right)
        if not self.valid[s, r]:
            raise ValueError(
                f"{left} writes after {right} reads, so there is no edge {name!r}; a sender must sit in an "
                "earlier layer (or be the same layer's attention, for an MLP)"
            )
        return s, r

    def mask(self, edge_names: list[str]) -> Tensor:
        """[n_senders, n_receivers] bool with the named edges set."""
        out = torch.zeros_like(self.valid)
        for name in edge_names:
            out[self.edge(name)] = True
        return out

    # -- paths -------------------------------------------------------------------------------

    def prune(self, keep: Tensor, unfed: bool = True) -> Tensor:
        """The edges of `keep` that lie on some path from an embedding to the logits, inside `keep`.

        An edge into a node whose output reaches the logits through no kept edge changes
        nothing. With `unfed` (right when patching to corrupted values), neither does an edge
        out of a node that no kept edge feeds: every input of that node is corrupted, so it
        writes its corrupted value anyway. Under mean ablation it does not (f(mean input) is not
        the mean of f), so pass `unfed=False` there.
        """
        keep = keep & self.valid
        while True:
            # an edge counts when its receiver's node reaches the logits (and its sender is fed from an embedding)
            fed = self._fed_from_embeddings(keep) if unfed else torch.ones(len(self.senders), dtype=torch.bool)
            pruned = keep & fed[:, None] & self._receiver_alive(self._reaches_logits(keep))[None, :]
            if torch.equal(pruned, keep):
                return keep
            keep = pruned

    def has_path(self, keep: Tensor) -> bool:
        """True when some path of kept edges leads from an embedding to the logits."""
        return bool(self.prune(keep)[:, self.receivers.index("logits")].any())

    def _receiver_node(self) -> list[int | None]:
        """For each receiver, the sender index of the node it feeds (None for the logits)."""
        return [None if r == "logits" else self.senders.index(r.split(".")[0]) for r in self.receivers]

    def _receiver_alive(self, alive_out: Tensor) -> Tensor:
        return torch.tensor([True if node is None else bool(alive_out[node]) for node in self._receiver_node()])

    def _reaches_logits(self, keep: Tensor) -> Tensor:
        node_of = self._receiver_node()
        alive = torch.zeros(len(self.senders), dtype=torch.bool)
        for s in reversed(range(len(self.senders))):  # senders are in forward order
            for r in keep[s].nonzero().flatten().tolist():
                if node_of[r] is None or alive[node_of[r]]:
                    alive[s] = True
                    break
        return alive

    def _fed_from_embeddings(self, keep: Tensor) -> Tensor:
        node_of = self._receiver_node()
        fed = torch.tensor([name in ("embed", "pos_embed") for name in self.senders])
        for s in range(len(self.senders)):
            if fed[s]:
                continue
            feeding = [r for r, node in enumerate(node_of) if node == s]
            fed[s] = bool((keep[:, feeding] & fed[:, None]).any())
        return fed


def _index(name: str, names: list[str], what: str) -> int:
    if name in names:
        return names.index(name)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    raise ValueError(f"no {what} named {name!r}; {hint}the {what}s are {shown}")
