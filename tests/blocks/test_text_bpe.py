"""The text task's byte-level BPE: trained on the corpus or read from a folder, saved with the run, shown as text."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from blocks.tasks import get_task
from blocks.tasks.base import Tokenizer
from blocks.tasks.bpe import BPETokenizer
from blocks.tasks.common import dataset_tensors
from blocks.training.cli import build
from blocks.training.runs import load_run
from blocks.training.trainer import Trainer

SHAKESPEARE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text()[:40_000])
    return path


def test_trained_bpe_is_deterministic_round_trips_any_text_and_reads_as_text(corpus: Path) -> None:
    lines = corpus.read_text().splitlines(keepends=True)
    bpe = BPETokenizer.train(lines, vocab_size=400)
    assert bpe.d_vocab == 400 and bpe == BPETokenizer.train(lines, vocab_size=400)
    for text in ("First Citizen:\nBefore we proceed", "na\u00efve caf\u00e9 \u2603 \U0001f600 never seen"):
        assert bpe.decode(bpe.encode(text)) == text  # bytes, so no character is unknown
    ascii_text = "First Citizen:\nBefore we proceed"
    assert "".join(bpe.token_strs(bpe.encode(ascii_text))) == ascii_text
    ids = bpe.encode("the king and the queen")
    assert len(ids) < len("the king and the queen")  # merges happened
    assert " the" in bpe.token_strs(ids) or " king" in bpe.token_strs(ids)  # tokens shown as the text they are
    assert len(set(bpe.vocab)) == bpe.d_vocab  # one label per id, so a select box maps back
    assert Tokenizer.from_dict(json.loads(json.dumps(bpe.to_dict()))) == bpe
    with pytest.raises(ValueError, match="vocab_size must be an int of at least 257"):
        BPETokenizer.train(lines, vocab_size=100)


def test_text_task_trains_bpe_on_the_training_text_and_builds_its_default_model(corpus: Path) -> None:
    task = get_task("text", source=str(corpus), seq_len=32, tokenizer="bpe", vocab_size=300)
    tokens, mask = dataset_tensors(task.dataset("train"))
    assert tokens.shape[1] == 32 and int(tokens.max()) < 300 and task.tokenizer.d_vocab == 300
    assert task.tokenizer.decode(tokens[0]) in corpus.read_text()
    cfg = task.default_model_config()
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (4, 256, 300)
    with pytest.raises(ValueError, match="tokenizer must be one of \\['char', 'bpe'\\]"):
        get_task("text", source=str(corpus), tokenizer="wordpiece")
    with pytest.raises(ValueError, match="tokenizer_dir gives a BPE tokenizer"):
        get_task("text", source=str(corpus), tokenizer_dir="somewhere")


def test_tokenizer_from_a_folder_and_a_folder_that_does_not_match_the_run(corpus: Path, tmp_path: Path) -> None:
    lines = corpus.read_text().splitlines(keepends=True)
    BPETokenizer.train(lines, vocab_size=300).save(tmp_path / "tok300")
    BPETokenizer.train(lines, vocab_size=320).save(tmp_path / "tok320")
    task = get_task("text", source=str(corpus), seq_len=16, tokenizer="bpe", tokenizer_dir=str(tmp_path / "tok300"))
    assert task.tokenizer == BPETokenizer.from_folder(tmp_path / "tok300")
    gone = get_task("text", source=str(corpus), seq_len=16, tokenizer="bpe", tokenizer_dir=str(tmp_path / "gone"))
    gone.use_tokenizer(task.tokenizer)  # opening a run uses its saved tokenizer: the folder is not read again
    assert gone.tokenizer == task.tokenizer
    chars = get_task("text", source=str(corpus), seq_len=16)
    with pytest.raises(ValueError, match="saved tokenizer is 'bpe' but the task's options ask for 'char'"):
        chars.use_tokenizer(task.tokenizer)
    word_level = HFTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="must be byte-level BPE .*WordLevel model"):
        BPETokenizer.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        BPETokenizer.from_folder(tmp_path / "nothing")


def test_a_bpe_run_saves_its_tokenizer_and_opens_without_the_text(corpus: Path, tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(corpus.read_text()[:6000])
    options = {"source": str(text), "seq_len": 16, "tokenizer": "bpe", "vocab_size": 280, "d_model": 16,
               "n_heads": 2, "n_layers": 1, "steps": 2, "batch_size": 4, "eval_every": 2, "warmup_steps": 1,
               "device": "cpu"}  # fmt: skip
    task, model_cfg, train_cfg = build("text", options)
    Trainer(task, model_cfg, train_cfg, tmp_path / "run", progress=False).run()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["tokenizer"]
    assert saved["kind"] == "bpe" and json.loads(saved["tokenizer_json"])["model"]["type"] == "BPE"
    text.unlink()
    run = load_run(tmp_path / "run")
    assert isinstance(run.tokenizer, BPETokenizer) and run.tokenizer == task.tokenizer
    prompt = run.task.example(0)  # without the text: seeded ids of the saved vocabulary
    assert len(prompt) == 32 and max(prompt) < 280
    generated = run.model.generate(torch.tensor([prompt[:4]]), max_new_tokens=5, temperature=0)
    assert isinstance(run.tokenizer.decode(generated[0]), str) and generated.shape == (1, 9)


def test_resuming_with_another_bpe_vocabulary_names_both_sizes(corpus: Path, tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(corpus.read_text()[:6000])
    options = {"source": str(text), "seq_len": 16, "tokenizer": "bpe", "vocab_size": 280, "d_model": 16,
               "n_heads": 2, "n_layers": 1, "steps": 2, "batch_size": 4, "eval_every": 2, "warmup_steps": 1,
               "device": "cpu"}  # fmt: skip
    Trainer(*build("text", options), tmp_path / "run", progress=False).run()
    task, model_cfg, train_cfg = build("text", {**options, "vocab_size": 300})
    with pytest.raises(
        ValueError, match=r"tokenizer: the run's has 280 tokens, this one 300 \(the run's is bpe, this one bpe\)"
    ):
        Trainer(task, model_cfg, train_cfg, tmp_path / "run", resume=True, progress=False)


def test_resuming_with_another_tokenizer_folder_of_the_same_size_says_the_merges_differ(
    corpus: Path, tmp_path: Path
) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(corpus.read_text()[:6000])
    lines = text.read_text().splitlines(keepends=True)
    BPETokenizer.train(lines, vocab_size=280).save(tmp_path / "tok")
    options = {"source": str(text), "seq_len": 16, "tokenizer": "bpe", "tokenizer_dir": str(tmp_path / "tok"),
               "d_model": 16, "n_heads": 2, "n_layers": 1, "steps": 2, "batch_size": 4, "eval_every": 2,
               "warmup_steps": 1, "device": "cpu"}  # fmt: skip
    Trainer(*build("text", options), tmp_path / "run", progress=False).run()
    BPETokenizer.train(lines[: len(lines) // 2], vocab_size=280).save(tmp_path / "tok")  # same size, other merges
    with pytest.raises(ValueError, match="both have 280 tokens but different merges or vocabulary"):
        Trainer(*build("text", options), tmp_path / "run", resume=True, progress=False)
