"""LoRA adapters through the ``peft`` library (not a rewrite of it).

Our module names are MosaicML's (``transformer.blocks.N.attn.Wqkv``, ``attn.out_proj``,
``ffn.up_proj``, ``ffn.down_proj``), which transformers' own ``MptForCausalLM`` shares, so an
adapter saved here in PEFT's format loads with ``peft.PeftModel.from_pretrained`` onto a
transformers MPT as well as onto ours. Exports are either the merged model (a plain transformers
MPT folder) or the adapter alone.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

from torch import nn

from .recipe import LoraSection


class LoraError(ValueError):
    """A LoRA setting or adapter does not fit the model."""


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last name components of the model's linear layers (what target_modules matches)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def apply_lora(model: nn.Module, cfg: LoraSection, log=print):
    """Wrap ``model`` in a ``peft.PeftModel`` whose only trainable parameters are the adapters."""
    import peft

    cfg.validate()
    if cfg.quantize_base and not getattr(model, "is_loaded_in_4bit", False):
        # quantizing needs the run's device and dtype, which a LoRA config does not know
        raise LoraError("model.lora.quantize_base: quantize the base first (mpt.train.qlora.quantize_base), "
                        "then apply LoRA")
    available = linear_names(model)
    unknown = [t for t in cfg.target_modules if t not in available]
    if unknown:
        raise LoraError(f"`model.lora.target_modules` = {cfg.target_modules!r}: {unknown} are not linear layers of "
                        f"this model; its linear layers are {available}")
    lora = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), bias="none")
    with warnings.catch_warnings():  # peft asks transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        wrapped = peft.get_peft_model(model, lora)
    trainable, total = wrapped.get_nb_trainable_parameters()
    log(f"LoRA r={cfg.r} alpha={cfg.alpha} on {', '.join(cfg.target_modules)}: {trainable:,} trainable parameters "
        f"of {total:,} ({100 * trainable / total:.2f} %)")
    return wrapped


def export_merged(peft_model, dst: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """The adapters folded into the weights: a plain MPT checkpoint (transformers loads it natively).

    Merges a copy, so the model being trained keeps its adapters.
    """
    from ..model.hf import save_pretrained

    merged = copy.deepcopy(peft_model).merge_and_unload()
    save_pretrained(merged, dst, tokenizer_from)
    return Path(dst)


def export_adapter(peft_model, dst: str | Path) -> Path:
    """The adapter alone, in PEFT's format (adapter_config.json + adapter_model.safetensors)."""
    peft_model.save_pretrained(str(dst))
    return Path(dst)


def load_adapter(model: nn.Module, adapter: str | Path, trainable: bool = False):
    """``peft.PeftModel.from_pretrained`` after checking that every adapter tensor fits ``model``.

    peft would report a mismatched base as a size error deep in ``load_state_dict``, or, for a
    module the model lacks, not at all; here the error names the tensor, both shapes and the base.
    """
    import peft
    from safetensors.torch import load_file

    adapter = Path(adapter)
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise LoraError(f"{adapter}: no adapter_model.safetensors; expected a folder written by export_adapter "
                        "or peft's save_pretrained")
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    modules = dict(model.named_modules())
    problems = []
    for key, tensor in load_file(str(weights)).items():
        path, _, kind = key.rpartition(".lora_")
        name = path.removeprefix("base_model.model.")
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            problems.append(f"{key}: the model has no linear layer {name}")
            continue
        want = (tensor.shape[0], module.in_features) if kind.startswith("A") else (module.out_features, tensor.shape[1])
        if tuple(tensor.shape) != want:
            problems.append(f"{key}: shape {tuple(tensor.shape)}, the model needs {want}")
    if problems:
        raise LoraError(f"adapter {adapter} (trained on base {base!r}) does not fit this model:\n  "
                        + "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10
                                                         else ""))
    return peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
