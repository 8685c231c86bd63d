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
A damaged checkpoint in the way of a new save at its step is renamed ``step-N.damaged``. A run that does
not resume never replaces or prunes checkpoints it did not write: it refuses a folder holding checkpoints
of its run name, unless ``checkpoint.start_over`` moves them aside (``step-N.old``). One run at a time
holds a folder (folder_lock.py).

Remote folders use ``universal_pathlib`` (a pathlib API over fsspec) so that the same code walks both.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..data.atomic import fsync_dir
from ..files import file_sha256
from ..ranks import rank_world

SHAPE_FIELDS = ("d_model", "n_heads", "n_layers", "vocab_size", "expansion_ratio", "tie_word_embeddings",
                "learned_pos_emb", "no_bias")
_COMPLETE_NAME = re.compile(r"^step-(\d{8})$")
# what resuming reads from a manifest: a checkpoint whose manifest lacks one is damaged like any other
_MANIFEST_FIELDS = {"step": int, "tokens": int, "data": dict, "guard": dict, "run_name": str, "world_size": int,
                    "files": dict}
_OPTIONAL_FIELDS = {"optimizer": str, "lora": (dict, type(None)), "trainable_only": bool}  # older manifests lack them


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


def agreed_problem(problem: str | None) -> str | None:
    """Every rank's problem (None: it had none), gathered: the lowest failing rank's on every rank.

    For steps some ranks can fail alone (a write, rank 0's bookkeeping): all ranks then raise the same
    one-line error instead of some waiting forever in the next collective.
    """
    if not dist.is_initialized():
        return problem
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, problem)
    return next((p if r == 0 else f"rank {r}: {p}" for r, p in enumerate(gathered) if p is not None), None)


def _raise_agreed(problem: str | None) -> None:
    message = agreed_problem(problem)
    if message is not None:
        raise CheckpointError(message)


def _one_line(err: BaseException) -> str:
    """DCP's exception as its ranks' own errors, any other as ``Type: message``; on one line."""
    if isinstance(err, CheckpointException):
        return "; ".join(f"rank {r}: {_one_line(e)}" for r, (e, _) in sorted(err.failures.items()))
    return " ".join(f"{type(err).__name__}: {err}".split()) if str(err) else type(err).__name__


def _errors_in(err: BaseException):
    """``err``, what caused it, and the per-rank errors DCP wraps in its CheckpointException."""
    seen = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        if isinstance(e, CheckpointException):
            todo += [failure for failure, _ in e.failures.values()]


def _out_of_space(err: BaseException) -> bool:
    for e in _errors_in(err):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        # torch's zip writer reports a short write (the disk filled up under it) as "unexpected pos"
        if "unexpected pos" in str(e) or "No space left on device" in str(e):
            return True
    return False


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
        manifest = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def run_checkpoints(folder, run_name: str) -> list:
    """This run's checkpoints (by the run name in their manifest), oldest first."""
    return [p for p in complete_checkpoints(folder) if (_manifest(p) or {}).get("run_name", run_name) == run_name]


def set_aside(path, why: str):
    """Rename checkpoint ``path`` to ``step-N.<why>`` (``.<why>-2``... if taken): out of every listing, kept."""
    for n in range(1, 1000):
        aside = path.parent / (f"{path.name}.{why}" if n == 1 else f"{path.name}.{why}-{n}")
        if not aside.exists():
            break
    if _is_local(path):
        os.replace(path, aside)
        fsync_dir(path.parent)
        return aside
    # Object stores rename object by object (s3fs's recursive mv trips over the folder's own key): copy
    # all, then delete the manifest first, so that a move cut short never leaves a checkpoint that counts.
    fs, src = path.fs, path.path.rstrip("/")
    names = [f[len(src) + 1:] for f in fs.find(src)]
    for name in names:
        fs.copy(f"{src}/{name}", f"{aside.path.rstrip('/')}/{name}")
    for name in sorted(names, key=lambda n: n != "trainer_state.json"):
        fs.rm_file(f"{src}/{name}")
    fs.invalidate_cache(src)
    return aside


