"""The trainer: exact resume after Ctrl-C, NaN stop, refusing other runs, bad input, schedules, DDP equivalence."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blocks.tasks import get_task, task_options
from blocks.training.checkpoints import checkpoint_files
from blocks.training.cli import build, main, parse_overrides
from blocks.training.config import TrainConfig
from blocks.training.runs import list_checkpoints, load_run, read_metrics
from blocks.training.trainer import Trainer, TrainingDiverged, checkpoint_schedule, lr_at, pick_device

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "n_symbols": 8,
    "seq_len": 16,
    "min_repeat": 2,
    "max_repeat": 6,
    "eval_n": 4,
    "n_train": 96,
    "n_test": 8,
    "d_model": 16,
    "n_heads": 2,
    "steps": 12,
    "batch_size": 8,
    "eval_every": 4,
    "log_every": 1,
    "warmup_steps": 3,
    "n_checkpoints": 4,
    "device": "cpu",
    "seed": 1,
    "lr": 1e-3,
}


def tiny_trainer(out, resume=False, overwrite=False, **changes):
    task, model_cfg, train_cfg = build("induction", {**TINY, **changes})
    return Trainer(task, model_cfg, train_cfg, out, resume=resume, overwrite=overwrite, progress=False)


def interrupt_at_forward(n):
    """A hook that raises KeyboardInterrupt on the n-th forward pass through hook_embed (training and eval)."""
    calls = {"n": 0}

    def hook(act, hook):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    return hook


def train_losses(path):
    return [(m["step"], m["train_loss"]) for m in read_metrics(path) if "train_loss" in m]


def test_ctrl_c_then_resume_ends_with_the_same_weights(tmp_path):
    straight = tiny_trainer(tmp_path / "straight")
    straight.run()
    stopped = tiny_trainer(tmp_path / "stopped")
    # forward 1 is the step-0 evaluation's head scores ... interrupt a few training steps in
    with stopped.model.hooks(fwd=[("hook_embed", interrupt_at_forward(9))]):
        result = stopped.run()
    assert result.interrupted and 0 < result.step < 12
    assert result.step in list_checkpoints(tmp_path / "stopped")
    resumed = tiny_trainer(tmp_path / "stopped", resume=True)
    assert resumed.step == result.step
    assert not resumed.run().interrupted
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for key, a in straight.optimizer.state_dict()["state"][0].items():
        assert torch.equal(a, resumed.optimizer.state_dict()["state"][0][key])
    assert train_losses(tmp_path / "straight") == train_losses(tmp_path / "stopped")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = tiny_trainer(tmp_path / "run")
    calls = {"n": 0}

    def poison(act, hook):
        calls["n"] += 1
        return act * float("nan") if calls["n"] >= 8 else None

    with trainer.model.hooks(fwd=[("hook_embed", poison)]), pytest.raises(TrainingDiverged, match="loss became nan"):
        trainer.run()
    steps = list_checkpoints(tmp_path / "run")
    assert steps and max(steps) < 12
    run = load_run(tmp_path / "run")
    assert run.step == max(steps) and all(torch.isfinite(p).all() for p in run.model.parameters())
    assert read_metrics(tmp_path / "run")[-1]["stopped"] == "non-finite loss"


def test_out_folder_with_a_run_is_refused_and_resume_must_match(tmp_path):
    tiny_trainer(tmp_path / "run", steps=4).run()
    with pytest.raises(FileExistsError, match="already holds a run.*--resume.*--overwrite"):
        tiny_trainer(tmp_path / "run", steps=4)
    with pytest.raises(ValueError, match=r"train.lr: run has 0.001, now 0.5"):
        tiny_trainer(tmp_path / "run", resume=True, steps=4, lr=0.5)
    with pytest.raises(ValueError, match=r"task.n_symbols"):
        tiny_trainer(tmp_path / "run", resume=True, steps=4, n_symbols=9)
    fresh = tiny_trainer(tmp_path / "run", overwrite=True, steps=3)
    fresh.run()
    assert list_checkpoints(tmp_path / "run") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="contradict"):
        tiny_trainer(tmp_path / "run", resume=True, overwrite=True, steps=3)


def test_corrupt_latest_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
    tiny_trainer(tmp_path / "run", steps=6).run()
    weights = checkpoint_files(tmp_path / "run", 6)[0]
    weights.write_bytes(weights.read_bytes()[:100])
    trainer = tiny_trainer(tmp_path / "run", resume=True, steps=6)
    previous = max(s for s in list_checkpoints(tmp_path / "run") if s < 6)
    assert trainer.step == previous
    assert (
        len(trainer.skipped) == 1
        and str(weights) in trainer.skipped[0]
        and "truncated or corrupt" in trainer.skipped[0]
    )
    # the CLI says which file it passed over, and why, then finishes the run from the previous one
    assert main(["--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(weights) in warnings[0] and "not a readable safetensors file" in warnings[0]
    assert f"({previous}/6 steps done)" in err and "done: 6 steps" in err
    assert load_run(tmp_path / "run").step == 6 and load_run(tmp_path / "run").skipped == []


def test_cli_unknown_or_unavailable_device_is_a_one_line_error(tmp_path, capsys):
    args = ["--task", "induction", "--out", str(tmp_path / "x"), "--steps", "3", "--no-progress"]
    bad = ["quantum", "cuda:7"]
    if not torch.backends.mps.is_available():
        bad.append("mps")
    if not torch.cuda.is_available():
        bad.append("cuda")
    for name in bad:
        assert main([*args, "--device", name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"device {name!r} is not available here; choose one of auto, cpu" in err
    assert not (tmp_path / "x").exists()  # refused before anything was written
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}


def test_cli_resume_takes_options_from_the_run_and_refuses_only_given_differences(tmp_path, capsys):
    out = tmp_path / "run"
    small = {**TINY, "steps": 4, "eval_every": 100, "n_checkpoints": 2}
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in small.items()]
    assert main(["--task", "induction", "--out", str(out), "--no-progress", *args]) == 0
    capsys.readouterr()
    # nothing but --resume: every option (model size, task, steps) comes from the run's config.json
    assert main(["--task", "induction", "--out", str(out), "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "(4/4 steps done)" in err and "nothing to do" in err and "already has 4 steps" in err
    assert "final train loss nan" not in err
    # a given option that changes what the run is, is refused, naming it
    assert main(["--out", str(out), "--resume", "--lr", "0.5"]) == 2
    assert "train.lr: run has 0.001, now 0.5" in capsys.readouterr().err
    assert main(["--out", str(out), "--resume", "--d_model", "32"]) == 2
    assert "model.d_model" in capsys.readouterr().err
    assert main(["--task", "sort", "--out", str(out), "--resume"]) == 2
    assert "it is a run of task 'induction', not 'sort'" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    # a larger --steps extends the finished run, and the run's config says so from then on
    assert main(["--out", str(out), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert "done: 6 steps" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 6
    assert list_checkpoints(out)[-1] == 6 and [s for s, _ in train_losses(out)] == [1, 2, 3, 4, 5, 6]
    assert main(["--out", str(out), "--resume", "--steps", "5", "--no-progress"]) == 0
    assert "already has 6 steps (steps=5)" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 6


def test_an_attention_only_run_saved_with_the_derived_d_mlp_still_resumes(tmp_path, capsys):
    out, options = tmp_path / "run", tmp_path / "cfg.json"
    options.write_text(json.dumps({**TINY, "steps": 4, "eval_every": 100, "n_checkpoints": 2}))
    assert main(["--task", "induction", "--out", str(out), "--no-progress", "--config", str(options)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["attn_only"] and config["model"]["d_mlp"] is None
    config["model"]["d_mlp"] = 4 * config["model"]["d_model"]  # how runs were saved before d_mlp became None
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["--out", str(out), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert "done: 6 steps" in capsys.readouterr().err
    assert load_run(out).model.cfg.d_mlp is None


def test_cli_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    options = {**TINY, "steps": 6, "eval_every": 100, "lr": 1e30, "warmup_steps": 0}  # the first update blows up
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in options.items()]
    assert main(["--task", "induction", "--out", str(tmp_path / "run"), "--no-progress", *args]) == 1
    err = capsys.readouterr().err
    assert "stopped: the loss became nan at step 2" in err and "last good checkpoint is step 1" in err
    assert list_checkpoints(tmp_path / "run") == [0, 1]
    assert read_metrics(tmp_path / "run")[-1]["stopped"] == "non-finite loss"


def test_non_finite_weights_are_never_saved_as_a_checkpoint(tmp_path):
    trainer = tiny_trainer(tmp_path / "run")
    updates = {"n": 0}

    def poison_after_second_update(optimizer, args, kwargs):
        updates["n"] += 1
        if updates["n"] == 2:  # step 2 is on the checkpoint schedule: its save must refuse these weights
            trainer.model.W_E.data[0, 0] = float("inf")

    assert 2 in checkpoint_schedule(trainer.cfg)
    trainer.optimizer.register_step_post_hook(poison_after_second_update)
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 2.*last good checkpoint is step 1"):
        trainer.run()
    assert list_checkpoints(tmp_path / "run") == [0, 1]
    assert read_metrics(tmp_path / "run")[-1] == {"step": 2, "stopped": "non-finite weights"}


def test_cli_bad_input_lists_what_is_valid(tmp_path, capsys):
    assert main(["--task", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "valid tasks are ['induction'" in capsys.readouterr().err
    assert main(["--task", "sort", "--out", str(tmp_path / "x"), "--lrate", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) ['lrate']" in err and "'lr'" in err and "list_len" in err
    assert main(["--task", "sort", "--out", str(tmp_path / "x"), "--d_vocab", "7"]) == 2
    assert "d_vocab=7 but task 'sort' has 52 tokens" in capsys.readouterr().err
    assert main(["--task", "induction", "--out", str(tmp_path / "x"), "--n_ctx", "8"]) == 2
    assert "n_ctx=8 is shorter" in capsys.readouterr().err
    assert main(["--task", "sort", "--out", str(tmp_path / "x"), "--schedule", "cubic"]) == 2
    assert "schedule must be one of" in capsys.readouterr().err
    (tmp_path / "cfg.json").write_text("[1, 2]")
    assert main(["--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "x")]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert parse_overrides(["--lr", "3e-3", "--attn_only", "true", "--source=a.txt"]) == {
        "lr": 0.003,
        "attn_only": True,
        "source": "a.txt",
    }


def test_attn_only_given_on_the_command_line_rederives_d_mlp():
    # the induction task's default model is attention-only; modular addition's has an MLP of 512
    assert build("induction", {"attn_only": False})[1].d_mlp == 4 * build("induction", {})[1].d_model
    assert build("modular_addition", {})[1].d_mlp == 512
    assert build("modular_addition", {"attn_only": True})[1].d_mlp is None
    with pytest.raises(ValueError, match="contradicts attn_only"):
        build("modular_addition", {"attn_only": True, "d_mlp": 64})


def test_cli_trains_from_a_config_file_and_resumes(tmp_path, capsys):
    options = {**TINY, "steps": 3}
    (tmp_path / "cfg.json").write_text(json.dumps(options))
    out = tmp_path / "run"
    assert (
        main(["--task", "induction", "--out", str(out), "--config", str(tmp_path / "cfg.json"), "--no-progress"]) == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["name"] == "induction" and config["model"]["d_model"] == 16
    assert config["train"]["steps"] == 3 and config["tokenizer"]["vocab"][0] == "BOS"
    # a run's own config.json works as --config too; resuming a finished run is a no-op that says so
    capsys.readouterr()
    assert main(["--out", str(out), "--config", str(out / "config.json"), "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "nothing to do: the run in" in err and "already has 3 steps" in err and "nan" not in err


def test_lr_schedule_and_checkpoint_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    linear = TrainConfig(steps=100, lr=1.0, warmup_steps=0, schedule="linear", min_lr_frac=0.0)
    assert lr_at(50, linear) == pytest.approx(0.5)
    steps = sorted(checkpoint_schedule(TrainConfig(steps=10_000, n_checkpoints=10)))
    assert steps[0] == 0 and steps[-1] == 10_000 and len(steps) == 11
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps == sorted(gaps)  # dense early, sparse late
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=10, warmup_steps=20)


@pytest.mark.slow
def test_ddp_two_processes_match_one_on_the_same_global_batch(tmp_path):
    options = {**TINY, "steps": 4, "eval_every": 100}
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in options.items()]
    assert main(["--task", "induction", "--out", str(tmp_path / "one"), "--no-progress", *args]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "blocks.train",
        "--task",
        "induction",
        "--out",
        str(tmp_path / "two"),
        "--no-progress",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(one, two):
        assert a == pytest.approx(b, abs=1e-5)
    w1, w2 = load_run(tmp_path / "one").model.state_dict(), load_run(tmp_path / "two").model.state_dict()
    for name in w1:
        if name.endswith("attn.key.bias"):  # b_K
            # b_K's true gradient is zero (softmax ignores a shift shared by all keys), so Adam turns
            # float noise in it into steps of up to lr: bounded by steps * lr, not equal
            assert (w1[name] - w2[name]).abs().max() <= 4 * 1e-3
        else:
            torch.testing.assert_close(w1[name], w2[name], atol=1e-6, rtol=1e-5)


def test_the_training_log_says_what_its_milestone_means_and_why_induction_loss_stays_high(tmp_path, capsys):
    small = {**TINY, "steps": 4, "eval_every": 100, "n_checkpoints": 1}
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in small.items()]
    assert main(["--task", "induction", "--out", str(tmp_path / "run"), "--no-progress", *args]) == 0
    err = capsys.readouterr().err
    task = get_task("induction", **{k: v for k, v in small.items() if k in task_options("induction")})
    (note,) = task.training_notes()
    assert note in err and "cannot go much below" in note and "random" in note
    # the floor it names is the random tokens' share of the loss: ln n_symbols on each of them
    tokens, _ = task.generate(64, seed=task.seed)
    rows = tokens.tolist()
    share = 1 - sum(len(task.scored_positions(r)) for r in rows) / sum(len(r) - 1 for r in rows)
    assert f"below {share * math.log(task.n_symbols):.2f} nats" in note
    assert f"milestone induction_formed not reached in 4 steps (it means {task.milestone_meaning()})" in err
