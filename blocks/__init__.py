"""The transformer assembled from scratchnn's modules, with named hooks, its activation cache and interop.

Beside it: blocks.fast (the speed backend, registered on import), blocks.tasks (toy tasks),
blocks.training (the trainer, run directories and `load_run`).
"""

from blocks import fast  # registers the fast backend's functions with scratchnn.backend
from blocks.cache import ActivationCache, ComponentStack
from blocks.config import TransformerConfig
from blocks.transformer import Transformer

__all__ = ["ActivationCache", "ComponentStack", "Transformer", "TransformerConfig", "fast"]
