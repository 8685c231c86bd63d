"""Many ranks, real `torchrun` processes over gloo, the recipe's defaults (export on).

- The strategy matrix: 2 and 4 ranks x {FSDP full, FSDP grad_op, DDP} and HSDP on a 2x2 mesh; every
  run ends, exports, and follows the one-process loss curve and weights (float tolerance).
- Resharding: 4 ranks -> 2 ranks -> 1 process, each segment resuming the previous one's checkpoint.
- Spike rollback on 2 ranks; in-training ICL evaluation on FSDP ranks changes nothing in training.
- SIGKILL of rank 0 (holding the S3 folder's lease) under `torchrun --max-restarts 1`: the group restarts,
  takes the lease over, resumes, ends bit-identical. SIGTERM on 2 ranks: saves, exits, resumes bit-identical.
- A newest checkpoint that only rank 1 cannot load: both ranks resume from the same older one.
- Checkpoint-folder refusals and failures (a held folder, a fresh run over another run's checkpoints,
  a changed optimizer, a full disk): the same one-line error on both ranks, and the group goes on.
- Two nodes (two torchrun agents, c10d rendezvous): one node dies mid-run, is started again, and the job
  resumes and finishes by itself, with the weights of the same job run on one node.
"""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml

from mpt.config import from_dict
from mpt.train import Recipe, train
from mpt.train.checkpoint import complete_checkpoints, verify
from mpt.train.folder_lock import hold_folder

