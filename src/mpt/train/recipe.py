"""The training recipe: typed sections, validated before any work starts.

Paths in a recipe are relative to the current directory, so the same recipe runs anywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import ConfigError, apply_overrides, from_dict, load_yaml, optional_fields, set_fields
from ..model.fields import ModelFields as MPTFields
from ..model.fields import check_fields, resolved
from ..presets import preset_fields


def _err(path: str, key: str, value, why: str) -> ConfigError:
    return ConfigError(f"`{path + '.' if path else ''}{key}` = {value!r}: {why}")


# Every MPTConfig field, each None by default (keep the preset's or checkpoint's value); types and
# allowed values come from the model's one declaration (model/fields.py).
ModelFieldOverrides = optional_fields(MPTFields, "ModelFieldOverrides")


def model_overrides(fields, base_attn: dict, base_init: dict) -> dict:
    """The fields a recipe sets, with attn_config / init_config merged into the base's dicts."""
    out = set_fields(fields)
    for name, base in (("attn_config", base_attn), ("init_config", base_init)):
        if name in out:
            out[name] = {**base, **out[name]}
    return out


@dataclass
class LoraSection:
    """LoRA adapters (through ``peft``): only they train; the base weights stay frozen."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["Wqkv", "out_proj", "up_proj", "down_proj"])
    # QLoRA: the frozen base's block linear layers in 4-bit NF4 (bitsandbytes); needs model.init_from
    quantize_base: bool = False

    def validate(self, path: str = "model.lora") -> None:
        if self.r < 1:
            raise _err(path, "r", self.r, "must be >= 1")
        if not self.alpha > 0:
            raise _err(path, "alpha", self.alpha, "must be > 0")
        if not 0 <= self.dropout < 1:
            raise _err(path, "dropout", self.dropout, "must be in [0, 1)")
        if not self.target_modules:
            raise _err(path, "target_modules", [], "name at least one linear layer, e.g. [Wqkv, out_proj, up_proj, "
                       "down_proj]")


@dataclass
class ModelSection:
    preset: str | None = "mpt-tiny"      # a preset name or YAML file of MPTConfig fields
    init_from: str | None = None         # a Hugging Face-format checkpoint to finetune from
    fields: ModelFieldOverrides = field(default_factory=ModelFieldOverrides)  # MPTConfig fields over the preset's
    lora: LoraSection | None = None      # train LoRA adapters instead of every weight

    def validate(self, path: str) -> None:
        if self.preset is None and self.init_from is None:
            raise _err(path, "preset", None, "give a preset or init_from")
        if self.lora is not None and self.lora.quantize_base and self.init_from is None:
            # checkpoints hold only the adapters; resume and export re-read the base from init_from
            raise _err(path, "lora.quantize_base", True, "QLoRA quantizes a pretrained base: set model.init_from to "
                       "a Hugging Face-format checkpoint")
        base = self.base_fields()
        if base is not None:  # the architecture is checked here, before the loop imports torch
            check_fields(resolved({**base, **model_overrides(self.fields, base.get("attn_config") or {},
                                                             base.get("init_config") or {})}))

    def base_fields(self) -> dict | None:
        """The fields the overrides apply to: init_from's config.json (a local folder), else the preset's;
        None when init_from is a hub name or does not exist yet (the loop reports that)."""
        if self.init_from:
            config = Path(self.init_from) / "config.json"
            return json.loads(config.read_text()) if config.is_file() else None
        return preset_fields(self.preset)


@dataclass
class SourceSection:
    path: str                            # shard folder or URL written by `mpt prep`
    proportion: float = 1.0


@dataclass
class DataSection:
    kind: Literal["pretrain", "finetune"] = "pretrain"
    sources: list[SourceSection] = field(default_factory=list)   # pretrain: token shards
    finetune_path: str | None = None     # finetune: jsonl of {prompt, response} or {messages}
    tokenizer: str | None = None         # finetune: tokenizer.json or folder
    eval_sources: list[SourceSection] = field(default_factory=list)
    num_workers: int = 0
    # several examples (finetune) or whole documents (pretrain, shards from `mpt prep --mode docs`)
    # per max_seq_len row, kept apart by document masking (the model needs
    # attn_config.attn_uses_sequence_id: true); the loss is the same as padding gives
    packing: bool = False
    # finetune, examples over max_seq_len: truncate | drop | error; default truncate, error when packing
    truncation: Literal["truncate", "drop", "error"] | None = None

    def validate(self, path: str) -> None:
        if self.kind == "pretrain" and not self.sources:
            raise _err(path, "sources", [], "pretraining needs at least one shard folder (from `mpt prep`)")
        if self.kind == "finetune" and (self.finetune_path is None or self.tokenizer is None):
            raise _err(path, "finetune_path", self.finetune_path, "finetuning needs finetune_path and tokenizer")
        if self.num_workers < 0:
            raise _err(path, "num_workers", self.num_workers, "must be >= 0")


@dataclass
class OptimizerSection:
    name: Literal["lion", "adamw"] = "lion"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8                    # AdamW only
    weight_decay: float = 0.0            # decoupled: multiplied by lr / initial lr, not by lr
    decay_norms: bool = False
    decay_embeddings: bool = False

    def validate(self, path: str) -> None:
        if not self.lr > 0:
            raise _err(path, "lr", self.lr, "must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise _err(path, "betas", self.betas, "must be two numbers in [0, 1)")
        if self.weight_decay < 0:
            raise _err(path, "weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class SchedulerSection:
    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_batches: int = 0
    alpha_f: float = 0.1                 # final lr = alpha_f * lr

    def validate(self, path: str) -> None:
        if self.warmup_batches < 0:
            raise _err(path, "warmup_batches", self.warmup_batches, "must be >= 0")
        if not 0 <= self.alpha_f <= 1:
            raise _err(path, "alpha_f", self.alpha_f, "must be in [0, 1]")


_DURATION = re.compile(r"^\s*([0-9][0-9_.eE+]*)\s*(ba|tok|ep)\s*$")


def parse_duration(text: str, path: str = "train.max_duration") -> tuple[int, str]:
    """``"4800ba"`` -> (4800, "ba"); also ``"2.5e9tok"``, ``"1ep"``."""
    m = _DURATION.match(str(text))
    if not m:
        raise ConfigError(f"`{path}` = {text!r}: expected a number followed by ba (batches), tok (tokens) "
                          "or ep (epochs), e.g. 4800ba")
    return int(float(m.group(1).replace("_", ""))), m.group(2)


@dataclass
class TrainSection:
    max_duration: str = "100ba"
    global_batch_size: int = 8           # samples per optimizer step, over all ranks
    micro_batch_size: int | Literal["auto"] = "auto"
    grad_clip: float = 1.0               # 0 disables
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False                # torch.compile each block (in place: checkpoints are unchanged)
    activation_checkpointing: bool | int = False  # true: every block; N: every Nth block (selective)
    deterministic: bool = False
    seed: int = 17
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def validate(self, path: str) -> None:
        parse_duration(self.max_duration, f"{path}.max_duration")
        if self.global_batch_size < 1:
            raise _err(path, "global_batch_size", self.global_batch_size, "must be >= 1")
        if self.micro_batch_size != "auto" and self.micro_batch_size < 1:
            raise _err(path, "micro_batch_size", self.micro_batch_size, "must be >= 1 or 'auto'")
        if self.grad_clip < 0:
            raise _err(path, "grad_clip", self.grad_clip, "must be >= 0")
        if self.activation_checkpointing is not True and int(self.activation_checkpointing) < 0:
            raise _err(path, "activation_checkpointing", self.activation_checkpointing, "must be true, false or "
                       "N >= 1 (every Nth block)")


@dataclass
class ParallelSection:
    # auto: fsdp when more than one rank. hsdp: FSDP2 on a 2-D mesh, parameters sharded within each
    # group of world_size / replicas ranks (e.g. one node) and replicated across the groups.
    strategy: Literal["auto", "none", "ddp", "fsdp", "hsdp"] = "auto"
    fsdp_sharding: Literal["full", "grad_op"] = "full"           # grad_op: keep params gathered after forward
    replicas: int = 2                                            # hsdp only: how many replica groups

    def validate(self, path: str) -> None:
        if self.replicas < 1:
            raise _err(path, "replicas", self.replicas, "must be >= 1")


@dataclass
class CheckpointSection:
    folder: str = "runs/checkpoints"
    every_batches: int = 0               # 0: only at the end (and on SIGTERM)
    keep: int = 2
    autoresume: bool = True
    # don't resume: move this run's checkpoints in the folder aside (renamed step-N.old) and start from scratch.
    # For one command, not a recipe: the run's restart after a crash would start over again.
    start_over: bool = False
    lease_seconds: float = 120.0         # object storage: a run's lease not renewed this long is taken over
    export_hf: str | None = None         # write a Hugging Face checkpoint here at the end

    def validate(self, path: str) -> None:
        if self.every_batches < 0:
            raise _err(path, "every_batches", self.every_batches, "must be >= 0")
        if self.keep < 1:
            raise _err(path, "keep", self.keep, "must be >= 1")
        if not self.lease_seconds > 0:
            raise _err(path, "lease_seconds", self.lease_seconds, "must be > 0")


@dataclass
class LogSection:
    folder: str = "runs"                 # metrics.jsonl, loss_curve.png, tensorboard/
    every_batches: int = 1
    tensorboard: bool = False
    peak_tflops: float | None = None     # override the device's peak for MFU


@dataclass
class SpikeSection:
    enabled: bool = True
    window: int = 50                     # recent losses the median is taken over
    min_history: int = 10                # no spike verdicts before this many losses
    factor: float = 2.0                  # a loss above factor * median is a spike
    patience: int = 3                    # consecutive bad steps before rolling back
    rollback: bool = True                # else stop with an error
    max_rollbacks: int = 3               # then stop: the trouble is not a passing spike

    def validate(self, path: str) -> None:
        if self.factor <= 1:
            raise _err(path, "factor", self.factor, "must be > 1")
        if self.window < self.min_history or self.min_history < 1:
            raise _err(path, "window", self.window, "must be >= min_history >= 1")


@dataclass
class WatchdogSection:
    enabled: bool = True
    factor: float = 20.0                 # a step taking factor * the median step time is a hang
    min_seconds: float = 300.0           # never fire sooner than this
    phase_seconds: float = 1800.0        # limit for each evaluation, save, rollback and the export

    def validate(self, path: str) -> None:
        if self.min_seconds <= 0 or self.phase_seconds <= 0 or self.factor <= 1:
            raise _err(path, "min_seconds", (self.min_seconds, self.phase_seconds, self.factor),
                       "min_seconds and phase_seconds must be > 0 and factor > 1")


@dataclass
class ICLSection:
    """In-context-learning tasks run on the live model during training (``mpt eval``'s harness)."""

    tasks: list[str] = field(default_factory=list)  # suite names, suite YAMLs or task .jsonl files
    every_batches: int = 0               # 0: never
    limit: int | None = 200              # first N examples of each task
    data_dir: str | None = None          # where suites' task files live (default: $MPT_EVAL_DATA)
    tokenizer: str | None = None         # default: the tokenizer recorded with the data
    batch_size: int = 16

    def validate(self, path: str) -> None:
        if self.every_batches < 0:
            raise _err(path, "every_batches", self.every_batches, "must be >= 0")
        if self.every_batches and not self.tasks:
            raise _err(path, "tasks", self.tasks, "give suite names or task files to evaluate")
        if self.limit is not None and self.limit < 1:
            raise _err(path, "limit", self.limit, "must be >= 1 (or null for every example)")
        if self.batch_size < 1:
            raise _err(path, "batch_size", self.batch_size, "must be >= 1")


@dataclass
class EvalSection:
    every_batches: int = 0               # validation loss every N batches; 0: never
    batches: int = 4
    icl: ICLSection = field(default_factory=ICLSection)


@dataclass
class Recipe:
    run_name: str = "mpt"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    spike: SpikeSection = field(default_factory=SpikeSection)
    watchdog: WatchdogSection = field(default_factory=WatchdogSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def validate(self, path: str) -> None:
        lora = self.model.lora
        if lora is not None and lora.quantize_base and self.parallel.strategy in ("fsdp", "hsdp"):
            raise ConfigError(f"`parallel.strategy` = {self.parallel.strategy!r} with `model.lora.quantize_base` = "
                              "true: FSDP2 cannot shard bitsandbytes' 4-bit weights; use parallel.strategy=ddp "
                              "(auto picks ddp for a quantized base) or none")
        _, unit = parse_duration(self.train.max_duration)
        if unit == "ep" and self.data.kind == "pretrain" and len(self.data.sources) > 1:
            raise ConfigError("`train.max_duration` in epochs needs a single data source; use ba or tok")


def load_recipe(path: str, overrides: list[str] | None = None) -> Recipe:
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(Recipe, data)
