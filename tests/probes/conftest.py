"""Fixtures of the probe tests: the tiny models of probe_models.py."""

import pytest
from probe_models import previous_token_model, random_model

from blocks import Transformer


@pytest.fixture
def prev_model() -> Transformer:
    return previous_token_model()


@pytest.fixture
def mlp_model() -> Transformer:
    return random_model()


@pytest.fixture
def attn_only_model() -> Transformer:
    return random_model(attn_only=True, normalization=None, positional="shortformer")
