"""Analysis of trained transformers as pure functions over models and caches."""