def _names(paths) -> str:
    names = [p.name for p in paths]
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]}, {len(names)} in all"


def start_fresh(folder, run_name: str, start_over: bool, log=print) -> None:
    """Before a run that does not resume saves anything (every rank calls this).

    Such a run must not replace or prune checkpoints it did not write, and it would: its steps reuse
    their names and ``keep`` prunes by run name. So checkpoints of its run name already in the folder
    (another model's, or a run it means to start over) are refused, or with ``start_over`` moved aside.
    """
    found = run_checkpoints(folder, run_name)
    problem = None
    if found and not start_over:
        problem = (f"checkpoint.folder {folder} already holds checkpoints of run {run_name!r} ({_names(found)}) that "
                   "this run, which does not resume them, would replace: use another checkpoint.folder, or set "
                   "checkpoint.start_over=true to move them aside (renamed step-N.old) and start over")
    _raise_agreed(problem)
    if found and rank_world()[0] == 0:
        for path in found:
            log(f"checkpoint.start_over: {path} kept as {set_aside(path, 'old').name}")
    _barrier()


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


def save(folder, step: int, model, optimizer, trainer_state: dict, keep: int, trainable_only: bool = False,
         lock=None, log=print) -> Path:
    """Every rank calls this; returns the final path. ``trainer_state`` must carry ``run_name``.

    ``trainable_only`` (QLoRA) saves the parameters that train and the optimizer state, not the frozen
    base: it is rebuilt from where it came from, and the manifest records that the checkpoint needs it.
    ``lock`` (folder_lock.py) must still be held. A failure on any rank raises the same CheckpointError
    on every rank, after the incomplete save is removed: the previous checkpoint is left as it was.
    """
    root = location(folder)
    final = root / f"step-{step:08d}"
    staging = root / f"step-{step:08d}.tmp" if _is_local(root) else final
    run_name = trainer_state["run_name"]
    rank = rank_world()[0]

    problem = None
    if rank == 0:
        try:
            problem = lock.problem() if lock is not None else None
            if problem is None:
                _clear_the_way(root, final, run_name, log)
        except CheckpointError as err:
            problem = str(err)
        except Exception as err:
            problem = _save_failed(err, root, step, run_name, staging)
    _raise_agreed(problem)

    complete = False
    try:
        with _quiet():
            dcp.save(_state_dicts(model, optimizer, trainable_only), **_writer(staging))  # raises on all ranks alike
        buffer = io.BytesIO()
        torch.save(rng_state(), buffer)
        (staging / f"rank{rank}.pt").write_bytes(buffer.getvalue())
    except (Exception, CheckpointException) as err:  # DCP's is a BaseException
        problem = _save_failed(err, root, step, run_name, staging)
    message = agreed_problem(problem)
    if message is None:
        if rank == 0:
            try:
                _write_manifest(root, staging, final, model, trainer_state, trainable_only)
                complete = True
                prune(root, final, run_name, keep)
            except Exception as err:
                problem = _save_failed(err, root, step, run_name, staging) if not complete else \
                    f"saved {final}, then pruning older checkpoints failed: {_one_line(err)}"
        message = agreed_problem(problem)
    if message is not None:
        if rank == 0 and not complete:
            _remove(staging)  # never a checkpoint: no manifest; it would only hold the space it ran out of
        raise CheckpointError(message)
    return final


def _clear_the_way(root, final, run_name: str, log) -> None:
    """Rank 0, before a save at ``final``'s step: what stands there is removed only if it never was a checkpoint."""
    if _is_local(root):  # object stores have no folders to make (and s3fs would make a bucket)
        root.mkdir(parents=True, exist_ok=True)
    _remove(root / f"{final.name}.tmp")  # a save a crash interrupted (the folder lock rules out a live one)
    if not final.exists():
        return
    manifest = _manifest(final)
    if manifest is None and not _is_local(root):
        _remove(final)  # an upload cut short before its manifest: never a checkpoint
        return
    owner = (manifest or {}).get("run_name", run_name)
    if owner != run_name:
        raise CheckpointError(f"{final} belongs to run {owner!r}, not {run_name!r}; point "
                              "checkpoint.folder at a folder of this run's own")
    # This run's own, past the step it resumed from: it failed to load. Kept for inspection.
    log(f"{final} could not be used; it is kept as {set_aside(final, 'damaged').name} for inspection")


