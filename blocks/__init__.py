"""The transformer built from scratchnn modules, with named hooks; its speed backend, tasks, training and runs."""

from blocks import fast  # registers the fast backend's functions with scratchnn.backend
from blocks.cache import ActivationCache, ComponentStack
from blocks.config import TransformerConfig
from blocks.transformer import Transformer

__all__ = ["ActivationCache", "ComponentStack", "Transformer", "TransformerConfig", "fast"]


def __getattr__(name: str):  # load_run pulls in datasets; import it only when someone asks
    if name in ("load_run", "list_checkpoints", "checkpoint_status", "Run"):
        from blocks.training import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'blocks' has no attribute {name!r}")
