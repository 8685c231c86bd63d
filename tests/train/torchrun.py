"""Training under real `torchrun` agents (gloo on CPU) for the tests: launch, wait with a deadline, and read
back what a run left (its losses, logged steps, exported weights); `run_jobs` runs several recipes in one
process group (dist_worker.py), each job's outcome recorded apart."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from mpt.train.export import export_hf

from .helpers import descendants, recipe_dict

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
WORKER = Path(__file__).with_name("dist_worker.py")
STEPS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_recipe(run: Path, data: Path, **sections) -> dict:
    """The test recipe with the defaults that matter here: export on, strategy auto, keep all checkpoints.

    A constant schedule (after warmup) makes the learning rate independent of the run's length, so
    segments of different lengths follow the same curve.
    """
    sections.setdefault("train", {})
    sections["train"] = {"max_duration": f"{STEPS}ba", **sections["train"]}
    sections["checkpoint"] = {"every_batches": 4, "keep": 10, "export_hf": str(run / "hf"),
                              **sections.get("checkpoint", {})}
    sections["scheduler"] = {"name": "constant", "warmup_batches": 2, **sections.get("scheduler", {})}
    return recipe_dict(run, data, **sections)


def torchrun(nproc: int, *args, extra=(), new_session=False, env=ENV):
    """A torchrun agent; its output goes to a file (a pipe nobody reads while the test waits could fill up)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *extra]
    if "--rdzv-endpoint" not in extra:
        cmd += ["--master_port", str(free_port())]
    log = tempfile.NamedTemporaryFile("w+", prefix="torchrun-", suffix=".log", delete=False)
    proc = subprocess.Popen([*cmd, *args], env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=new_session)
    proc.log_path = log.name
    log.close()
    return proc


def mpt_train(nproc: int, recipe: dict, run: Path, extra=(), new_session=False, env=ENV):
    run.mkdir(parents=True, exist_ok=True)
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return torchrun(nproc, "-m", "mpt.cli", "train", str(path), extra=extra, new_session=new_session, env=env)


def finish(proc, timeout=300):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:  # a hung job must not outlive its test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        out = Path(proc.log_path).read_text(errors="replace")
        print(out[-6000:])  # shown by pytest when the test fails
    return proc.returncode, out


def run_jobs(nproc: int, jobs: list[dict], where: Path, timeout: float = 600) -> tuple[dict[str, dict], str]:
    """Run ``jobs`` one after another in one torchrun group; each job's outcome (its error or None, rank 0's
    log lines, steps, checkpoint), and the group's output. A job that left no outcome (the group died or hung
    before it ended) gets an error saying so: it fails its own test, and the jobs before it stand."""
    where.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        job["outcome"] = str(where / f"{job['name']}.json")
    spec = where / f"jobs-{nproc}.json"
    spec.write_text(json.dumps(jobs))
    try:
        code, out = finish(torchrun(nproc, str(WORKER), str(spec)), timeout=timeout)
    except subprocess.TimeoutExpired:
        code, out = "timeout", ""
    outcomes = {}
    for job in jobs:
        path = Path(job["outcome"])
        outcomes[job["name"]] = json.loads(path.read_text()) if path.is_file() else {
            "error": f"no outcome: the torchrun group ended ({code}) before this job did", "log": []}
    return outcomes, out


def losses(run: Path) -> list[float]:
    by_step = {}
    for line in (run / "log" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "loss" in m:
            by_step[m["step"]] = m["loss"]
    return [by_step[s] for s in sorted(by_step)]


def logged_steps(run: Path) -> int:
    path = run / "log" / "metrics.jsonl"
    return sum('"loss"' in line for line in path.read_text().splitlines()) if path.is_file() else 0


def exported(run: Path) -> dict:
    return load_file(run / "hf" / "model.safetensors")


def weights_at(tmp: Path, checkpoint: Path) -> dict:
    out = tmp / f"export-{checkpoint.parent.parent.name}-{checkpoint.name}"
    export_hf(checkpoint, out)
    return load_file(out / "model.safetensors")


def close(weights: dict, reference: dict, atol=1e-4) -> None:
    assert weights.keys() == reference.keys()
    for name, w in weights.items():
        assert torch.allclose(w, reference[name], atol=atol), name


def identical(weights: dict, reference: dict) -> None:
    assert weights.keys() == reference.keys()
    for name, w in weights.items():
        assert torch.equal(w, reference[name]), f"{name} differs from the uninterrupted run"
