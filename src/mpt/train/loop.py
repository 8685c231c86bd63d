"""The training loop, top to bottom: set up, resume, then step until the duration is reached.

One function, :func:`train`, runs single-process or as one rank under ``torchrun``. Every piece it
calls lives in a neighbouring file: recipe.py (typed config), data.py (batches), parallel.py
(FSDP2 / HSDP / DDP), optim.py (Lion, AdamW, schedules), microbatch.py (``micro_batch_size: auto``),
checkpoint.py (DCP save / resume / export), guard.py (loss spikes), watchdog.py (hangs),
monitor.py (step line, MFU, metrics, plot) and icl.py (evaluation during training, which calls
``mpt.eval``).

Rules every rank follows: a collective is reached by all ranks or by none; a decision that changes
control flow (resume fallback, rollback, stop on SIGTERM) is taken from values all ranks agree on;
what rank 0 does alone (export, plots) uses no process group.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..model import MPTForCausalLM
from ..model.hf import load_pretrained
from ..presets import load_model_config, model_info
from . import checkpoint as ckpt
from .data import build_batches, count_targets
from .guard import SpikeGuard
from .microbatch import find_micro_batch_size
from .monitor import Monitor, peak_tflops
from .optim import DecoupledLion, decoupled_adamw, lr_multiplier, param_groups
from .parallel import Dist, all_reduce_max, all_reduce_sum, init_distributed, parallelize
from .recipe import Recipe, parse_duration
from .watchdog import Watchdog


@dataclass
class TrainResult:
    steps: int
    tokens: int
    final_loss: float | None
    checkpoint: Path | None
    exported: Path | None
    interrupted: bool = False
    icl: dict[str, float] = field(default_factory=dict)  # the last in-training ICL accuracies


@dataclass
class TrainState:
    """What changes from step to step (the rest of the loop's state lives in its objects)."""

    step: int = 0
    tokens: int = 0
    final_loss: float | None = None
    last_ckpt: Path | None = None
    rollbacks: int = 0


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    skipped: str | None
    rollback: bool
    tokens: int


class _Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_model(recipe: Recipe, log) -> nn.Module:
    """The preset (or ``init_from`` checkpoint) with the recipe's typed field overrides; LoRA-wrapped if asked."""
    m = recipe.model
    if m.init_from:
        model = load_pretrained(m.init_from, dtype=torch.float32)
        c = model.config
        for key, value in m.fields.overrides(c.attn_config, c.init_config).items():  # e.g. a longer max_seq_len
            setattr(c, key, value)
        c.validate()
        log(f"model: {m.init_from} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters)")
    else:
        base = load_model_config(m.preset)
        config = load_model_config(m.preset, **m.fields.overrides(base.attn_config, base.init_config))
        model = MPTForCausalLM(config)
        log(f"model: {m.preset} ({model_info(config).params / 1e6:.2f}M parameters)")
    if m.lora is not None:
        from .lora import apply_lora

        model = apply_lora(model, m.lora, log)
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


def _data_tokenizer(recipe: Recipe, batches) -> str | None:
    """The tokenizer the data was made with (`mpt prep` records it in the index)."""
    if recipe.data.kind == "finetune":
        return recipe.data.tokenizer
    return batches.dataset.indexes[0].tokenizer


def train_step(fwd, wrapped, model, optimizer, batch: dict, micro: int, d: Dist, autocast, grad_clip: float,
               guard: SpikeGuard) -> StepResult:
    """Forward + backward over micro-batches, clip, let the guard decide, step the optimizer."""
    n_global = all_reduce_sum(count_targets(batch["labels"]), d.device)
    parts = list(_micro_batches(batch, micro))
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)  # on device: no sync per micro-batch
    for i, mb in enumerate(parts):
        mb = {k: v.to(d.device, non_blocking=True) for k, v in mb.items()}
        n = count_targets(mb["labels"])  # labels are on the host already: no device sync
        with _no_sync(wrapped, last=i == len(parts) - 1), autocast:
            loss = fwd(**mb).loss
            scaled = loss * (n * d.world_size / max(n_global, 1))  # each micro-batch weighted by its targets
        scaled.backward()
        loss_sum += loss.detach().double() * n
    loss_value = all_reduce_sum(loss_sum, d.device) / max(n_global, 1)
    clip = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    # the guard decides before the optimizer can touch the weights; loss and norm are global, so
    # every rank reaches the same verdict
    skipped = guard.verdict(loss_value, grad_norm)
    if skipped is None:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    rollback = guard.record(loss_value, skipped is not None)
    return StepResult(loss_value, grad_norm, skipped, rollback, int(batch["input_ids"].numel()) * d.world_size)


