"""The training loop, top to bottom: set up, resume, then step until the duration is reached.

One function, :func:`train`, runs single-process or as one rank under ``torchrun``. Every piece it
calls lives in a neighbouring file: recipe.py (typed config), data.py (batches), parallel.py
(FSDP2 / HSDP / DDP), optim.py, microbatch.py (``micro_batch_size: auto``), checkpoint.py (DCP save /
resume), export.py (Hugging Face export), guard.py (loss spikes), watchdog.py (hangs), monitor.py
(step line, MFU, metrics, plot) and icl.py (evaluation during training, through ``mpt.eval``).
Every rank reaches a collective or none does; control-flow decisions (resume fallback, rollback,
stop on SIGTERM) come from values all ranks agree on; rank 0's export and plots use no process group.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..model import MPTForCausalLM
from ..model.hf import load_pretrained
from ..presets import load_model_config, model_info, train_flops_per_token
from ..ranks import any_rank
from . import checkpoint as ckpt
from .data import Batches, build_batches, count_targets
from .export import export_hf, local_tokenizer_folder
from .folder_lock import FolderLock, hold_folder
from .guard import SpikeGuard
from .microbatch import find_micro_batch_size
from .monitor import Monitor, peak_tflops
from .optim import DecoupledLion, decoupled_adamw, lr_multiplier, param_groups
from .parallel import Dist, all_reduce_sum, init_distributed, parallelize, unwrap
from .qlora import logical_numel
from .recipe import Recipe, model_overrides, parse_duration
from .rng import set_rng_state
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .icl import InTrainingEval


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
    saved: bool = False   # last_ckpt holds the weights of this very step (nothing to save at the end)
    rollbacks: int = 0
    icl: dict[str, float] = field(default_factory=dict)  # the last in-training ICL accuracies


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


def _use_flex(config, fields, device: torch.device) -> bool:
    """On CUDA, train with flex attention unless the recipe names a backend (or needs attention dropout)."""
    return (device.type == "cuda" and fields.attn_config.attn_impl is None
            and config.attn_config["attn_impl"] == "torch" and not config.attn_config["attn_pdrop"])


def _build_model(recipe: Recipe, log, device: torch.device) -> nn.Module:
    """The preset (or ``init_from`` checkpoint) with the recipe's typed field overrides; LoRA-wrapped if asked."""
    m = recipe.model
    if m.init_from:
        model = load_pretrained(m.init_from, dtype=torch.float32)
        c = model.config
        for key, value in model_overrides(m.fields, c.attn_config, c.init_config).items():  # e.g. a longer max_seq_len
            setattr(c, key, value)
        c.validate()
        log(f"model: {m.init_from} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters)")
    else:
        base = load_model_config(m.preset)
        config = load_model_config(m.preset, **model_overrides(m.fields, base.attn_config, base.init_config))
        model = MPTForCausalLM(config)
        log(f"model: {m.preset} ({model_info(config).params / 1e6:.2f}M parameters)")
    if _use_flex(model.config, m.fields, device):
        model.config.attn_config["attn_impl"] = "flex"
        log("attention: flex (ALiBi as a score_mod, masks as block masks: the fast path on CUDA); set "
            "model.fields.attn_config.attn_impl to choose another")
    if m.lora is not None:
        from .lora import apply_lora

        if m.lora.quantize_base:
            from .qlora import quantize_base

            dtype = torch.bfloat16 if recipe.train.precision == "bf16" else torch.float32
            log(quantize_base(model, dtype, device).describe(dtype))
        model = apply_lora(model, m.lora, log)
    return model


def _total_steps(recipe: Recipe, batches, seq_len: int) -> int:
    value, unit = parse_duration(recipe.train.max_duration)
    g = recipe.train.global_batch_size
    if unit == "ba":
        return value
    if unit == "tok":
        return math.ceil(value / (g * seq_len))
    return value * math.ceil(batches.samples_per_epoch() / g)  # only epochs need the count (a pass over lengths)


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


@dataclass(frozen=True)
class _Run:
    """What the loop's stages share: built whole before the first step, then only used."""

    recipe: Recipe
    d: Dist
    say: Callable[..., None]
    watchdog: Watchdog
    model: nn.Module                     # the module whose parameters the optimizer holds
    wrapped: nn.Module                   # the same, under FSDP2 / DDP
    autocast: torch.autocast
    optimizer: torch.optim.Optimizer
    batches: Batches
    guard: SpikeGuard
    tokenizer: str | None                # the one the data was made with, recorded in each checkpoint
    icl: InTrainingEval | None
    seq_len: int
    total: int                           # steps
    micro: int                           # micro-batch size
    lock: FolderLock                     # on the checkpoint folder, held from before resuming to the export


