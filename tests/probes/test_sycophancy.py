"""The sycophancy probe end to end on a tiny trained run, its library on known cases, and its errors."""

import json

import pytest
import torch

from blocks.config import TransformerConfig
from blocks.tasks import get_task
from blocks.training.config import TrainConfig
from blocks.training.runs import load_run
from blocks.training.trainer import Trainer
from probes import sycophancy as pref
from probes.scripts import sycophancy


def _train(task, cfg, steps, out):
    train = TrainConfig(
        steps=steps,
        batch_size=64,
        lr=3e-3,
        warmup_steps=min(20, steps),
        eval_every=steps,
        log_every=50,
        n_checkpoints=2,
        device="cpu",
        bf16=False,
    )
    Trainer(task, cfg, train, out, progress=False).run()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    task = get_task("sycophancy", n_train=4000, n_test=200)
    cfg = TransformerConfig(
        n_layers=2, d_model=32, n_heads=2, d_mlp=64, d_vocab=task.tokenizer.d_vocab, n_ctx=task.seq_len
    )
    _train(task, cfg, 300, root / "sycophancy")  # long enough to learn to defer (about 10 s)
    other = get_task("induction", n_symbols=8, seq_len=16, min_repeat=3, max_repeat=6, n_train=64, n_test=16, eval_n=6)
    _train(other, other.default_model_config(), 2, root / "induction")
    return {"sycophancy": root / "sycophancy", "induction": root / "induction"}


def test_script_finds_the_opinion_heads_and_reports_the_intervention(runs, tmp_path, capsys):
    sycophancy.main(["--run", str(runs["sycophancy"]), "--out", str(tmp_path), "--n", "100"])
    printed = capsys.readouterr().out
    assert "intervention: mean-ablate" in printed and "sycophancy_rate" in printed
    data = json.loads((tmp_path / "sycophancy.json").read_text())
    attention = torch.tensor(data["heads"]["attention_to_opinion"])
    effect = torch.tensor(data["heads"]["patching_effect"])
    assert attention.shape == effect.shape == (2, 2)
    assert bool(((attention >= 0) & (attention <= 1)).all())
    # the head that carries the opinion causally is the one that looks at it
    top = tuple(data["heads"]["candidates"][0])
    assert float(effect[top]) == float(effect.max()) and float(effect.max()) > 0.3
    assert float(attention[top]) > 0.5
    # the trained model defers to a wrong user; the opinion is unreadable before attention moves it
    before, after = data["intervention"]["before"], data["intervention"]["after"]
    assert before["sycophancy_rate"] > 0.7 and before["acc_right_opinion"] > 0.95
    assert after["sycophancy_rate"] < before["sycophancy_rate"] - 0.2
    opinion = data["probes"]["opinion"]
    assert opinion["streams"] == ["0_pre", "1_pre", "final_post"]
    assert opinion["task"][0] < 0.3 and opinion["task"][-1] > 0.9
    assert len(data["conflict_neurons"]) == 8 and data["flow"]["opinion_share"][0] > 0.5
    assert set(data["checks"]) == {"sycophancy_rate_at_least_halved", "accuracy_without_opinion_within_2_points"}
    for name in (
        "opinion_heads",
        "opinion_patching",
        "conflict_neurons",
        "flow",
        "probe_opinion",
        "probe_truth",
        "intervention",
    ):
        assert (tmp_path / f"{name}.html").is_file()


def test_library_on_known_cases(runs):
    run = load_run(runs["sycophancy"])
    task = run.task
    wrong = task.prompts(50, "wrong", seed=3)
    other = pref.swap_opinion(task, wrong, seed=1)
    assert bool((other.opinion != wrong.opinion).all()) and bool((other.opinion != other.truth).all())
    changed = (other.tokens != wrong.tokens).nonzero()[:, 1]
    assert set(changed.tolist()) == {task.opinion_pos}  # only the opinion slot differs
    with torch.no_grad():
        # the metric is logit(A) - logit(B): positive on the prompt saying A, negative on the one saying B
        result = pref.opinion_patching(run.model, task, wrong, seed=1)
        assert result.clean > 0 > result.corrupted
        before = pref.behaviour(run.model, task, {"wrong": wrong})
    preds = task.answers(run.model, wrong.tokens)
    assert before["sycophancy_rate"] == pytest.approx(float((preds == wrong.opinion).float().mean()))
    neurons = pref.conflict_neurons(run.model, task, wrong)
    assert neurons.score.shape == (2, 64) and len(neurons.top(3)) == 3


def test_library_rejects_other_tasks_and_prompts_without_opinions(runs):
    with pytest.raises(ValueError, match="needs a run of the 'sycophancy' task"):
        pref.check_task(get_task("sort"))
    task = get_task("sycophancy", n_train=100, n_test=20)
    with pytest.raises(ValueError, match="all carry an opinion"):
        pref.swap_opinion(task, task.prompts(4, "none"))
    run = load_run(runs["sycophancy"])
    with pytest.raises(ValueError, match="no opinion slot"):
        pref.opinion_attention(run.model, task, torch.zeros(2, task.seq_len - 1, dtype=torch.long))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "{induction}"], "needs a run of task 'sycophancy'"),
        (["--run", "{sycophancy}", "--prompt", "BOS a=1 e=4 g=3 ? g user 0"], "no opinion slot"),
        (["--run", "{sycophancy}", "--prompt", "BOS a=1 e=4 g=3 user - ? g"], "states no opinion"),
        (["--run", "{sycophancy}", "--prompt", "BOS a=1 e=4 g=3 user 0 ? zz"], "unknown token"),
        (["--run", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, argv, message):
    argv = [a.format(**{k: str(v) for k, v in runs.items()}) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        sycophancy.main(argv + ["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
