"""The MPT network and its config; knows nothing of training, data or the command line."""

from .cache import KVCache
from .config import MPTConfig, MPTConfigError
from .modeling import MPTCheckpointError, MPTForCausalLM, MPTModel

__all__ = ["KVCache", "MPTCheckpointError", "MPTConfig", "MPTConfigError", "MPTForCausalLM", "MPTModel"]
