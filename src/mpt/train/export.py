"""A training checkpoint -> a Hugging Face-format folder: merged, as a PEFT adapter, or from QLoRA.

``mpt export`` and the end of ``mpt train`` (``checkpoint.export_hf``) call :func:`export_hf`. It runs
in one process with no process group: rank 0 calls it alone while the other ranks wait. A LoRA run's
checkpoint exports merged (a plain MPT folder) or, with ``adapter_only``, as the adapter alone; a
QLoRA run's checkpoint holds only the adapters, so the merge re-reads the base it came from and
rounds it through NF4 the way training saw it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..storage import location
from .checkpoint import CheckpointError, complete_checkpoints, load_weights, verify


def find_checkpoint(src):
    """``src`` itself if it is a checkpoint (a step-N folder), else the newest complete one in it; None if neither."""
    src = location(src)
    if (src / "trainer_state.json").is_file():
        return src
    found = complete_checkpoints(src)
    return found[-1] if found else None


def export_hf(checkpoint, out_dir, tokenizer_from=None, adapter_only: bool = False) -> Path:
    """Write ``checkpoint`` (or the newest checkpoint in that folder) to ``out_dir``; returns the one used.

    The tokenizer recorded with the run (``trainer_state.json``) is copied unless ``tokenizer_from``
    names another.
    """
    from ..model import MPTConfig, MPTForCausalLM
    from ..model.hf import save_pretrained

    path = find_checkpoint(checkpoint)
    if path is None:
        raise FileNotFoundError(f"{location(checkpoint)} is neither a checkpoint (step-N folder) nor a folder of them")
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
    load_weights(path, model, state.get("trainable_only", False))
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
