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


def earlier_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as the earlier version stored it, written out here by hand (not through the views)."""
    h, d_head = model.cfg.n_heads, model.cfg.d_head
    mlp_and_unembed = {"linear_in.weight": "W_in", "linear_in.bias": "b_in", "linear_out.weight": "W_out",
                       "linear_out.bias": "b_out", "unembed.weight": "unembed.W_U", "unembed.bias": "unembed.b_U"}  # fmt: skip
    state: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if ".attn." in name:
            # query.weight [(n_heads d_head), d_model] -> W_Q [n_heads, d_model, d_head];
            # output.weight [d_model, (n_heads d_head)] -> W_O [n_heads, d_head, d_model]
            prefix, rest = name.split(".attn.")
            linear, kind = rest.split(".")
            letter = {"query": "Q", "key": "K", "value": "V", "output": "O"}[linear]
            if kind == "bias":
                state[f"{prefix}.attn.b_{letter}"] = value if letter == "O" else value.view(h, d_head)
            elif letter == "O":
                state[f"{prefix}.attn.W_O"] = value.view(-1, h, d_head).permute(1, 2, 0)
            else:
                state[f"{prefix}.attn.W_{letter}"] = value.view(h, d_head, -1).transpose(1, 2)
        elif key := next((k for k in mlp_and_unembed if name.endswith(k)), None):
            state[name[: -len(key)] + mlp_and_unembed[key]] = value.T if value.dim() == 2 else value
        else:
            state[name] = value
    return {k: v.contiguous() for k, v in state.items()}


@pytest.mark.parametrize("config", CONFIGS)
def test_upgrading_the_earlier_layout_gives_the_parameters_back_exactly(config: str) -> None:
    model = make_model(**CONFIGS[config])
    earlier = earlier_layout(model)
    assert is_earlier_layout(earlier) and "blocks.0.attn.W_Q" in earlier and "embed.weight" in earlier
    upgraded = upgrade_state_dict(earlier, model.cfg)
    assert upgraded.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(upgraded[name], value), name
    # and the earlier layout is TransformerLens's (the views), but for the embeddings' and LayerNorms' names
    tl = to_transformer_lens(model)
    for name, value in earlier.items():
        tl_name = {"embed.weight": "embed.W_E", "pos_embed.weight": "pos_embed.W_pos"}.get(name, name)
        if ".ln" in f".{tl_name}" and tl_name.endswith((".weight", ".bias")):
            tl_name = tl_name.rsplit(".", 1)[0] + (".w" if tl_name.endswith(".weight") else ".b")
        assert torch.equal(tl[tl_name], value), name
