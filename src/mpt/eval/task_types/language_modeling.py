"""``language_modeling``: a context and its continuation; right when the model would write it greedily.

Record: ``context`` (str), ``continuation`` (str). Right when every continuation token is the
model's argmax (LLM Foundry's ``InContextLearningLMAccuracy``, lm-eval's ``is_greedy``); rows are
:class:`LMRow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import ExampleRow, ICLTaskType, with_prefix_space

if TYPE_CHECKING:
    from ..encode import Encoded
    from ..runner import EvalModel
    from ..tasks import Prompt, TaskConfig


@dataclass
class LMRow(ExampleRow):
    logprobs: list[float]  # one: the continuation's summed log-probability
    n_tokens: list[int]
    prediction: int  # 0: the greedy continuation is the gold one, 1: it is not


class LanguageModeling(ICLTaskType):
    name = "language_modeling"
    metric = "InContextLearningLMAccuracy"
    fields = {"context": str, "continuation": str}

    def question(self, rec: dict) -> str:
        return rec["context"]

    def solution(self, rec: dict) -> str:
        return rec["continuation"]

    def continuations(self, rec: dict, prefix_space: bool) -> list[str]:
        return [with_prefix_space(rec["continuation"], prefix_space)]

    def run(self, model: EvalModel, task: TaskConfig, encoded: list[Encoded], records: list[dict],
            new_tokens: int) -> list[ExampleRow]:
        rows: list[ExampleRow] = []
        for e, (s,) in zip(encoded, model.loglikelihoods(encoded, greedy=True), strict=True):
            rows.append(LMRow(**self.shared_fields(task, e, records, s.greedy, continuation=e.prompt.continuations[0]),
                              logprobs=[s.logprob], n_tokens=[s.n_tokens], prediction=int(not s.greedy)))
        return rows

    def lm_eval_doc(self, p: Prompt) -> dict:
        # lm-eval's loglikelihood requests take the target as is (no target_delimiter)
        return dict(prompt=p.preamble + p.contexts[0], continuation=p.continuations[0])

    def lm_eval_spec(self, task: TaskConfig, tokenizer, records: list[dict], max_new_tokens: int | None) -> dict:
        return dict(output_type="loglikelihood", doc_to_text="prompt", doc_to_target="continuation",
                    metric_list=[{"metric": "acc"}])
