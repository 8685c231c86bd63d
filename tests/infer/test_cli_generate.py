"""`mpt generate` from an argument, a file and stdin."""

import io
import json

from mpt.cli import main


def test_generate_from_argument_streams_the_greedy_text(llm, checkpoint, capsys):
    assert main(["generate", str(checkpoint), "Hello world", "--max-new-tokens", "8", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out == llm.generate("Hello world", max_new_tokens=8).text + "\n"
    assert "tokens/s" in err


def test_generate_each_line_of_a_file_as_a_batch(llm, checkpoint, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("Hello world\n\nThe quick brown fox\n")
    assert main(["generate", str(checkpoint), "--file", str(f), "--each-line", "--max-new-tokens", "6",
                 "--stop", "zz"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["Hello world", "The quick brown fox"]
    assert rows[1]["text"] == llm.generate("The quick brown fox", max_new_tokens=6).text


def test_generate_from_stdin(llm, checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("MPT"))
    assert main(["generate", str(checkpoint), "--max-new-tokens", "5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == llm.generate("MPT", max_new_tokens=5).text and row["completion_tokens"] == 5


def test_generate_errors_are_clear(checkpoint, capsys):
    assert main(["generate", str(checkpoint), "Hi", "--temperature", "-1"]) == 2
    assert "temperature=-1.0 is invalid" in capsys.readouterr().err
    assert main(["generate", str(checkpoint), "Hi", "--file", "x.txt"]) == 2


def test_generate_with_compiled_decode_steps_gives_the_eager_text(llm, checkpoint, capsys):
    """--compile on runs the decode steps through torch.compile (even on CPU): the same greedy text."""
    import torch._dynamo

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    assert main(["generate", str(checkpoint), "Hello world", "--max-new-tokens", "6", "--device", "cpu",
                 "--compile", "on"]) == 0
    assert capsys.readouterr().out == llm.generate("Hello world", max_new_tokens=6).text + "\n"
    assert counters["stats"]["unique_graphs"] >= 1  # it was compiled, not run eagerly
