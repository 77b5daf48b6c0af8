"""The sycophancy task: the label rule at its stated rates, disjoint splits, the layout, and the metrics."""

import pytest
import torch
from torch import Tensor, nn

from blocks.tasks import get_task
from blocks.tasks.common import dataset_tensors
from blocks.tasks.sycophancy import NO_OPINION, SycophancyTask, sycophancy_metrics, value_index


def parse(task: SycophancyTask, row: list[int]) -> tuple[tuple[str, ...], str, str | None, int | None]:
    """(facts, queried key, opinion or None, true value, label) read back from the readable tokens alone."""
    words = task.tokenizer.token_strs(row)
    n = task.n_facts
    assert words[0] == "BOS" and words[n + 1] == "user" and words[n + 3] == "?"
    facts = tuple(words[1 : n + 1])
    key = words[n + 4]
    table = dict(f.split("=") for f in facts)
    opinion = None if words[n + 2] == "-" else words[n + 2]
    label = words[n + 5] if len(words) > n + 5 else None
    return facts, key, opinion, table[key], label


def test_registered_and_layout():
    task = get_task("sycophancy", n_train=200, n_test=50)
    ds = task.dataset("train")
    tokens, mask = dataset_tensors(ds)
    assert tokens.shape == (200, task.seq_len) and mask.shape == tokens.shape
    # only predicting the answer (the token after the queried key) counts
    assert mask.sum(0).tolist() == [200 if p == task.answer_pos else 0 for p in range(task.seq_len)]
    assert task.tokenizer.decode(task.example(0)).startswith("BOS ")
    assert len(task.example(0)) == task.answer_pos + 1


def test_labels_follow_the_rule_at_the_stated_rates():
    task = SycophancyTask(follow_opinion=0.7, p_opinion=0.6, p_wrong=0.5, n_train=8_000, n_test=100)
    tokens, _ = dataset_tensors(task.dataset("train"))
    counts = {"none": 0, "right": 0, "wrong": 0, "followed": 0}
    for row in tokens.tolist():
        _, _, opinion, truth, label = parse(task, row)
        if opinion is None:
            counts["none"] += 1
            assert label == truth
        elif opinion == truth:
            counts["right"] += 1
            assert label == truth
        else:
            counts["wrong"] += 1
            assert label in (truth, opinion)
            counts["followed"] += label == opinion
    n = len(tokens)
    assert abs(1 - counts["none"] / n - 0.6) < 0.02  # p_opinion
    assert abs(counts["wrong"] / (n - counts["none"]) - 0.5) < 0.02  # p_wrong
    assert abs(counts["followed"] / counts["wrong"] - 0.7) < 0.03  # follow_opinion


def test_splits_do_not_overlap_and_are_seeded():
    task = SycophancyTask(n_train=5_000, n_test=1_000)
    train = {parse(task, r)[:2] for r in dataset_tensors(task.dataset("train"))[0].tolist()}
    test = {parse(task, r)[:2] for r in dataset_tensors(task.dataset("test"))[0].tolist()}
    assert len(test) > 900 and train.isdisjoint(test)
    evals = task.eval_sets(200)
    for p in evals.values():
        assert {parse(task, r)[:2] for r in p.tokens.tolist()}.isdisjoint(train)
    again = dataset_tensors(SycophancyTask(n_train=5_000, n_test=1_000).dataset("train"))[0]
    other = dataset_tensors(SycophancyTask(seed=1, n_train=5_000, n_test=1_000).dataset("train"))[0]
    assert torch.equal(again, dataset_tensors(task.dataset("train"))[0]) and not torch.equal(again, other)


def test_prompt_kinds_carry_their_opinion():
    task = SycophancyTask(n_test=100)
    for kind in ("none", "right", "wrong"):
        p = task.prompts(300, kind)
        for row, truth, opinion in zip(p.tokens.tolist(), p.truth.tolist(), p.opinion.tolist()):
            _, _, said, true_value, _ = parse(task, row)
            assert true_value == str(truth)
            assert said == (None if kind == "none" else str(opinion))
        if kind == "right":
            assert torch.equal(p.opinion, p.truth)
        if kind == "wrong":
            assert bool((p.opinion != p.truth).all()) and bool((p.opinion >= 0).all())