from .helpers import cmdline, descendants, make_shards, small_disk
from .torchrun import (
    ENV,
    STEPS,
    close,
    dist_recipe,
    exported,
    finish,
    free_port,
    identical,
    logged_steps,
    losses,
    mpt_train,
    run_jobs,
    torchrun,
    weights_at,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data") / "shards", samples=160)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shards):
    """One process, 12 steps: the curve and weights every multi-rank run must follow."""
    tmp = tmp_path_factory.mktemp("reference")
    train(from_dict(Recipe, dist_recipe(tmp / "ref", shards, train={"max_duration": "12ba"})), log=lambda *a: None)
    ckpts = {p.name: p for p in complete_checkpoints(tmp / "ref" / "ckpt")}
    return {"losses": losses(tmp / "ref"), "step8": weights_at(tmp, ckpts["step-00000008"]),
            "step12": weights_at(tmp, ckpts["step-00000012"])}


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory, shards):
    tmp = tmp_path_factory.mktemp("four")
    jobs = [{"name": name, "recipe": dist_recipe(tmp / name, shards, parallel=parallel)} for name, parallel in [
        ("fsdp", {"strategy": "fsdp"}),
        ("grad_op", {"strategy": "fsdp", "fsdp_sharding": "grad_op"}),
        ("ddp", {"strategy": "ddp"}),
        ("hsdp", {"strategy": "hsdp", "replicas": 2}),
    ]]
    # the first segment of the 4 -> 2 -> 1 resharding chain
    jobs.append({"name": "reshard", "recipe": dist_recipe(tmp / "reshard", shards, train={"max_duration": "4ba"})})
    return tmp, run_jobs(4, jobs, tmp / "jobs")[0]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, shards, four_ranks):
    """The 2-rank group: every job below in one torchrun launch (one start of Python and torch per rank)."""
    tmp = tmp_path_factory.mktemp("two")
    four_tmp, _ = four_ranks
    chain = four_tmp / "reshard"
    jobs = [{"name": name, "recipe": dist_recipe(tmp / name, shards, parallel=parallel)} for name, parallel in [
        ("auto", {}),
        ("grad_op", {"strategy": "fsdp", "fsdp_sharding": "grad_op"}),
        ("ddp", {"strategy": "ddp"}),
    ]]
    # resharding, second segment: the 4-rank checkpoint of step 4 resumed on 2 ranks up to step 8
    jobs.append({"name": "reshard", "recipe": dist_recipe(chain, shards)})
    # spike rollback: 16 good steps, then random tokens until the rollbacks run out
    noise = make_shards(tmp / "noise-shards", samples=160, random_tokens=True)
    spiky = tmp / "spiky"
    jobs.append({"name": "spiky-good", "recipe": dist_recipe(spiky, shards, train={"max_duration": "16ba"},
                                                         checkpoint={"every_batches": 8, "export_hf": None})})
    jobs.append({"name": "spiky-noise", "recipe": dist_recipe(
        spiky, noise, train={"max_duration": "40ba"}, checkpoint={"every_batches": 8, "export_hf": None},
        spike={"factor": 1.3, "window": 8, "min_history": 4, "patience": 2, "max_rollbacks": 2})})
    # in-training ICL evaluation: the same FSDP run with and without it
    icl_data, tokenizer, task = _icl_fixtures(tmp / "icl-inputs")
    icl = {"tasks": [str(task)], "every_batches": 4, "limit": None, "tokenizer": str(tokenizer), "batch_size": 4}
    model = {"fields": {"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": ICL_VOCAB, "max_seq_len": 32}}
    jobs.append({"name": "with-icl", "recipe": dist_recipe(tmp / "with-icl", icl_data, model=model, eval={"icl": icl})})
    jobs.append({"name": "without-icl", "recipe": dist_recipe(tmp / "without-icl", icl_data, model=model)})
    # bf16: FSDP2 gathers bf16 parameters and reduces fp32 gradients
    jobs.append({"name": "bf16", "recipe": dist_recipe(tmp / "bf16", shards, train={"precision": "bf16"})})
    # LoRA finetuning of a saved model, sharded (the default) and replicated
    for name, parallel in [("lora-auto", {}), ("lora-ddp", {"strategy": "ddp"})]:
        jobs.append({"name": name, "recipe": dist_recipe(tmp / name, shards, parallel=parallel,
                                                     model=_lora_model(tmp / "lora-base"))})
    # what the two-node runs below must equal: the same 2-rank job, 16 steps, in this group (no launch of its own)
    jobs.append({"name": "long", "recipe": dist_recipe(tmp / "long", shards, parallel={}, train=TWO_NODE_TRAIN)})
    # QLoRA with the defaults (auto: replicated, as FSDP cannot shard 4-bit weights)
    jobs.append({"name": "qlora-auto", "recipe": dist_recipe(tmp / "qlora-auto", shards,
                                                         model=_lora_model(tmp / "lora-base", quantize=True))})
    # "auto"'s checkpoints, the newest with a rank-1 file that only rank 1 refuses (planted before the job)
    run = tmp / "one-rank-sees-it"
    jobs.append({"name": "one-rank-sees-it", "recipe": dist_recipe(run, shards, parallel={}),
                 "before": [f"{__name__}:plant_a_checkpoint_rank_1_cannot_load", str(tmp / "auto" / "ckpt"),
                            str(run / "ckpt"), str(tmp / "pwned")]})
    # checkpoint-folder refusals and failures, last: a held folder, a full disk (a real small filesystem)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(small_disk(tmp / "disk"))
        except pytest.skip.Exception as why:  # not root: only the test of the refusals skips, saying why
            no_disk = str(why)
        else:
            no_disk = None
            stack.enter_context(hold_folder(tmp / "held" / "ckpt", "someone", 120.0, log=lambda *_: None))
            jobs += _refusal_jobs(tmp, shards)
        outcomes, out = run_jobs(2, jobs, tmp / "jobs")
        (tmp / "jobs" / "group.log").write_text(out)
        # the full disk's checkpoints, read and verified while the disk is there
        outcomes["disk"] = {"error": no_disk, "checkpoints": [] if no_disk else [
            str(p) for p in complete_checkpoints(tmp / "disk" / "ckpt")]}
        if not no_disk:
            verify(complete_checkpoints(tmp / "disk" / "ckpt")[-1])
    return tmp, outcomes


