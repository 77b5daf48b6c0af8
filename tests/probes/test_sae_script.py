"""`python -m probes.sae` end to end on tiny runs: files beside the run, numbers the library computes, bad input."""

import json
import subprocess
import sys

import pytest
import torch

from blocks.tasks import get_task
from blocks.tasks.common import dataset_tensors
from blocks.training.config import TrainConfig
from blocks.training.runs import load_run
from blocks.training.trainer import Trainer
from probes.sae.evaluate import evaluate_sae
from probes.sae.files import list_saes, load_sae
from probes.scripts import sae as sae_script

TINY = {
    "sycophancy": dict(n_train=256, n_test=64),
    "sort": dict(list_len=4, n_values=8, n_train=64, n_test=32),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, options in TINY.items():
        task = get_task(name, **options)
        cfg = TrainConfig(
            steps=2, batch_size=8, warmup_steps=0, eval_every=2, log_every=1, n_checkpoints=1, device="cpu", bf16=False
        )
        Trainer(task, task.default_model_config(), cfg, root / name, progress=False).run()
    return root


def test_script_saves_beside_the_run_and_reports_what_the_library_computes(runs, tmp_path, capsys):
    run_dir = runs / "sycophancy"
    sae_script.main(
        ["--run", str(run_dir), "--hook", "blocks.1.hook_resid_post", "--out", str(tmp_path), "--width", "64",
         "--k", "4", "--steps", "30", "--batch-size", "64", "--buffer", "1024", "--model-batch", "8",
         "--eval-n", "32", "--no-progress"]
    )  # fmt: skip
    out = capsys.readouterr().out
    names = list_saes(run_dir)
    assert names == ["blocks.1.hook_resid_post.topk-64.step2"]
    sae, cfg = load_sae(run_dir / "saes" / names[0])
    assert cfg["sandbox"]["step"] == 2 and cfg["d_in"] == 64 and cfg["meta"]["hook_name"] == "blocks.1.hook_resid_post"
    data = json.loads((tmp_path / "sae.json").read_text())
    assert data["steps_done"] == 30 and data["diverged"] is None
    run = load_run(run_dir)
    tokens, mask = dataset_tensors(run.task.dataset("test"))
    again = evaluate_sae(run.model, sae, tokens[:32], mask[:32])
    for key, value in again.summary().items():
        assert data["evaluation"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert {v["name"] for v in data["known_variables"]} == {
        "opinion present",
        "opinion value",
        "queried key",
        "true value",
    }
    assert "loss_recovered" in out and "opinion present" in out
    for fig in ("training", "frequency", "loss", "known_variables"):
        assert (tmp_path / f"{fig}.html").stat().st_size > 1000


def test_script_trains_a_transcoder_on_a_sort_run(runs, tmp_path):
    """Sort's default model is attention-only, so the transcoder reads and writes the attention's output instead."""
    run_dir = runs / "sort"
    sae_script.main(
        ["--run", str(run_dir), "--hook", "blocks.0.hook_resid_pre", "--hook-out", "blocks.0.hook_attn_out",
         "--out", str(tmp_path), "--kind", "relu", "--width", "32", "--steps", "10", "--batch-size", "32",
         "--buffer", "256", "--model-batch", "4", "--eval-n", "8", "--no-progress"]
    )  # fmt: skip
    sae, cfg = load_sae(run_dir / "saes" / list_saes(run_dir)[0])
    assert cfg["architecture"] == "transcoder" and sae.cfg.hook_name_out == "blocks.0.hook_attn_out"
    data = json.loads((tmp_path / "sae.json").read_text())
    assert data["evaluation"]["loss_spliced"] > 0 and torch.isfinite(torch.tensor(data["evaluation"]["loss_zero"]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hook", "blocks.1.hook_resid_pst"], "did you mean blocks.1.hook_resid_post"),
        (["--hook", "blocks.1.hook_resid_post", "--width", "0"], "--width must lie in"),
        (["--hook", "blocks.1.hook_resid_post", "--width", "16", "--k", "16"], "--k must lie in [1, width=16)"),
    ],
)
def test_bad_input_is_one_line(runs, tmp_path, extra, message):
    proc = subprocess.run(
        [sys.executable, "-m", "probes.sae", "--run", str(runs / "sycophancy"), "--out", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
