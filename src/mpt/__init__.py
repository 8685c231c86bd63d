"""MPT rebuilt in modern PyTorch: model, data, training, evaluation and inference.

Layering: who may import whom (imports point one way, down this table)::

    cli, typed_cli, checkpoint_commands ->  any of the below
    quickstart                          ->  train, eval, infer, data, model
    train                               ->  eval (in-training evaluation), data (its batches), presets, model
    eval                                ->  infer (generation tasks decode with its loop), data, model
    infer                               ->  data (tokenizers), model
    data                                ->  leaf helpers only: it needs no model
    model                               ->  leaf helpers only: the network, nothing else

- Leaf helpers import nothing from ``mpt``, so every layer may use them: ``paths`` (local path or
  hub name), ``files`` (SHA-256 of a file), ``storage`` (local or object-storage paths, atomic
  writes), ``ranks`` (rank, process group, any-rank votes), ``chatml`` (the ChatML renderer),
  ``console``, ``config`` (typed YAML configs), ``tables`` (text and Markdown tables), ``_lazy``.
  ``presets`` (model presets) sits on ``model``, ``quickstart_report`` on ``train``.
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