def _refusal_jobs(tmp: Path, shards: Path) -> list[dict]:
    shared, held = tmp / "shared", tmp / "held"
    three = {"fields": {"d_model": 32, "n_heads": 2, "n_layers": 3, "vocab_size": 64, "max_seq_len": 32}}
    return [
        {"name": "first", "recipe": dist_recipe(shared, shards, train={"max_duration": "4ba"})},
        {"name": "held", "recipe": dist_recipe(held, shards)},
        {"name": "fresh", "recipe": dist_recipe(shared, shards, checkpoint={"autoresume": False})},
        {"name": "lion", "recipe": dist_recipe(shared, shards, optimizer={"name": "lion", "lr": 1e-4})},
        {"name": "full", "recipe": dist_recipe(tmp / "full", shards, train={"max_duration": "12ba"},
                                               checkpoint={"folder": str(tmp / "disk" / "ckpt"), "every_batches": 2})},
        {"name": "start-over", "recipe": dist_recipe(shared, shards, model=three, checkpoint={"start_over": True})},
    ]


def _lora_model(base: Path, quantize: bool = False) -> dict:
    """A saved tiny MPT to finetune with LoRA (written once, the first time it is asked for); ``quantize``:
    QLoRA over its 4-bit base."""
    if not base.is_dir():
        from mpt.model.hf import save_pretrained
        from tests.tiny import tiny_model

        save_pretrained(tiny_model(5), base)
    return {"preset": None, "init_from": str(base), "fields": {},
            "lora": {"r": 4, "alpha": 8, "quantize_base": quantize}}


ICL_VOCAB = 320


def _icl_fixtures(where: Path):
    """A small BPE tokenizer, shards in its vocabulary size, and a 12-example multiple-choice task."""
    from mpt.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    where.mkdir(parents=True)
    corpus = where / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog ran to the park; water flows from the spout. " * 40)
    train_tokenizer(TokenizerTrainConfig(inputs=[str(corpus)], out=str(where / "tok"), vocab_size=300,
                                         progress=False))
    data = make_shards(where / "shards", samples=160, vocab=ICL_VOCAB, tokenizer=str(where / "tok"))
    rng = random.Random(0)
    words = ["cat", "dog", "mat", "park", "water", "spout", "sat", "ran"]
    task = where / "tiny_mc.jsonl"
    task.write_text("".join(json.dumps({"query": f"the {rng.choice(words)} {rng.choice(words)}, therefore",
                                        "choices": [f"the {rng.choice(words)}.", f"a {rng.choice(words)} ran."],
                                        "gold": rng.randint(0, 1)}) + "\n" for _ in range(12)))
    return data, where / "tok", task


