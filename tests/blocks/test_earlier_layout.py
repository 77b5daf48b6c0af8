"""Runs saved before the model was made of scratchnn's Linear modules still load, with the same logits.

tests/fixtures/earlier_run is a real run written by that earlier version (commit 28b4b27:
`python -m blocks.train --task sort --steps 3 --d_model 16 --n_heads 2 --n_layers 2
--attn_only false --d_mlp 24 --act_fn gelu --n_train 64 --n_test 16 --list_len 4 --n_values 8`,
its last checkpoint kept), and earlier_run_logits.safetensors that version's logits on four of
its task's examples.
"""

import shutil
from pathlib import Path

import pytest
import torch
from transformer_helpers import CONFIGS, make_model

from blocks.interop import is_earlier_layout, to_transformer_lens, upgrade_state_dict
from blocks.training import load_run
from blocks.training.cli import main as train
from blocks.weights import load_tensors

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "earlier_run", tmp_path / "earlier_run"))


def test_a_run_saved_in_the_earlier_layout_loads_with_its_logits(earlier_run: Path) -> None:
    weights = load_tensors(earlier_run / "checkpoints" / "step_000003.safetensors")
    assert is_earlier_layout(weights) and "blocks.0.mlp.W_in" in weights
    run = load_run(earlier_run)
    expected = load_tensors(FIXTURES / "earlier_run_logits.safetensors")
    assert run.step == 3 and not run.skipped
    assert expected["tokens"].tolist() == [run.task.example(seed) for seed in range(4)]
    with torch.no_grad():
        torch.testing.assert_close(run.model(expected["tokens"]), expected["logits"], atol=1e-5, rtol=1e-5)


def test_resuming_an_earlier_run_is_refused_and_changes_nothing(
    earlier_run: Path, capsys: pytest.CaptureFixture
) -> None:
    before = {p.name: p.read_bytes() for p in earlier_run.rglob("*") if p.is_file()}
    assert train(["--resume", "--out", str(earlier_run), "--steps", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "saved by an earlier version of the sandbox" in err and "start a new run" in err
    assert {p.name: p.read_bytes() for p in earlier_run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("config", CONFIGS)
def test_upgrading_the_earlier_layout_gives_the_parameters_back_exactly(config: str) -> None:
    model = make_model(**CONFIGS[config])
    renamed = {
        "embed.W_E": "embed.weight",
        "pos_embed.W_pos": "pos_embed.weight",
    }  # TransformerLens's names -> earlier ones
    earlier = {}
    for key, value in to_transformer_lens(model).items():
        if key.endswith(("attn.mask", "attn.IGNORE")):
            continue
        if key.endswith((".w", ".b")) and ".ln" in f".{key}":
            key = key[:-1] + ("weight" if key.endswith(".w") else "bias")
        earlier[renamed.get(key, key)] = value
    assert is_earlier_layout(earlier)
    upgraded = upgrade_state_dict(earlier, model.cfg)
    assert upgraded.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(upgraded[name], value), name
