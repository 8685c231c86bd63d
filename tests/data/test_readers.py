"""``read_json_lines``: the one reader of small JSON-lines files (finetuning data, ICL tasks, the quickstart's chat data)."""

import pytest

from mpt.data.readers import DataInputError, read_json_lines


def test_objects_with_their_line_numbers_blank_lines_skipped_and_u2028_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"q": "x\u2028y\u0085z"}\n\n   \n{"q": 2}\r\n', encoding="utf-8")
    assert list(read_json_lines(path)) == [(1, {"q": "x\u2028y\u0085z"}), (4, {"q": 2})]


@pytest.mark.parametrize("line,message", [
    ('{"q": oops}', "malformed JSON (Expecting value at column 7)"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested more deeply than the parser follows"),
])
def test_a_bad_line_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "b.jsonl"
    path.write_text('{"ok": 1}\n' + line + "\n")
    with pytest.raises(DataInputError) as err:
        list(read_json_lines(path))
    assert str(err.value).startswith(f"{path}:2: {message}")
