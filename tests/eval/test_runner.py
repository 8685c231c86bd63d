"""Batch planning: longest first, row and token budgets, a group never split."""

from mpt.eval.runner import _batches, _common_prefix


def test_batches_respect_rows_and_tokens():
    sizes = [4, 4, 4, 2]
    lengths = [100, 2000, 50, 60]
    order = sorted(range(4), key=lambda g: -lengths[g])  # [1, 0, 3, 2]
    assert _batches(order, sizes, lengths, max_rows=64, max_tokens=10**9) == [[1, 0, 3, 2]]
    assert _batches(order, sizes, lengths, max_rows=8, max_tokens=10**9) == [[1, 0], [3, 2]]
    # 4 rows x 2000 tokens = 8000: the long group goes alone under an 8000-token budget
    assert _batches(order, sizes, lengths, max_rows=64, max_tokens=8000) == [[1], [0, 3, 2]]
    # a group bigger than the budget still runs (alone), never split
    assert _batches([0], [4], [100], max_rows=2, max_tokens=10) == [[0]]


def test_common_prefix():
    assert _common_prefix([[1, 2, 3], [1, 2, 4, 5], [1, 2]]) == 2
    assert _common_prefix([[7, 8], [7, 8]]) == 2 and _common_prefix([[1], [2]]) == 0
