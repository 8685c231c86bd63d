"""Training: the loop, optimizers, schedules, parallelism, checkpoints, monitoring."""

from .loop import TrainResult, train
from .recipe import Recipe, load_recipe

__all__ = ["Recipe", "TrainResult", "load_recipe", "train"]
