"""Tests of uqkit/data/labeled.py: the LabeledData container and train_val_split."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from uqkit.data import LabeledData, train_val_split


def indexed(count: int) -> LabeledData:
    """``count`` examples whose input is their own index, so splits can be traced back."""
    return LabeledData(torch.arange(count, dtype=torch.float32).unsqueeze(1), torch.arange(count) % 3)


def test_labeled_data_basics():
    data = indexed(7)
    assert len(data) == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.labels = torch.zeros(7, dtype=torch.long)
    part = data.subset(torch.tensor([4, 1]))
    assert part.inputs[:, 0].tolist() == [4.0, 1.0] and part.labels.tolist() == [1, 1]
    assert "inputs=(7, 1) torch.float32" in repr(data)


def test_labeled_data_validation():
    with pytest.raises(TypeError, match=r"inputs: expected a floating-point tensor, got dtype torch\.int64"):
        LabeledData(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"inputs: expected a torch\.Tensor"):
        LabeledData([[0.0]], torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs: expected a tensor of shape"):
        LabeledData(torch.tensor(1.0), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels: expected 3 labels \(one per example\), got 2"):
        LabeledData(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="labels: expected integer class indices"):
        LabeledData(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(TypeError, match=r"labels: expected dtype torch\.int64 \(long\), got torch\.int32"):
        LabeledData(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"labels: expected a 1-D tensor \[batch\]"):
        LabeledData(torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.parametrize(("count", "fraction", "expected_val"), [(100, 0.1, 10), (7, 0.5, 4), (3, 0.4, 1)])
def test_split_is_a_partition_of_the_right_size(count, fraction, expected_val):
    data = indexed(count)
    train, val = train_val_split(data, val_fraction=fraction, seed=3)
    assert len(val) == expected_val and len(train) == count - expected_val
    train_ids, val_ids = train.inputs[:, 0].long().tolist(), val.inputs[:, 0].long().tolist()
    assert sorted(train_ids + val_ids) == list(range(count))
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)  # original order kept
    assert torch.equal(val.labels, torch.tensor(val_ids) % 3)  # labels travel with their inputs


def test_split_is_seeded_and_uses_its_own_generator():
    data = indexed(200)
    torch.manual_seed(123)
    first = train_val_split(data, seed=5)[1].inputs
    torch.manual_seed(456)  # the global seed must not matter
    assert torch.equal(train_val_split(data, seed=5)[1].inputs, first)
    expected = torch.randperm(200, generator=torch.Generator().manual_seed(5))[:20].sort().values
    assert torch.equal(first[:, 0].long(), expected)
    assert not torch.equal(train_val_split(data, seed=6)[1].inputs, first)


def test_split_bad_inputs():
    data = indexed(10)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"val_fraction: expected a number in \(0, 1\)"):
            train_val_split(data, val_fraction=bad)
    with pytest.raises(TypeError, match="val_fraction: expected a number"):
        train_val_split(data, val_fraction="0.1")
    with pytest.raises(ValueError, match="gives 0 validation and 10 training examples"):
        train_val_split(data, val_fraction=0.01)
    with pytest.raises(ValueError, match="gives 10 validation and 0 training examples"):
        train_val_split(data, val_fraction=0.99)
    with pytest.raises(ValueError, match="seed: expected an int >= 0, got -1"):
        train_val_split(data, seed=-1)
    with pytest.raises(TypeError, match="seed: expected an int"):
        train_val_split(data, seed=1.0)
    with pytest.raises(TypeError, match="data: expected a LabeledData"):
        train_val_split(data.inputs)
