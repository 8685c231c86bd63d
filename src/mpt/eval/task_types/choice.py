"""What multiple choice and schema share: options in a record, picked by their log-likelihood.

The option with the highest log-likelihood of its scored text wins, per token by default (LLM
Foundry picks the lowest perplexity = exp(mean NLL)); ties go to the lowest index. Rows are
:class:`ChoiceRow`; the lm-eval form is a ``multiple_choice`` task scored with ``acc``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .base import ExampleRow, ICLTaskType

if TYPE_CHECKING:
    from ..encode import Encoded
    from ..runner import EvalModel
    from ..tasks import Prompt, TaskConfig


@dataclass
class ChoiceRow(ExampleRow):
    logprobs: list[float]  # per option: summed log-probability of its scored tokens
    n_tokens: list[int]
    scores: list[float]  # what is compared (see TaskConfig.normalization)
    prediction: int
    options: list[str]


def choice_scores(logprobs: list[float], n_tokens: list[int], char_lens: list[int], normalization: str) -> list[float]:
    """The number compared across options: higher is better."""
    if normalization == "token":
        return [lp / n for lp, n in zip(logprobs, n_tokens, strict=True)]
    if normalization == "char":
        return [lp / max(c, 1) for lp, c in zip(logprobs, char_lens, strict=True)]
    if normalization == "none":
        return list(logprobs)
    raise ValueError(f"unknown normalization {normalization!r}; use token, char or none")


def pick(scores: list[float]) -> int:
    """Index of the best score; the first one on a tie."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


class ChoiceTaskType(ICLTaskType):
    """A task whose record lists options (``options_field``) and the index of the right one (``gold``)."""

    metric = "InContextLearningMultipleChoiceAccuracy"
    options_field: ClassVar[str]

    def problem(self, rec: dict) -> str | None:
        options, name = rec[self.options_field], self.options_field
        if not options:
            return f"field {name!r} is empty; give at least two options"
        if not all(isinstance(o, str) for o in options):
            return f"field {name!r} must hold strings, got {options!r:.120}"
        if not 0 <= rec["gold"] < len(options):
            return (f"field 'gold' = {rec['gold']} is out of range for {len(options)} {name} (use an index from 0 "
                    f"to {len(options) - 1})")
        return None

    @abstractmethod
    def options(self, p: Prompt) -> list[str]:
        """The rendered texts that differ between options (written to the row)."""

    def row_extras(self, p: Prompt) -> dict:
        """The shared row fields this type sets: the scored continuation and the context shown."""
        return {}

    def run(self, model: EvalModel, task: TaskConfig, encoded: list[Encoded], records: list[dict],
            new_tokens: int) -> list[ExampleRow]:
        rows: list[ExampleRow] = []
        for e, scored in zip(encoded, model.loglikelihoods(encoded, greedy=False), strict=True):
            logprobs, n_tokens = [s.logprob for s in scored], [s.n_tokens for s in scored]
            raw = records[e.prompt.index][self.options_field]
            scores = choice_scores(logprobs, n_tokens, [len(o) for o in raw], task.normalization)
            pred = pick(scores)
            rows.append(ChoiceRow(**self.shared_fields(task, e, records, pred == e.prompt.gold,
                                                       **self.row_extras(e.prompt)),
                                  logprobs=logprobs, n_tokens=n_tokens, scores=scores, prediction=pred,
                                  options=self.options(e.prompt)))
        return rows
