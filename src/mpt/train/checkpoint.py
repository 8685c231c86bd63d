"""Sharded, atomic, verified training checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout of ``checkpoint.folder`` (a local folder or an fsspec URL such as ``s3://bucket/run``)::

    step-00000120/           a complete checkpoint: it has trainer_state.json, written last
      .metadata, *.distcp    DCP: model + optimizer, sharded by rank, reshardable on load
      rank0.pt, rank1.pt     per-rank RNG states (tensors and plain lists; loaded with weights_only)
      config.json            the model config (so `mpt export` needs nothing else)
      trainer_state.json     the manifest: step, tokens, data position, guard state, run name, the
                             tokenizer, and a size + SHA-256 of every other file
    step-00000130.tmp/       (local folders) a save in progress, or one a crash interrupted

A local save writes into ``*.tmp`` and is renamed after every rank finished and the manifest is
written. Object stores have no atomic rename of a folder, so there a save writes into its final
name and the manifest is the last object uploaded: an upload cut short leaves a folder without a
manifest, which is never read as a checkpoint. On load the manifest is checked; a damaged checkpoint
is reported and the next older one is used — and all ranks agree on which one before any loads it.

Pruning (``keep``) only ever deletes intact checkpoints of this run that are older than the one just
written; the newest good checkpoint, damaged ones (kept for inspection) and other runs' are never touched.

Remote folders use ``universal_pathlib`` (a pathlib API over fsspec) so that the same code walks both.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..data.atomic import fsync_dir
from ..files import file_sha256
from ..ranks import rank_world

SHAPE_FIELDS = ("d_model", "n_heads", "n_layers", "vocab_size", "expansion_ratio", "tie_word_embeddings",
                "learned_pos_emb", "no_bias")
_COMPLETE_NAME = re.compile(r"^step-(\d{8})$")


class CheckpointError(ValueError):
    pass


def location(folder):
    """A pathlib.Path for local folders (and file:// URLs), a UPath for any other fsspec URL."""
    text = str(folder)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if "://" in text:
        from upath import UPath

        return UPath(text)
    return Path(text)


def _is_local(path) -> bool:
    return isinstance(path, Path)


def _remove(path) -> None:
    if _is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


def check_folder(folder) -> None:
    """Before any step: an object-store folder's bucket must exist and be reachable with these credentials.

    (s3fs would otherwise create a mistyped bucket on the first save, or fail only then.)
    """
    root = location(folder)
    if _is_local(root):
        return
    bucket = root.path.strip("/").split("/", 1)[0]
    try:
        root.fs.info(bucket)  # unlike exists(), tells a refused request from a missing bucket
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint.folder {folder}: bucket {bucket!r} does not exist; create it first, "
                              "or fix checkpoint.folder") from err
    except (PermissionError, OSError) as err:
        raise CheckpointError(f"checkpoint.folder {folder}: cannot reach bucket {bucket!r} ({err}); check the "
                              "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE), the endpoint "
                              "(AWS_ENDPOINT_URL_S3) and that they may use this bucket") from err


@contextlib.contextmanager
def _quiet():
    """DCP warns on every single-process save/load; one process is a supported, intended use here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_ranks_agree(ok: bool) -> bool:
    """True only if ``ok`` on every rank: a decision that changes control flow is taken by all or none."""
    if not dist.is_initialized():
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) == 0


def _step_of(path) -> int:
    return int(_COMPLETE_NAME.match(path.name).group(1))


def complete_checkpoints(folder) -> list:
    """Checkpoints whose manifest was written (damaged or not), oldest first."""
    folder = location(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _COMPLETE_NAME.match(p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=_step_of)


def _manifest(path) -> dict | None:
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None


def run_checkpoints(folder, run_name: str) -> list:
    """This run's checkpoints (by the run name in their manifest), oldest first."""
    return [p for p in complete_checkpoints(folder) if (_manifest(p) or {}).get("run_name", run_name) == run_name]


# ---- RNG state as tensors and plain values, so that loading it can never run code ----------------

