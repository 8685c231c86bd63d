"""``multiple_choice``: a query and its choices; the model picks the likeliest choice after the query.

Record: ``query`` (str), ``choices`` (list of str), ``gold`` (index of the right choice). Every
choice is scored after the same context; lm-eval scores the same strings with ``acc`` and
``acc_norm`` (our ``normalization: none`` and ``char``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import with_prefix_space, without_prefix_space
from .choice import ChoiceTaskType

if TYPE_CHECKING:
    from ..tasks import Prompt, TaskConfig


class MultipleChoice(ChoiceTaskType):
    name = "multiple_choice"
    fields = {"query": str, "choices": list, "gold": int}
    options_field = "choices"

    def question(self, rec: dict) -> str:
        return rec["query"]

    def solution(self, rec: dict) -> str:
        return rec["choices"][rec["gold"]]

    def continuations(self, rec: dict, prefix_space: bool) -> list[str]:
        return [with_prefix_space(c, prefix_space) for c in rec["choices"]]

    def options(self, p: Prompt) -> list[str]:
        return p.continuations

    def lm_eval_doc(self, p: Prompt) -> dict:
        return dict(prompt=p.preamble + p.contexts[0], choices=[without_prefix_space(c) for c in p.continuations],
                    gold=p.gold)

    def lm_eval_spec(self, task: TaskConfig, tokenizer, records: list[dict], max_new_tokens: int | None) -> dict:
        return dict(output_type="multiple_choice", doc_to_text="prompt", doc_to_choice="choices", doc_to_target="gold",
                    metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
