"""What every ICL task type provides, and the fields every per-example result row shares.

:class:`ICLTaskType` is the interface the harness, the task reader and the lm-eval adapter call;
each task type (one module beside this one) implements it and returns rows derived from
:class:`ExampleRow`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..encode import Encoded
    from ..runner import EvalModel
    from ..tasks import Prompt, TaskConfig


@dataclass
class ExampleRow:
    """One evaluated example, as written to ``--examples`` (one JSON line each)."""

    task: str
    num_fewshot: int  # demonstrations asked for
    index: int  # 0-based record number in the file
    line: int
    category: str | None
    prompt: str  # what the model read (schema: with the gold context option)
    continuation: str | None  # the scored text, where one text is scored after every context
    gold: int | list[str]  # index of the right option, or the accepted answers
    correct: bool
    fewshot_used: int
    fewshot_dropped: int
    context_cut: int

    def to_json(self) -> dict:
        return asdict(self)


def with_prefix_space(text: str, needed: bool) -> str:
    # GPT-style BPE encodes " word" as one token: the scored answer gets the space the
    # delimiter's rstrip removed from the context.
    return f" {text}" if needed and not text.startswith(" ") else text


def without_prefix_space(text: str) -> str:
    """The scored text minus the prefix space lm-eval's ``target_delimiter: " "`` puts back."""
    if not text.startswith(" "):
        raise ValueError(f"continuation {text!r} has no prefix space to hand to lm-eval's target_delimiter "
                         "(a tokenizer without the prefix-space rule); export is for GPT-style BPE tokenizers")
    return text[1:]


class ICLTaskType(ABC):
    """One of LLM Foundry's ICL task types: its record fields, prompt strings, scoring and lm-eval form."""

    name: ClassVar[str]  # LLM Foundry's ``icl_task_type``
    metric: ClassVar[str]  # the LLM Foundry metric class whose number ``accuracy`` is
    fields: ClassVar[dict[str, type]]  # fields every record needs, with their JSON types

    # ---- reading -------------------------------------------------------------------------------
    def problem(self, rec: dict) -> str | None:
        """What is wrong with a record whose required fields are present and typed, if anything."""
        return None

    # ---- prompt strings (LLM Foundry's, commit 8c8dd48) ------------------------------------------
    @abstractmethod
    def question(self, rec: dict) -> str:
        """The text the model reads before the continuation delimiter."""

    @abstractmethod
    def solution(self, rec: dict) -> str:
        """The right answer, as a demonstration shows it (no added prefix space)."""

    def demonstration(self, task: TaskConfig, rec: dict, preceding: str) -> str:
        """One solved example for the preamble, after the text ``preceding`` it."""
        delim = task.example_delimiter if preceding else ""
        return f"{delim}{task.prelimiter}{self.question(rec)}{task.continuation_delimiter}{self.solution(rec)}"

    def contexts(self, task: TaskConfig, rec: dict, preamble: str) -> list[str]:
        """The example's own context(s), placed after the preamble."""
        ctx = f"{task.example_delimiter if preamble else ''}{task.prelimiter}{self.question(rec)}" \
              f"{task.continuation_delimiter}"
        # A context ending in a space makes models degenerate; the scored answer gets the space instead.
        return [ctx.rstrip() if task.strip_dataset else ctx]

    def continuations(self, rec: dict, prefix_space: bool) -> list[str]:
        """The scored texts, each read after every context (none for a generated answer)."""
        return []

    def answers(self, rec: dict) -> list[str]:
        """Accepted generated answers (none for a scored continuation)."""
        return []

    # ---- running on a model ----------------------------------------------------------------------
    def new_tokens(self, task: TaskConfig, tokenizer, records: list[dict]) -> int:
        """Tokens generated per example (kept free in the window); 0 when texts are only scored."""
        return 0

    @abstractmethod
    def run(self, model: EvalModel, task: TaskConfig, encoded: list[Encoded], records: list[dict],
            new_tokens: int) -> list[ExampleRow]:
        """Score (or generate for) every example; one row each, in order."""

    def shared_fields(self, task: TaskConfig, e: Encoded, records: list[dict], correct: bool, *,
                      continuation: str | None = None, gold: int | list[str] | None = None, shown: int = 0) -> dict:
        """The :class:`ExampleRow` fields of ``e``; ``shown`` is the context written as its prompt and
        ``gold`` defaults to the prompt's gold index."""
        p = e.prompt
        return dict(task=task.label, num_fewshot=len(p.fewshot) + e.fewshot_dropped, index=p.index,
                    line=records[p.index]["_line"], category=p.category, prompt=p.preamble + p.contexts[shown],
                    continuation=continuation, gold=p.gold if gold is None else gold, correct=bool(correct),
                    fewshot_used=len(p.fewshot), fewshot_dropped=e.fewshot_dropped, context_cut=e.context_cut)

    # ---- lm-evaluation-harness -------------------------------------------------------------------
    @abstractmethod
    def lm_eval_doc(self, p: Prompt) -> dict:
        """The fields of one exported document (besides ``index``) holding ``p``'s rendered strings."""

    @abstractmethod
    def lm_eval_spec(self, task: TaskConfig, tokenizer, records: list[dict], max_new_tokens: int | None) -> dict:
        """The task YAML's keys that say how lm-eval scores the exported documents."""