def _rollback(recipe: Recipe, state: TrainState, wrapped, optimizer, batches, guard: SpikeGuard,
              last_skip: str | None, say) -> None:
    """Back to the last checkpoint after ``spike.patience`` bad steps, continuing forward in the data."""
    spike = recipe.spike
    state.rollbacks += 1
    if not spike.rollback or state.last_ckpt is None or state.rollbacks > spike.max_rollbacks:
        raise RuntimeError(f"{guard.bad_in_a_row} bad steps in a row (last: {last_skip}); "
                           + ("spike.rollback is off" if not spike.rollback
                              else "no checkpoint to roll back to" if state.last_ckpt is None
                              else f"already rolled back {spike.max_rollbacks} times"))
    data_state = batches.state_dict()
    saved, _ = ckpt.load(state.last_ckpt, wrapped, optimizer)
    state.step, state.tokens = saved["step"], saved["tokens"]
    guard.load_state_dict(saved["guard"])
    batches.load_state_dict(data_state)  # keep going forward in the data: skip the bad batches
    say(f"rolled back to {state.last_ckpt} (step {state.step}) after repeated bad steps; continuing with new data")


def _build_data(recipe: Recipe, config, rank_batch: int, d: Dist, say):
    """This rank's batches and the sample length, checked against the model before any step."""
    batches = build_batches(recipe.data, rank_batch, recipe.train.seed, d.rank, d.world_size, config.max_seq_len,
                            say)
    if recipe.data.kind != "pretrain":
        config.check_tokenizer(batches.vocab_size)
        return batches, config.max_seq_len
    seq_len = batches.seq_len
    for index in batches.dataset.indexes:
        config.check_tokenizer(index.vocab_size)
    if seq_len is None or seq_len > config.max_seq_len:
        raise ValueError(f"data samples are {seq_len or 'whole documents'} tokens long but the model's "
                         f"max_seq_len is {config.max_seq_len}; prep with --seq-len <= max_seq_len or raise "
                         "model.fields.max_seq_len")
    return batches, seq_len