def _write_manifest(root, staging, final, model, trainer_state: dict, trainable_only: bool) -> None:
    """Rank 0, after every rank's files are written: the manifest, written last, makes the checkpoint."""
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


def _save_failed(err: BaseException, root, step: int, run_name: str, staging) -> str:
    if not _out_of_space(err):
        return f"saving step {step} to {root} failed: {_one_line(err)}"
    previous = [p for p in run_checkpoints(root, run_name) if _step_of(p) < step and _intact(p)]
    kept = (f"the previous checkpoint {previous[-1].name} is intact" if previous
            else "this run has no earlier checkpoint there")
    return (f"no space left on the device while saving step {step} to {root}; {kept} and the incomplete "
            f"{staging.name} is removed. Free some space (or point checkpoint.folder at a larger disk) and start "
            "the same command to resume")


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
    """The trainer state of a checkpoint whose manifest is whole and whose files all match it; CheckpointError
    otherwise."""
    state = _json_object(path, "trainer_state.json")
    for key, kind in _MANIFEST_FIELDS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: trainer_state.json has no valid {key!r} (damaged)")
    for key, kind in _OPTIONAL_FIELDS.items():
        if key in state and not isinstance(state[key], kind):
            raise CheckpointError(f"{path}: trainer_state.json has no valid {key!r} (damaged)")
    for name, want in state["files"].items():
        p = path / name
        if not p.is_file():
            raise CheckpointError(f"{path}: file {name} is missing")
        if (not isinstance(want, dict) or p.stat().st_size != want.get("bytes")
                or file_sha256(p) != want.get("sha256")):
            raise CheckpointError(f"{path}: file {name} does not match its checksum (damaged)")
    return state


def _json_object(path, name: str) -> dict:
    """``path/name`` as a JSON object; unreadable or not an object is a CheckpointError (damage)."""
    try:
        value = json.loads((path / name).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: {name} unreadable ({err})") from err
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {name} is not an object (damaged)")
    return value


def _saved_config(path) -> dict:
    return _json_object(path, "config.json")


def check_same_shape(path, config, saved: dict | None = None) -> None:
    saved = _saved_config(path) if saved is None else saved
    diff = [f"{k}: checkpoint {saved.get(k)!r}, recipe {getattr(config, k)!r}" for k in SHAPE_FIELDS
            if saved.get(k) != getattr(config, k)]
    if diff:
        raise CheckpointError(f"{path} was written for a different model ({'; '.join(diff)}); use another "
                              "checkpoint.folder for this model, or set checkpoint.start_over=true to move this "
                              "folder's checkpoints of the run aside (renamed step-N.old) and start over")


def _lora_text(lora: dict | None) -> str:
    return "none" if lora is None else f"r={lora.get('r')} on {lora.get('target_modules')}" + (
        " over a 4-bit base" if lora.get("quantize_base") else "")


def check_same_setup(path, state: dict, setup: dict) -> None:
    """The settings that decide what a checkpoint holds besides the model's shape: the optimizer's state
    and the LoRA adapters. ``setup`` is ``{"optimizer": name, "lora": LoraSection as a dict or None}``,
    as the manifest records them; a manifest from before they were recorded is not checked here."""
    diff = []
    if "optimizer" in state and state["optimizer"] != setup["optimizer"]:
        diff.append(f"optimizer.name: checkpoint {state['optimizer']!r}, recipe {setup['optimizer']!r}")
    if "lora" in state:
        saved, lora = state["lora"], setup["lora"]
        keys = ("r", "target_modules", "quantize_base")
        if (saved is None) != (lora is None) or (saved and lora and any(saved.get(k) != lora.get(k) for k in keys)):
            diff.append(f"model.lora: checkpoint {_lora_text(saved)}, recipe {_lora_text(lora)}")
    if diff:
        raise CheckpointError(f"{path} was written with other settings ({'; '.join(diff)}); resume with the "
                              "checkpoint's settings, or use another checkpoint.folder for the new ones")


def load(path, model, optimizer) -> tuple[dict, dict | None]:
    """Load model + optimizer in place (every rank calls this); return (trainer_state, this rank's RNG or None).

    Raises CheckpointError on every rank alike when the DCP data cannot be read (DCP gathers the failure),
    on this rank alone when its RNG file cannot.
    """
    state = verify(path)
    trainable_only = state.get("trainable_only", False)
    sd = _state_dicts(model, optimizer, trainable_only)
    try:
        with _quiet():
            dcp.load(sd, **_reader(path))
    except CheckpointException as err:  # a BaseException: nothing above would catch it
        raise CheckpointError(f"{path}: cannot be read ({_one_line(err)})") from None
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"],
                   options=StateDictOptions(strict=not trainable_only))
    rank_file = path / f"rank{rank_world()[0]}.pt"
    try:
        rng = _read_rng(rank_file) if rank_file.is_file() else None
    except Exception as err:  # empty, truncated, or a pickle weights_only refuses
        raise CheckpointError(f"{rank_file}: unreadable RNG state ({_one_line(err)})") from err
    return state, rng


