"""From-scratch neural-network modules and the hook machinery the sandbox is built on."""

from scratchnn import init
from scratchnn.activations import GELU, Flatten, ReLU
from scratchnn.embedding import Embedding
from scratchnn.hooks import HookedModule, HookFn, HookPoint, StopForward
from scratchnn.layernorm import LayerNorm
from scratchnn.linear import Linear
from scratchnn.mlp import MNISTClassifier, SimpleMLP

__all__ = [
    "GELU",
    "Embedding",
    "Flatten",
    "HookFn",
    "HookPoint",
    "HookedModule",
    "LayerNorm",
    "Linear",
    "MNISTClassifier",
    "ReLU",
    "SimpleMLP",
    "StopForward",
    "init",
]
