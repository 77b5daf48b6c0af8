"""A byte-level BPE tokenizer (GPT-2's scheme), trained with the `tokenizers` library or read from a folder.

Byte-level BPE never meets an unknown character: every text is bytes, and every byte is a token.
Its tokens are shown as the text they stand for (" the", "ing"); the few that are part of a
multi-byte character, and would all read as "\ufffd", are shown in the library's byte alphabet instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from torch import Tensor

from blocks.tasks.base import Tokenizer, UnknownTokenError

TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB = 257  # the 256 bytes and at least one merge


class BPETokenizer(Tokenizer):
    """Tokenizer's interface over a `tokenizers.Tokenizer` with a byte-level BPE model.

    `vocab[i]` is token i as readable text, unique per id (axes, tables and select boxes use it);
    `encode` and `decode` go through the BPE model, so `decode(encode(text)) == text` for any text.
    """

    def __init__(self, bpe: HFTokenizer) -> None:
        if not isinstance(bpe.model, models.BPE) or not isinstance(bpe.pre_tokenizer, pre_tokenizers.ByteLevel):
            raise ValueError(
                f"a text task's BPE tokenizer must be byte-level BPE (GPT-2's scheme); this one has a "
                f"{type(bpe.model).__name__} model and a {type(bpe.pre_tokenizer).__name__} pre-tokenizer"
            )
        self.bpe = bpe
        self.separator = ""
        self.vocab = readable_vocab(bpe)
        self._ids = {t: i for i, t in enumerate(self.vocab)}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train byte-level BPE with `vocab_size` tokens (the 256 bytes, then merges) on `texts`."""
        if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
            raise ValueError(
                f"vocab_size must be an int of at least {MIN_VOCAB} (256 bytes + merges), got {vocab_size!r}"
            )
        bpe = HFTokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        bpe.train_from_iterator(texts, trainer)
        return cls(bpe)

    @classmethod
    def from_folder(cls, folder: str | Path) -> BPETokenizer:
        """Read `tokenizer.json` (as `tokenizers` and transformers write it) from `folder`."""
        path = Path(folder) / TOKENIZER_FILE if Path(folder).is_dir() else Path(folder)
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} at {path}; give a folder holding one (tokenizers' save())")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as err:  # the Rust side raises a bare Exception for any malformed file
            if isinstance(err, ValueError) and "byte-level" in str(err):
                raise
            raise ValueError(f"{path} is not a tokenizers JSON file ({err})") from err

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.bpe.save(str(path))
        return path

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text).ids

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.d_vocab]
        if bad:
            raise ValueError(f"ids {bad[:10]} are outside the vocabulary [0, {self.d_vocab})")
        return self.bpe.decode(ids, skip_special_tokens=False)

    def split(self, text: str) -> list[str]:
        return [self.vocab[i] for i in self.encode(text)]

    def id(self, token: str) -> int:
        if token not in self._ids:
            raise UnknownTokenError([token], f"{self.d_vocab} BPE tokens")
        return self._ids[token]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bpe", "tokenizer_json": self.bpe.to_str()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPETokenizer:
        return cls(HFTokenizer.from_str(data["tokenizer_json"]))


def readable_vocab(bpe: HFTokenizer) -> list[str]:
    """Each token as the text it decodes to; tokens whose text repeats another's keep their byte-alphabet form."""
    size = bpe.get_vocab_size()
    decoded = [bpe.decode([i]) for i in range(size)]
    counts = Counter(decoded)
    vocab = [text if counts[text] == 1 else bpe.id_to_token(i) for i, text in enumerate(decoded)]
    seen: Counter[str] = Counter(vocab)
    return [v if seen[v] == 1 else f"{v}#{i}" for i, v in enumerate(vocab)]  # a last resort: never two equal labels
