"""Sharded, atomic, verified training checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout of ``checkpoint.folder``::

    step-00000120/           a complete checkpoint (only complete ones have this name)
      .metadata, *.distcp    DCP: model + optimizer, sharded by rank, reshardable on load
      rank0.pt, rank1.pt     per-rank RNG states
      config.json            the model config (so `mpt export` needs nothing else)
      trainer_state.json     step, tokens, data position, guard state, and a size + SHA-256 of every file
    step-00000130.tmp/       a save in progress, or one a crash interrupted: never read, removed later

A save writes into ``*.tmp`` and is renamed only after every rank finished and the manifest is
written, so a process killed mid-save leaves the previous checkpoint complete and in use. On load
the manifest is checked; a damaged checkpoint is reported and the next older one is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

SHAPE_FIELDS = ("d_model", "n_heads", "n_layers", "vocab_size", "expansion_ratio", "tie_word_embeddings",
                "learned_pos_emb", "no_bias")


class CheckpointError(ValueError):
    pass


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


@contextlib.contextmanager
def _quiet():
    """DCP warns on every single-process save/load; one process is a supported, intended use here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")
             and not p.name.endswith(".tmp") and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: str | Path, step: int, model, optimizer, trainer_state: dict, keep: int) -> Path:
    """Every rank calls this; returns the final path."""
    folder = Path(folder)
    final = folder / f"step-{step:08d}"
    tmp = folder / f"step-{step:08d}.tmp"
    if _rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # a rolled-back run may save the same step again
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        getattr(model, "module", model).config.to_json_file(tmp / "config.json")
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        state = dict(trainer_state, files=files)
        with open(tmp / "trainer_state.json", "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(folder)
        for old in complete_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def verify(path: Path) -> dict:
    """The trainer state of a checkpoint whose files all match the manifest; CheckpointError otherwise."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: trainer_state.json unreadable ({err})") from err
    for name, want in state.get("files", {}).items():
        p = path / name
        if not p.is_file():
            raise CheckpointError(f"{path}: file {name} is missing")
        if p.stat().st_size != want["bytes"] or _sha256(p) != want["sha256"]:
            raise CheckpointError(f"{path}: file {name} does not match its checksum (damaged)")
    return state


def check_same_shape(path: Path, config) -> None:
    saved = json.loads((path / "config.json").read_text())
    diff = [f"{k}: checkpoint {saved.get(k)!r}, recipe {getattr(config, k)!r}" for k in SHAPE_FIELDS
            if saved.get(k) != getattr(config, k)]
    if diff:
        raise CheckpointError(f"{path} was written for a different model ({'; '.join(diff)}). Point "
                              "checkpoint.folder somewhere else, or set checkpoint.autoresume=false")


def load(path: Path, model, optimizer) -> tuple[dict, dict | None]:
    """Load model + optimizer in place; return (trainer_state, this rank's RNG state or None)."""
    state = verify(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    sd = {"model": model_sd, "optim": optim_sd}
    with _quiet():
        dcp.load(sd, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    rank_file = path / f"rank{_rank()}.pt"
    rng = torch.load(rank_file, weights_only=False) if rank_file.is_file() else None
    return state, rng


def load_latest(folder: str | Path, model, optimizer, log=print) -> tuple[Path, dict, dict | None] | None:
    """The newest checkpoint that verifies and loads; damaged ones are reported and skipped."""
    candidates = complete_checkpoints(folder)
    for path in reversed(candidates):
        check_same_shape(path, getattr(model, "module", model).config)
        try:
            state, rng = load(path, model, optimizer)
            return path, state, rng
        except (CheckpointError, RuntimeError, ValueError, OSError) as err:
            log(f"checkpoint {path} cannot be used: {err}; trying an older one")
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {folder}: all {len(candidates)} are damaged. "
                              "Remove the folder (or set checkpoint.autoresume=false) to start over")
    return None


def export_hf(checkpoint: str | Path, out_dir: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """A training checkpoint -> a Hugging Face-format folder (single process, any number of saving ranks)."""
    from ..model import MPTConfig, MPTForCausalLM
    from ..model.hf import save_pretrained

    checkpoint = Path(checkpoint)
    if (checkpoint / "trainer_state.json").is_file():
        path = checkpoint
    else:
        found = complete_checkpoints(checkpoint)
        if not found:
            raise FileNotFoundError(f"{checkpoint} is neither a checkpoint (step-N folder) nor a folder of them")
        path = found[-1]
    verify(path)
    config = MPTConfig.from_json_file(path / "config.json")
    with torch.device("meta"):
        model = MPTForCausalLM(config)
    model = model.to_empty(device="cpu")
    sd = {"model": model.state_dict()}
    with _quiet():
        dcp.load(sd, checkpoint_id=str(path))
    model.load_state_dict(sd["model"])
    save_pretrained(model.eval(), out_dir, tokenizer_from=tokenizer_from)
    return path
