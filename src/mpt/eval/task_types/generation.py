"""``generation_task_with_answers`` (QA): the model answers by greedy generation.

Record: ``context`` (str), ``answer`` (str), optional ``aliases`` (list of str). Right when the
generation, cut at the first stop sequence and normalised, starts with a normalised answer or alias
(LLM Foundry's ``InContextLearningGenerationExactMatchAccuracy``); rows are :class:`GenerationRow`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import ExampleRow, ICLTaskType

if TYPE_CHECKING:
    from ..encode import Encoded
    from ..runner import EvalModel
    from ..tasks import Prompt, TaskConfig


@dataclass
class GenerationRow(ExampleRow):
    generation: str  # the decoded new tokens
    prediction: str  # the generation cut at the first stop sequence


_PUNCT = set(string.punctuation + "‘’´`")


def normalize_answer(text: str) -> str:
    """TriviaQA's answer normalisation: lower case, punctuation and articles removed, spaces collapsed."""
    text = text.replace("_", " ").lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split()).strip()


def cut_at_stop(text: str, stop_sequences: list[str]) -> str:
    """The text before the first stop sequence (greedy decoding makes this the same as stopping there)."""
    for stop in stop_sequences:
        text = text.split(stop, 1)[0]
    return text


def qa_correct(generation: str, answers: list[str], stop_sequences: list[str], do_normalization: bool) -> bool:
    answer = cut_at_stop(generation, stop_sequences)
    if do_normalization:
        answer = normalize_answer(answer)
        golds = {normalize_answer(a) for a in answers}
    else:
        golds = set(answers)
    return any(answer.startswith(g) for g in golds)


def max_answer_tokens(tokenizer, records: list[dict]) -> int:
    """LLM Foundry's generation budget: the longest answer or alias in tokens."""
    texts = [a for rec in records for a in [rec["answer"], *rec.get("aliases", [])]]
    return max([1, *(len(ids) for ids in tokenizer(texts)["input_ids"])])  # one batched call: fast


class Generation(ICLTaskType):
    name = "generation_task_with_answers"
    metric = "InContextLearningGenerationExactMatchAccuracy"
    fields = {"context": str, "answer": str}

    def problem(self, rec: dict) -> str | None:
        aliases = rec.get("aliases", [])
        if not (isinstance(aliases, list) and all(isinstance(a, str) for a in aliases)):
            return f"field 'aliases' must be a list of strings, got {rec['aliases']!r:.120}"
        return None

    def question(self, rec: dict) -> str:
        return rec["context"]

    def solution(self, rec: dict) -> str:
        return rec["answer"]

    def answers(self, rec: dict) -> list[str]:
        return sorted({rec["answer"], *rec.get("aliases", [])})

    def new_tokens(self, task: TaskConfig, tokenizer, records: list[dict]) -> int:
        return task.max_new_tokens or max_answer_tokens(tokenizer, records)

    def run(self, model: EvalModel, task: TaskConfig, encoded: list[Encoded], records: list[dict],
            new_tokens: int) -> list[ExampleRow]:
        texts = model.generate([e.contexts[0] for e in encoded], new_tokens)
        stops = task.early_stopping_criteria
        return [GenerationRow(**self.shared_fields(task, e, records, qa_correct(text, e.prompt.answers, stops,
                                                                                task.do_normalization),
                                                   gold=e.prompt.answers),
                              generation=text, prediction=cut_at_stop(text, stops))
                for e, text in zip(encoded, texts, strict=True)]

    def lm_eval_doc(self, p: Prompt) -> dict:
        return dict(prompt=p.preamble + p.contexts[0], answer=p.answers[0])

    def lm_eval_spec(self, task: TaskConfig, tokenizer, records: list[dict], max_new_tokens: int | None) -> dict:
        return dict(output_type="generate_until", doc_to_text="prompt", doc_to_target="answer",
                    generation_kwargs={"until": list(task.early_stopping_criteria) or [tokenizer.eos_token],
                                       "max_gen_toks": max_new_tokens or self.new_tokens(task, tokenizer, records),
                                       "do_sample": False},
                    metric_list=[{"metric": "exact_match"}])