def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_rng(path) -> dict:
    with path.open("rb") as f:
        return torch.load(io.BytesIO(f.read()), weights_only=True)


# ---- DCP storage for local folders and URLs ------------------------------------------------------

def _writer(path) -> dict:
    if _is_local(path):
        return {"checkpoint_id": str(path)}
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    return {"storage_writer": FsspecWriter(str(path))}


def _reader(path) -> dict:
    if _is_local(path):
        return {"checkpoint_id": str(path)}
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return {"storage_reader": FsspecReader(str(path))}


# ---- save ------------------------------------------------------------------------------------------

def _trainable_keys(model) -> set[str]:
    """The state-dict names of the parameters that train, as DCP names them (without the wrappers' prefixes)."""
    inner = getattr(model, "module", model)  # DDP
    return {name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
            for name, p in inner.named_parameters() if p.requires_grad}


def _state_dicts(model, optimizer, trainable_only: bool) -> dict:
    """``{"model", "optim"}`` as DCP saves and loads them; ``trainable_only`` leaves the frozen weights out."""
    if not trainable_only:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": model_sd, "optim": optim_sd}
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    keys = _trainable_keys(model)
    # ignore_frozen_params drops frozen parameters but not the extra entries a layer adds to its state
    # dict (bitsandbytes' quantization state), which belong to the base too
    kept = {k: v for k, v in model_sd.items() if k in keys}
    if kept.keys() != keys:
        raise CheckpointError(f"trainable parameters missing from the state dict: {sorted(keys - kept.keys())[:5]}")
    return {"model": kept, "optim": optim_sd}


def save(folder, step: int, model, optimizer, trainer_state: dict, keep: int, trainable_only: bool = False) -> Path:
    """Every rank calls this; returns the final path. ``trainer_state`` must carry ``run_name``.

    ``trainable_only`` (QLoRA) saves the parameters that train and the optimizer state, not the frozen
    base: it is rebuilt from where it came from, and the manifest records that the checkpoint needs it.
    """
    root = location(folder)
    final = root / f"step-{step:08d}"
    staging = root / f"step-{step:08d}.tmp" if _is_local(root) else final
    run_name = trainer_state["run_name"]
    if rank_world()[0] == 0:
        if _is_local(root):  # object stores have no folders to make (and s3fs would make a bucket)
            root.mkdir(parents=True, exist_ok=True)
        _remove(root / f"step-{step:08d}.tmp")
        if final.exists():
            owner = (_manifest(final) or {}).get("run_name", run_name)
            if owner != run_name:
                raise CheckpointError(f"{final} belongs to run {owner!r}, not {run_name!r}; point "
                                      "checkpoint.folder at a folder of this run's own")
            # This run's own, at a step past the one it resumed from: it failed to load (damaged) or
            # belongs to a trajectory that was rolled back. Either way it is not the newest good one.
            _remove(final)
    _barrier()
    with _quiet():
        dcp.save(_state_dicts(model, optimizer, trainable_only), **_writer(staging))
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    (staging / f"rank{rank_world()[0]}.pt").write_bytes(buffer.getvalue())
    _barrier()
    if rank_world()[0] == 0:
        (staging / "config.json").write_text(getattr(model, "module", model).config.to_json_string())
        files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                 for p in sorted(staging.iterdir(), key=lambda p: p.name) if p.is_file()}
        manifest = json.dumps(dict(trainer_state, trainable_only=trainable_only, files=files), indent=1)
        if _is_local(root):
            with open(staging / "trainer_state.json", "w") as f:
                f.write(manifest)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(staging)
            os.replace(staging, final)
            fsync_dir(root)
        else:
            (final / "trainer_state.json").write_text(manifest)  # last object: the checkpoint now counts
        prune(root, final, run_name, keep)
    _barrier()
    return final


def _intact(path) -> bool:
    """Cheap check for pruning: every file of the manifest present with its size (no hashing)."""
    manifest = _manifest(path)
    if manifest is None:
        return False
    for name, want in manifest.get("files", {}).items():
        p = path / name
        if not p.is_file() or p.stat().st_size != want["bytes"]:
            return False
    return True