def _build_optimizer(model, recipe: Recipe, device: torch.device):
    o = recipe.optimizer
    groups = param_groups(model, o.weight_decay, o.decay_norms, o.decay_embeddings)
    if o.name == "lion":
        return DecoupledLion(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    return decoupled_adamw(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True if device.type == "cuda" else None)


def _resume(recipe: Recipe, state: TrainState, wrapped, optimizer, batches, guard: SpikeGuard, d: Dist, say) -> None:
    """Continue from the newest checkpoint of this run that every rank can load, if there is one."""
    found = ckpt.load_latest(recipe.checkpoint.folder, wrapped, optimizer, recipe.run_name, log=say)
    if found is None:
        return
    state.last_ckpt, saved, rng = found
    state.step, state.tokens = saved["step"], saved["tokens"]
    batches.load_state_dict(saved["data"])
    guard.load_state_dict(saved["guard"])
    if rng is not None:
        ckpt.set_rng_state(rng)
    else:
        say(f"{state.last_ckpt} was saved by {saved['world_size']} ranks; this rank has no saved RNG state, "
            "re-seeding (dropout masks will differ from an uninterrupted run)")
        _seed_everything(recipe.train.seed + state.step * 1009 + d.rank)
    say(f"resumed from {state.last_ckpt} at step {state.step} ({state.tokens:,} tokens)")


def _evaluate(recipe: Recipe, step: int, wrapped, model, icl, d: Dist, autocast, watchdog: Watchdog,
              say) -> dict[str, float]:
    """The evaluations due at this step (validation loss, ICL tasks), on every rank together."""
    evaluated = {}
    if recipe.eval.every_batches and step % recipe.eval.every_batches == 0 and recipe.data.eval_sources:
        with watchdog.phase():
            evaluated["val_loss"] = validation_loss(wrapped, recipe, d, autocast)
        say(f"step {step}: validation loss {evaluated['val_loss']:.4f} "
            f"(perplexity {math.exp(min(evaluated['val_loss'], 50)):.2f})")
    if icl is not None and icl.due(step):
        with watchdog.phase():
            scores = icl.run(model, recipe.parallel.fsdp_sharding == "full")
        evaluated.update(scores)
        say(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return evaluated


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
    watchdog = Watchdog(recipe.watchdog)
    ckpt.check_folder(c_cfg.folder)

    # ---- model, data, in-training evaluation (all validated before the first step) ----------
    model = _build_model(recipe, say)
    config = model.config
    batches, seq_len = _build_data(recipe, config, rank_batch, d, say)
    tokenizer = _data_tokenizer(recipe, batches)
    icl = None
    if recipe.eval.icl.every_batches:
        from .icl import InTrainingEval

        icl = InTrainingEval(recipe.eval.icl, recipe.eval.icl.tokenizer or ckpt.local_tokenizer_folder(tokenizer))
    total = _total_steps(recipe, batches.samples_per_epoch(), seq_len)
    say(f"training for {total} steps of {t_cfg.global_batch_size} samples x {seq_len} tokens on {d.world_size} "
        f"rank(s), device {d.device}, precision {t_cfg.precision}")

    # ---- parallelism, optimizer -----------------------------------------------------------
    model.to(d.device)
    model.train()
    p_cfg = recipe.parallel
    wrapped = parallelize(model, p_cfg.strategy, p_cfg.fsdp_sharding, d.world_size, t_cfg.activation_checkpointing,
                          p_cfg.replicas, d.device.type)
    optimizer = _build_optimizer(model, recipe, d.device)
    fwd = torch.compile(wrapped) if t_cfg.compile else wrapped
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=t_cfg.precision == "bf16")

    # ---- micro-batch size (before resuming: the trial must not disturb restored RNG state) ------
    if t_cfg.micro_batch_size == "auto":
        probe_from = batches.state_dict()
        with watchdog.phase():
            micro = find_micro_batch_size(fwd, wrapped, batches.next(), d.device, autocast, say)
        batches.load_state_dict(probe_from)  # the probe batch is trained on in its turn
    else:
        micro = t_cfg.micro_batch_size

    # ---- resume (all ranks agree on the checkpoint) --------------------------------------------
    state = TrainState()
    guard = SpikeGuard(recipe.spike)
    if c_cfg.autoresume:
        with watchdog.phase():
            _resume(recipe, state, wrapped, optimizer, batches, guard, d, say)
    if state.last_ckpt is None and not recipe.model.init_from:
        say("fresh initialisation (no checkpoint to resume from)")

    def save() -> None:
        trainer_state = {"step": state.step, "tokens": state.tokens, "data": batches.state_dict(),
                         "guard": guard.state_dict(), "world_size": d.world_size, "run_name": recipe.run_name,
                         "tokenizer": tokenizer,
                         "lora": asdict(recipe.model.lora) if recipe.model.lora else None}
        with watchdog.phase():
            state.last_ckpt = ckpt.save(c_cfg.folder, state.step, wrapped, optimizer, trainer_state, c_cfg.keep)
            monitor.plot()
        say(f"saved checkpoint {state.last_ckpt}")

    # ---- monitoring -----------------------------------------------------------------------------
    peak, peak_note = peak_tflops(d.device, recipe.log.peak_tflops)
    flops_per_token = 6 * sum(p.numel() for p in model.parameters()) + 12 * config.n_layers * config.d_model * seq_len
    monitor = Monitor(recipe.log.folder, d.is_main, flops_per_token, peak, peak_note, recipe.log.tensorboard)
    say(f"MFU: {peak_note}")
    preemption = _Preemption()
    last_icl: dict[str, float] = {}
    bar = None
    if d.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=state.step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)

    # ---- the loop ----------------------------------------------------------------------------------
    try:
        while state.step < total:
            start = time.perf_counter()
            with watchdog.covering(watchdog.step_limit(monitor.median_step_time())):
                batch = batches.next()
                sched = recipe.scheduler
                lr = recipe.optimizer.lr * lr_multiplier(state.step, total, sched.warmup_batches, sched.name,
                                                         sched.alpha_f)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                result = train_step(fwd, wrapped, model, optimizer, batch, micro, d, autocast, t_cfg.grad_clip,
                                    guard)
                stop = all_reduce_max(float(preemption.requested), d.device) > 0
            state.step += 1
            state.tokens += result.tokens
            if result.skipped is None:
                state.final_loss = result.loss
            else:
                say(f"step {state.step}: skipped ({result.skipped})")
            line = monitor.step(state.step, total, {"loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                                                    "skipped": result.skipped or ""},
                                result.tokens, time.perf_counter() - start, d.device)
            if bar is not None:
                bar.update(1)
                if state.step % recipe.log.every_batches == 0 or state.step == total:
                    bar.write(line)

            if result.rollback:
                with watchdog.phase():
                    _rollback(recipe, state, wrapped, optimizer, batches, guard, result.skipped, say)
                if bar is not None:
                    bar.n = state.step
                continue

            evaluated = _evaluate(recipe, state.step, wrapped, model, icl, d, autocast, watchdog, say)
            last_icl = {k: v for k, v in evaluated.items() if k.startswith("icl/")} or last_icl
            if evaluated:
                monitor.record(state.step, evaluated)

            if stop or (c_cfg.every_batches and state.step % c_cfg.every_batches == 0) or state.step == total:
                save()
            if stop:
                say(f"SIGTERM: saved {state.last_ckpt} at step {state.step}; exiting (start the same command to "
                    "resume)")
                return TrainResult(state.step, state.tokens, state.final_loss, state.last_ckpt, None,
                                   interrupted=True, icl=last_icl)
    finally:
        preemption.restore()
        if bar is not None:
            bar.close()

    # ---- the end ------------------------------------------------------------------------------------
    if state.last_ckpt is None or not state.last_ckpt.name.endswith(f"{state.step:08d}"):
        save()
    exported = None
    if c_cfg.export_hf:
        with watchdog.phase():
            if d.is_main:  # alone, with no process group: the other ranks wait at the barrier below
                ckpt.export_hf(state.last_ckpt, c_cfg.export_hf)
                say(f"exported Hugging Face checkpoint to {c_cfg.export_hf}")
            if dist.is_initialized():
                dist.barrier()
        exported = Path(c_cfg.export_hf)
    plot = monitor.plot()
    if plot:
        say(f"loss curve: {plot}")
    return TrainResult(state.step, state.tokens, state.final_loss, state.last_ckpt, exported, icl=last_icl)


@torch.no_grad()
def validation_loss(model, recipe: Recipe, d: Dist, autocast) -> float:
    """Mean next-token loss on the first ``eval.batches`` batches of the eval sources (same every time).

    Every rank runs the same number of batches, so FSDP's per-forward collectives line up.
    """
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
