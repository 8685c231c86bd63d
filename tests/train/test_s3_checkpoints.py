"""Checkpoints on object storage, against a real S3-compatible server (moto's, on 127.0.0.1).

`checkpoint.folder: s3://bucket/run` saves through DCP's fsspec storage, autoresume reads it back,
`mpt export` turns it into a transformers folder, an upload cut short (no manifest) is never taken
for a checkpoint, and a missing bucket is a clear error before any step.
"""

import fsspec
import pytest
import torch
from transformers import AutoModelForCausalLM

from mpt.config import from_dict
from mpt.train import Recipe, train
from mpt.train.checkpoint import CheckpointError, complete_checkpoints

from .helpers import make_shards, recipe_dict


def _run(tmp, data, folder, **sections):
    sections["checkpoint"] = {"folder": folder, **sections.get("checkpoint", {})}
    messages = []
    result = train(from_dict(Recipe, recipe_dict(tmp, data, **sections)), log=messages.append)
    return result, messages


def test_train_resume_and_export_with_checkpoints_on_s3(tmp_path, s3_server):
    from mpt.cli import main

    data = make_shards(tmp_path / "data")
    url = f"s3://{s3_server.bucket}/runs/first"
    result, _ = _run(tmp_path, data, url, train={"max_duration": "8ba"})
    assert str(result.checkpoint) == f"{url}/step-00000008"
    assert [p.name for p in complete_checkpoints(url)] == ["step-00000004", "step-00000008"]
    fs = fsspec.filesystem("s3")
    assert fs.exists(f"{url}/step-00000008/trainer_state.json")
    assert not fs.exists(f"{url}/step-00000008.tmp")

    # an upload cut short: every object of a checkpoint but the manifest, which is written last
    cut = f"{url}/step-00000012"
    for path in fs.ls(f"{url}/step-00000008"):
        name = path.rsplit("/", 1)[1]
        if name != "trainer_state.json":
            fs.copy(path, f"{cut}/{name}")
    assert [p.name for p in complete_checkpoints(url)] == ["step-00000004", "step-00000008"]

    result, messages = _run(tmp_path, data, url, train={"max_duration": "10ba"})
    assert any(f"resumed from {url}/step-00000008 at step 8" in m for m in messages), messages
    assert result.steps == 10

    assert main(["export", url, str(tmp_path / "hf")]) == 0
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert main(["export", f"{url}/step-00000010", str(tmp_path / "hf-local-ref")]) == 0
    ids = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        assert torch.equal(theirs(ids).logits, AutoModelForCausalLM.from_pretrained(
            tmp_path / "hf-local-ref").eval()(ids).logits)


def test_a_damaged_checkpoint_on_s3_falls_back_to_the_older_one(tmp_path, s3_server):
    data = make_shards(tmp_path / "data")
    url = f"s3://{s3_server.bucket}/runs/damaged"
    _run(tmp_path, data, url, train={"max_duration": "8ba"})
    fs = fsspec.filesystem("s3")
    shard = next(p for p in fs.ls(f"{url}/step-00000008") if p.endswith(".distcp"))
    raw = bytearray(fs.cat_file(shard))
    raw[len(raw) // 2] ^= 0xFF
    fs.pipe_file(shard, bytes(raw))
    result, messages = _run(tmp_path, data, url, train={"max_duration": "9ba"})
    assert any("step-00000008 cannot be used" in m and "checksum" in m for m in messages), messages
    assert any(f"resumed from {url}/step-00000004" in m for m in messages)
    assert result.steps == 9


def test_a_bucket_that_does_not_exist_is_a_clear_error_before_training(tmp_path, s3_server):
    data = make_shards(tmp_path / "data")
    with pytest.raises(CheckpointError, match="bucket 'no-such-bucket-here' does not exist") as err:
        _run(tmp_path, data, "s3://no-such-bucket-here/run", train={"max_duration": "2ba"})
    assert "create it first, or fix checkpoint.folder" in str(err.value)
    assert not (tmp_path / "log" / "metrics.jsonl").exists()  # no step was run
    assert not fsspec.filesystem("s3").exists("no-such-bucket-here")


def test_wrong_credentials_for_the_checkpoint_bucket_are_a_clear_error_before_training(tmp_path, s3_server):
    """`mpt train` as a user runs it, with a wrong secret key: one line naming the folder and what to check."""
    import os
    import subprocess
    import sys

    import yaml

    data = make_shards(tmp_path / "data")
    url = f"s3://{s3_server.bucket}/runs/denied"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tmp_path, data, checkpoint={"folder": url},
                                                 train={"max_duration": "2ba"})))
    env = {**os.environ, **s3_server.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    run = subprocess.run([sys.executable, "-m", "mpt.cli", "train", str(recipe)], capture_output=True, text=True,
                         env=env, timeout=180)
    assert run.returncode == 2, run.stderr
    assert f"checkpoint.folder {url}: cannot reach bucket" in run.stderr, run.stderr
    assert "AWS_SECRET_ACCESS_KEY" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "log" / "metrics.jsonl").exists()  # no step was run
    assert not fsspec.filesystem("s3").exists(url)
