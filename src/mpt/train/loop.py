"""The training loop, top to bottom: set up, resume, then step until the duration is reached.

One function, :func:`train`, runs single-process or as one rank under ``torchrun``. Every piece it
calls lives in a neighbouring file: recipe.py (typed config), data.py (batches), parallel.py
(FSDP2 / DDP), optim.py (Lion, AdamW, schedules), checkpoint.py (DCP save / resume),
guard.py (loss spikes), monitor.py (step line, MFU, metrics, plot).
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..model import MPTForCausalLM
from ..model.hf import load_pretrained
from ..presets import load_model_config, model_info
from . import checkpoint as ckpt
from .data import build_batches, count_targets
from .guard import SpikeGuard
from .monitor import Monitor, peak_tflops
from .optim import DecoupledAdamW, DecoupledLion, lr_multiplier, param_groups
from .parallel import all_reduce_max, all_reduce_sum, init_distributed, parallelize
from .recipe import Recipe, parse_duration


@dataclass
class TrainResult:
    steps: int
    tokens: int
    final_loss: float | None
    checkpoint: Path | None
    exported: Path | None
    interrupted: bool = False


class _Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _fault_file():
    """faulthandler writes to a file descriptor; a captured sys.stderr (notebooks, pytest) has none."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_model(recipe: Recipe, log) -> MPTForCausalLM:
    m = recipe.model
    if m.init_from:
        model = load_pretrained(m.init_from, dtype=torch.float32)
        for key, value in m.fields.items():  # e.g. a longer max_seq_len for long-context finetuning
            if key == "attn_config":
                model.config.attn_config.update(value)
            else:
                setattr(model.config, key, value)
        model.config.validate()
        log(f"model: {m.init_from} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters)")
        return model
    config = load_model_config(m.preset, **m.fields)
    model = MPTForCausalLM(config)
    log(f"model: {m.preset} ({model_info(config).params / 1e6:.2f}M parameters, fresh initialisation)")
    return model


def _total_steps(recipe: Recipe, samples_per_epoch: int, seq_len: int) -> int:
    value, unit = parse_duration(recipe.train.max_duration)
    g = recipe.train.global_batch_size
    if unit == "ba":
        return value
    if unit == "tok":
        return math.ceil(value / (g * seq_len))
    return value * math.ceil(samples_per_epoch / g)


def _micro_batches(batch: dict[str, torch.Tensor], size: int):
    n = batch["input_ids"].shape[0]
    for start in range(0, n, size):
        yield {k: v[start:start + size] for k, v in batch.items()}


