"""The ICL task types, by LLM Foundry's ``icl_task_type`` name: the one place that name is mapped.

Each type is a class in its own module here (:class:`~.base.ICLTaskType`): its record fields,
prompt strings, scoring, result rows and lm-eval form. Adding a type is a module plus its line in
:data:`TASK_TYPES` (whose order is the order error messages list the types in).
"""

from __future__ import annotations

from .base import ExampleRow, ICLTaskType
from .generation import Generation
from .language_modeling import LanguageModeling
from .multiple_choice import MultipleChoice
from .schema import Schema

TASK_TYPES: dict[str, ICLTaskType] = {t.name: t for t in (LanguageModeling(), MultipleChoice(), Schema(),
                                                           Generation())}

__all__ = ["TASK_TYPES", "ExampleRow", "ICLTaskType"]
