"""Task generators: seeded determinism, loss masks on the right positions, labels, splits, tokenizers, bad input."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blocks.tasks import TASKS, get_task
from blocks.tasks.base import Tokenizer, UnknownTokenError
from blocks.tasks.common import dataset_tensors

SHAKESPEARE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


def test_unknown_task_and_option_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid tasks are .*induction.*modular_addition"):
        get_task("inductoin")
    with pytest.raises(ValueError, match=r"valid options are .*n_symbols"):
        get_task("induction", n_symbol=5)
    assert {"induction", "modular_addition", "sort", "text"} <= set(TASKS)


@pytest.mark.parametrize("layout", ["periodic", "two_copies"])
def test_induction_repeats_are_predictable_only_by_content(layout):
    task = get_task(
        "induction",
        n_symbols=20,
        seq_len=40,
        min_repeat=4,
        max_repeat=12,
        eval_n=8,
        n_train=64,
        n_test=8,
        loss_on="repeats",
        layout=layout,
    )
    tokens, mask = dataset_tensors(task.dataset("train"))
    assert tokens.shape == (64, 40) and (tokens[:, 0] == 0).all() and tokens[:, 1:].min() >= 1
    distances = set()
    for row, m in zip(tokens.tolist(), mask.tolist()):
        assert m[-1] == 0 and sum(m) > 0
        for t in (i for i, v in enumerate(m) if v):
            # an earlier occurrence of the current token is followed by the token to predict
            earlier = [j for j in range(t) if row[j] == row[t] and row[j + 1] == row[t + 1]]
            assert earlier, f"masked position {t} is not an induction-predictable repeat"
            distances.add(t - earlier[-1])
    assert len(distances) > 3  # the copy distance varies, so no fixed look-back works


def test_induction_is_deterministic_in_the_seed_and_splits_differ():
    a = get_task("induction", seed=3, n_train=32, n_test=8)
    b = get_task("induction", seed=3, n_train=32, n_test=8)
    c = get_task("induction", seed=4, n_train=32, n_test=8)
    ta, _ = dataset_tensors(a.dataset("train"))
    assert torch.equal(ta, dataset_tensors(b.dataset("train"))[0])
    assert not torch.equal(ta, dataset_tensors(c.dataset("train"))[0])
    assert not torch.equal(ta[:8], dataset_tensors(a.dataset("test"))[0])
    ex = a.example(5)
    n = a.eval_n
    assert len(ex) == 2 * n + 1 and ex[0] == 0 and ex[1 : n + 1] == ex[n + 1 :]
    assert ex != a.example(6)
    # loss_on="all" counts every prediction but the last
    _, mask = dataset_tensors(a.dataset("test"))
    assert mask[:, :-1].all() and not mask[:, -1].any()


def test_induction_evaluate_reports_losses_and_scores():
    from blocks import Transformer

    task = get_task("induction", n_symbols=10, seq_len=24, min_repeat=3, max_repeat=8, eval_n=10, n_train=8, n_test=8)
    torch.manual_seed(0)
    model = Transformer(task.default_model_config()).eval()
    out = task.evaluate(model)
    # an untrained model predicts near-uniformly over BOS + 10 symbols
    assert abs(out["loss_first_half"] - math.log(11)) < 0.3
    assert out["ln_vocab"] == pytest.approx(math.log(10))
    assert 0 <= out["prev_token_score_l0"] <= 1 and out["induction_formed"] == 0.0


def test_modular_addition_splits_are_disjoint_and_labels_correct():
    task = get_task("modular_addition", p=13, frac_train=0.3)
    tr, tr_mask = dataset_tensors(task.dataset("train"))
    te, _ = dataset_tensors(task.dataset("test"))
    assert len(tr) == int(0.3 * 169) and len(tr) + len(te) == 169
    pairs_tr = {(a, b) for a, b in tr[:, :2].tolist()}
    pairs_te = {(a, b) for a, b in te[:, :2].tolist()}
    assert not pairs_tr & pairs_te and len(pairs_tr | pairs_te) == 169
    assert ((tr[:, 0] + tr[:, 1]) % 13 == tr[:, 3]).all() and (tr[:, 2] == 13).all()
    assert tr_mask.tolist()[0] == [0, 0, 1, 0]
    assert task.tokenizer.decode(tr[0]).split()[2] == "="
    with pytest.raises(ValueError, match="frac_train"):
        get_task("modular_addition", frac_train=1.5)


def test_sort_labels_are_the_sorted_list():
    task = get_task("sort", list_len=6, n_values=9, n_train=50, n_test=10, distinct=False)
    tokens, mask = dataset_tensors(task.dataset("train"))
    assert tokens.shape == (50, 14)
    x, y = tokens[:, 1:7], tokens[:, 8:]
    assert torch.equal(x.sort(-1).values, y) and (tokens[:, 7] == task.sep).all()
    assert mask[0].tolist() == [0] * 7 + [1] * 6 + [0]
    assert task.example(0)[-1] == task.sep and len(task.example(0)) == 8


def test_text_task_on_a_local_file(tmp_path):
    task = get_task("text", source=str(SHAKESPEARE), seq_len=32, max_chars=5000)
    tokens, mask = dataset_tensors(task.dataset("train"))
    assert tokens.shape[1] == 32 and mask[:, :-1].all() and not mask[:, -1].any()
    text = SHAKESPEARE.read_text()[:5000]
    assert task.tokenizer.decode(tokens[0]) == text[:32]
    assert task.tokenizer.decode(tokens[1])[0] == text[32]  # chunks follow each other
    assert task.tokenizer.vocab == sorted(set(text))
    (tmp_path / "data.csv").write_text("text,other\n" + "\n".join(f"line {i} abc,{i}" for i in range(40)))
    csv_task = get_task("text", source=str(tmp_path / "data.csv"), seq_len=8)
    assert "line 3 abc" in csv_task.text and set(csv_task.tokenizer.vocab) <= set("line0123456789abc \n")


def test_text_task_bad_sources(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        _ = get_task("text", source=str(tmp_path / "empty.txt")).tokenizer
    with pytest.raises(FileNotFoundError, match="no text file at .*missing.txt"):
        get_task("text", source=str(tmp_path / "missing.txt")).dataset("train")
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(ValueError, match="3 characters"):
        get_task("text", source=str(tmp_path / "short.txt"), seq_len=16).dataset("train")


def test_text_task_hub_source_fails_clearly_offline():
    code = (
        "from blocks.tasks import get_task\n"
        "try:\n    get_task('text', source='someone/some_dataset').tokenizer\n"
        "except ValueError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR could not load 'someone/some_dataset' from the Hugging Face hub" in out.stdout, out.stderr
    assert "local text file" in out.stdout


def test_tokenizer_round_trip_and_unknown_tokens():
    tok = Tokenizer(["a", "b", " "])
    assert tok.decode(tok.encode("ab ba")) == "ab ba"
    with pytest.raises(UnknownTokenError, match="'z'"):
        tok.encode("abz")
    assert Tokenizer.from_dict(tok.to_dict()) == tok
    words = get_task("sort").tokenizer
    assert words.encode("BOS 3 1 SEP 1 3") == [50, 3, 1, 51, 1, 3]


def test_sort_distinct_draws_without_replacement():
    task = get_task("sort", list_len=10, n_values=12, n_train=200, n_test=10)
    tokens, _ = dataset_tensors(task.dataset("train"))
    assert all(len(set(row)) == 10 for row in tokens[:, 1:11].tolist())
    assert torch.equal(tokens[:, 1:11].sort(-1).values, tokens[:, 12:])
    with pytest.raises(ValueError, match="distinct"):
        get_task("sort", list_len=10, n_values=5)


def test_minimal_pairs_and_scored_positions_follow_each_tasks_own_contrast_and_mask():
    induction = get_task("induction")
    ids = induction.example(0)
    k = induction.eval_n
    pair = induction.corrupted_prompt(ids)
    changed = [i for i, (a, b) in enumerate(zip(ids, pair)) if a != b]
    assert changed and all(1 <= i <= k for i in changed)  # only the first copy: the repeat stays as it was
    assert pair[k + 1 :] == ids[k + 1 :]
    # only the repeat is predictable: from the second copy's first token to its last but one
    assert induction.scored_positions(ids) == list(range(k + 1, 2 * k))

    modadd = get_task("modular_addition", p=7)
    a, b, eq = modadd.example(3)
    a2, b2, eq2 = modadd.corrupted_prompt([a, b, eq])
    assert a2 != a and (b2, eq2) == (b, eq)  # a' + b has another answer than a + b
    assert modadd.scored_positions([a, b, eq]) == []  # the answer comes after the prompt

    sort = get_task("sort")
    assert sort.scored_positions(list(range(2 * sort.list_len + 2))) == list(
        range(sort.list_len + 1, 2 * sort.list_len + 1)
    )