def prune(folder, newest, run_name: str, keep: int) -> list:
    """Delete this run's intact checkpoints older than ``newest`` beyond the ``keep - 1`` most recent."""
    older = [p for p in run_checkpoints(folder, run_name) if _step_of(p) < _step_of(newest) and _intact(p)]
    doomed = older[:max(0, len(older) - (keep - 1))]
    for old in doomed:
        _remove(old)
    return doomed


# ---- load ------------------------------------------------------------------------------------------

def verify(path) -> dict:
    """The trainer state of a checkpoint whose files all match the manifest; CheckpointError otherwise."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: trainer_state.json unreadable ({err})") from err
    for name, want in state.get("files", {}).items():
        p = path / name
        if not p.is_file():
            raise CheckpointError(f"{path}: file {name} is missing")
        if p.stat().st_size != want["bytes"] or file_sha256(p) != want["sha256"]:
            raise CheckpointError(f"{path}: file {name} does not match its checksum (damaged)")
    return state


def check_same_shape(path, config) -> None:
    saved = json.loads((path / "config.json").read_text())
    diff = [f"{k}: checkpoint {saved.get(k)!r}, recipe {getattr(config, k)!r}" for k in SHAPE_FIELDS
            if saved.get(k) != getattr(config, k)]
    if diff:
        raise CheckpointError(f"{path} was written for a different model ({'; '.join(diff)}). Point "
                              "checkpoint.folder somewhere else, or set checkpoint.autoresume=false")


def load(path, model, optimizer) -> tuple[dict, dict | None]:
    """Load model + optimizer in place (every rank calls this); return (trainer_state, this rank's RNG or None).

    Raises on every rank alike when the DCP data cannot be read (DCP gathers the failure).
    """
    state = verify(path)
    trainable_only = state.get("trainable_only", False)
    sd = _state_dicts(model, optimizer, trainable_only)
    with _quiet():
        dcp.load(sd, **_reader(path))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"],
                   options=StateDictOptions(strict=not trainable_only))
    rank_file = path / f"rank{rank_world()[0]}.pt"
    rng = _read_rng(rank_file) if rank_file.is_file() else None
    return state, rng


def load_latest(folder, model, optimizer, run_name: str, log=print) -> tuple[Path, dict, dict | None] | None:
    """The newest of this run's checkpoints that verifies and loads on every rank; others are reported.

    Each candidate is verified on every rank and the ranks agree before any of them loads it, and
    agree again on whether the load worked, so all ranks fall back to the same older checkpoint.
    """
    config = getattr(model, "module", model).config
    candidates = run_checkpoints(folder, run_name)
    others = len(complete_checkpoints(folder)) - len(candidates)
    if others:
        log(f"{folder}: ignoring {others} checkpoint(s) of other runs (run_name is {run_name!r})")
    for path in reversed(candidates):
        problem = None
        try:
            verify(path)
        except CheckpointError as err:
            problem = err
        if not all_ranks_agree(problem is None):
            log(f"checkpoint {path} cannot be used: {problem or 'damaged as seen by another rank'}; "
                "trying an older one")
            continue
        check_same_shape(path, config)  # the same verified file on every rank: all raise alike
        try:
            state, rng = load(path, model, optimizer)
        except (CheckpointError, RuntimeError, ValueError, OSError, KeyError, pickle.UnpicklingError) as err:
            problem = err
        if not all_ranks_agree(problem is None):
            log(f"checkpoint {path} cannot be used: {problem or 'failed to load on another rank'}; "
                "trying an older one")
            continue
        return path, state, rng
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {folder}: all {len(candidates)} are damaged. "
                              "Remove the folder (or set checkpoint.autoresume=false) to start over")
    return None


def export_hf(checkpoint, out_dir, tokenizer_from=None, adapter_only: bool = False) -> Path:
    """A training checkpoint -> a Hugging Face-format folder.

    One process, no process group (``no_dist``): rank 0 calls this alone at the end of training while
    the other ranks wait, so it must not take part in any collective. The tokenizer recorded with
    the run (``trainer_state.json``) is copied unless ``tokenizer_from`` names another. A LoRA run's
    checkpoint exports merged (a plain MPT folder) or, with ``adapter_only``, as a PEFT adapter. A QLoRA
    run's checkpoint holds only the adapters: the merge re-reads its ``init_from`` and dequantizes it.
    """
    from ..model import MPTConfig, MPTForCausalLM
    from ..model.hf import save_pretrained

    checkpoint = location(checkpoint)
    if (checkpoint / "trainer_state.json").is_file():
        path = checkpoint
    else:
        found = complete_checkpoints(checkpoint)
        if not found:
            raise FileNotFoundError(f"{checkpoint} is neither a checkpoint (step-N folder) nor a folder of them")
        path = found[-1]
    state = verify(path)
    config = MPTConfig.from_dict(json.loads((path / "config.json").read_text()))
    with torch.device("meta"):
        model = MPTForCausalLM(config)
    model = model.to_empty(device="cpu")
    lora = state.get("lora")
    if lora is not None and lora.get("quantize_base") and not adapter_only:
        _load_dequantized_base(model, path, state)
    if lora is not None:  # the same wrapping as in training, so the saved names match
        from .lora import apply_lora
        from .recipe import LoraSection

        # plain LoRA layers over a QLoRA run's dequantized base: peft's 4-bit merge would round the
        # merged weights to NF4 again, the plain merge adds the adapters in fp32
        model = apply_lora(model, LoraSection(**dict(lora, quantize_base=False)), log=lambda *_: None)
    elif adapter_only:
        raise CheckpointError(f"{path} holds no LoRA adapter (its run had no model.lora); export the whole model")
    trainable_only = state.get("trainable_only", False)
    keep = _trainable_keys(model) if trainable_only else None
    sd = {"model": {k: v for k, v in model.state_dict().items() if keep is None or k in keep}}
    with _quiet():
        dcp.load(sd, **_reader(path), no_dist=True)
    model.load_state_dict(sd["model"], strict=not trainable_only)
    if adapter_only:
        model.save_pretrained(str(out_dir))  # PEFT's format: adapter_config.json + adapter_model.safetensors
        return path
    if lora is not None:
        model = model.merge_and_unload()
    if tokenizer_from is None:
        tokenizer_from = local_tokenizer_folder(state.get("tokenizer"))
    save_pretrained(model.eval(), out_dir, tokenizer_from=tokenizer_from)
    return path


def _load_dequantized_base(model, path, state: dict) -> None:
    """A QLoRA run's base as it trained: ``init_from``'s weights through NF4 and back, in ``model``."""
    from ..model.hf import load_pretrained
    from .qlora import dequantize_base, quantize_base

    init_from = state.get("init_from")
    try:
        base = load_pretrained(init_from, dtype=torch.float32)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} holds only the adapters of a QLoRA run; its base, model.init_from = "
                              f"{init_from!r}, cannot be read ({err}). Restore it, or export the adapter alone "
                              "(--adapter)") from err
    model.load_state_dict(base.state_dict())
    # NF4 rounding is made where training made it: a CPU's and a GPU's kernels could round a
    # value on a code boundary differently
    on = state.get("base_quantized_on", "cpu")
    if on == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"{path}: the base was quantized on a GPU and is re-quantized on the CPU for the merge; "
                      "a weight on an NF4 code boundary may round to the other code", stacklevel=2)
        on = "cpu"
    quantize_base(model, torch.float32, torch.device(on))
    dequantize_base(model)


def local_tokenizer_folder(tokenizer: str | None) -> str | None:
    """The local folder holding the tokenizer's files, or None (a hub name, a synthetic label)."""
    if tokenizer is None:
        return None
    path = Path(tokenizer)
    if path.is_file():
        return str(path.parent)
    return str(path) if path.is_dir() else None
