"""Sharded, atomic, verified training checkpoints with ``torch.distributed.checkpoint`` (DCP): save, verify, load, prune.

``checkpoint.folder`` (local, or an fsspec URL such as ``s3://bucket/run``) holds ``step-NNNNNNNN/`` folders of
DCP shards (model + optimizer, reshardable), per-rank RNG files, ``config.json`` and ``trainer_state.json``: the
manifest (step, tokens, data position, guard, run name, tokenizer, size + SHA-256 of every other file), written
last. A local save is built in ``step-N.tmp`` and renamed; on object storage the manifest is the last object, so
a cut upload never counts. On load a damaged checkpoint is reported and all ranks agree on an older one. Pruning
deletes only this run's intact checkpoints older than the newest; damaged ones are renamed ``step-N.damaged``, and
a run that does not resume refuses (or with ``start_over`` sets aside as ``step-N.old``) its name's checkpoints.
Hugging Face export is export.py; RNG state rng.py; paths and atomic writes ``mpt.storage``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import warnings
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..files import file_sha256
from ..ranks import agreed_problem, any_rank, rank_world
from ..storage import (
    CREDENTIALS,
    bucket_of,
    is_local_path,
    location,
    remove_tree,
    rename_durably,
    write_atomic,
)
from .parallel import unwrap
from .rng import read_rng, rng_bytes

SHAPE_FIELDS = ("d_model", "n_heads", "n_layers", "vocab_size", "expansion_ratio", "tie_word_embeddings",
                "learned_pos_emb", "no_bias")
_COMPLETE_NAME = re.compile(r"^step-(\d{8})$")
# what resuming reads from a manifest: a checkpoint whose manifest lacks one is damaged like any other
_MANIFEST_FIELDS = {"step": int, "tokens": int, "data": dict, "guard": dict, "run_name": str, "world_size": int,
                    "files": dict}
_OPTIONAL_FIELDS = {"optimizer": str, "lora": (dict, type(None)), "trainable_only": bool}  # older manifests lack them


class CheckpointError(ValueError):
    pass


def check_folder(folder) -> None:
    """Before any step: an object-store folder's bucket must exist and be reachable with these credentials.

    (s3fs would otherwise create a mistyped bucket on the first save, or fail only then.)
    """
    root = location(folder)
    if is_local_path(root):
        return
    bucket = bucket_of(str(folder))
    try:
        root.fs.info(bucket)  # unlike exists(), tells a refused request from a missing bucket
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint.folder {folder}: bucket {bucket!r} does not exist; create it first, "
                              "or fix checkpoint.folder") from err
    except (PermissionError, OSError) as err:
        raise CheckpointError(f"checkpoint.folder {folder}: cannot reach bucket {bucket!r} ({err}); check "
                              f"{CREDENTIALS} and that they may use this bucket") from err


@contextlib.contextmanager
def _quiet():
    """DCP warns on every single-process save/load; one process is a supported, intended use here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


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
    if is_local_path(path):
        rename_durably(path, aside)
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


# ---- DCP storage for local folders and URLs ------------------------------------------------------

def _writer(path) -> dict:
    if is_local_path(path):
        return {"checkpoint_id": str(path)}
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    return {"storage_writer": FsspecWriter(str(path))}


def _reader(path) -> dict:
    if is_local_path(path):
        return {"checkpoint_id": str(path)}
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return {"storage_reader": FsspecReader(str(path))}


# ---- save ------------------------------------------------------------------------------------------

def _trainable_keys(model) -> set[str]:
    """The state-dict names of the parameters that train, as DCP names them (without the wrappers' prefixes)."""
    return {name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
            for name, p in unwrap(model).named_parameters() if p.requires_grad}


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
    staging = root / f"step-{step:08d}.tmp" if is_local_path(root) else final
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

    complete, ours = False, True
    try:
        with _quiet():
            dcp.save(_state_dicts(model, optimizer, trainable_only), **_writer(staging))  # raises on all ranks alike
        (staging / f"rank{rank}.pt").write_bytes(rng_bytes())
    except (Exception, CheckpointException) as err:  # DCP's is a BaseException
        problem, ours = _failed(err, root, step, run_name, staging, lock)
    message = agreed_problem(problem)
    if message is None:
        if rank == 0:
            try:
                # A run stopped mid-save past its lease (object storage) must neither make this step a
                # checkpoint nor prune: the run that took the folder over may be writing this step now.
                # Known gap: the objects DCP wrote after such a stall land in the step folder itself (S3
                # has no rename to stage them), so they can overwrite the new holder's save of this step.
                problem = lock.problem() if lock is not None else None
                ours = problem is None
                if ours:
                    _write_manifest(root, staging, final, model, trainer_state, trainable_only)
                    complete = True
                    problem = lock.problem() if lock is not None else None
                if problem is None:
                    prune(root, final, run_name, keep)
            except Exception as err:
                problem, ours = _failed(err, root, step, run_name, staging, lock) if not complete else \
                    (f"saved {final}, then pruning older checkpoints failed: {_one_line(err)}", True)
        message = agreed_problem(problem)
    if message is not None:
        if rank == 0 and not complete and ours:
            remove_tree(staging)  # never a checkpoint: no manifest; it would only hold the space it ran out of
        raise CheckpointError(message)
    return final


