"""Checkpoint safety in one process: pruning never loses the newest good checkpoint, resume falls back
past damage of any file, loading cannot run code, torn metrics lines are harmless."""

import hashlib
import json
import shutil

import pytest
import torch

from mpt.config import from_dict
from mpt.train import Recipe, train
from mpt.train.checkpoint import CheckpointError, complete_checkpoints, verify

from .helpers import make_shards, recipe_dict


def _run(tmp, data, **sections):
    messages = []
    result = train(from_dict(Recipe, recipe_dict(tmp, data, **sections)), log=messages.append)
    return result, messages


def _damage(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _rewrite_manifest(checkpoint, **changes):
    """Change a checkpoint's files and re-sign them, as an attacker (or another run) could."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    for p in checkpoint.iterdir():
        if p.name in state["files"]:
            state["files"][p.name] = {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    state.update(changes)
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))


def test_keep_1_after_resuming_past_a_damaged_checkpoint_keeps_the_new_good_one(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "8ba"})
    older, newest = complete_checkpoints(tmp_path / "ckpt")
    _damage(next(newest.glob("*.distcp")))
    # resumes from step 4 (step 8 is damaged), saves step 6 and prunes with keep 1
    _, messages = _run(tmp_path, data, train={"max_duration": "6ba"}, checkpoint={"keep": 1})
    assert any(f"resumed from {older}" in m for m in messages)
    names = [p.name for p in complete_checkpoints(tmp_path / "ckpt")]
    assert "step-00000006" in names, names  # the one just written survives its own pruning
    assert "step-00000004" not in names  # the older good one was pruned (keep 1)
    assert "step-00000008" in names  # the damaged newer one is left for inspection, never preferred
    verify(tmp_path / "ckpt" / "step-00000006")
    _, messages = _run(tmp_path, data, train={"max_duration": "7ba"}, checkpoint={"keep": 1})
    assert any("resumed from" in m and "step-00000006" in m for m in messages), messages


def test_pruning_and_resume_leave_other_runs_checkpoints_alone(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "4ba"})
    stranger = tmp_path / "ckpt" / "step-00000002"
    shutil.copytree(tmp_path / "ckpt" / "step-00000004", stranger)
    _rewrite_manifest(stranger, run_name="someone-else", step=2)
    (tmp_path / "ckpt" / "step-00000004").rename(tmp_path / "mine-aside")  # our run starts over
    _, messages = _run(tmp_path, data, train={"max_duration": "8ba"}, checkpoint={"keep": 1, "every_batches": 4})
    assert any("ignoring 1 checkpoint(s) of other runs" in m for m in messages)
    assert not any("resumed from" in m for m in messages)
    assert any("fresh initialisation" in m for m in messages)
    names = [p.name for p in complete_checkpoints(tmp_path / "ckpt")]
    assert names == ["step-00000002", "step-00000008"]
    verify(stranger)
    # saving onto the other run's step is refused, not an overwrite
    shutil.rmtree(tmp_path / "ckpt" / "step-00000008")
    with pytest.raises(CheckpointError, match="step-00000002 belongs to run 'someone-else'"):
        _run(tmp_path, data, train={"max_duration": "4ba"}, checkpoint={"every_batches": 2})
    verify(stranger)


def test_a_resumed_run_does_not_claim_a_fresh_initialisation(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "4ba"})
    _, messages = _run(tmp_path, data, train={"max_duration": "6ba"})
    assert any("resumed from" in m for m in messages)
    assert not any("fresh initialisation" in m for m in messages), messages


def test_a_crafted_rng_file_with_a_matching_manifest_cannot_run_code(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "8ba"})
    older, newest = complete_checkpoints(tmp_path / "ckpt")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"torch": Payload()}, newest / "rank0.pt")
    _rewrite_manifest(newest)
    verify(newest)  # the manifest matches: only the loader stands between the file and the code
    result, messages = _run(tmp_path, data, train={"max_duration": "10ba"})
    assert not marker.exists()
    assert any(f"checkpoint {newest} cannot be used" in m for m in messages), messages
    assert any(f"resumed from {older}" in m for m in messages)
    assert result.steps == 10


def test_a_truncated_config_in_the_newest_checkpoint_falls_back_to_the_older_one(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "8ba"})
    older, newest = complete_checkpoints(tmp_path / "ckpt")
    config = newest / "config.json"
    config.write_text(config.read_text()[:40])
    result, messages = _run(tmp_path, data, train={"max_duration": "10ba"})
    assert any(f"checkpoint {newest} cannot be used" in m and "config.json" in m for m in messages), messages
    assert any(f"resumed from {older}" in m for m in messages)
    assert result.steps == 10


def test_a_torn_last_metrics_line_does_not_break_saving_or_plotting(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "4ba"})
    metrics = tmp_path / "log" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # a process killed mid-write
    result, _ = _run(tmp_path, data, train={"max_duration": "8ba"}, checkpoint={"every_batches": 2})
    assert result.steps == 8
    assert (tmp_path / "log" / "loss_curve.png").stat().st_size > 1000
