"""MPT rebuilt in modern PyTorch: model, data, training, evaluation and inference."""

from .infer import load
from .model import KVCache, MPTCheckpointError, MPTConfig, MPTConfigError, MPTForCausalLM, MPTModel

__version__ = "0.1.0"
__all__ = ["KVCache", "MPTCheckpointError", "MPTConfig", "MPTConfigError", "MPTForCausalLM", "MPTModel", "load"]