def test_icl_during_fsdp_training_scores_like_mpt_eval_and_changes_nothing(two_ranks):
    from mpt.data.tokenize import load_tokenizer
    from mpt.eval.harness import evaluate
    from mpt.eval.suite import load_suite
    from mpt.model.load import load_model

    tmp, outcomes = two_ranks
    assert outcomes["with-icl"]["error"] is None and outcomes["without-icl"]["error"] is None
    with_icl, without = tmp / "with-icl", tmp / "without-icl"
    # training is untouched: same losses, same final weights, bit for bit
    assert losses(with_icl) == losses(without)
    identical(exported(with_icl), exported(without))
    # the accuracies are logged at steps 4 and 8 ...
    logged = {}
    for line in (with_icl / "log" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        logged.update({(m["step"], k): v for k, v in m.items() if k.startswith("icl/")})
    assert sorted(logged) == [(4, "icl/tiny_mc/0-shot"), (8, "icl/tiny_mc/0-shot")]
    assert outcomes["with-icl"]["icl"] == {"icl/tiny_mc/0-shot": logged[(8, "icl/tiny_mc/0-shot")]}
    # ... and step 8's equals `mpt eval` of the exported model in one process
    task = tmp / "icl-inputs" / "tiny_mc.jsonl"
    out = evaluate(load_model(str(with_icl / "hf"), "cpu"), load_tokenizer(str(tmp / "icl-inputs" / "tok")),
                   load_suite(str(task)).tasks, progress=False)
    assert out.tasks[0].n == 12
    assert out.tasks[0].accuracy == logged[(8, "icl/tiny_mc/0-shot")]


@pytest.mark.parametrize("name", ["fsdp", "grad_op", "ddp", "hsdp"])
def test_four_ranks_end_export_and_follow_the_one_process_run(four_ranks, reference, name):
    tmp, outcomes = four_ranks
    assert outcomes[name]["error"] is None and outcomes[name]["steps"] == STEPS
    run = tmp / name
    assert losses(run) == pytest.approx(reference["losses"][:STEPS], rel=1e-4)
    assert len(list(complete_checkpoints(run / "ckpt")[-1].glob("rank*.pt"))) == 4
    close(exported(run), reference["step8"])


@pytest.mark.parametrize("name", ["auto", "grad_op", "ddp"])
def test_two_ranks_end_export_and_follow_the_one_process_run(two_ranks, reference, name):
    tmp, outcomes = two_ranks
    assert outcomes[name]["error"] is None and outcomes[name]["steps"] == STEPS
    run = tmp / name
    assert losses(run) == pytest.approx(reference["losses"][:STEPS], rel=1e-4)
    close(exported(run), reference["step8"])


def test_bf16_fsdp_on_two_ranks_follows_the_one_process_bf16_run(two_ranks, shards, tmp_path):
    """Under FSDP the bf16 parameters come from the mixed-precision policy (fp32 master weights, fp32
    gradient reduction); in one process from autocast. Same curve within bf16's precision."""
    tmp, outcomes = two_ranks
    assert outcomes["bf16"]["error"] is None and outcomes["bf16"]["steps"] == STEPS
    one = tmp_path / "one"
    train(from_dict(Recipe, dist_recipe(one, shards, train={"precision": "bf16"})), log=lambda *a: None)
    assert losses(tmp / "bf16") == pytest.approx(losses(one), rel=2e-2)
    weights = exported(tmp / "bf16")
    assert all(w.dtype == torch.float32 for w in weights.values())  # the master weights stay fp32
    close(weights, exported(one), atol=2e-2)


@pytest.mark.parametrize("name", ["lora-auto", "lora-ddp", "qlora-auto"])
def test_lora_on_two_ranks_follows_the_one_process_lora_run(two_ranks, shards, tmp_path, name):
    quantize = name.startswith("qlora")
    if quantize:
        pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install -e '.[qlora]'")
    tmp, outcomes = two_ranks
    assert outcomes[name]["error"] is None and outcomes[name]["steps"] == STEPS
    one = tmp_path / "one"
    train(from_dict(Recipe, dist_recipe(one, shards, model=_lora_model(tmp / "lora-base", quantize))),
          log=lambda *a: None)
    assert losses(tmp / name) == pytest.approx(losses(one), rel=1e-4)
    close(exported(tmp / name), exported(one))
    if quantize:  # the 2-rank run really held a 4-bit base: its checkpoints hold the adapters alone
        state = json.loads((complete_checkpoints(tmp / name / "ckpt")[-1] / "trainer_state.json").read_text())
        assert state["trainable_only"] and state["base_quantized_on"] == "cpu"


def test_resharding_4_then_2_then_1_ranks_follows_the_one_process_run(four_ranks, two_ranks, reference, shards):
    four_tmp, four = four_ranks
    _, two = two_ranks
    assert four["reshard"]["error"] is None and four["reshard"]["steps"] == 4
    assert two["reshard"]["error"] is None and two["reshard"]["steps"] == STEPS
    chain = four_tmp / "reshard"
    assert any(f"resumed from {chain / 'ckpt' / 'step-00000004'}" in m for m in two["reshard"]["log"])
    messages = []
    train(from_dict(Recipe, dist_recipe(chain, shards, train={"max_duration": "12ba"})), log=messages.append)
    assert any("resumed from" in m and "step-00000008" in m for m in messages)
    assert losses(chain) == pytest.approx(reference["losses"], rel=1e-4)
    close(exported(chain), reference["step12"])


def test_spike_rollback_on_two_ranks_restores_the_checkpoint_weights(two_ranks):
    tmp, outcomes = two_ranks
    assert outcomes["spiky-good"]["error"] is None
    assert "already rolled back 2 times" in outcomes["spiky-noise"]["error"]
    latest = complete_checkpoints(tmp / "spiky" / "ckpt")[-1]
    assert latest.name == "step-00000016"
    before = weights_at(tmp, Path(outcomes["spiky-good"]["checkpoint"]))
    identical(weights_at(tmp / "after", latest), before)


def test_sigkill_of_rank_0_under_max_restarts_takes_over_its_s3_lease_and_resumes_bit_identical(
        tmp_path, shards, two_ranks, s3_server):
    """2 ranks under `torchrun --max-restarts 1`, checkpoints on S3; rank 0, which holds the folder's lease, is
    killed (SIGKILL). The agent restarts the group: the new rank 0 takes over the earlier attempt's lease at
    once, fresh as it is (lease_seconds 600), and the run resumes and ends bit-identical to an uninterrupted run."""
    two_tmp, _ = two_ranks
    run = tmp_path / "killed"
    url = f"s3://{s3_server.bucket}/runs/restarted"
    recipe = dist_recipe(run, shards, parallel={}, checkpoint={"folder": url, "lease_seconds": 600})
    # c10d rendezvous: each restart round meets under fresh store keys (the static one can reuse stale ones)
    proc = mpt_train(2, recipe, run, env=dict(ENV, **s3_server.env), extra=[
        "--max-restarts", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"])
    deadline = time.time() + 180
    while logged_steps(run) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = [w for w in descendants(proc.pid) if "mpt.cli" in cmdline(w)]
    rank0 = [w for w in workers if b"\0RANK=0\0" in b"\0" + open(f"/proc/{w}/environ", "rb").read()]
    assert len(workers) == 2 and len(rank0) == 1, workers
    os.kill(rank0[0], signal.SIGKILL)  # one rank dies; the agent restarts the whole group
    code, out = finish(proc)
    assert code == 0, out[-4000:]
    assert f"checkpoint.folder {url}: took over the lease of run 'test' (pid {rank0[0]} on host" in out
    assert "(an earlier attempt of this torchrun job)" in out
    assert f"resumed from {url}/step-" in out
    identical(exported(run), exported(two_tmp / "auto"))


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_a_checkpoint_rank_1_cannot_load(source: str, folder: str, marker: str) -> None:
    """Copy a run's checkpoints; the newest's rank-1 RNG file becomes a crafted pickle (writing ``marker``
    if it ever ran) under a manifest that matches it. Called by dist_worker.py before its job."""
    from tests.train.test_checkpoint import _rewrite_manifest

    shutil.copytree(source, folder)
    newest = complete_checkpoints(Path(folder))[-1]
    torch.save({"torch": _Payload(Path(marker))}, newest / "rank1.pt")
    _rewrite_manifest(newest)


def test_a_checkpoint_only_one_rank_cannot_load_sends_both_ranks_back_to_the_older_one(two_ranks):
    """Rank 1's RNG file in the newest checkpoint is a crafted pickle with a matching manifest: rank 0
    loads that checkpoint fine, rank 1 refuses its file. Both must resume from the same older one."""
    two_tmp, outcomes = two_ranks
    run = two_tmp / "one-rank-sees-it"
    outcome = outcomes["one-rank-sees-it"]
    assert outcome["error"] is None and outcome["steps"] == STEPS
    older, newest = run / "ckpt" / "step-00000004", run / "ckpt" / "step-00000008"
    said = "\n".join(outcome["log"])
    assert not (two_tmp / "pwned").exists()
    assert f"checkpoint {newest} cannot be used" in said
    assert f"resumed from {older}" in said and f"resumed from {newest}" not in said
    identical(exported(run), exported(two_tmp / "auto"))


def test_sigterm_on_two_ranks_saves_exits_and_resumes_bit_identical(tmp_path, shards, two_ranks):
    two_tmp, _ = two_ranks
    run = tmp_path / "preempted"
    recipe = dist_recipe(run, shards, parallel={}, checkpoint={"every_batches": 0})
    proc = mpt_train(2, recipe, run)
    deadline = time.time() + 180
    while logged_steps(run) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to every rank
    code, out = finish(proc)
    assert code != 0
    assert "SIGTERM: saved" in out, out[-4000:]
    saved = complete_checkpoints(run / "ckpt")
    assert len(saved) == 1 and 3 <= int(saved[0].name.split("-")[1]) < STEPS
    code, out = finish(mpt_train(2, recipe, run))
    assert code == 0, out[-4000:]
    identical(exported(run), exported(two_tmp / "auto"))


TWO_NODE_TRAIN = {"max_duration": "16ba"}  # long enough to lose a node in the middle


def _node(run: Path, port: int):
    """One simulated node: a torchrun agent with one rank, meeting the other node at 127.0.0.1:port.

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as the README's multi-node launch says: with the shared store
    a rank-0 agent keeps its first round's bootstrap keys, and a node that joins a later round (one
    restarted after a crash) waits for them forever.
    """
    extra = ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
             "--rdzv-id", run.name, "--max-restarts", "2",
             # a node without a heartbeat for 5 s is dead (torchrun's default: 3 x 5 s), so the surviving node's
             # next round does not wait 15 s for the dead node to leave it
             "--rdzv-conf", "keep_alive_interval=1,keep_alive_max_attempt=5"]
    return torchrun(1, "-m", "mpt.cli", "train", str(run / "recipe.yaml"), extra=extra, new_session=True,
                     env=dict(ENV, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"))


def _first_node(run: Path, recipe: dict, port: int):
    """Node A starts first and hosts the rendezvous (the --rdzv-endpoint machine of a real cluster)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    node = _node(run, port)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return node
        time.sleep(0.1)
    raise AssertionError("node A's rendezvous never listened")


def test_two_nodes_run_to_the_end_and_survive_a_node_that_dies_and_comes_back(tmp_path, shards, two_ranks):
    """A 2-rank job on two simulated nodes (one rank each); node B dies mid-run (agent and rank together) and is
    started again with the same command: both nodes end, and the weights are those of the same job run on one
    node without a fault (the "long" job of the two-rank group)."""
    run = tmp_path / "node-lost"
    port = free_port()
    node_a = _first_node(run, dist_recipe(run, shards, parallel={}, train=TWO_NODE_TRAIN), port)
    node_b = _node(run, port)
    deadline = time.time() + 180
    while logged_steps(run) < 5 and node_a.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert 5 <= logged_steps(run) < 16  # past the checkpoint of step 4, before the end
    for pid in [node_b.pid, *descendants(node_b.pid)]:  # the node's agent and its rank (own session)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node_b.wait()
    node_b = _node(run, port)
    code_a, out_a = finish(node_a)
    code_b, out_b = finish(node_b)
    assert code_a == 0, out_a[-4000:]
    assert code_b == 0, out_b[-4000:]
    assert "resumed from" in out_a + out_b
    group, outcomes = two_ranks
    assert outcomes["long"]["error"] is None and outcomes["long"]["steps"] == 16
    identical(exported(run), exported(group / "long"))


def test_the_watchdog_covers_saves_a_rank_frozen_mid_save_ends_the_others(tmp_path, shards):
    # A larger model makes each save last long enough to freeze a rank inside it.
    run = tmp_path / "frozen-in-save"
    recipe = dist_recipe(run, shards, parallel={}, train={"max_duration": "400ba"}, checkpoint={"every_batches": 2},
                     model={"fields": {"d_model": 256, "n_heads": 4, "n_layers": 4, "vocab_size": 64,
                                       "max_seq_len": 32}},
                     watchdog={"enabled": True, "min_seconds": 600.0, "factor": 1000.0, "phase_seconds": 4.0})
    proc = mpt_train(2, recipe, run)
    ckpt_dir = run / "ckpt"
    frozen = None
    deadline = time.time() + 120
    while frozen is None and proc.poll() is None and time.time() < deadline:
        if ckpt_dir.is_dir() and any(p.name.endswith(".tmp") for p in ckpt_dir.iterdir()):
            workers = sorted(w for w in descendants(proc.pid) if "mpt.cli" in cmdline(w))
            if len(workers) == 2:
                frozen = workers[-1]
                os.kill(frozen, signal.SIGSTOP)  # inside a save: the other rank waits in its collectives
    assert frozen is not None, "never caught a save in progress"
    try:
        # the steps' own limit (600 s minimum) is far away: only the save's 4 s limit can fire, on the rank
        # that waits for the frozen one. Once it has dumped its stacks the frozen rank is killed here:
        # torchrun would otherwise give a stopped process 30 s to answer its SIGTERM.
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            if "(most recent call first):" in Path(proc.log_path).read_text(errors="replace"):
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGKILL)
        code, out = finish(proc, timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):  # torchrun may have killed it already
            os.kill(frozen, signal.SIGKILL)
    assert code != 0
    assert "(most recent call first):" in out and "checkpoint.py" in out, out[-3000:]


def test_checkpoint_folder_refusals_and_failures_are_met_by_both_ranks_alike(two_ranks):
    """Jobs of the 2-rank group, one after another: a folder another process holds, a fresh run over
    checkpoints it did not write, a changed optimizer, a disk that fills up during a save. Each is the same
    one-line error on both ranks, and the next job runs (no rank is left waiting in a collective); then
    start_over moves the old checkpoints aside and trains."""
    tmp, outcomes = two_ranks
    if outcomes["disk"]["error"]:
        pytest.skip(outcomes["disk"]["error"])
    out = (tmp / "jobs" / "group.log").read_text()
    shared, held = tmp / "shared", tmp / "held"
    on_disk = [Path(p) for p in outcomes["disk"]["checkpoints"]]  # verified in the fixture, the disk mounted
    expected = {
        "held": f"checkpoint.folder {held / 'ckpt'} is in use by run 'someone' (pid {os.getpid()} on host "
                f"{socket.gethostname()}, since ",
        "fresh": f"checkpoint.folder {shared / 'ckpt'} already holds checkpoints of run 'test' (step-00000004) that "
                 "this run, which does not resume them, would replace: use another checkpoint.folder, or set "
                 "checkpoint.start_over=true",
        "lion": f"{shared / 'ckpt' / 'step-00000004'} was written with other settings (optimizer.name: checkpoint "
                "'adamw', recipe 'lion')",
        "full": "no space left on the device while saving step ",
    }
    for name, start in expected.items():
        error = outcomes[name]["error"]
        assert error is not None and error.startswith(f"CheckpointError: {start}"), (name, error)
        # every rank raised this very error, and went on to the next job
        assert out.count(f"job {name}: {{'error': {error!r}}}") == 2, (name, out[-5000:])
    assert f"the previous checkpoint {on_disk[-1].name} is intact" in outcomes["full"]["error"]
    assert outcomes["first"]["error"] is None and outcomes["start-over"]["error"] is None
    assert (shared / "ckpt" / "step-00000004.old").is_dir()
    verify(shared / "ckpt" / "step-00000004.old")
    assert json.loads((shared / "ckpt" / "step-00000008" / "config.json").read_text())["n_layers"] == 3
