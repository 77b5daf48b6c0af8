"""Sparse autoencoders and transcoders on any hook point: the modules (ReLU+L1, TopK, BatchTopK, JumpReLU),
training from a run's activations or a plain tensor, evaluation, SAELens-layout files, feature analysis and
known-variable matching. `python -m probes.sae` runs the script."""
