"""The MPT network and its config; knows nothing of training, data or the command line."""

from mpt._lazy import lazy_exports

_EXPORTS = {"KVCache": ".cache", "MPTConfig": ".config", "MPTConfigError": ".config",
            "MPTCheckpointError": ".modeling", "MPTForCausalLM": ".modeling", "MPTModel": ".modeling"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
