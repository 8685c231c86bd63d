"""Gauntlet files: the built-in gauntlet covers the suite; bad settings are named errors."""

import pytest

from mpt.eval import load_gauntlet, load_suite
from mpt.eval.tasks import EvalTaskError


def test_builtin_gauntlet_covers_the_suite():
    g = load_gauntlet("gauntlet-v0.3")
    suite = load_suite("mpt7b")
    keys = {f"{t.label}/{k}-shot" for t in suite.tasks for k in t.num_fewshot}
    bench = {f"{b.name}/{b.num_fewshot}-shot" for c in g.categories for b in c.benchmarks}
    assert bench <= keys and len(bench) == 12
    assert set(g.averages["core_average"]) == {"world_knowledge", "commonsense_reasoning", "language_understanding",
                                               "symbolic_problem_solving", "reading_comprehension"}


def test_bad_gauntlet_settings(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("eval_gauntlet:\n  weighting: SAMPLE_SZ\n  categories: []\n")
    with pytest.raises(EvalTaskError, match="weighting='SAMPLE_SZ' is not supported"):
        load_gauntlet(str(path))
    path.write_text("eval_gauntlet:\n  categories:\n  - name: x\n    benchmarks:\n    - {name: b}\n")
    with pytest.raises(EvalTaskError, match="malformed gauntlet"):
        load_gauntlet(str(path))
