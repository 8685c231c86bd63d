"""Combine task accuracies into LLM Foundry's gauntlet scores (v0.3 arithmetic).

For each benchmark: ``(accuracy - random_baseline) / (1 - random_baseline)`` (baseline
subtracted, then rescaled so a perfect score is 1). A category is the weighted mean of its
benchmarks (EQUAL weighting: the plain mean); a category with a benchmark missing from the
results is dropped, as LLM Foundry drops it. Each named average (``core_average``) is the mean of
its categories that have a score; the categories it lacks are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .suite import GauntletConfig


@dataclass
class GauntletResult:
    categories: dict[str, float]
    averages: dict[str, float]
    benchmarks: dict[str, float]  # "label/k-shot" -> rescaled score
    missing: dict[str, list[str]] = field(default_factory=dict)  # category -> benchmarks without results
    averages_missing: dict[str, list[str]] = field(default_factory=dict)  # average -> categories without a score


def benchmark_score(accuracy: float, random_baseline: float, cfg: GauntletConfig) -> float:
    score = accuracy
    if cfg.subtract_random_baseline:
        score -= random_baseline
        if cfg.rescale_accuracy:
            score /= 1.0 - random_baseline
    return score


def aggregate(accuracies: dict[str, float], cfg: GauntletConfig) -> GauntletResult:
    """``accuracies`` maps "label/k-shot" (e.g. "arc_easy/3-shot") to the task's accuracy."""
    result = GauntletResult({}, {}, {})
    for cat in cfg.categories:
        scores, missing = [], []
        for b in cat.benchmarks:
            key = f"{b.name}/{b.num_fewshot}-shot"
            if key not in accuracies:
                missing.append(key)
                continue
            s = benchmark_score(accuracies[key], b.random_baseline, cfg)
            result.benchmarks[key] = s
            scores.append(s)
        if missing:
            result.missing[cat.name] = missing
        elif scores:
            result.categories[cat.name] = sum(scores) / len(scores)  # EQUAL weighting
    for name, cats in cfg.averages.items():
        have = [result.categories[c] for c in cats if c in result.categories]
        lacking = [c for c in cats if c not in result.categories]
        if lacking:
            result.averages_missing[name] = lacking
        if have:
            result.averages[name] = sum(have) / len(have)
    return result
