"""Real processes: SIGKILL and SIGTERM mid-run, torchrun with 2 ranks, resharded resume, and a second run
refused on a checkpoint folder in use (until the holder dies).

Every run killed, stopped or refused here is `mpt train` in a subprocess, exactly as a user (or a
supervisor) starts it.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mpt.train.checkpoint import complete_checkpoints
from mpt.train.export import export_hf

from .helpers import cmdline, descendants, make_shards, recipe_dict
from .torchrun import logged_steps, losses

TOTAL = 16
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _mpt():
    exe = shutil.which("mpt")
    assert exe, "the `mpt` console script is not installed"
    return exe


def _recipe(tmp, data, name, **sections):
    run = tmp / name
    sections.setdefault("train", {})
    sections["train"] = {"max_duration": f"{TOTAL}ba", **sections["train"]}
    d = recipe_dict(run, data, **sections)
    run.mkdir(parents=True, exist_ok=True)
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    return path, run


def _start(recipe, nproc=1):
    if nproc == 1:
        cmd = [_mpt(), "train", str(recipe)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(random.Random(str(recipe)).randint(20000, 40000)), "-m", "mpt.cli", "train", str(recipe)]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _final_weights(tmp, run):
    out = tmp / f"export-{run.name}"
    export_hf(complete_checkpoints(run / "ckpt")[-1], out)
    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data") / "shards", samples=96)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards):
    """The uninterrupted single-process run every recovery must reproduce bit for bit."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe, run = _recipe(tmp, shards, "ref")
    code, out = _finish(_start(recipe))
    assert code == 0, out
    return _final_weights(tmp, run), losses(run)


