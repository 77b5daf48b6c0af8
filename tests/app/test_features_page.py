"""The SAE features page: its list, examples and edits equal what probes.sae computes; SAEs that do not fit are refused."""

from __future__ import annotations

import pytest
import torch
from sae_fixtures import NAME, saes  # noqa: F401  (the fixture every test here uses)

from blocks.tasks.common import dataset_tensors
from blocks.training.runs import load_run
from probes.sae.features import ablated_logits, feature_codes, feature_frequency, steered_logits, top_examples
from probes.sae.files import load_sae
from probes.sae.known import known_variables, match_variables

pytestmark = pytest.mark.usefixtures("saes")


def test_feature_list_and_examples_are_the_librarys(app, runs_dir):
    at = app("features", run="sycophancy")
    assert not at.exception, at.exception
    run = load_run(runs_dir / "sycophancy")
    sae, _ = load_sae(runs_dir / "sycophancy" / "saes" / NAME)
    data = dataset_tensors(run.task.dataset("test"))[0][:256]
    codes = feature_codes(run.model, sae, data)
    frequency = feature_frequency(codes)
    table = at.dataframe[0].value
    assert table["frequency"].iloc[0] == round(float(frequency.max()), 5)
    feature = int(table["feature"].iloc[0])
    assert at.number_input(key="sae_feature").value == feature
    top = top_examples(codes, feature, k=8)
    text = " ".join(m.value for m in at.markdown)
    assert text.count("<mark") == top.values.numel() > 0
    assert f"{float(top.values[0]):.3f}" in text
    prompts, variables = known_variables(run.task, n=400)
    matches = match_variables(feature_codes(run.model, sae, prompts), variables)
    caption = " ".join(c.value for c in at.caption)
    for m in matches:
        assert f"{m.name} f{m.best_feature} {m.best_accuracy:.3f}" in caption
    at.radio(key="sae_sort").set_value("match to a known variable").run()
    assert not at.exception
    above = at.dataframe[0].value["above chance"]
    assert list(above) == sorted(above, reverse=True)


@pytest.mark.parametrize("button", ["sae_ablate", "sae_steer"])
def test_ablate_and_steer_show_the_librarys_prediction(app, runs_dir, button):
    at = app("features", run="sycophancy", sae_feature=3, sae_alpha=2.0)
    assert not at.exception, at.exception
    at.button(key=button).click().run()
    assert not at.exception, at.exception
    run = load_run(runs_dir / "sycophancy")
    sae, _ = load_sae(runs_dir / "sycophancy" / "saes" / NAME)
    tokens = torch.tensor([run.tokenizer.encode(at.session_state["prompt"])])
    with torch.no_grad():
        clean = run.model(tokens)[0, -1].softmax(-1)
        if button == "sae_ablate":
            edited = ablated_logits(run.model, sae, 3, tokens)[0, -1].softmax(-1)
        else:
            edited = steered_logits(run.model, sae, 3, 2.0, tokens)[0, -1].softmax(-1)
    table = at.dataframe[-1].value
    top = int(edited.argmax())
    assert table["token"].iloc[0] == run.tokenizer.vocab[top]
    assert table.iloc[0, 1] == round(float(clean[top]), 4) and table.iloc[0, 2] == round(float(edited[top]), 4)


def test_an_sae_of_another_run_opens_only_if_it_fits(app, runs_dir):
    at = app("features", run="mlp", sae_source="sycophancy")  # same d_model and layers: it fits
    assert not at.exception and not at.error, at.error
    assert "trained on run sycophancy" in " ".join(c.value for c in at.caption)
    at = app("features", run="sycophancy", sae_source="modadd")
    assert not at.exception
    assert "d_in is 8 but the model's blocks.0.hook_resid_post has 16" in at.error[0].value
    at = app("features", run="attn")
    assert "has no SAEs yet" in at.info[0].value