def load_latest(folder, model, optimizer, run_name: str, log=print, setup: dict | None = None,
                restore=None) -> tuple[Path, dict, dict | None] | None:
    """The newest of this run's checkpoints that verifies and loads on every rank; others are reported.

    Each candidate is verified on every rank and the ranks agree before any of them loads it, and
    agree again on whether the load worked, so all ranks fall back to the same older checkpoint.
    A checkpoint of another model shape or ``setup`` (see :func:`check_same_setup`) is an error, not
    damage. ``restore(state, rng)`` applies the rest of the trainer state (data position, guard, RNG);
    when it fails, the checkpoint is damaged too.
    """
    config = getattr(model, "module", model).config
    candidates = run_checkpoints(folder, run_name)
    others = len(complete_checkpoints(folder)) - len(candidates)
    if others:
        log(f"{folder}: ignoring {others} checkpoint(s) of other runs (run_name is {run_name!r})")
    for path in reversed(candidates):
        problem = None
        try:
            state = verify(path)
            saved_config = _saved_config(path)
        except CheckpointError as err:
            problem = err
        if not all_ranks_agree(problem is None):
            log(f"checkpoint {path} cannot be used: {problem or 'damaged as seen by another rank'}; "
                "trying an older one")
            continue
        # the same verified files on every rank: all raise alike
        check_same_shape(path, config, saved_config)
        if setup is not None:
            check_same_setup(path, state, setup)
        try:
            state, rng = load(path, model, optimizer)
            if restore is not None:
                restore(state, rng)
        except Exception as err:  # anything a verified yet crafted or damaged file can raise while it is applied
            problem = err if isinstance(err, CheckpointError) else f"{_one_line(err)} while applying it"
        if not all_ranks_agree(problem is None):
            log(f"checkpoint {path} cannot be used: {problem or 'failed to load on another rank'}; "
                "trying an older one")
            continue
        return path, state, rng
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {folder}: all {len(candidates)} of run {run_name!r} are "
                              "damaged (kept for inspection); use another checkpoint.folder, or set "
                              "checkpoint.start_over=true to move them aside (renamed step-N.old) and start over")
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
    try:
        with _quiet():
            dcp.load(sd, **_reader(path), no_dist=True)
    except CheckpointException as err:  # a BaseException: `mpt export` would show its traceback
        raise CheckpointError(f"{path}: cannot be read ({_one_line(err)})") from None
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
