"""Checkpoint safety in one process: pruning never loses the newest good checkpoint, resume falls back
past damage of any file (crafted but self-consistent ones included) and a damaged checkpoint saved over
is kept, loading cannot run code, a fresh run never replaces checkpoints it did not write, settings that
differ on resume are named, a full disk (a real small filesystem) says so, torn metrics lines are harmless."""

import hashlib
import json
import shutil
import subprocess

import pytest
import torch

from mpt.config import from_dict
from mpt.train import Recipe, train
from mpt.train.checkpoint import CheckpointError, complete_checkpoints, verify

from .helpers import make_shards, recipe_dict, small_disk


def _run(tmp, data, **sections):
    messages = []
    result = train(from_dict(Recipe, recipe_dict(tmp, data, **sections)), log=messages.append)
    return result, messages


def _damage(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _falls_back(tmp, data, newest, older, why: str = "") -> list[str]:
    """Train on to step 10: the newest checkpoint is refused (its message holds ``why``) and the older one,
    step 4's, is resumed. Returns the run's messages."""
    result, messages = _run(tmp, data, train={"max_duration": "10ba"})
    assert any(f"checkpoint {newest} cannot be used" in m and why in m for m in messages), messages
    assert any(f"resumed from {older} at step 4" in m for m in messages), messages
    assert result.steps == 10
    return messages


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
    _falls_back(tmp_path, data, newest, older)
    assert not marker.exists()


def test_a_truncated_config_in_the_newest_checkpoint_falls_back_to_the_older_one(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "8ba"})
    older, newest = complete_checkpoints(tmp_path / "ckpt")
    config = newest / "config.json"
    config.write_text(config.read_text()[:40])
    _falls_back(tmp_path, data, newest, older, "config.json")


def test_a_torn_last_metrics_line_does_not_break_saving_or_plotting(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "4ba"})
    metrics = tmp_path / "log" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 5, "loss": 1.2')  # a process killed mid-write
    result, _ = _run(tmp_path, data, train={"max_duration": "8ba"}, checkpoint={"every_batches": 2})
    assert result.steps == 8
    assert (tmp_path / "log" / "loss_curve.png").stat().st_size > 1000


def _files(checkpoint):
    return {p.name: p.read_bytes() for p in checkpoint.iterdir()}


def test_a_fresh_run_never_replaces_checkpoints_it_did_not_write(tmp_path):
    """Another model in the same folder: resuming is refused, and so is starting afresh (autoresume false),
    which used to replace and prune the old run's checkpoints; start_over moves them aside, never deletes."""
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "8ba"})
    old = {p.name: _files(p) for p in complete_checkpoints(tmp_path / "ckpt")}
    assert list(old) == ["step-00000004", "step-00000008"]
    three = {"fields": {"d_model": 32, "n_heads": 2, "n_layers": 3, "vocab_size": 64, "max_seq_len": 32}}
    with pytest.raises(CheckpointError) as err:
        _run(tmp_path, data, train={"max_duration": "8ba"}, model=three)
    assert str(err.value) == (
        f"{tmp_path / 'ckpt' / 'step-00000008'} was written for a different model (n_layers: checkpoint 2, recipe 3); "
        "use another checkpoint.folder for this model, or set checkpoint.start_over=true to move this folder's "
        "checkpoints of the run aside (renamed step-N.old) and start over")
    with pytest.raises(CheckpointError) as err:
        _run(tmp_path, data, train={"max_duration": "8ba"}, model=three, checkpoint={"autoresume": False})
    assert str(err.value) == (
        f"checkpoint.folder {tmp_path / 'ckpt'} already holds checkpoints of run 'test' (step-00000004, "
        "step-00000008) that this run, which does not resume them, would replace: use another checkpoint.folder, "
        "or set checkpoint.start_over=true to move them aside (renamed step-N.old) and start over")
    assert {p.name: _files(p) for p in complete_checkpoints(tmp_path / "ckpt")} == old  # byte for byte
    # told explicitly: the old checkpoints are renamed, whole, and the new run starts from scratch
    _, messages = _run(tmp_path, data, train={"max_duration": "8ba"}, model=three, checkpoint={"start_over": True})
    assert any("checkpoint.start_over:" in m and "kept as step-00000008.old" in m for m in messages), messages
    assert not any("resumed from" in m for m in messages)
    for name, files in old.items():
        assert _files(tmp_path / "ckpt" / f"{name}.old") == files
    for path in complete_checkpoints(tmp_path / "ckpt"):
        assert json.loads((path / "config.json").read_text())["n_layers"] == 3
    # the 3-layer run now resumes its own checkpoints, the set-aside ones untouched
    _, messages = _run(tmp_path, data, train={"max_duration": "10ba"}, model=three)
    assert any("resumed from" in m and "step-00000008 at step 8" in m for m in messages), messages
    assert _files(tmp_path / "ckpt" / "step-00000008.old") == old["step-00000008"]


