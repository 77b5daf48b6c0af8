import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from scratchnn import MNISTClassifier, mnist
from scratchnn.mnist import (
    MNISTTensors,
    accuracy,
    linear_decay,
    mnist_from_idx,
    pick_device,
    to_tensors,
    train_epoch,
)


@pytest.fixture(scope="module")
def splits(mnist_dir: Path):
    return mnist_from_idx(mnist_dir)


@pytest.fixture(scope="module")
def tensors(splits) -> tuple[MNISTTensors, MNISTTensors]:
    return to_tensors(splits["train"]), to_tensors(splits["test"])


def test_idx_folder_becomes_a_datasets_dataset_and_one_float_tensor(splits, tensors) -> None:
    assert isinstance(splits, datasets.DatasetDict) and isinstance(splits["train"], datasets.Dataset)
    assert splits.num_rows == {"train": 60_000, "test": 10_000}
    train, test = tensors
    assert train.images.shape == (60_000, 28, 28) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and int(train.labels.bincount()[1]) == 6742
    # normalised with the training set's pixel statistics
    assert abs(train.images.mean().item()) < 0.01 and abs(train.images.std().item() - 1) < 0.01


def test_short_training_run_beats_90_percent(tensors) -> None:  # on one thread, as tests/conftest.py sets
    train, test = tensors
    small_train, small_test = train.subset(6000, seed=0), test.subset(2000, seed=1)
    torch.manual_seed(0)
    model = MNISTClassifier()
    before = accuracy(model, small_test)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = linear_decay(optimizer, 2 * math.ceil(6000 / 128))
    generator = torch.Generator().manual_seed(0)
    losses = [
        train_epoch(model, optimizer, small_train, 128, generator, progress=False, scheduler=scheduler)
        for _ in range(2)
    ]
    after = accuracy(model, small_test)
    assert before < 0.3
    assert after > 0.90, f"test accuracy {after:.3f} after 2 epochs on 6000 images"
    assert losses[1] < losses[0] < 1.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # decayed to zero


def test_cli_trains_prints_and_saves(tensors, monkeypatch, capsys, tmp_path: Path) -> None:
    train, test = tensors
    tiny = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "image": (t.images[:500] * mnist.PIXEL_STD + mnist.PIXEL_MEAN).mul(255).round().byte().numpy(),
                    "label": t.labels[:500].numpy(),
                },
                features=mnist._features(),
            )
            for split, t in (("train", train), ("test", test))
        }
    )
    monkeypatch.setattr(mnist, "load_mnist", lambda data_dir: tiny)
    out = tmp_path / "w" / "model.safetensors"
    assert mnist.main(["--epochs", "2", "--device", "cpu", "--save", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "epoch 2/2" in printed and "test accuracy" in printed
    weights = load_file(str(out))
    assert weights["net.1.weight"].shape == (256, 784)
    MNISTClassifier().load_state_dict(weights)


def test_cli_bad_input(tmp_path: Path, capsys) -> None:
    assert mnist.main(["--data-dir", str(tmp_path), "--device", "cpu"]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    assert mnist.main(["--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "'tpu' is not available" in err and "cpu" in err
    with pytest.raises(SystemExit):
        mnist.main(["--save", str(tmp_path / "model.pt")])
    assert ".safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mnist.main(["--epochs", "0"])


def test_unknown_device_lists_available() -> None:
    with pytest.raises(ValueError, match="choose one of auto, cpu"):
        pick_device("cuda:7")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in {"cpu", "cuda", "mps"}


def test_offline_without_data_dir_names_the_flag(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run(
        [sys.executable, "-m", "scratchnn.mnist", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--data-dir" in done.stderr and "Traceback" not in done.stderr
