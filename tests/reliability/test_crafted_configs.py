"""Crafted configs: sizes that would take the machine's memory are refused at once, with the estimate."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT, app_on

from blocks import Transformer, TransformerConfig
from blocks.size import LAYERS_ENV, LIMIT_ENV, ModelTooLargeError, estimate, n_params
from blocks.training.cli import main
from blocks.training.config import TrainConfig
from blocks.training.runs import checkpoint_status, load_run
from blocks.training.trainer import checkpoint_schedule

HUGE = [{"n_layers": 1_000_000}, {"d_model": 10**9}, {"d_vocab": 10**10}, {"n_ctx": 10**7}, {"n_heads": 10**9}]


@pytest.fixture(autouse=True)
def machine_independent_limit(monkeypatch):
    """The default limit is half this machine's memory: fix it, so every machine refuses the same configs."""
    monkeypatch.setenv(LIMIT_ENV, "8")


@pytest.mark.parametrize(
    "cfg",
    [
        TransformerConfig(n_layers=3, d_model=24, n_heads=3, d_vocab=11, n_ctx=9),
        TransformerConfig(n_layers=1, d_model=16, n_heads=2, attn_only=True, normalization=None),
        TransformerConfig(d_model=32, n_heads=4, d_head=5, d_mlp=7, act_fn="gelu", positional="shortformer"),
        TransformerConfig(d_model=32, n_heads=4, normalization="LNPre", tie_unembed=True, act_fn="gelu_new"),
    ],
)
def test_the_parameter_count_is_the_models(cfg):
    assert n_params(cfg) == sum(p.numel() for p in Transformer(cfg).parameters())
    assert estimate(cfg, batch=4, training=True).total > estimate(cfg).total


@pytest.mark.parametrize("sizes", HUGE, ids=lambda s: next(iter(s)))
def test_a_crafted_run_config_is_refused_at_once_by_load_run_and_the_app(run_copy, monkeypatch, sizes):
    run = run_copy()
    config = json.loads((run / "config.json").read_text())
    config["model"].update(sizes)
    (run / "config.json").write_text(json.dumps(config))
    started = time.perf_counter()
    with pytest.raises(ModelTooLargeError, match=rf"(needs about .* GB .*more than the limit .*{LIMIT_ENV}|n_layers)"):
        load_run(run)
    with pytest.raises(ModelTooLargeError):
        checkpoint_status(run)
    assert time.perf_counter() - started < 5
    at = app_on(run.parent, monkeypatch, run="run")
    assert not at.exception and "limit" in at.error[0].value and "SANDBOX_MAX_" in at.error[0].value


def test_the_limit_can_be_raised_and_lowered(monkeypatch):
    cfg = TransformerConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=50, n_ctx=32)
    monkeypatch.setenv(LIMIT_ENV, str(estimate(cfg, batch=0).total / 2**30 * 0.9))
    with pytest.raises(ModelTooLargeError, match=rf"{LIMIT_ENV}="):
        Transformer(cfg)
    monkeypatch.setenv(LIMIT_ENV, str(estimate(cfg, batch=0).total / 2**30 * 1.1))
    assert Transformer(cfg).cfg == cfg
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=r"not a positive number \(gigabytes\)"):
        Transformer(cfg)


def test_sizes_beyond_any_machine_are_refused_in_the_config():
    with pytest.raises(ValueError, match=r"n_ctx=\d+ is beyond any model"):
        TransformerConfig(n_ctx=10**400)


def test_the_trainer_refuses_a_training_footprint_over_the_limit_before_writing(tmp_path, capsys, monkeypatch):
    cfg = TransformerConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=11, n_ctx=32)
    # a model that loads for analysis, but whose training batch of 512 does not fit
    monkeypatch.setenv(LIMIT_ENV, str(estimate(cfg).total * 2 / 2**30))
    args = ["--task", "induction", "--out", str(tmp_path / "x"), "--no-progress", "--d_model", "64", "--n_ctx", "32"]
    assert main([*args, "--seq_len", "32", "--batch_size", "512", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "training with a batch of 512" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_huge_n_checkpoints_is_every_step_and_computed_at_once():
    started = time.perf_counter()
    assert checkpoint_schedule(TrainConfig(steps=50, n_checkpoints=1_000_000_000)) == set(range(51))
    assert time.perf_counter() - started < 1


def test_the_trainer_with_a_huge_layer_count_exits_at_once(tmp_path):
    cmd = [sys.executable, "-m", "blocks.train", "--out", str(tmp_path / "x"), "--n_layers", "1000000"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "n_layers=1000000 is more than the limit" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_a_deep_model_is_refused_before_it_is_built_unless_the_limit_is_raised(monkeypatch):
    with pytest.raises(ModelTooLargeError, match=rf"n_layers=5000 .*minutes to build.*{LAYERS_ENV}"):
        Transformer(TransformerConfig(n_layers=5000, d_model=4, n_heads=1, d_vocab=4, n_ctx=4))
    monkeypatch.setenv(LAYERS_ENV, "3")
    with pytest.raises(ModelTooLargeError, match="limit of 3 layers"):
        Transformer(TransformerConfig(n_layers=4, d_model=4, n_heads=1, d_vocab=4, n_ctx=4))


def test_gpt2_small_sizes_fine_tuned_on_short_sequences_are_not_refused(monkeypatch):
    """The training check counts the task's sequence length, not n_ctx; building counts no forward pass."""
    from blocks.config import TransformerConfig
    from blocks.size import check_fits, estimate

    monkeypatch.setenv("SANDBOX_MAX_MEMORY_GB", "12")
    gpt2 = TransformerConfig(n_layers=12, d_model=768, n_heads=12, d_vocab=50257, n_ctx=1024, d_mlp=3072)
    check_fits(gpt2, batch=0)  # building: parameters, masks, modules
    check_fits(gpt2, batch=8, training=True, pos=128)
    assert estimate(gpt2, 8, True, pos=128).total < estimate(gpt2, 8, True).total / 4
