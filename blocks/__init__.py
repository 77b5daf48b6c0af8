"""The transformer built from scratchnn modules, with named hooks; tasks, training and runs."""

from blocks.cache import ActivationCache, ComponentStack
from blocks.config import TransformerConfig
from blocks.transformer import Transformer

__all__ = ["ActivationCache", "ComponentStack", "Transformer", "TransformerConfig"]
