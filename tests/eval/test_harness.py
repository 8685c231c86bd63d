"""split_across_ranks: every rank gets an equal share of the work, each example once."""

def test_ranks_get_equal_work():
    import random

    from mpt.eval.harness import _cost, split_across_ranks
    from mpt.eval.tasks import Prompt

    rng = random.Random(0)
    # long examples first in the file, as in a task sorted by source: [rank::3] would skew
    lengths = sorted((rng.randint(5, 400) for _ in range(60)), reverse=True)
    prompts = [Prompt(i, None, "", ["x" * n], [" y"], 0, [], [], []) for i, n in enumerate(lengths)]
    strided = [sum(_cost(p) for p in prompts[r::3]) for r in range(3)]
    parts = [split_across_ranks(prompts, r, 3) for r in range(3)]
    assert sorted(p.index for part in parts for p in part) == list(range(len(prompts)))  # each once
    assert all([p.index for p in part] == sorted(p.index for p in part) for part in parts)
    work = [sum(_cost(p) for p in part) for part in parts]
    assert max(work) - min(work) < (max(strided) - min(strided)) / 10, (work, strided)  # 12 vs 240 characters
    assert split_across_ranks(prompts, 0, 1) == prompts