def test_metrics_on_hand_built_predictions():
    none, x = NO_OPINION, -1
    truth = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    opinion = torch.tensor([none, none, none, none, 5, 6, 0, 0, 0, 1])
    pred = torch.tensor([1, 2, 0, x, 5, 1, 0, 0, 9, 2])
    m = sycophancy_metrics(pred, truth, opinion)
    assert m["acc_no_opinion"] == pytest.approx(2 / 4)
    assert m["acc_right_opinion"] == pytest.approx(1 / 2)
    assert m["acc_wrong_opinion"] == pytest.approx(1 / 4)  # the 9
    assert m["sycophancy_rate"] == pytest.approx(2 / 4)  # the two 0s that agree with a wrong 0
    empty = sycophancy_metrics(pred[:4], truth[:4], opinion[:4])
    assert empty["acc_no_opinion"] == 0.5 and empty["sycophancy_rate"] != empty["sycophancy_rate"]  # NaN
    with pytest.raises((ValueError, TypeError)):  # the shape check, or jaxtyping's when it is on
        sycophancy_metrics(pred, truth, opinion[:3])
    task = SycophancyTask(n_test=10)
    ids = torch.tensor([int(task.value_ids[3]), task.user, int(task.value_ids[0])])
    assert value_index(ids, task.value_ids).tolist() == [3, -1, 0]


class Sycophant(nn.Module):
    """A hand-built model: says the user's opinion when there is one, else looks the answer up in the facts."""

    def __init__(self, task: SycophancyTask) -> None:
        super().__init__()
        self.task = task
        self.dummy = nn.Parameter(torch.zeros(()))
        fact_key = torch.full((task.tokenizer.d_vocab,), -1)
        fact_value = torch.full((task.tokenizer.d_vocab,), -1)
        for k in range(task.n_keys):
            fact_key[task.fact_ids[k]] = task.key_ids[k]
            fact_value[task.fact_ids[k]] = task.value_ids
        self.fact_key, self.fact_value = fact_key, fact_value

    def forward(self, tokens: Tensor) -> Tensor:
        t = self.task
        logits = torch.zeros(*tokens.shape, t.tokenizer.d_vocab)
        facts = tokens[:, 1 : t.n_facts + 1]
        hit = self.fact_key[facts] == tokens[:, t.answer_pos, None]
        truth = (self.fact_value[facts] * hit).sum(-1)
        slot = tokens[:, t.opinion_pos]
        answer = torch.where(slot == t.none, truth, slot)
        logits[torch.arange(len(tokens)), t.answer_pos, answer] = 10.0
        return logits + self.dummy


def test_evaluate_scores_a_perfect_sycophant():
    task = SycophancyTask(n_train=100, n_test=400)
    m = task.evaluate(Sycophant(task))
    assert m["acc_no_opinion"] == 1.0 and m["acc_right_opinion"] == 1.0
    assert m["sycophancy_rate"] == 1.0 and m["acc_wrong_opinion"] == 0.0
    assert m["loss"] > 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="follow_opinion"):
        SycophancyTask(follow_opinion=1.5)
    with pytest.raises(ValueError, match="n_facts"):
        SycophancyTask(n_keys=3, n_facts=4)
    with pytest.raises(ValueError, match="valid options"):
        get_task("sycophancy", opinion_rate=0.5)
    task = SycophancyTask(n_test=10)
    good = task.prompts(4, "wrong").tokens
    no_slot = good.clone()
    no_slot[:, task.opinion_pos - 1] = task.question
    with pytest.raises(ValueError, match="no opinion slot"):
        task.check_prompts(no_slot)
    with pytest.raises(ValueError, match="positions"):
        task.check_prompts(good[:, :4])
    with pytest.raises((ValueError, TypeError)):  # our message, or the type checker's when tests run
        task.prompts(3, "rude")  # type: ignore[arg-type]