def _no_sync(model, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync") and not last:  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def _find_micro_batch_size(fwd, model, batch, device, autocast, log) -> int:
    """Largest power-of-two fraction of the rank batch whose forward + backward fits (CUDA only)."""
    size = batch["input_ids"].shape[0]
    if device.type != "cuda":
        log(f"micro_batch_size auto: {size} (the whole rank batch; out-of-memory cannot be caught on CPU)")
        return size
    while True:
        try:
            mb = {k: v[:size].to(device) for k, v in batch.items()}
            with autocast:
                loss = fwd(**mb).loss
            loss.backward()
            fits = 1.0
        except torch.OutOfMemoryError:
            fits = 0.0
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        if all_reduce_max(1.0 - fits, device) == 0.0:  # every rank fits
            log(f"micro_batch_size auto: {size}")
            return size
        if size == 1:
            raise RuntimeError("micro_batch_size auto: even 1 sample does not fit in GPU memory; enable "
                               "train.activation_checkpointing, shard with FSDP, or shorten the sequences")
        size //= 2


def train(recipe: Recipe, log=print) -> TrainResult:
    t_cfg, c_cfg = recipe.train, recipe.checkpoint

    # ---- processes, devices, determinism --------------------------------------------------
    d = init_distributed(t_cfg.device)
    say = log if d.is_main else (lambda *a, **k: None)
    if t_cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    _seed_everything(t_cfg.seed)  # same seed on every rank: identical initial weights
    if t_cfg.global_batch_size % d.world_size:
        raise ValueError(f"train.global_batch_size={t_cfg.global_batch_size} must be divisible by the "
                         f"{d.world_size} ranks")
    rank_batch = t_cfg.global_batch_size // d.world_size

    # ---- model, data ----------------------------------------------------------------------
    model = _build_model(recipe, say)
    config = model.config
    batches = build_batches(recipe.data, rank_batch, t_cfg.seed, d.rank, d.world_size, config.max_seq_len, say)
    if recipe.data.kind == "pretrain":
        seq_len = batches.seq_len
        for index in batches.dataset.indexes:
            config.check_tokenizer(index.vocab_size)
        if seq_len is None or seq_len > config.max_seq_len:
            raise ValueError(f"data samples are {seq_len or 'whole documents'} tokens long but the model's "
                             f"max_seq_len is {config.max_seq_len}; prep with --seq-len <= max_seq_len or raise "
                             "model.fields.max_seq_len")
    else:
        seq_len = config.max_seq_len
        config.check_tokenizer(batches.vocab_size)
    total = _total_steps(recipe, batches.samples_per_epoch(), seq_len)
    say(f"training for {total} steps of {t_cfg.global_batch_size} samples x {seq_len} tokens on {d.world_size} "
        f"rank(s), device {d.device}, precision {t_cfg.precision}")

    # ---- parallelism, optimizer -----------------------------------------------------------
    model.to(d.device)
    model.train()
    wrapped = parallelize(model, recipe.parallel.strategy, recipe.parallel.fsdp_sharding, d.world_size,
                          t_cfg.activation_checkpointing)
    o = recipe.optimizer
    groups = param_groups(model, o.weight_decay, o.decay_norms, o.decay_embeddings)
    if o.name == "lion":
        optimizer = DecoupledLion(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    else:
        optimizer = DecoupledAdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    fwd = torch.compile(wrapped) if t_cfg.compile else wrapped
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=t_cfg.precision == "bf16")

    # ---- micro-batch size (before resuming: the trial must not disturb restored RNG state) ------
    probe_from = batches.state_dict()
    if t_cfg.micro_batch_size == "auto":
        micro = _find_micro_batch_size(fwd, wrapped, batches.next(), d.device, autocast, say)
        batches.load_state_dict(probe_from)  # the probe batch is trained on in its turn
    else:
        micro = t_cfg.micro_batch_size

    # ---- resume ------------------------------------------------------------------------------
    step, tokens = 0, 0
    guard = SpikeGuard(recipe.spike)
    last_ckpt = None
    if c_cfg.autoresume:
        found = ckpt.load_latest(c_cfg.folder, wrapped, optimizer, log=say)
        if found is not None:
            last_ckpt, state, rng = found
            step, tokens = state["step"], state["tokens"]
            batches.load_state_dict(state["data"])
            guard.load_state_dict(state["guard"])
            if rng is not None:
                ckpt.set_rng_state(rng)
            else:
                say(f"{last_ckpt} was saved by {state['world_size']} ranks; this rank has no saved RNG state, "
                    "re-seeding (dropout masks will differ from an uninterrupted run)")
                _seed_everything(t_cfg.seed + step * 1009 + d.rank)
            say(f"resumed from {last_ckpt} at step {step} ({tokens:,} tokens)")

    def trainer_state() -> dict:
        return {"step": step, "tokens": tokens, "data": batches.state_dict(), "guard": guard.state_dict(),
                "world_size": d.world_size, "run_name": recipe.run_name}

    def save() -> Path:
        nonlocal last_ckpt
        last_ckpt = ckpt.save(c_cfg.folder, step, wrapped, optimizer, trainer_state(), c_cfg.keep)
        say(f"saved checkpoint {last_ckpt}")
        return last_ckpt

    # ---- monitoring and failure handling ------------------------------------------------------
    peak, peak_note = peak_tflops(d.device, recipe.log.peak_tflops)
    flops_per_token = 6 * sum(p.numel() for p in model.parameters()) + 12 * config.n_layers * config.d_model * seq_len
    monitor = Monitor(recipe.log.folder, d.is_main, flops_per_token, peak, peak_note, recipe.log.tensorboard)
    say(f"MFU: {peak_note}")
    preemption = _Preemption()
    final_loss = None
    rollbacks = 0
    bar = None
    if d.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)

    # ---- the loop ----------------------------------------------------------------------------------
    try:
        while step < total:
            if recipe.watchdog.enabled:
                median = monitor.median_step_time()
                limit = max(recipe.watchdog.min_seconds, recipe.watchdog.factor * median) if median \
                    else 4 * recipe.watchdog.min_seconds
                # A hung step (dead rank, stuck collective) dumps every thread's stack and exits non-zero,
                # so torchrun --max-restarts (or any supervisor) restarts the job, which then resumes.
                faulthandler.dump_traceback_later(limit, exit=True, file=_fault_file())
            start = time.perf_counter()
            batch = batches.next()
            lr = o.lr * lr_multiplier(step, total, recipe.scheduler.warmup_batches, recipe.scheduler.name,
                                      recipe.scheduler.alpha_f)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # forward + backward over micro-batches, each weighted by its share of the global targets
            n_global = all_reduce_sum(count_targets(batch["labels"]), d.device)
            parts = list(_micro_batches(batch, micro))
            loss_sum = 0.0
            for i, mb in enumerate(parts):
                mb = {k: v.to(d.device, non_blocking=True) for k, v in mb.items()}
                n = count_targets(mb["labels"])
                with _no_sync(wrapped, last=i == len(parts) - 1), autocast:
                    loss = fwd(**mb).loss
                    scaled = loss * (n * d.world_size / max(n_global, 1))  # ranks average gradients
                scaled.backward()
                loss_sum += loss.detach().double().item() * n
            loss_value = all_reduce_sum(loss_sum, d.device) / max(n_global, 1)
            clip = t_cfg.grad_clip if t_cfg.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)

            # the guard decides before the optimizer can touch the weights
            skip = guard.verdict(loss_value, grad_norm)
            if skip is None:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rollback = guard.record(loss_value, skip is not None)
            step += 1
            tokens += int(batch["input_ids"].numel()) * d.world_size
            if skip is None:
                final_loss = loss_value
            else:
                say(f"step {step}: skipped ({skip})")
            if recipe.watchdog.enabled:
                faulthandler.cancel_dump_traceback_later()

            seconds = time.perf_counter() - start
            line = monitor.step(step, total, {"loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                                              "skipped": skip or ""},
                                int(batch["input_ids"].numel()) * d.world_size, seconds, d.device)
            if bar is not None:
                bar.update(1)
                if step % recipe.log.every_batches == 0 or step == total:
                    bar.write(line)

            if rollback:
                rollbacks += 1
                if not recipe.spike.rollback or last_ckpt is None or rollbacks > recipe.spike.max_rollbacks:
                    raise RuntimeError(f"{guard.bad_in_a_row} bad steps in a row (last: {skip}); "
                                       + ("spike.rollback is off" if not recipe.spike.rollback
                                          else "no checkpoint to roll back to" if last_ckpt is None
                                          else f"already rolled back {recipe.spike.max_rollbacks} times"))
                data_state = batches.state_dict()
                state, _ = ckpt.load(last_ckpt, wrapped, optimizer)
                step, tokens = state["step"], state["tokens"]
                guard.load_state_dict(state["guard"])
                batches.load_state_dict(data_state)  # keep going forward in the data: skip the bad batches
                say(f"rolled back to {last_ckpt} (step {step}) after repeated bad steps; continuing with new data")
                if bar is not None:
                    bar.n = step
                continue

            if recipe.eval.every_batches and step % recipe.eval.every_batches == 0 and recipe.data.eval_sources:
                val = evaluate(wrapped, recipe, d, autocast)
                say(f"step {step}: validation loss {val:.4f} (perplexity {math.exp(min(val, 50)):.2f})")
                monitor.step(step, total, {"val_loss": val, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                                           "skipped": "eval"}, 0, 1.0, d.device)

            stop = all_reduce_max(float(preemption.requested), d.device) > 0
            if stop or (c_cfg.every_batches and step % c_cfg.every_batches == 0) or step == total:
                save()
                monitor.plot()
            if stop:
                say(f"SIGTERM: saved {last_ckpt} at step {step}; exiting (start the same command to resume)")
                return TrainResult(step, tokens, final_loss, last_ckpt, None, interrupted=True)
    finally:
        faulthandler.cancel_dump_traceback_later()
        preemption.restore()
        if bar is not None:
            bar.close()

    # ---- the end ------------------------------------------------------------------------------------
    if last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}"):
        save()
    exported = None
    if c_cfg.export_hf:
        if d.is_main:
            # the tokenizer the data was made with travels with the model (`mpt prep` records it in the index)
            tok = recipe.data.tokenizer if recipe.data.kind == "finetune" else batches.dataset.indexes[0].tokenizer
            ckpt.export_hf(last_ckpt, c_cfg.export_hf, tokenizer_from=_tokenizer_folder(tok))
            say(f"exported Hugging Face checkpoint to {c_cfg.export_hf}")
        exported = Path(c_cfg.export_hf)
        if dist.is_initialized():
            dist.barrier()
    plot = monitor.plot()
    if plot:
        say(f"loss curve: {plot}")
    return TrainResult(step, tokens, final_loss, last_ckpt, exported)


def _tokenizer_folder(tokenizer: str | None) -> str | None:
    """The local folder holding the tokenizer's files, or None (a hub name, a synthetic label)."""
    if tokenizer is None:
        return None
    path = Path(tokenizer)
    if path.is_file():
        return str(path.parent)
    return str(path) if path.is_dir() else None


@torch.no_grad()
def evaluate(model, recipe: Recipe, d, autocast) -> float:
    """Mean next-token loss on the first ``eval.batches`` batches of the eval sources (same every time)."""
    from .data import PretrainBatches

    batches = PretrainBatches(recipe.data.eval_sources, max(1, recipe.train.global_batch_size // d.world_size),
                              recipe.train.seed, d.rank, d.world_size, 0)
    model.eval()
    total, count = 0.0, 0.0
    try:
        for _ in range(recipe.eval.batches):
            batch = {k: v.to(d.device) for k, v in batches.next().items()}
            with autocast:
                out = model(input_ids=batch["input_ids"], labels=batch["labels"])
            n = count_targets(batch["labels"])
            total += float(out.loss) * n
            count += n
    finally:
        model.train()
    return all_reduce_sum(total, d.device) / max(all_reduce_sum(count, d.device), 1)
