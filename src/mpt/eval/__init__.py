"""In-context-learning evaluation: LLM Foundry's ICL tasks, the gauntlet, an lm-eval adapter.

    from mpt.eval import evaluate, load_suite
    out = evaluate(model, tokenizer, load_suite("mpt7b").tasks, data_dir="../shared/data/eval", limit=50)

This package never imports ``mpt.train`` or ``mpt.data``; training calls :func:`evaluate`.
"""

from .gauntlet import GauntletResult, aggregate
from .harness import EvalOutput, TaskResult, evaluate, load_model, load_tokenizer
from .suite import GauntletConfig, Suite, load_gauntlet, load_suite
from .tasks import EvalTaskError, Prompt, TaskConfig

__all__ = ["EvalOutput", "EvalTaskError", "GauntletConfig", "GauntletResult", "Prompt", "Suite", "TaskConfig",
           "TaskResult", "aggregate", "evaluate", "load_gauntlet", "load_model", "load_suite", "load_tokenizer"]
