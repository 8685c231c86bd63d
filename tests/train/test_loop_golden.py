"""A golden loss curve: a change that moves mpt-tiny's training beyond float noise fails here.

The curve was recorded from this exact recipe (tests/train/golden_loss.json). If a change is meant
to alter training (initialisation, optimizer, data order), re-record it with
``python -m tests.train.test_loop_golden`` and say why in the commit.
"""

import json
from pathlib import Path

import pytest
import torch

from mpt.config import from_dict
from mpt.train import Recipe, train

from .helpers import make_shards, recipe_dict

GOLDEN = Path(__file__).with_name("golden_loss.json")


def golden_run(tmp: Path) -> list[float]:
    data = make_shards(tmp / "data", samples=64, seed=123)
    recipe = from_dict(Recipe, recipe_dict(tmp, data, train={"max_duration": "20ba"},
                                           optimizer={"name": "lion", "lr": 2e-3, "betas": [0.9, 0.99]},
                                           checkpoint={"every_batches": 0}))
    torch.set_num_threads(1)
    try:
        train(recipe, log=lambda *a: None)
    finally:
        torch.set_num_threads(2)
    lines = (tmp / "log" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_golden_loss_curve(tmp_path):
    expected = json.loads(GOLDEN.read_text())
    got = golden_run(tmp_path)
    assert got == pytest.approx(expected, rel=2e-3)
    assert got[-1] < 0.6 * got[0]  # and it still learns


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(golden_run(Path(tmp))))
    print(f"wrote {GOLDEN}")
