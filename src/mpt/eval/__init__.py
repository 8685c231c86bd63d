"""In-context-learning evaluation: LLM Foundry's ICL tasks, the gauntlet, an lm-eval adapter.

    from mpt.eval import evaluate, load_suite
    out = evaluate(model, tokenizer, load_suite("mpt7b").tasks, data_dir="../shared/data/eval", limit=50)

This package never imports ``mpt.train`` (training calls :func:`evaluate`); models and tokenizers load
through ``mpt.model.load.load_model`` and ``mpt.data.tokenize.load_tokenizer``, as everywhere.
"""

from mpt._lazy import lazy_exports

_EXPORTS = {"GauntletResult": ".gauntlet", "aggregate": ".gauntlet", "EvalOutput": ".harness",
            "TaskResult": ".harness", "evaluate": ".harness", "load_model": "mpt.model.load",
            "load_tokenizer": "mpt.data.tokenize", "GauntletConfig": ".suite", "Suite": ".suite",
            "load_gauntlet": ".suite", "load_suite": ".suite", "EvalTaskError": ".tasks", "Prompt": ".tasks",
            "TaskConfig": ".tasks", "ExampleRow": ".task_types", "ICLTaskType": ".task_types",
            "TASK_TYPES": ".task_types"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