def test_a_changed_optimizer_or_lora_setting_on_resume_is_one_line_naming_it(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "4ba"})
    step4 = tmp_path / "ckpt" / "step-00000004"
    with pytest.raises(CheckpointError) as err:  # was torch's CheckpointException, a BaseException: 55 lines
        _run(tmp_path, data, train={"max_duration": "6ba"}, optimizer={"name": "lion", "lr": 1e-4})
    assert str(err.value) == (f"{step4} was written with other settings (optimizer.name: checkpoint 'adamw', recipe "
                              "'lion'); resume with the checkpoint's settings, or use another checkpoint.folder for "
                              "the new ones")
    # a manifest from before the optimizer was recorded: DCP's own error, caught, is damage like any other
    state = json.loads((step4 / "trainer_state.json").read_text())
    del state["optimizer"]
    (step4 / "trainer_state.json").write_text(json.dumps(state))
    messages = []
    with pytest.raises(CheckpointError, match="no usable checkpoint in .*: all 1 of run 'test' are damaged"):
        train(from_dict(Recipe, recipe_dict(tmp_path, data, train={"max_duration": "6ba"},
                                            optimizer={"name": "lion", "lr": 1e-4})), log=messages.append)
    assert any(f"checkpoint {step4} cannot be used: {step4}: cannot be read (rank 0: RuntimeError: Missing key in "
               "checkpoint state_dict: optim." in m for m in messages), messages

    # LoRA: another rank, or removed
    from .helpers import save_tiny_base

    base = save_tiny_base(tmp_path / "base")
    lora = tmp_path / "lora"
    model = {"preset": None, "init_from": str(base), "fields": {}, "lora": {"r": 4, "alpha": 8}}
    _run(lora, data, train={"max_duration": "2ba"}, model=model, checkpoint={"every_batches": 2})
    step2 = lora / "ckpt" / "step-00000002"
    targets = "['Wqkv', 'out_proj', 'up_proj', 'down_proj']"
    with pytest.raises(CheckpointError) as err:
        _run(lora, data, train={"max_duration": "3ba"}, model=dict(model, lora={"r": 8, "alpha": 8}))
    assert f"(model.lora: checkpoint r=4 on {targets}, recipe r=8 on {targets});" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        _run(lora, data, train={"max_duration": "3ba"}, model=dict(model, lora=None))
    assert str(err.value) == (f"{step2} was written with other settings (model.lora: checkpoint r=4 on {targets}, "
                              "recipe none); resume with the checkpoint's settings, or use another checkpoint.folder "
                              "for the new ones")


@pytest.mark.parametrize("damage", ["manifest without data", "empty rank0.pt"])
def test_crafted_but_self_consistent_files_fall_back_to_the_older_checkpoint(tmp_path, damage):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "8ba"})
    older, newest = complete_checkpoints(tmp_path / "ckpt")
    if damage == "empty rank0.pt":
        (newest / "rank0.pt").write_bytes(b"")
        _rewrite_manifest(newest)
        why = f"{newest / 'rank0.pt'}: unreadable RNG state (EOFError)"  # was `mpt train: error: EOFError`
    else:
        _rewrite_manifest(newest)
        state = json.loads((newest / "trainer_state.json").read_text())
        del state["data"]
        (newest / "trainer_state.json").write_text(json.dumps(state))
        why = f"{newest}: trainer_state.json has no valid 'data' (damaged)"  # was KeyError: 'data'
    messages = _falls_back(tmp_path, data, newest, older, why)
    assert f"checkpoint {newest} cannot be used: {why}; trying an older one" in messages, messages


def test_a_damaged_checkpoint_saved_over_at_its_step_is_kept_renamed(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "8ba"})
    older, newest = complete_checkpoints(tmp_path / "ckpt")
    _damage(next(newest.glob("*.distcp")))
    damaged = _files(newest)
    _, messages = _run(tmp_path, data, train={"max_duration": "8ba"})  # resumes from step 4, saves step 8 again
    assert any(f"resumed from {older}" in m for m in messages)
    assert f"{newest} could not be used; it is kept as step-00000008.damaged for inspection" in messages
    assert _files(tmp_path / "ckpt" / "step-00000008.damaged") == damaged
    verify(newest)  # the new step 8
    # damaged again and saved over again: the first one kept stays, the second gets the next name
    _damage(next(newest.glob("*.distcp")))
    _run(tmp_path, data, train={"max_duration": "8ba"})
    assert _files(tmp_path / "ckpt" / "step-00000008.damaged") == damaged
    assert (tmp_path / "ckpt" / "step-00000008.damaged-2").is_dir()


def test_a_full_disk_while_saving_says_so_and_keeps_the_previous_checkpoint(tmp_path):
    data = make_shards(tmp_path / "data")
    with small_disk(tmp_path / "small-disk") as disk:
        folder = disk / "ckpt"
        sections = {"train": {"max_duration": "12ba"}, "checkpoint": {"folder": str(folder), "every_batches": 2}}
        with pytest.raises(CheckpointError) as err:  # was `RuntimeError: [enforce fail at inline_container.cc:672] .`
            _run(tmp_path, data, **sections)
        saved = complete_checkpoints(folder)
        assert len(saved) >= 1
        failed = int(saved[-1].name.split("-")[1]) + 2
        assert str(err.value) == (
            f"no space left on the device while saving step {failed} to {folder}; the previous checkpoint "
            f"{saved[-1].name} is intact and the incomplete step-{failed:08d}.tmp is removed. Free some space (or "
            "point checkpoint.folder at a larger disk) and start the same command to resume")
        verify(saved[-1])
        assert not (folder / f"step-{failed:08d}.tmp").exists()
        # as the message says: with room again, the same command resumes and finishes
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        result, messages = _run(tmp_path, data, **sections)
        assert any(f"resumed from {saved[-1]}" in m for m in messages), messages
        assert result.steps == 12


def test_a_damaged_checkpoint_is_reported_and_the_older_one_used(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "8ba"})
    older, newest = complete_checkpoints(tmp_path / "ckpt")
    _damage(next(newest.glob("*.distcp")))
    _falls_back(tmp_path, data, newest, older, "checksum")
