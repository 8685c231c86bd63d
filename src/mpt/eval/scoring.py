"""How each task type turns model outputs into a prediction and a right/wrong.

Each function takes plain numbers or strings (what the runner measured) so that the rules can
be checked by hand:

* language_modeling -- right when every continuation token is the model's greedy choice
  (LLM Foundry's ``InContextLearningLMAccuracy``);
* multiple_choice / schema -- the option with the highest log-likelihood of its continuation,
  per token by default (LLM Foundry picks the lowest perplexity = exp(mean NLL)); ties go to
  the lowest index;
* generation_task_with_answers -- the generation, cut at the first stop sequence and
  normalised, starts with a normalised answer or alias
  (``InContextLearningGenerationExactMatchAccuracy``).
"""

from __future__ import annotations

import re
import string


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
