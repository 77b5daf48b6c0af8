"""Analyses over checkpoints: the cache, the change points, and the induction measures on a model built to have them."""

import json

import pytest
import torch
from probe_models import induction_model, random_model

from probes.circuit.composition import composition_scores
from probes.dynamics import Dynamics, cache_key, in_context_score, induction_measures, over_checkpoints


def test_each_step_is_computed_once_and_read_back_until_its_checkpoint_changes(tmp_path):
    models = {step: random_model() for step in (0, 10, 100)}
    calls = []

    def measure(model):
        calls.append(model)
        return {"norm": model.W_E.norm().item()}

    stamps = {0: "a", 10: "b", 100: "c"}
    first = over_checkpoints([0, 10, 100], models.__getitem__, measure, tmp_path, stamps.__getitem__)
    assert first.computed == 3 and first.values["norm"] == pytest.approx([m.W_E.norm().item() for m in models.values()])
    again = over_checkpoints([0, 10, 100], models.__getitem__, measure, tmp_path, stamps.__getitem__)
    assert again.computed == 0 and again.values == first.values and len(calls) == 3
    stamps[10] = "rewritten"
    (tmp_path / "step_000100.json").write_text("{torn")
    third = over_checkpoints([0, 10, 100], models.__getitem__, measure, tmp_path, stamps.__getitem__)
    assert third.computed == 2 and third.values == first.values
    assert json.loads((tmp_path / "step_000010.json").read_text())["stamp"] == "rewritten"


def test_a_measure_must_return_the_same_names_at_every_step():
    names = iter([{"a": 1.0}, {"b": 2.0}])
    with pytest.raises(ValueError, match="same keys"):
        over_checkpoints([0, 1], lambda s: None, lambda m: next(names))
    with pytest.raises(ValueError, match="no checkpoints"):
        over_checkpoints([], lambda s: None, lambda m: {})


def test_change_points_and_cache_keys():
    d = Dynamics([0, 10, 100, 1000], {"x": [0.0, 0.05, 0.9, 1.0]})
    assert d.first_above("x", 0.4) == 100 and d.first_above("x", 2.0) is None
    assert d.steepest_change("x") == 100  # the jump from 0.05 to 0.9 over one decade
    assert cache_key("m", {"a": 1, "b": 2}) == cache_key("m", {"b": 2, "a": 1}) != cache_key("m", {"a": 2, "b": 2})


@torch.no_grad()
def test_induction_measures_on_the_hand_built_induction_model():
    model = induction_model()
    gen = torch.Generator().manual_seed(0)
    first = torch.stack([torch.randperm(8, generator=gen) for _ in range(16)])
    repeated = torch.cat([first[:, :1], first[:, 1:], first[:, 1:]], 1)[:, :15]  # [t0] + r + r, r of 7 tokens
    tokens = torch.cat([first, first], 1)
    out = induction_measures(model, repeated, 7, tokens)
    assert out["previous_token_l0"] > 0.8 and out["induction_later"] > 0.8  # a random model scores about 0.1
    assert out["k_composition_max"] == pytest.approx(
        float(composition_scores(model, "k")[0, :, 1:].nan_to_num(0).max())
    )
    nll = -model(tokens).log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    assert out["in_context_score"] == pytest.approx(float(nll[:, 14].mean() - nll[:, 1].mean()))
    assert out["in_context_score"] < -1.0  # the second copy is predicted, the first is not
    with pytest.raises(ValueError, match="need 0 <= early < late"):
        in_context_score(model, tokens, 5, 5)


def test_a_cache_file_that_is_a_link_is_replaced_not_written_through(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "step_000000.json").symlink_to(outside)
    model = random_model()
    over_checkpoints([0], lambda s: model, lambda m: {"x": 1.0}, cache, lambda s: "a")
    assert outside.read_text() == "keep me" and not (cache / "step_000000.json").is_symlink()
