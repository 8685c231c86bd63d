"""``micro_batch_size: auto`` on 2 real torchrun ranks when one rank runs out of memory.

Rank 1 raises CUDA's out-of-memory error for micro-batches above a size (tests/train/oom_worker.py),
inside a block's forward, inside a block's backward, or in the backward before any block's. Under
FSDP (the recipe's default for 2 ranks) and DDP, both ranks must settle on the same size, and the
run must end with exactly the weights of a run given that size explicitly: the probe, and the
attempts it abandons, leave no trace in training.
"""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from .helpers import make_shards, recipe_dict
from .torchrun import ENV, finish, identical, torchrun

WORKER = Path(__file__).with_name("oom_worker.py")
CASES = [  # (name, strategy, where rank 1 runs out of memory, largest size that fits)
    ("fsdp-forward", "auto", "forward", 2),
    ("fsdp-backward", "auto", "backward", 1),
    ("fsdp-head", "auto", "head", 2),
    ("fsdp-checkpointed-backward", "auto+ac", "backward", 2),
    ("ddp-forward", "ddp", "forward", 2),
    ("ddp-backward", "ddp", "backward", 2),
]


def _recipe(run: Path, data: Path, strategy: str, micro) -> dict:
    """``auto+ac``: the default strategy with activation checkpointing (the backward recomputes the forward)."""
    return recipe_dict(run, data, parallel={"strategy": strategy.removesuffix("+ac")},
                       train={"max_duration": "4ba", "micro_batch_size": micro,
                              "activation_checkpointing": strategy.endswith("+ac")},
                       checkpoint={"every_batches": 4, "export_hf": str(run / "hf")})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oom")
    data = make_shards(tmp / "shards", samples=64)
    jobs = [{"name": f"{strategy}-{fits}", "recipe": _recipe(tmp / f"{strategy}-{fits}", data, strategy, fits)}
            for strategy, fits in sorted({(s, f) for _, s, _, f in CASES})]
    jobs += [{"name": name, "oom_at": where, "fits": fits, "recipe": _recipe(tmp / name, data, strategy, "auto")}
             for name, strategy, where, fits in CASES]
    for job in jobs:
        job["outcome"] = str(tmp / f"{job['name']}.json")
    spec = tmp / "jobs.json"
    spec.write_text(json.dumps(jobs))
    code, out = finish(torchrun(2, str(WORKER), str(spec), env=ENV), timeout=300)
    assert code == 0, out[-5000:]
    return tmp, {job["name"]: json.loads(Path(job["outcome"]).read_text()) for job in jobs}


@pytest.mark.parametrize("name,strategy,where,fits", CASES, ids=[c[0] for c in CASES])
def test_ranks_agree_on_the_size_that_fits_and_train_as_if_it_was_given(runs, name, strategy, where, fits):
    tmp, outcomes = runs
    assert outcomes[name]["chosen"] == [fits]
    assert outcomes[name]["steps"] == 4
    identical(load_file(tmp / name / "hf" / "model.safetensors"),
               load_file(tmp / f"{strategy}-{fits}" / "hf" / "model.safetensors"))
