"""Gauntlet arithmetic against values worked out by hand."""

import pytest

from mpt.eval import aggregate
from mpt.eval.suite import Benchmark, Category, GauntletConfig


def test_v03_arithmetic_by_hand():
    cfg = GauntletConfig(categories=[
        Category("world_knowledge", [Benchmark("arc_easy", 3, 0.25), Benchmark("jeopardy", 3, 0.0)]),
        Category("commonsense_reasoning", [Benchmark("piqa", 0, 0.5)]),
        Category("symbolic_problem_solving", [Benchmark("gsm8k", 0, 0.0)]),
    ], averages={"core_average": ["world_knowledge", "commonsense_reasoning", "symbolic_problem_solving"]})
    res = aggregate({"arc_easy/3-shot": 0.55, "jeopardy/3-shot": 0.2, "piqa/0-shot": 0.6}, cfg)
    # arc_easy: (0.55 - 0.25) / 0.75 = 0.4; jeopardy: 0.2; category = (0.4 + 0.2) / 2 = 0.3
    assert res.benchmarks["arc_easy/3-shot"] == pytest.approx(0.4)
    assert res.categories["world_knowledge"] == pytest.approx(0.3)
    # piqa: (0.6 - 0.5) / 0.5 = 0.2
    assert res.categories["commonsense_reasoning"] == pytest.approx(0.2)
    # gsm8k has no result: its category is dropped, and the average is over the other two
    assert "symbolic_problem_solving" not in res.categories
    assert res.missing == {"symbolic_problem_solving": ["gsm8k/0-shot"]}
    assert res.averages["core_average"] == pytest.approx(0.25)
    assert res.averages_missing == {"core_average": ["symbolic_problem_solving"]}


def test_below_chance_is_negative_and_without_rescaling():
    cfg = GauntletConfig([Category("c", [Benchmark("b", 0, 0.25)])], rescale_accuracy=False)
    assert aggregate({"b/0-shot": 0.1}, cfg).categories["c"] == pytest.approx(-0.15)
    cfg = GauntletConfig([Category("c", [Benchmark("b", 0, 0.25)])])
    assert aggregate({"b/0-shot": 0.1}, cfg).categories["c"] == pytest.approx(-0.2)