def train_step(run: _Run, batch: dict) -> StepResult:
    """Forward + backward over micro-batches, clip, let the guard decide, step the optimizer."""
    d = run.d
    n_global = all_reduce_sum(count_targets(batch["labels"]), d.device)
    parts = list(_micro_batches(batch, run.micro))
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)  # on device: no sync per micro-batch
    for i, mb in enumerate(parts):
        mb = {k: v.to(d.device, non_blocking=True) for k, v in mb.items()}
        n = count_targets(mb["labels"])  # labels are on the host already: no device sync
        with _no_sync(run.wrapped, last=i == len(parts) - 1), run.autocast:
            loss = run.wrapped(**mb).loss
            scaled = loss * (n * d.world_size / max(n_global, 1))  # each micro-batch weighted by its targets
        scaled.backward()
        loss_sum += loss.detach().double() * n
    loss_value = all_reduce_sum(loss_sum, d.device) / max(n_global, 1)
    clip = run.recipe.train.grad_clip or float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    # the guard decides before the optimizer can touch the weights; loss and norm are global, so
    # every rank reaches the same verdict
    skipped = run.guard.verdict(loss_value, grad_norm)
    if skipped is None:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    rollback = run.guard.record(loss_value, skipped is not None)
    return StepResult(loss_value, grad_norm, skipped, rollback, int(batch["input_ids"].numel()) * d.world_size)


def _rollback(run: _Run, state: TrainState, last_skip: str | None) -> None:
    """Back to the last checkpoint after ``spike.patience`` bad steps, continuing forward in the data."""
    spike = run.recipe.spike
    state.rollbacks += 1
    if not spike.rollback or state.last_ckpt is None or state.rollbacks > spike.max_rollbacks:
        raise RuntimeError(f"{run.guard.bad_in_a_row} bad steps in a row (last: {last_skip}); "
                           + ("spike.rollback is off" if not spike.rollback
                              else "no checkpoint to roll back to" if state.last_ckpt is None
                              else f"already rolled back {spike.max_rollbacks} times"))
    data_state = run.batches.state_dict()
    saved, _ = ckpt.load(state.last_ckpt, run.wrapped, run.optimizer)
    state.step, state.tokens, state.saved = saved["step"], saved["tokens"], True
    run.guard.load_state_dict(saved["guard"])
    run.batches.load_state_dict(data_state)  # keep going forward in the data: skip the bad batches
    run.say(f"rolled back to {state.last_ckpt} (step {state.step}) after repeated bad steps; continuing with new "
            "data")


def _start(recipe: Recipe) -> tuple[Dist, int]:
    """Processes and devices, determinism and seeds, and the checks that need no model."""
    t = recipe.train
    d = init_distributed(t.device)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    _seed_everything(t.seed)  # same seed on every rank: identical initial weights
    if t.global_batch_size % d.world_size:
        raise ValueError(f"train.global_batch_size={t.global_batch_size} must be divisible by the "
                         f"{d.world_size} ranks")
    ckpt.check_folder(recipe.checkpoint.folder)
    return d, t.global_batch_size // d.world_size


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


def _build_icl(recipe: Recipe, tokenizer: str | None):
    if not recipe.eval.icl.every_batches:
        return None
    from .icl import InTrainingEval

    return InTrainingEval(recipe.eval.icl, recipe.eval.icl.tokenizer or local_tokenizer_folder(tokenizer))


def _quantized(recipe: Recipe) -> bool:
    return recipe.model.lora is not None and recipe.model.lora.quantize_base


def _base_source(recipe: Recipe) -> str | None:
    """``init_from`` as a QLoRA checkpoint records it: a local folder absolute (export may run elsewhere)."""
    given = recipe.model.init_from
    return str(Path(given).resolve()) if given and Path(given).exists() else given


