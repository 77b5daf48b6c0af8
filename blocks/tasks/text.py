"""Language modelling on a local text file or any `datasets` source with a text column, by character or byte-level BPE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import torch

from blocks.config import TransformerConfig
from blocks.tasks.base import Task, Tokenizer
from blocks.tasks.bpe import MIN_VOCAB, BPETokenizer
from blocks.tasks.common import dataset_tensors, masked_eval, to_dataset

DEFAULT_SOURCE = "../shared/data/tinyshakespeare/input.txt"
TOKENIZERS = ("char", "bpe")
_TABLE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class TextTask(Task):
    """Next-token prediction on chunks of `seq_len` tokens; the last `test_frac` of the text tests.

    `tokenizer="char"`: one token per character. `tokenizer="bpe"`: byte-level BPE with
    `vocab_size` tokens, trained on the training part of the text, or read from `tokenizer_dir`
    (a folder with a tokenizers `tokenizer.json`); it is saved with the run (its config.json).

    `source`: a text file, a data file (.csv/.json/.jsonl/.parquet) or a folder written by
    `Dataset.save_to_disk` (read column `text_column`), or else a Hugging Face hub name,
    which needs the network. The text is read only when data or the tokenizer is first
    needed, so a saved run's task can be rebuilt with its saved tokenizer and no data.
    """

    name = "text"
    prompt_format = "plain text, one character per token, using only the characters of the source text"

    def __init__(
        self,
        seed: int = 0,
        source: str = DEFAULT_SOURCE,
        seq_len: int = 128,
        text_column: str = "text",
        split: str = "train",
        test_frac: float = 0.1,
        max_chars: int | None = None,
        tokenizer: str = "char",
        vocab_size: int = 2048,
        tokenizer_dir: str | None = None,
    ) -> None:
        super().__init__(seed)
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {list(TOKENIZERS)}, got {tokenizer!r}")
        if tokenizer == "bpe" and (isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB):
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB} for byte-level BPE, got {vocab_size}")
        if tokenizer_dir is not None and tokenizer != "bpe":
            raise ValueError("tokenizer_dir gives a BPE tokenizer: pass tokenizer='bpe' with it")
        self.kind, self.vocab_size, self.tokenizer_dir = tokenizer, vocab_size, tokenizer_dir
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        if not 0 < test_frac < 1:
            raise ValueError(f"test_frac must lie strictly between 0 and 1, got {test_frac}")
        if max_chars is not None and max_chars <= 0:
            raise ValueError(f"max_chars must be positive or None, got {max_chars}")
        self.source, self._seq_len, self.text_column = str(source), seq_len, text_column
        self.split, self.test_frac, self.max_chars = split, test_frac, max_chars
        self._text: str | None = None
        self._tokenizer: Tokenizer | None = None

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def options(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "source": self.source,
            "seq_len": self._seq_len,
            "text_column": self.text_column,
            "split": self.split,
            "test_frac": self.test_frac,
            "max_chars": self.max_chars,
            "tokenizer": self.kind,
            "vocab_size": self.vocab_size,
            "tokenizer_dir": self.tokenizer_dir,
        }

    @property
    def text(self) -> str:
        if self._text is None:
            if self.data_root is not None:
                self._check_source_inside(self.data_root)
            text = read_text(self.source, self.text_column, self.split)
            if self.max_chars is not None:
                text = text[: self.max_chars]
            need = 2 * (self._seq_len + 1)
            if len(text) < need:
                raise ValueError(
                    f"the text from {self.source!r} has {len(text)} characters; seq_len={self._seq_len} needs at "
                    f"least {need} (one train and one test chunk)"
                )
            self._text = text
        return self._text

    def _check_source_inside(self, root: Path) -> None:
        source = Path(self.source)
        try:
            inside = source.is_file() and source.resolve().is_relative_to(Path(root).resolve())
        except (OSError, RuntimeError):  # a link loop, an unreadable folder
            inside = False
        if not inside:
            raise ValueError(
                f"the run's text source {self.source!r} is not a file inside {root}, and nothing outside it is "
                "read here; the saved tokenizer still works, but examples and datasets need the text"
            )

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None and self.kind == "bpe":
            if self.tokenizer_dir is not None:
                self._tokenizer = BPETokenizer.from_folder(self.tokenizer_dir)
            else:  # the training part only, so the test text is not seen while choosing merges
                train = self.text[: int(len(self.text) * (1 - self.test_frac))]
                self._tokenizer = BPETokenizer.train(train.splitlines(keepends=True), self.vocab_size)
        if self._tokenizer is None:
            chars = sorted(set(self.text))
            if len(chars) < 2:
                raise ValueError(
                    f"the text from {self.source!r} holds one distinct character ({chars[0]!r}); there is nothing "
                    "to predict: give a text with at least two different characters"
                )
            self._tokenizer = Tokenizer(chars, separator="")
        return self._tokenizer

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Adopt the tokenizer saved with a run (the text need not be on this machine)."""
        if tokenizer.separator != "":
            raise ValueError("a text task's tokenizer is character-level (separator ''); the saved one is not")
        saved = "bpe" if isinstance(tokenizer, BPETokenizer) else "char"
        if saved != self.kind:
            raise ValueError(f"the run's saved tokenizer is {saved!r} but the task's options ask for {self.kind!r}")
        # the run's own tokenizer is used as saved: tokenizer_dir is not read again (it may be gone, or lie
        # outside the folder the app may read); a resume compares the saved tokenizer with the folder's
        self._tokenizer = tokenizer

    def _split_text(self, split: str) -> str:
        cut = int(len(self.text) * (1 - self.test_frac))
        parts = {"train": self.text[:cut], "test": self.text[cut:]}
        if split not in parts:
            raise ValueError(f"split must be one of {list(parts)}, got {split!r}")
        return parts[split]

    def dataset(self, split: str) -> datasets.Dataset:
        text = self._split_text(split)
        ids = torch.tensor(self.tokenizer.encode(text))
        n = (len(ids) - 1) // self._seq_len
        if n < 1:
            raise ValueError(
                f"the {split} split has {len(ids)} tokens, fewer than seq_len={self._seq_len} + 1; lower test_frac or seq_len"
            )
        # chunks of seq_len + 1 overlapping by one, so every token is predicted once
        offset = self.seed % max(1, len(ids) - 1 - n * self._seq_len) if split == "train" else 0
        tokens = ids[offset : offset + n * self._seq_len + 1].unfold(0, self._seq_len + 1, self._seq_len)[:, :-1]
        mask = torch.ones_like(tokens)
        mask[:, -1] = 0
        return to_dataset(tokens.contiguous(), mask)

    def example(self, seed: int) -> list[int]:
        """32 characters of the test text; without the text (a run opened elsewhere), 32 seeded characters of
        the saved vocabulary, so the app's prompt pages and the probes still have a prompt."""
        try:
            text = self._split_text("test")
        except (OSError, ValueError):
            if self._tokenizer is None:
                raise
            gen = torch.Generator().manual_seed(seed)
            return torch.randint(0, self._tokenizer.d_vocab, (32,), generator=gen).tolist()
        start = int(torch.randint(0, max(1, len(text) - 32), (1,), generator=torch.Generator().manual_seed(seed)))
        return self.tokenizer.encode(text[start : start + 32])

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        tokens, mask = dataset_tensors(self.dataset("test"))
        loss, acc, _ = masked_eval(model, tokens[:64], mask[:64], batch=64)
        return {"test_loss": loss, "test_acc": acc}

    def default_model_config(self) -> TransformerConfig:
        if self.kind == "bpe":  # a small GPT-style model: BPE tokens carry more than a character each
            return TransformerConfig(
                n_layers=4, d_model=256, n_heads=8, act_fn="gelu", d_vocab=self.tokenizer.d_vocab, n_ctx=self._seq_len
            )
        return TransformerConfig(
            n_layers=2, d_model=128, n_heads=4, act_fn="gelu", d_vocab=self.tokenizer.d_vocab, n_ctx=self._seq_len
        )

    def default_train_config(self) -> dict[str, Any]:
        return {
            "steps": 2000,
            "batch_size": 32,
            "lr": 1e-3,
            "warmup_steps": 100,
            "schedule": "cosine",
            "eval_every": 200,
        }


