"""``load_model``: the one way to load a checkpoint for use; every default and fallback lives here.

Training (``init_from``), evaluation, inference, export and the quickstart all call it, so a
checkpoint behaves the same whichever command reads it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from mpt.paths import check_hub_reachable, did_you_mean, first_line, looks_local

DTYPES = ("float32", "bfloat16", "float16", "float64")
SHORT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # what `--dtype` also takes
# CPU features (as Linux names them) with which bfloat16 matmuls run natively; without them oneDNN
# emulates bfloat16 through float32, slower than float32 itself.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def default_device(device: str | torch.device | None = None) -> str:
    return str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | None:
    """``None``: bfloat16 on GPU, float32 elsewhere; ``"auto"``: as saved (returns ``None``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is invalid: use auto, {', '.join(DTYPES)}")
    return getattr(torch, dtype)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux's ``/proc/cpuinfo`` names them.

    Where that file cannot be read (macOS, Windows), torch's own cpuinfo query answers for the
    flags in :data:`BF16_CPU_FLAGS`.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86, Arm
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    # Private helpers, so looked up defensively; every CPU with AMX tiles has AMX-BF16.
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def cpu_has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether a CPU with ``flags`` (default: this one's) runs bfloat16 matmuls natively."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in BF16_CPU_FLAGS)


def inference_dtype(choice: str | None, device: str | torch.device | None = None,
                    flags: frozenset[str] | None = None) -> torch.dtype:
    """The weights dtype for ``--dtype CHOICE`` of generate, chat and serve, checked before anything loads.

    ``None``: :func:`resolve_dtype`'s default. ``auto``: on CPU bfloat16 where ``flags`` (default: this
    CPU's) name native support, else float32; elsewhere the default. ``bf16`` (or ``bfloat16``) on a
    CPU without native support is an error: it would run slower than float32.
    """
    device = default_device(device)
    on_cpu = torch.device(device).type == "cpu"
    if choice == "auto":
        return (torch.bfloat16 if cpu_has_bf16(flags) else torch.float32) if on_cpu else resolve_dtype(None, device)
    dtype = resolve_dtype(SHORT_DTYPES.get(choice, choice) if choice else None, device)
    if dtype == torch.bfloat16 and on_cpu and not cpu_has_bf16(flags):
        raise ValueError(f"--dtype {choice}: this CPU has no native bfloat16 (its flags name neither "
                         f"{' nor '.join(BF16_CPU_FLAGS)}), so bfloat16 would run emulated, slower than float32; "
                         "pass --dtype fp32, or --dtype auto, which picks bfloat16 only where the CPU has it")
    return dtype


def usable_attn_impl(saved: str | None, device: str) -> str:
    """The attention path to run a checkpoint with when the caller names none.

    Off CUDA every path runs as ``torch`` (the plain path gives the same numbers); on CUDA a
    ``flash`` checkpoint falls back to ``torch`` without flash-attn, and values from other code
    bases (the original's ``triton``) to ``torch`` too.
    """
    if not device.startswith("cuda") or saved not in ("flash", "flex"):
        return "torch"
    if saved == "flash" and importlib.util.find_spec("flash_attn") is None:
        return "torch"
    return saved


def read_config_dict(path: str | Path) -> dict:
    """``config.json`` as a dict; a missing local folder or file is a one-line FileNotFoundError."""
    from transformers import PretrainedConfig

    name = str(path)
    if looks_local(path):
        if not Path(name).is_dir():
            raise FileNotFoundError(f"no such model folder: {name}")
        if not (Path(name) / "config.json").is_file():
            raise FileNotFoundError(f"{name} has no config.json: not a Hugging Face-format checkpoint "
                                    "(convert one with `mpt convert SRC DST`)")
    else:
        check_hub_reachable(name, "model")
    try:
        fields, _ = PretrainedConfig.get_config_dict(name)
    except OSError as err:
        raise FileNotFoundError(f"no such model folder or hub model: {name} ({first_line(err)}){did_you_mean(name)}"
                                ) from err
    return fields


def load_model(path: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
               attn_impl: str | None = None, quantize: str | None = None):
    """A checkpoint folder (or, online, a hub name) as a model in eval mode on ``device``.

    MPT checkpoints -- ours, transformers' ``MptForCausalLM`` and MosaicML's original layout -- load
    as :class:`~mpt.model.MPTForCausalLM`; any other causal LM (for ``mpt eval`` comparisons)
    through transformers. ``device`` defaults to CUDA when available, ``dtype`` as
    :func:`resolve_dtype`, ``attn_impl`` as :func:`usable_attn_impl`. ``quantize="int8"`` keeps the
    linear layers' weights in int8 for inference (:mod:`mpt.model.quantize`).
    """
    from .config import MPTConfig
    from .fields import saved_attn_impl
    from .modeling import MPTForCausalLM
    from .quantize import check_method, quantize_model

    device = default_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    check_method(quantize)
    fields = read_config_dict(path)
    if fields.get("model_type") != "mpt":
        from transformers import AutoModelForCausalLM

        model = _read_weights(AutoModelForCausalLM, path, dtype=torch_dtype or "auto").to(device).eval()
        return quantize_model(model, quantize)
    saved = saved_attn_impl(fields)
    # Set before validation: a config saying `flash` must still load where flash-attn is missing.
    fields["attn_config"] = {**fields.get("attn_config", {}), "attn_impl": attn_impl or usable_attn_impl(saved, device)}
    config = MPTConfig.from_dict(fields)
    model = _read_weights(MPTForCausalLM, path, config=config, dtype=torch_dtype or "auto").to(device).eval()
    return quantize_model(model, quantize)


def _read_weights(cls, path: str | Path, **kwargs):
    from safetensors import SafetensorError

    try:
        return cls.from_pretrained(str(path), **kwargs)
    except SafetensorError as err:  # its message names no file
        raise ValueError(f"{path}: the weights cannot be read ({first_line(err)}); the copy is damaged or "
                         "incomplete: copy, download or convert it again") from err