def _parallelize(recipe: Recipe, model: nn.Module, d: Dist):
    """(wrapped, autocast): FSDP2 / HSDP / DDP from outside the model, per-block compile, precision."""
    t, p = recipe.train, recipe.parallel
    model.to(d.device)
    model.train()
    bf16 = t.precision == "bf16"
    strategy = p.strategy
    if strategy == "auto" and _quantized(recipe):
        strategy = "ddp"  # FSDP2 cannot shard 4-bit weights (the recipe refuses fsdp itself)
    wrapped = parallelize(model, strategy, p.fsdp_sharding, d.world_size, t.activation_checkpointing, p.replicas,
                          d.device.type, compile=t.compile, bf16_params=bf16)
    # autocast as well under FSDP's bf16 parameters: the ops it keeps in fp32 (softmax, the loss) stay there
    return wrapped, torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=bf16)


def _build_optimizer(model, recipe: Recipe, device: torch.device):
    o = recipe.optimizer
    groups = param_groups(model, o.weight_decay, o.decay_norms, o.decay_embeddings)
    if o.name == "lion":
        return DecoupledLion(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    return decoupled_adamw(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True if device.type == "cuda" else None)


def _choose_micro_batch(recipe: Recipe, watchdog: Watchdog, wrapped: nn.Module, batches: Batches, d: Dist,
                        autocast: torch.autocast, say) -> int:
    if recipe.train.micro_batch_size != "auto":
        return recipe.train.micro_batch_size
    probe_from = batches.state_dict()
    with watchdog.phase():
        micro = find_micro_batch_size(wrapped, wrapped, batches.next(), d.device, autocast, say)
    batches.load_state_dict(probe_from)  # the probe batch is trained on in its turn
    return micro


def _setup(recipe: Recipe) -> dict:
    """What a checkpoint holds besides the model's shape; a run resumes only a checkpoint of the same."""
    return {"optimizer": recipe.optimizer.name, "lora": asdict(recipe.model.lora) if recipe.model.lora else None}


def _resume(run: _Run, state: TrainState) -> None:
    """Continue from the newest checkpoint of this run that every rank can load, if there is one."""
    recipe = run.recipe

    def restore(saved: dict, rng: dict | None) -> None:
        run.batches.load_state_dict(saved["data"])
        run.guard.load_state_dict(saved["guard"])
        if rng is not None:
            set_rng_state(rng)

    with run.watchdog.phase():
        found = ckpt.load_latest(recipe.checkpoint.folder, run.wrapped, run.optimizer, recipe.run_name, log=run.say,
                                 setup=_setup(recipe), restore=restore)
    if found is None:
        if not recipe.model.init_from:
            run.say("fresh initialisation (no checkpoint to resume from)")
        return
    state.last_ckpt, saved, rng = found
    if saved.get("trainable_only") and saved.get("init_from") != _base_source(recipe):
        raise ckpt.CheckpointError(f"{state.last_ckpt} holds adapters trained on the 4-bit base "
                                   f"{saved.get('init_from')!r}, but model.init_from is {_base_source(recipe)!r}; "
                                   "use the same base, or another checkpoint.folder")
    state.step, state.tokens, state.saved = saved["step"], saved["tokens"], True
    if rng is None:
        run.say(f"{state.last_ckpt} was saved by {saved['world_size']} ranks; this rank has no saved RNG state, "
                "re-seeding (dropout masks will differ from an uninterrupted run)")
        _seed_everything(recipe.train.seed + state.step * 1009 + run.d.rank)
    run.say(f"resumed from {state.last_ckpt} at step {state.step} ({state.tokens:,} tokens)")


def _build_monitor(run: _Run, fresh: bool) -> Monitor:
    config = run.model.config
    peak, peak_note = peak_tflops(run.d.device, run.recipe.log.peak_tflops)
    params = sum(logical_numel(p) for p in run.model.parameters())  # a 4-bit tensor's numel counts bytes
    flops_per_token = train_flops_per_token(params, config, run.seq_len)
    run.say(f"MFU: {peak_note}")
    return Monitor(run.recipe.log.folder, run.d.is_main, flops_per_token, peak, peak_note, run.recipe.log.tensorboard,
                   fresh=fresh, log=run.say)


def _save(run: _Run, state: TrainState, monitor: Monitor) -> None:
    trainer_state = {"step": state.step, "tokens": state.tokens, "data": run.batches.state_dict(),
                     "guard": run.guard.state_dict(), "world_size": run.d.world_size, "run_name": run.recipe.run_name,
                     "tokenizer": run.tokenizer, **_setup(run.recipe)}
    quantized = _quantized(run.recipe)
    if quantized:  # the checkpoint holds the adapters; this is where the 4-bit base comes from
        trainer_state.update(init_from=_base_source(run.recipe), base_quantized_on=run.d.device.type)
    c = run.recipe.checkpoint
    with run.watchdog.phase():
        state.last_ckpt = ckpt.save(c.folder, state.step, run.wrapped, run.optimizer, trainer_state, c.keep,
                                    trainable_only=quantized, lock=run.lock, log=run.say)
        state.saved = True
        monitor.plot()
    run.say(f"saved checkpoint {state.last_ckpt}")


def _evaluate(run: _Run, step: int) -> dict[str, float]:
    """The evaluations due at this step (validation loss, ICL tasks), on every rank together."""
    recipe, evaluated = run.recipe, {}
    if recipe.eval.every_batches and step % recipe.eval.every_batches == 0 and recipe.data.eval_sources:
        with run.watchdog.phase():
            evaluated["val_loss"] = validation_loss(run.wrapped, recipe, run.d, run.autocast)
        run.say(f"step {step}: validation loss {evaluated['val_loss']:.4f} "
                f"(perplexity {math.exp(min(evaluated['val_loss'], 50)):.2f})")
    if run.icl is not None and run.icl.due(step):
        with run.watchdog.phase():
            scores = run.icl.run(run.model, recipe.parallel.fsdp_sharding == "full")
        evaluated.update(scores)
        run.say(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return evaluated


def _export(run: _Run, state: TrainState) -> Path | None:
    """Rank 0 alone, with no process group; the other ranks wait at the barrier."""
    out = run.recipe.checkpoint.export_hf
    if not out:
        return None
    with run.watchdog.phase():
        if run.d.is_main:
            export_hf(state.last_ckpt, out)
            run.say(f"exported Hugging Face checkpoint to {out}")
        if dist.is_initialized():
            dist.barrier()
    return Path(out)


def _progress_bar(run: _Run, state: TrainState):
    """Rank 0's bar, shown only on a terminal (in a file, thousands of ``\r`` redraws bury the step lines)."""
    if not run.d.is_main or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.total, initial=state.step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)


def train(recipe: Recipe, log=print) -> TrainResult:
    d, rank_batch = _start(recipe)
    say = log if d.is_main else (lambda *a, **k: None)
    c = recipe.checkpoint
    with hold_folder(c.folder, recipe.run_name, c.lease_seconds, say) as lock:
        return _train(recipe, log, d, rank_batch, say, lock)


def _build_run(recipe: Recipe, d: Dist, rank_batch: int, say, lock: FolderLock) -> _Run:
    """Model, data and in-training evaluation (all validated before the first step), parallelism,
    optimizer and micro-batch size."""
    model = _build_model(recipe, say, d.device)
    batches, seq_len = _build_data(recipe, model.config, rank_batch, d, say)
    tokenizer = _data_tokenizer(recipe, batches)
    total = _total_steps(recipe, batches, seq_len)
    say(f"training for {total} steps of {recipe.train.global_batch_size} samples x {seq_len} tokens on "
        f"{d.world_size} rank(s), device {d.device}, precision {recipe.train.precision}")
    wrapped, autocast = _parallelize(recipe, model, d)
    watchdog = Watchdog(recipe.watchdog)
    optimizer = _build_optimizer(model, recipe, d.device)
    guard, icl = SpikeGuard(recipe.spike), _build_icl(recipe, tokenizer)
    # before resuming: the trial must not disturb restored RNG state
    micro = _choose_micro_batch(recipe, watchdog, wrapped, batches, d, autocast, say)
    return _Run(recipe, d, say, watchdog, model, wrapped, autocast, optimizer, batches, guard, tokenizer, icl, seq_len,
                total, micro, lock)


def _train(recipe: Recipe, log, d: Dist, rank_batch: int, say, lock: FolderLock) -> TrainResult:
    run = _build_run(recipe, d, rank_batch, say, lock)
    state = TrainState()
    if recipe.checkpoint.autoresume and not recipe.checkpoint.start_over:
        _resume(run, state)  # all ranks agree on the checkpoint
    if state.last_ckpt is None:  # before its first save: a fresh run must not replace checkpoints it did not write
        with run.watchdog.phase():
            ckpt.start_fresh(recipe.checkpoint.folder, recipe.run_name, recipe.checkpoint.start_over, say)
    monitor = _build_monitor(run, fresh=state.step == 0)
    bar = _progress_bar(run, state)
    if bar is not None and log is print:  # a caller's own log function is left alone
        # the bar is cleared, the line printed, the bar redrawn: "saved checkpoint ..." never lands on it
        run = replace(run, say=lambda *parts, **_: bar.write(" ".join(map(str, parts))))
    preemption = _Preemption()
    try:
        interrupted = _steps(run, state, monitor, bar, preemption)
    finally:
        preemption.restore()
        if bar is not None:
            bar.close()
    if interrupted:
        return TrainResult(state.step, state.tokens, state.final_loss, state.last_ckpt, None, interrupted=True,
                           icl=state.icl)
    if not state.saved:
        _save(run, state, monitor)
    exported = _export(run, state)
    plot = monitor.plot()
    if plot:
        say(f"loss curve: {plot}")
    return TrainResult(state.step, state.tokens, state.final_loss, state.last_ckpt, exported, icl=state.icl)


def _steps(run: _Run, state: TrainState, monitor: Monitor, bar, preemption: _Preemption) -> bool:
    """Step until the duration is reached; True if stopped early by SIGTERM (after saving)."""
    recipe, d = run.recipe, run.d
    while state.step < run.total:
        start = time.perf_counter()
        with run.watchdog.covering(run.watchdog.step_limit(monitor.median_step_time())):
            batch = run.batches.next()
            sched = recipe.scheduler
            lr = recipe.optimizer.lr * lr_multiplier(state.step, run.total, sched.warmup_batches, sched.name,
                                                     sched.alpha_f)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            result = train_step(run, batch)
            stop = any_rank(preemption.requested, d.device)
        state.step += 1
        state.tokens += result.tokens
        state.saved = False
        if result.skipped is None:
            state.final_loss = result.loss
        else:
            run.say(f"step {state.step}: skipped ({result.skipped})")
        line = monitor.step(state.step, run.total, {"loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                                                    "skipped": result.skipped or ""},
                            result.tokens, time.perf_counter() - start, d.device)
        if bar is not None:
            bar.update(1)
        if state.step % recipe.log.every_batches == 0 or state.step == run.total:
            run.say(line)  # through the bar while it shows; the step line alone without one

        if result.rollback:
            with run.watchdog.phase():
                _rollback(run, state, result.skipped)
            if bar is not None:
                bar.n = state.step
            continue

        evaluated = _evaluate(run, state.step)
        state.icl = {k: v for k, v in evaluated.items() if k.startswith("icl/")} or state.icl
        if evaluated:
            monitor.record(state.step, evaluated)

        every = recipe.checkpoint.every_batches
        if stop or (every and state.step % every == 0) or state.step == run.total:
            _save(run, state, monitor)
        if stop:
            run.say(f"SIGTERM: saved {state.last_ckpt} at step {state.step}; exiting (start the same command to "
                    "resume)")
            return True
    return False


@torch.no_grad()
def validation_loss(model, recipe: Recipe, d: Dist, autocast) -> float:
    """Mean next-token loss on the first ``eval.batches`` batches of the eval sources (same every time).

    Every rank runs the same number of batches, so FSDP's per-forward collectives line up. With
    ``data.packing`` the eval sources are packed like the training data (``sequence_id`` included).
    """
    from .data import PackedPretrainBatches, PretrainBatches

    rank_batch = max(1, recipe.train.global_batch_size // d.world_size)
    if recipe.data.packing:
        seq_len = unwrap(model).config.max_seq_len
        batches = PackedPretrainBatches(recipe.data.eval_sources, seq_len, rank_batch, recipe.train.seed, d.rank,
                                        d.world_size, log=lambda *_: None)
    else:
        batches = PretrainBatches(recipe.data.eval_sources, rank_batch, recipe.train.seed, d.rank, d.world_size, 0)
    model.eval()
    total, count = 0.0, 0.0
    try:
        for _ in range(recipe.eval.batches):
            batch = {k: v.to(d.device) for k, v in batches.next().items()}
            with autocast:
                out = model(**batch)
            n = count_targets(batch["labels"])
            total += float(out.loss) * n
            count += n
    finally:
        model.train()
    return all_reduce_sum(total, d.device) / max(all_reduce_sum(count, d.device), 1)
