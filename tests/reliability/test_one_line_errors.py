"""Every failure a person can fix ends a command in one line naming the file or option, exit status 2."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from conftest import TINY, app_on

from blocks import Transformer, TransformerConfig
from blocks.size import LIMIT_ENV
from blocks.training.cli import main as train
from probes.scripts.head_scores import main as head_scores
from scratchnn.errors import describe
from scratchnn.mnist import main as mnist

ARGS = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in TINY.items()]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def text_run_args(tmp_path, source) -> list[str]:
    return ["--task", "text", "--out", str(tmp_path / "run"), "--source", str(source), "--seq_len", "8", "--steps", "1"]


def test_a_string_where_a_task_option_needs_a_number(tmp_path, capsys):
    assert train(["--out", str(tmp_path / "run"), "--seq_len", "abc"]) == 2
    assert "task 'induction' option seq_len must be int, got 'abc'" in one_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "is not text (byte"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"lr": ', "is not valid JSON"),
    ],
    ids=["binary", "deep", "truncated"],
)
def test_an_unreadable_config_file_is_named(tmp_path, capsys, content, message):
    config = tmp_path / "options.json"
    config.write_bytes(content)
    assert train(["--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    line = one_line(capsys)
    assert message in line and str(config) in line


def test_paths_that_are_a_file_or_a_folder_where_the_other_was_expected(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train(["--out", str(tmp_path / "file"), "--no-progress", *ARGS]) == 2
    assert f"--out {tmp_path / 'file'} is a file; give a folder" in one_line(capsys)
    assert train(["--out", str(tmp_path / "run"), "--config", str(tmp_path)]) == 2
    assert f"--config {tmp_path} is a folder" in one_line(capsys)
    assert train([*text_run_args(tmp_path, tmp_path / "file" / "below.txt"), "--no-progress"]) == 2
    assert "no text file at" in one_line(capsys)
    with pytest.raises(SystemExit):
        head_scores(["--run", str(tmp_path / "file"), "--out", str(tmp_path / "file" / "out")])
    assert "--out" in one_line(capsys)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.csv", 'text,label\n"unclosed,1\n2,3,4,5,6\n', "could not be read as CSV"),
        ("bad.jsonl", '{"text": "abc"}\n{"text": \n', "could not be read as JSON"),
        ("bin.txt", b"abc\xff\xfe\x00def" * 40, "is not UTF-8 text (byte 3 is b'\\xff')"),
    ],
)
def test_a_malformed_text_source_is_named(tmp_path, capsys, name, content, message):
    source = tmp_path / name
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert train([*text_run_args(tmp_path, source), "--no-progress"]) == 2
    line = one_line(capsys)
    assert message in line and str(source) in line
    assert not (tmp_path / "run").exists()


def test_out_of_memory_is_one_line_with_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "1e13")  # let the allocator itself refuse: 10**9 positions need 10**18 bytes of mask
    assert train(["--out", str(tmp_path / "run"), "--no-progress", *ARGS, "--n_ctx", str(10**9)]) == 2
    line = one_line(capsys)
    assert "out of memory" in line and "lower the batch size" in line and "enforce fail" not in line
    assert describe(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")).startswith(
        "out of memory (CUDA out of memory"
    )
    assert describe(MemoryError()).startswith("out of memory (MemoryError)")
    assert describe(TypeError("a bug")) is None  # bugs keep their traceback


def test_a_hook_that_returns_another_dtype_is_named(capsys):
    model = Transformer(TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=5, n_ctx=4))

    def to_double(act, hook):
        return act.double()

    with pytest.raises(ValueError, match=r"the hook .*to_double on blocks.0.hook_resid_pre returned a torch.float64"):
        with model.hooks(fwd=[("blocks.0.hook_resid_pre", to_double)]):
            model(torch.tensor([[1, 2]]))


def write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(">u1").tobytes()))


def mnist_dir(tmp_path, labels=None, size=28, n=64):
    data = tmp_path / "mnist"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, size, size)))
        write_idx(data / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n) if labels is None else labels)
    return data


@pytest.mark.parametrize(
    "kind, message",
    [("labels", "holds the label 200; MNIST's labels are the digits 0 to 9"), ("size", "images of 27x27 pixels")],
)
def test_bad_mnist_files_are_named(tmp_path, capsys, kind, message):
    labels = np.full(64, 200) if kind == "labels" else None
    data = mnist_dir(tmp_path, labels=labels, size=27 if kind == "size" else 28)
    assert mnist(["--data-dir", str(data), "--epochs", "1"]) == 2
    line = one_line(capsys)
    assert message in line and ("labels-idx1" if kind == "labels" else "images-idx3") in line


def test_mnist_refuses_an_infinite_lr_and_stops_on_a_nan_loss(tmp_path, capsys):
    data = mnist_dir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        mnist(["--data-dir", str(data), "--lr", "inf"])
    assert (
        stop.value.code == 2
        and "--lr must be a positive finite number no larger than 1e30, got inf" in capsys.readouterr().err
    )
    save = tmp_path / "w.safetensors"
    assert mnist(["--data-dir", str(data), "--lr", "1e30", "--epochs", "2", "--save", str(save)]) == 1
    err = capsys.readouterr().err
    assert "stopped: the training loss became nan in epoch" in err and not save.exists()


def test_mnist_checks_save_before_training(tmp_path, capsys):
    data = mnist_dir(tmp_path)
    (tmp_path / "file").write_text("x")
    assert mnist(["--data-dir", str(data), "--save", str(tmp_path / "file" / "w.safetensors")]) == 2
    out = capsys.readouterr()
    assert "--save" in out.err and "cannot be written" in out.err and "epoch" not in out.out


def test_the_app_shows_one_line_for_out_of_memory_and_for_an_unreadable_config(run_copy, monkeypatch):
    run = run_copy()

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Transformer, "run_with_cache", no_memory)
    at = app_on(run.parent, monkeypatch, page="flow", run="run")
    assert not at.exception and any("out of memory (CUDA out of memory" in e.value for e in at.error)
    monkeypatch.undo()
    (run / "config.json").write_bytes(b"\xff\xfe\x00 not json")
    at = app_on(run.parent, monkeypatch, run="run")
    assert not at.exception and "config.json is not text" in at.error[0].value


def test_a_bug_in_the_app_still_fails_but_shows_no_server_paths(run_copy, monkeypatch):
    run = run_copy()

    def bug(*args, **kwargs):
        raise TypeError("a bug in /srv/secret/path.py")

    monkeypatch.setattr(Transformer, "run_with_cache", bug)
    at = app_on(run.parent, monkeypatch, page="flow", run="run")
    assert at.exception and at.exception[0].proto.type == "TypeError"  # tests still see bugs
    assert "/srv/secret" not in at.exception[0].message and not at.exception[0].stack_trace


def test_an_empty_out_is_refused_not_read_as_the_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train(["--out", "", "--no-progress", *ARGS]) == 2
    assert "--out is empty" in one_line(capsys) and not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit):
        head_scores(["--run", str(tmp_path), "--out", " "])
    assert "--out is empty" in one_line(capsys)
