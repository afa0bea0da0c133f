"""The eval-mode cache of tensors derived from parameters (uqkit/nn/_cache.py): reused exactly while nothing
changed, recomputed after every kind of change it promises to see."""

import torch

from uqkit.nn._cache import VersionedCache


def test_versioned_cache_reuses_its_value_until_a_source_the_value_or_the_key_changes():
    a, b = torch.randn(3), torch.randn(3)
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return a + b

    cache = VersionedCache()
    first = cache.get((a, b), 1, compute)
    assert cache.get((a, b), 1, compute) is first and len(calls) == 1  # unchanged: reused
    a.add_(1.0)  # in-place write: version bump
    second = cache.get((a, b), 1, compute)
    assert len(calls) == 2 and torch.equal(second, a + b)
    b.data = torch.randn(3)  # new storage without a version bump
    assert torch.equal(cache.get((a, b), 1, compute), a + b) and len(calls) == 3
    cache.value.mul_(2.0)  # the cached value itself written in place
    assert torch.equal(cache.get((a, b), 1, compute), a + b) and len(calls) == 4
    cache.get((a, b), 2, compute)  # another extra key
    assert len(calls) == 5
    other = a.view(3)  # another tensor object with a's storage and version counter: only identity differs
    cache.get((other, b), 2, compute)
    assert len(calls) == 6
    cache.get((other,), 2, compute)  # another number of sources
    assert len(calls) == 7
    assert cache.get((other,), 2, compute) is cache.value and len(calls) == 7
