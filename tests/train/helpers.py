"""Synthetic token shards with a learnable pattern, small recipes, process lookups, and a small disk for
training tests."""

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np

from mpt.data.shards import ShardWriter

VOCAB = 64
SEQ = 32


def make_shards(folder: Path, samples: int = 64, seq_len: int = SEQ, vocab: int = VOCAB, seed: int = 0,
                random_tokens: bool = False, tokenizer: str = "synthetic") -> Path:
    """Each sample counts upward from a random start with a random stride (mod vocab): easy to learn."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(folder, vocab_size=vocab, eos_id=0, mode="concat", seq_len=seq_len, tokenizer=tokenizer,
                         shard_bytes=2048)
    for _ in range(samples):
        if random_tokens:
            sample = rng.integers(0, vocab, seq_len)
        else:
            start, stride = rng.integers(0, vocab), rng.integers(1, 4)
            sample = (start + stride * np.arange(seq_len)) % vocab
        writer.add(sample.astype(np.int64))
    writer.close()
    return folder


def save_tiny_base(folder: Path, seed: int = 3) -> Path:
    """A 'pretrained' model to finetune: a tiny MPT in the shards' vocabulary, saved in transformers' format."""
    import torch

    from mpt import MPTForCausalLM
    from mpt.model.hf import save_pretrained
    from tests.model.helpers import model_config as tiny_config

    torch.manual_seed(seed)
    save_pretrained(MPTForCausalLM(tiny_config(vocab_size=VOCAB, max_seq_len=SEQ)), folder)
    return folder


def assert_resume_gives_the_same_adapters(tmp: Path, run) -> None:
    """A LoRA run resumed (4 steps, then the same command to 8, in ``tmp/resumed``) ends with the adapters of
    the straight 8-step run already in ``tmp/straight``, bit for bit, and they trained.

    ``run(folder, steps, messages)`` runs the recipe; both adapters are exported to ``tmp/a-straight`` and
    ``tmp/a-resumed``.
    """
    import torch
    from safetensors.torch import load_file

    from mpt.train.export import export_hf

    run(tmp / "resumed", 4, None)
    messages = []
    run(tmp / "resumed", 8, messages)
    assert any("resumed from" in m and "step-00000004" in m for m in messages), messages
    for name in ("straight", "resumed"):
        export_hf(tmp / name / "ckpt", tmp / f"a-{name}", adapter_only=True)
    ours, again = (load_file(tmp / f / "adapter_model.safetensors") for f in ("a-straight", "a-resumed"))
    assert ours.keys() == again.keys() and len(ours) == 2 * 4 * 2  # A and B, 4 targets, 2 layers
    for name in ours:
        assert torch.equal(ours[name], again[name]), name
    assert any(t.abs().sum() > 0 for n, t in ours.items() if "lora_B" in n)  # B starts at zero: it trained


def recipe_dict(tmp: Path, data: Path, **sections) -> dict:
    base = {
        "run_name": "test",
        "model": {"preset": "mpt-tiny", "fields": {"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": VOCAB,
                                                   "max_seq_len": SEQ}},
        "data": {"kind": "pretrain", "sources": [{"path": str(data)}]},
        "optimizer": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 1e-4},
        "scheduler": {"name": "cosine", "warmup_batches": 2, "alpha_f": 0.1},
        "train": {"max_duration": "12ba", "global_batch_size": 8, "micro_batch_size": 4, "deterministic": True},
        "checkpoint": {"folder": str(tmp / "ckpt"), "every_batches": 4, "keep": 2},
        "log": {"folder": str(tmp / "log"), "every_batches": 1},
        "watchdog": {"enabled": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun agents start their ranks as children)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return [d for k in kids for d in [k, *descendants(k)]]


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:  # the process ended meanwhile
        return ""


@contextlib.contextmanager
def small_disk(where: Path, size: str = "1200k"):
    """A real filesystem of ``size`` (tmpfs) mounted at ``where``, to fill up; skips the test where mounting is
    not allowed (it needs root). 1200k holds two of the tiny test model's checkpoints, not three."""
    import pytest

    where.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {mount.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
