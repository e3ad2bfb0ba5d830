"""EpochPlan and Loader from Python: the plan is a permutation of the dataset,
and the Loader's tensors equal a padding computed independently with
torch.nn.utils.rnn.pad_sequence."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

import enstack  # noqa: F401  (imports torch, then _C)
from enstack._C.data import EpochPlan, Loader, TokenStore, write_token_store


def test_plan_is_a_permutation_in_batches():
    plan = EpochPlan(103, 10, seed=42, epoch=3)
    assert plan.num_batches == len(plan) == 11
    batches = [plan.batch(k) for k in range(plan.num_batches)]
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert torch.equal(plan.order, torch.tensor([i for b in batches for i in b]))
    assert plan.order.tolist() == EpochPlan(103, 10, seed=42, epoch=3).order.tolist()
    assert plan.order.tolist() != EpochPlan(103, 10, seed=42, epoch=4).order.tolist()
    windows = plan.windows(4)
    assert [w["num_samples"] for w in windows] == [40, 40, 23]
    assert windows[-1]["first_batch"] == 8 and windows[-1]["end_batch"] == 11


def test_group_by_length_accepts_store_lengths():
    lengths = torch.randint(1, 300, (500,), generator=torch.Generator().manual_seed(0))
    plan = EpochPlan(500, 8, seed=1, epoch=0, group_by_length=True, lengths=lengths)
    assert sorted(plan.order.tolist()) == list(range(500))
    for k in range(plan.num_batches):
        batch_lengths = lengths[plan.batch(k)].tolist()
        assert batch_lengths == sorted(batch_lengths, reverse=True)
    with pytest.raises(enstack.DataError):
        EpochPlan(500, 8, seed=1, epoch=0, group_by_length=True, lengths=lengths[:-1])


@pytest.fixture()
def store(tmp_path):
    gen = torch.Generator().manual_seed(5)
    ids = [[0] + torch.randint(5, 900, (int(n),), generator=gen).tolist() + [2]
           for n in torch.randint(0, 40, (45,), generator=gen)]
    labels = [i % 5 for i in range(len(ids))]
    path = tmp_path / "train.tokens"
    write_token_store(str(path), ids, labels, 1000, 64, "test")
    return TokenStore(str(path)), ids, labels


@pytest.mark.parametrize("start_batch", [0, 4])
def test_loader_yields_padded_batches_of_the_plan(store, start_batch):
    token_store, ids, labels = store
    plan = EpochPlan(len(ids), 6, seed=7, epoch=1)
    batches = list(Loader(token_store, plan, start_batch=start_batch, pad_id=1))
    assert [b["index"] for b in batches] == list(range(start_batch, plan.num_batches))
    for b in batches:
        rows = [torch.tensor(ids[i]) for i in plan.batch(b["index"])]
        expected = pad_sequence(rows, batch_first=True, padding_value=1)
        width = -(-expected.shape[1] // 8) * 8
        expected = torch.nn.functional.pad(expected, (0, width - expected.shape[1]), value=1)
        mask = pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        mask = torch.nn.functional.pad(mask, (0, width - mask.shape[1]), value=0)
        assert b["input_ids"].dtype == b["attention_mask"].dtype == torch.int64
        assert torch.equal(b["input_ids"], expected)
        assert torch.equal(b["attention_mask"], mask)
        assert torch.equal(b["labels"], torch.tensor([labels[i] for i in plan.batch(b["index"])]))
        assert b["real_tokens"] == sum(len(r) for r in rows)


def test_loader_can_be_dropped_early_and_rejects_bad_cursors(store):
    token_store, ids, _ = store
    plan = EpochPlan(len(ids), 1, seed=0, epoch=0)
    loader = Loader(token_store, plan, queue_capacity=1)
    assert next(iter(loader))["index"] == 0
    del loader
    with pytest.raises(enstack.DataError):
        Loader(token_store, plan, start_batch=plan.num_batches + 1)
    with pytest.raises(enstack.DataError):
        Loader(token_store, EpochPlan(len(ids) + 1, 4, seed=0, epoch=0))
