"""An SAE saved in the app tests' sycophancy run, and one of the wrong width in the modadd run, for the features page."""

from __future__ import annotations

import pytest
import torch

from blocks.tasks.common import dataset_tensors
from blocks.training.runs import load_run
from probes.sae.activations import run_batches
from probes.sae.files import sae_dir, save_sae
from probes.sae.sae import SAEConfig, SparseAutoencoder
from probes.sae.train import SAETrainConfig, train_sae

NAME = "blocks.1.hook_resid_post.topk-64.step8"


@pytest.fixture(scope="module")
def saes(runs_dir):
    """A TopK SAE trained briefly on the sycophancy run, and one of the wrong width saved in the modadd run."""
    run = load_run(runs_dir / "sycophancy")
    tokens, _ = dataset_tensors(run.task.dataset("train"))
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, width=64, kind="topk", k=4, hook_name="blocks.1.hook_resid_post"))
    with torch.enable_grad():
        train_sae(sae, run_batches(run.model, tokens, sae.cfg.hook_name, 64, 512, 8), SAETrainConfig(steps=40))
    save_sae(sae, sae_dir(runs_dir / "sycophancy", NAME), {"run": "sycophancy", "step": 8})
    wrong = SparseAutoencoder(SAEConfig(d_in=8, width=32, kind="relu", hook_name="blocks.0.hook_resid_post"))
    save_sae(wrong, sae_dir(runs_dir / "modadd", "narrow"), {"run": "modadd", "step": 8})
    return runs_dir
