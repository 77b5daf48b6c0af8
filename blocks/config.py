"""The transformer's configuration: one small frozen dataclass, validated once."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

ActFn = Literal["relu", "gelu", "gelu_new"]
Normalization = Literal["LN", "LNPre"] | None
Positional = Literal["learned", "shortformer"]
MAX_SIZE = 2**40


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes and options of a decoder-only transformer. Derived defaults are filled in at creation.

    `d_head` defaults to d_model // n_heads, `d_mlp` to 4 * d_model (None for attention-only
    models, which have no MLP), `init_range` to 0.8 / sqrt(d_model) (TransformerLens's default).

    `act_fn="gelu_new"` is GPT-2's tanh approximation of GELU. `normalization="LNPre"` normalises
    without a weight or bias (what is left after folding them into the next layer). `tie_unembed`
    makes the unembedding's weight the embedding's own tensor (GPT-2 and nanoGPT share them).
    """

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_vocab: int = 64
    n_ctx: int = 128
    d_head: int | None = None
    d_mlp: int | None = None
    act_fn: ActFn = "relu"
    normalization: Normalization = "LN"
    attn_only: bool = False
    positional: Positional = "learned"
    init_range: float | None = None
    tie_unembed: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            _check_size(name, getattr(self, name))
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "pick sizes that divide or set d_head explicitly"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        for name in ("attn_only", "tie_unembed"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TransformerConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.attn_only and self.d_mlp is not None:
            raise ValueError(
                f"d_mlp={self.d_mlp!r} contradicts attn_only=True: an attention-only model has no MLP. "
                "Leave d_mlp unset, or set attn_only=False to build blocks with an MLP"
            )
        if self.d_mlp is None and not self.attn_only:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        if self.init_range is None:
            object.__setattr__(self, "init_range", 0.8 / math.sqrt(self.d_model))
        for name in ("d_head",) if self.attn_only else ("d_head", "d_mlp"):
            _check_size(name, getattr(self, name))
        if not (isinstance(self.init_range, (int, float)) and self.init_range > 0):
            raise ValueError(f"TransformerConfig.init_range must be a positive number, got {self.init_range!r}")
        _check_choice("act_fn", self.act_fn, get_args(ActFn))
        _check_choice("normalization", self.normalization, ("LN", "LNPre", None))
        _check_choice("positional", self.positional, get_args(Positional))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build a config from a dict, naming any key that is not a field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown TransformerConfig field(s) {unknown}; valid fields are {sorted(fields)}")
        if data.get("attn_only") is True and data.get("d_mlp") == 4 * data.get("d_model", cls.d_model):
            # run configs written before attention-only models had d_mlp None stored the derived
            # 4 * d_model there; read them as the same model
            data = {**data, "d_mlp": None}
        return cls(**data)


def _check_size(name: str, value: object) -> None:
    # the upper bound only keeps arithmetic on sizes in floats' range; blocks.size checks what fits in memory
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
    if value >= MAX_SIZE:
        raise ValueError(f"TransformerConfig.{name}={value} is beyond any model that fits in memory (at most 2**40)")


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ValueError(f"TransformerConfig.{name} must be one of {list(choices)}, got {value!r}")