def _clear_the_way(root, final, run_name: str, log) -> None:
    """Rank 0, before a save at ``final``'s step: what stands there is removed only if it never was a checkpoint."""
    if is_local_path(root):  # object stores have no folders to make (and s3fs would make a bucket)
        root.mkdir(parents=True, exist_ok=True)
    remove_tree(root / f"{final.name}.tmp")  # a save a crash interrupted (the folder lock rules out a live one)
    if not final.exists():
        return
    manifest = _manifest(final)
    if manifest is None and not is_local_path(root):
        remove_tree(final)  # an upload cut short before its manifest: never a checkpoint
        return
    owner = (manifest or {}).get("run_name", run_name)
    if owner != run_name:
        raise CheckpointError(f"{final} belongs to run {owner!r}, not {run_name!r}; point "
                              "checkpoint.folder at a folder of this run's own")
    # This run's own, past the step it resumed from: it failed to load. Kept for inspection.
    log(f"{final} could not be used; it is kept as {set_aside(final, 'damaged').name} for inspection")


def _write_manifest(root, staging, final, model, trainer_state: dict, trainable_only: bool) -> None:
    """Rank 0, after every rank's files are written: the manifest, written last, makes the checkpoint."""
    (staging / "config.json").write_text(unwrap(model).config.to_json_string())
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(staging.iterdir(), key=lambda p: p.name) if p.is_file()}
    manifest = json.dumps(dict(trainer_state, trainable_only=trainable_only, files=files), indent=1)
    if is_local_path(root):
        write_atomic(staging / "trainer_state.json", manifest)
        rename_durably(staging, final)
    else:
        (final / "trainer_state.json").write_text(manifest)  # last object: the checkpoint now counts


def _failed(err: BaseException, root, step: int, run_name: str, staging, lock) -> tuple[str, bool]:
    """A failed save's message, and whether its files are this run's to remove: not when the lease was lost
    meanwhile (a run stalled mid-save), as the run that took it over may be writing this same step now."""
    lost = lock.problem() if lock is not None else None
    if lost is not None:
        return lost, False
    return _save_failed(err, root, step, run_name, staging), True


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
    """Cheap check for pruning: every file of the manifest present with its size (no hashing).

    A file that goes while this looks (another process pruning, e.g. the run that took over an object-storage
    folder from this one while it was stopped) makes the checkpoint not intact, never an error.
    """
    manifest = _manifest(path)
    if manifest is None:
        return False
    for name, want in manifest.get("files", {}).items():
        p = path / name
        try:
            if not p.is_file() or p.stat().st_size != want["bytes"]:
                return False
        except FileNotFoundError:
            return False
    return True


def prune(folder, newest, run_name: str, keep: int) -> list:
    """Delete this run's intact checkpoints older than ``newest`` beyond the ``keep - 1`` most recent."""
    older = [p for p in run_checkpoints(folder, run_name) if _step_of(p) < _step_of(newest) and _intact(p)]
    doomed = older[:max(0, len(older) - (keep - 1))]
    for old in doomed:
        remove_tree(old)
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
        rng = read_rng(rank_file) if rank_file.is_file() else None
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
    config = unwrap(model).config
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
        if any_rank(problem is not None):
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
        if any_rank(problem is not None):
            log(f"checkpoint {path} cannot be used: {problem or 'failed to load on another rank'}; "
                "trying an older one")
            continue
        return path, state, rng
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {folder}: all {len(candidates)} of run {run_name!r} are "
                              "damaged (kept for inspection); use another checkpoint.folder, or set "
                              "checkpoint.start_over=true to move them aside (renamed step-N.old) and start over")
    return None


def load_weights(path, model, trainable_only: bool) -> None:
    """One process, no process group: the model weights of checkpoint ``path`` into a plain, unwrapped
    ``model`` (``trainable_only``: the checkpoint holds only the parameters that train)."""
    keep = _trainable_keys(model) if trainable_only else None
    sd = {"model": {k: v for k, v in model.state_dict().items() if keep is None or k in keep}}
    try:
        with _quiet():
            dcp.load(sd, **_reader(path), no_dist=True)
    except CheckpointException as err:  # a BaseException: `mpt export` would show its traceback
        raise CheckpointError(f"{path}: cannot be read ({_one_line(err)})") from None
    model.load_state_dict(sd["model"], strict=not trainable_only)
