"""nanoGPT checkpoints, held to a nanoGPT-style reference written here from its model.py's semantics.

The reference mirrors nanoGPT's GPT: fused c_attn (nn.Linear, [3C, C]) split into q, k, v; scores
scaled by 1/sqrt(head size) under a causal mask kept as a buffer named `bias`; exact GELU; LayerNorm
with an optional bias; lm_head without bias, tied to wte. Checkpoints are written the way its
train.py writes ckpt.pt: model_args, the (compiled: `_orig_mod.`) state dict, the optimizer's
state, iter_num, best_val_loss and the run's config.
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blocks.interop import load_nanogpt, read_checkpoint


class RefLayerNorm(nn.Module):
    def __init__(self, n: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RefBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, bias: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = RefLayerNorm(n_embd, bias), RefLayerNorm(n_embd, bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.attn.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn.register_buffer("bias", torch.ones(block_size, block_size).tril()[None, None])
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.attn.c_attn(x).split(C, 2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        att = att.masked_fill(self.attn.bias[:, :, :T, :T] == 0, float("-inf")).softmax(-1)
        return self.attn.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout=0.0, tied=True) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList(RefBlock(n_embd, n_head, block_size, bias) for _ in range(n_layer)),
                ln_f=RefLayerNorm(n_embd, bias),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tied:
            self.transformer.wte.weight = self.lm_head.weight
        with torch.no_grad():  # unit LayerNorms and zero biases would hide a dropped one
            for p in self.parameters():
                p.normal_(0, 0.3)

    def forward(self, idx):
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


ARGS = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, bias=True, vocab_size=65, dropout=0.0)


def write_ckpt(path: Path, ref: RefGPT, model_args: dict, compiled: bool = True, **extra) -> Path:
    optimizer = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    ref(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()  # so the optimizer's state holds tensors, as after training
    optimizer.zero_grad()
    prefix = "_orig_mod." if compiled else ""
    ckpt = {
        "model": {prefix + k: v for k, v in ref.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": 250,
        "best_val_loss": torch.tensor(1.4697),
        "config": {"dataset": "shakespeare_char", "batch_size": 64, "compile": compiled, "learning_rate": 1e-3},
        **extra,
    }
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "args, tied, compiled",
    [(ARGS, True, True), ({**ARGS, "bias": False}, True, False), ({**ARGS, "n_layer": 1}, False, True)],
    ids=["bias_compiled", "no_bias", "untied"],
)
def test_checkpoint_gives_the_same_logits(tmp_path: Path, args: dict, tied: bool, compiled: bool) -> None:
    torch.manual_seed(0)
    ref = RefGPT(**args, tied=tied).eval()
    path = write_ckpt(tmp_path / "ckpt.pt", ref, args, compiled=compiled)
    model = load_nanogpt(path)
    assert model.cfg.tie_unembed == tied and model.cfg.act_fn == "gelu" and model.cfg.n_ctx == 16
    tokens = torch.randint(0, 65, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(tokens)
        torch.testing.assert_close(model(tokens), want, atol=1e-5, rtol=1e-5)
        folded = load_nanogpt(path, fold_ln=True, center_unembed=True)
        torch.testing.assert_close(folded(tokens).log_softmax(-1), want.log_softmax(-1), atol=1e-4, rtol=1e-4)


class RunsCode:
    """Unpickling this object would run code: it asks pickle to call Path.touch."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_needs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    marker = tmp_path / "code-ran"
    path = write_ckpt(tmp_path / "ckpt.pt", RefGPT(**ARGS), ARGS, trainer=RunsCode(marker))
    with pytest.raises(ValueError, match=r"only running code could rebuild \(it names getattr\).*weights_only=True"):
        load_nanogpt(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=True"):
        read_checkpoint(path)


def test_bad_checkpoints_say_what_is_wrong(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = RefGPT(**ARGS)
    path = write_ckpt(tmp_path / "ckpt.pt", ref, {**ARGS, "n_embd": 48})
    with pytest.raises(
        ValueError, match=r"h\.0\.attn\.c_attn\.weight: \(96, 32\) in the nanoGPT checkpoint .*\(144, 48\)"
    ):
        load_nanogpt(path)
    with pytest.raises(ValueError, match=r"unknown \['rope_theta'\].*rotary"):
        load_nanogpt({"model": ref.state_dict(), "model_args": {**ARGS, "rope_theta": 1e4}})
    with pytest.raises(ValueError, match=r"has \['state_dict'\]; nanoGPT's train.py writes a dict with 'model_args'"):
        load_nanogpt({"state_dict": ref.state_dict()})
    (tmp_path / "torn.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="torn.pt is not a readable torch checkpoint"):
        load_nanogpt(tmp_path / "torn.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_nanogpt(tmp_path / "missing.pt")