def _assert_bit_identical(weights, reference_weights):
    assert weights.keys() == reference_weights.keys()
    for name, w in weights.items():
        assert torch.equal(w, reference_weights[name]), f"{name} differs from the uninterrupted run"


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, shards, reference):
    recipe, run = _recipe(tmp_path, shards, "killed")
    kill_after = random.Random(0).randint(5, TOTAL - 3)
    proc = _start(recipe)
    deadline = time.time() + 120
    while logged_steps(run) < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert logged_steps(run) < TOTAL
    code, out = _finish(_start(recipe))
    assert code == 0, out
    assert "resumed from" in out
    _assert_bit_identical(_final_weights(tmp_path, run), reference[0])


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_in_use(tmp_path, shards, reference):
    # A larger model makes each save last long enough to be caught in the act; 8 steps, a save every 2.
    sections = {"model": {"fields": {"d_model": 256, "n_heads": 4, "n_layers": 4, "vocab_size": 64,
                                     "max_seq_len": 32}},
                "checkpoint": {"every_batches": 2}, "train": {"max_duration": "8ba"}}
    recipe, run = _recipe(tmp_path, shards, "killed-in-save", **sections)
    # the same recipe without interruption, meanwhile in a process of its own
    ref_recipe, ref_run = _recipe(tmp_path, shards, "in-save-reference", **sections)
    ref_proc = _start(ref_recipe)
    ckpt_dir = run / "ckpt"
    caught = None
    for _attempt in range(8):  # each attempt resumes the run; stop once a kill lands inside a save
        proc = _start(recipe)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            tmp_dirs = [p.name for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")] if ckpt_dir.is_dir() else []
            if tmp_dirs and complete_checkpoints(ckpt_dir):
                proc.kill()
                break
            time.sleep(0.002)  # a save lasts far longer; a busy loop would take a core from the runs
        proc.wait()
        leftovers = [p.name for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")] if ckpt_dir.is_dir() else []
        if leftovers and proc.returncode == -signal.SIGKILL:
            caught = leftovers[0]
            break
    assert caught, "never killed the run in the middle of a save"
    code, out = _finish(_start(recipe))
    assert code == 0, out
    assert not any(p.name.endswith(".tmp") for p in ckpt_dir.iterdir())
    code, out = _finish(ref_proc)
    assert code == 0, out
    _assert_bit_identical(_final_weights(tmp_path, run), _final_weights(tmp_path, ref_run))


def test_sigterm_saves_a_checkpoint_and_exits_then_resumes_bit_identical(tmp_path, shards, reference):
    recipe, run = _recipe(tmp_path, shards, "preempted", checkpoint={"every_batches": 0})
    proc = _start(recipe)
    deadline = time.time() + 120
    while logged_steps(run) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 143, out
    assert "SIGTERM: saved" in out
    saved = complete_checkpoints(run / "ckpt")
    assert len(saved) == 1 and 6 <= int(saved[0].name.split("-")[1]) < TOTAL
    code, out = _finish(_start(recipe))
    assert code == 0, out
    _assert_bit_identical(_final_weights(tmp_path, run), reference[0])


@pytest.mark.serial  # its 3 s step limit must not fire on a step slowed by another test process
def test_watchdog_dumps_stacks_and_exits_when_a_rank_hangs(tmp_path, shards):
    recipe, run = _recipe(tmp_path, shards, "hang", train={"max_duration": "400ba"},
                          watchdog={"enabled": True, "min_seconds": 3.0, "factor": 20.0},
                          checkpoint={"every_batches": 0})
    proc = _start(recipe, nproc=2)
    deadline = time.time() + 120
    while logged_steps(run) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = [w for w in descendants(proc.pid) if "mpt.cli" in cmdline(w)]
    assert len(workers) >= 2, (workers, logged_steps(run), proc.poll())
    frozen = workers[-1]
    os.kill(frozen, signal.SIGSTOP)  # one rank freezes: the others wait forever in a collective
    start = time.time()
    try:
        # the watchdog of every other rank fires: it prints its stacks and exits
        while any(os.path.exists(f"/proc/{w}") and w != frozen for w in workers) and time.time() - start < 90:
            time.sleep(0.2)
        waited = time.time() - start
    finally:
        os.kill(frozen, signal.SIGKILL)
    code, out = _finish(proc, timeout=120)
    assert code != 0
    assert waited < 60
    # faulthandler's dump of the waiting rank: "Thread 0x... (most recent call first):" per thread, or
    # "Stack (most recent call first):" when the process has a single thread
    assert "(most recent call first):" in out and "File " in out, out[-3000:]


def _wait_for_steps(run, proc, steps, timeout=120):
    deadline = time.time() + timeout
    while logged_steps(run) < steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and logged_steps(run) >= steps, f"the holder did not train on to step {steps}"


def test_a_second_run_in_a_checkpoint_folder_in_use_is_refused_and_a_killed_holder_frees_it(tmp_path, shards):
    """Two `mpt train` processes on one folder: the second (another run name, or the same command twice) is
    refused with one line naming the holder, which trains on; killed with SIGKILL, the holder's lock goes
    with its process and the same recipe resumes."""
    import socket

    recipe, run = _recipe(tmp_path, shards, "holder", train={"max_duration": "100000ba"},
                          checkpoint={"every_batches": 2})
    folder = run / "ckpt"
    holder = _start(recipe)
    try:
        _wait_for_steps(run, holder, 3)
        other = yaml.safe_load(recipe.read_text())
        other.update(run_name="other", log={"folder": str(tmp_path / "other-log")})
        other["train"]["max_duration"] = "2ba"
        other_recipe = tmp_path / "other.yaml"
        other_recipe.write_text(yaml.safe_dump(other))
        refusal = (f"mpt train: error: checkpoint.folder {folder} is in use by run 'test' (pid {holder.pid} on host "
                   f"{socket.gethostname()}, since ")
        # both at once: another run name, and the same command again
        for second in [_start(other_recipe), _start(recipe)]:
            code, out = _finish(second, timeout=120)
            assert code == 2, out
            lines = [line for line in out.splitlines() if "error" in line.lower()]
            assert len(lines) == 1 and lines[0].startswith(refusal), out
            assert lines[0].endswith(" UTC); wait for that run to end (or stop it), or use another checkpoint.folder")
            assert "Traceback" not in out
        steps = logged_steps(run)
        _wait_for_steps(run, holder, steps + 1)  # the holder never noticed: it trains on
    finally:
        holder.kill()  # SIGKILL: the lock is the kernel's to release
        holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    newest = complete_checkpoints(folder)[-1]
    end = int(newest.name.split("-")[1]) + 2
    # the same recipe and override as `mpt train RECIPE train.max_duration=...`, in this process (a start saved)
    from mpt.train import load_recipe, train

    messages = []
    result = train(load_recipe(str(recipe), [f"train.max_duration={end}ba"]), log=messages.append)
    assert result.steps == end
    assert any(f"resumed from {newest}" in m for m in messages), messages
    assert complete_checkpoints(folder)[-1].name == f"step-{end:08d}"
