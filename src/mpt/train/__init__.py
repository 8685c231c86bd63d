"""Training: the loop, optimizers, schedules, parallelism, checkpoints, monitoring."""

from mpt._lazy import lazy_exports

_EXPORTS = {"TrainResult": ".loop", "train": ".loop", "Recipe": ".recipe", "load_recipe": ".recipe"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
