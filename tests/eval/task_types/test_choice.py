"""The rules of picking a choice and of a correct QA answer, by hand."""

from mpt.eval.task_types.choice import choice_scores, pick
from mpt.eval.task_types.generation import normalize_answer, qa_correct


def test_scoring_rules_by_hand():
    assert choice_scores([-6.0, -4.0], [3, 1], [10, 2], "token") == [-2.0, -4.0]
    assert choice_scores([-6.0, -4.0], [3, 1], [12, 2], "char") == [-0.5, -2.0]
    assert choice_scores([-6.0, -4.0], [3, 1], [12, 2], "none") == [-6.0, -4.0]
    assert pick([-2.0, -1.0, -1.0]) == 1  # ties go to the first
    assert normalize_answer("The  Beatles'_song!") == "beatles song"
    assert qa_correct(" The Onion skins\nQuestion:", ["Onion"], [], True)  # prefix match after normalising
    assert not qa_correct(" On", ["Onion"], [], True)
    assert not qa_correct(" a\nOnion", ["Onion"], ["\n"], True)
    assert qa_correct("Paris, France", ["paris"], [], True) and not qa_correct("Paris", ["paris"], [], False)
