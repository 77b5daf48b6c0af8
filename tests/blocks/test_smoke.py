import pytest
import torch

from blocks import Transformer, TransformerConfig


def test_forward_logits_shape():
    model = Transformer(TransformerConfig(n_layers=1, d_model=32, n_heads=2, d_vocab=10, n_ctx=8))
    assert model(torch.randint(0, 10, (3, 8))).shape == (3, 8, 10)


def test_jaxtyping_checks_are_live():
    # the pytest hook checks annotations: a [batch, pos] float where ids belong fails loudly
    model = Transformer(TransformerConfig(n_layers=1, d_model=32, n_heads=2, d_vocab=10, n_ctx=8))
    with pytest.raises(Exception):
        model(torch.zeros(3, 8))
