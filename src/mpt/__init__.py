"""MPT rebuilt in modern PyTorch: model, data, training, evaluation and inference.

Layering (imports point one way)::

    cli  ->  train, eval, infer, data, quickstart  ->  model

- ``mpt.model`` is the network only: it imports none of the other packages.
- ``mpt.data`` (text -> tokens -> shards -> batches) needs no model.
- ``mpt.eval`` and ``mpt.infer`` run without ``mpt.train``; ``mpt.train`` may call ``mpt.eval``
  for in-training evaluation, and ``mpt.data`` for its batches.
- ``mpt.cli`` only parses and dispatches; the work is in functions a user can import.

Every package here imports lazily (PEP 562, :mod:`mpt._lazy`): ``import mpt`` and ``mpt --help``
load neither torch nor transformers until a name that needs them is used.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"
_EXPORTS = {"load": ".infer.api", "KVCache": ".model.cache", "MPTConfig": ".model.config",
            "MPTConfigError": ".model.config", "MPTCheckpointError": ".model.modeling",
            "MPTForCausalLM": ".model.modeling", "MPTModel": ".model.modeling"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
