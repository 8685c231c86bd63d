"""``schema``: context options and one continuation; the model picks the context it continues best.

Record: ``context_options`` (list of str), ``continuation`` (str), ``gold`` (index of the right
option), as in Winograd and Winogrande. The same continuation is scored after every context; lm-eval
scores the same strings in its "multiple inputs" mode (``doc_to_text`` giving the gold index).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import with_prefix_space, without_prefix_space
from .choice import ChoiceTaskType

if TYPE_CHECKING:
    from ..tasks import Prompt, TaskConfig


class Schema(ChoiceTaskType):
    name = "schema"
    fields = {"context_options": list, "continuation": str, "gold": int}
    options_field = "context_options"

    def question(self, rec: dict) -> str:
        return rec["context_options"][rec["gold"]]

    def solution(self, rec: dict) -> str:
        return rec["continuation"]

    def demonstration(self, task: TaskConfig, rec: dict, preceding: str) -> str:
        # LLM Foundry puts the prelimiter before the example delimiter here (unlike the other types).
        delim = task.example_delimiter if preceding else ""
        return f"{task.prelimiter}{delim}{self.question(rec)}{task.continuation_delimiter}{self.solution(rec)}"

    def contexts(self, task: TaskConfig, rec: dict, preamble: str) -> list[str]:
        if preamble:
            delim = task.continuation_delimiter.rstrip() if task.strip_dataset else task.continuation_delimiter
            return [f"{task.prelimiter}{task.example_delimiter}{c}{delim}" for c in rec["context_options"]]
        return [f"{task.prelimiter}{c}" for c in rec["context_options"]]

    def continuations(self, rec: dict, prefix_space: bool) -> list[str]:
        return [with_prefix_space(rec["continuation"], prefix_space)]

    def options(self, p: Prompt) -> list[str]:
        return p.contexts

    def row_extras(self, p: Prompt) -> dict:
        return {"continuation": p.continuations[0], "shown": p.gold}

    def lm_eval_doc(self, p: Prompt) -> dict:
        return dict(contexts=[p.preamble + c for c in p.contexts], continuation=without_prefix_space(p.continuations[0]),
                    gold=p.gold)

    def lm_eval_spec(self, task: TaskConfig, tokenizer, records: list[dict], max_new_tokens: int | None) -> dict:
        # doc_to_text giving an int is lm-eval's "multiple inputs" mode: the options are contexts
        return dict(output_type="multiple_choice", doc_to_text="gold", doc_to_choice="contexts",
                    doc_to_target="continuation", metric_list=[{"metric": "acc"}])
