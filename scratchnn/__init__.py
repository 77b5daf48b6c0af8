"""From-scratch neural-network modules, the transformer's parts, and the hook machinery the sandbox is built on."""

from scratchnn import backend, init
from scratchnn.activations import GELU, Flatten, NewGELU, ReLU
from scratchnn.attention import Attention
from scratchnn.embedding import Embedding
from scratchnn.hooks import HookedModule, HookFn, HookPoint, StopForward
from scratchnn.layernorm import LayerNorm
from scratchnn.linear import Linear
from scratchnn.mlp import MLP, MNISTClassifier, SimpleMLP

__all__ = [
    "GELU",
    "MLP",
    "Attention",
    "Embedding",
    "Flatten",
    "HookFn",
    "HookPoint",
    "HookedModule",
    "LayerNorm",
    "Linear",
    "MNISTClassifier",
    "NewGELU",
    "ReLU",
    "SimpleMLP",
    "StopForward",
    "backend",
    "init",
]
