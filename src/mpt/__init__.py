"""MPT in modern PyTorch: ``import mpt`` offers load, MPTConfig, MPTForCausalLM, KVCache (imported lazily).

Imports point one way, down this table (tests/test_layering.py checks it)::

    cli, typed_cli, checkpoint_commands  ->  anything below (cli only parses and dispatches)
    quickstart -> train, eval, infer, data, model            quickstart_report -> train
    train -> eval (in-training evaluation), data (its batches), presets, model    presets -> model
    eval -> infer (generation tasks decode with its loop), data, model            infer -> data, model
    data, model -> leaf helpers only (paths, files, storage, ranks, chatml, console, config, tables,
                   _lazy: they import nothing from mpt, so every layer may use them)
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"
_EXPORTS = {"load": ".infer.api", "KVCache": ".model.cache", "MPTConfig": ".model.config",
            "MPTConfigError": ".model.config", "MPTCheckpointError": ".model.modeling",
            "MPTForCausalLM": ".model.modeling", "MPTModel": ".model.modeling"}
__all__ = sorted(_EXPORTS)
# Every package exports this way (PEP 562): `import mpt` and `mpt --help` load neither torch nor
# transformers until a name that needs them is used.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