def read_text(source: str, text_column: str = "text", split: str = "train") -> str:
    """All text of `source` (file, data file, saved dataset folder, or hub name); errors say which and why."""
    path = Path(source)
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:  # noqa: BLE001 - datasets raises many kinds; name the folder either way
            raise ValueError(f"{path} is a folder but not one written by Dataset.save_to_disk ({err})") from err
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path} has splits {list(ds)}, not {split!r}; pass --split")
            ds = ds[split]
        return _join_column(ds, text_column, str(path))
    if path.suffix in _TABLE_FORMATS and path.is_file():
        fmt = _TABLE_FORMATS[path.suffix]
        try:
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
        except datasets.exceptions.DatasetGenerationError as err:
            cause = " ".join(str(err.__cause__ or err).split())
            raise ValueError(f"{path} could not be read as {fmt.upper()} ({cause}); check the file's format") from err
        return _join_column(ds, text_column, str(path))
    if path.is_file():
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path} is not UTF-8 text (byte {err.start} is {err.object[err.start : err.start + 1]!r}); "
                "give a text file, or a .csv/.json/.jsonl/.parquet data file with a text column"
            ) from None
        if not text:
            raise ValueError(f"{path} is empty; a text task needs characters to model")
        return text
    if path.suffix or source.startswith((".", "/", "~")):  # meant as a local file, and it is not there
        raise FileNotFoundError(
            f"no text file at {path} (resolved {path.resolve()}); give an existing file, a saved dataset "
            "folder, or a hub dataset name like 'owner/name'"
        )
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as err:  # noqa: BLE001 - offline, missing or gated: say what was tried and what works offline
        raise ValueError(
            f"could not load {source!r} from the Hugging Face hub ({type(err).__name__}: {err}). Without network, "
            "give a local text file, a .csv/.json/.parquet file, or a folder written by Dataset.save_to_disk"
        ) from err
    return _join_column(ds, text_column, source)


def _join_column(ds: datasets.Dataset, column: str, where: str) -> str:
    if column not in ds.column_names:
        raise ValueError(f"{where} has columns {ds.column_names}, no {column!r}; pass --text_column")
    text = "\n".join(t for t in ds[column] if t)
    if not text:
        raise ValueError(f"column {column!r} of {where} holds no text")
    return text
