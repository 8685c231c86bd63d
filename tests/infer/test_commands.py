"""`mpt generate` from an argument, a file and stdin; `mpt generate` and `mpt chat` with int8 weights."""

import io
import json

import pytest

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


def test_generate_command_int8(llm8, checkpoint, capsys):
    from mpt.cli import main

    assert main(["generate", str(checkpoint), "Hello world", "--max-new-tokens", "8", "--device", "cpu",
                 "--quantize", "int8"]) == 0
    out, err = capsys.readouterr()
    assert out == llm8.generate("Hello world", max_new_tokens=8).text + "\n"
    assert "tokens/s" in err
    with pytest.raises(SystemExit):
        main(["generate", str(checkpoint), "Hi", "--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_chat_command_int8(checkpoint, capsys, monkeypatch):
    import io
    import sys

    import mpt.infer.api as api
    import mpt.infer.chat_repl as chat_repl
    from mpt.cli import main

    loaded = []
    real_load = api.load

    def load(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(api, "load", load)
    # run_chat's out/err defaults are the sys.stdout/stderr of its first import (another test's capture,
    # closed by now): pass this test's streams.
    real_chat = chat_repl.run_chat
    monkeypatch.setattr(chat_repl, "run_chat", lambda llm, cfg: real_chat(llm, cfg, out=sys.stdout, err=sys.stderr))
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n/exit\n"))
    code = main(["chat", str(checkpoint), "--quantize", "int8", "--max-new-tokens", "6", "--device", "cpu"])
    assert code == 0, capsys.readouterr()
    assert getattr(loaded[0].model, "quantized", None) == "int8"
    assert "assistant> " in capsys.readouterr().out


@pytest.mark.parametrize("quantize", [[], ["--quantize", "int8"]])
def test_generate_dtype_auto_and_bf16_compose_with_int8(checkpoint, capsys, quantize):
    """--dtype auto loads bfloat16 where this CPU has it (float32 elsewhere), with int8 weights too; an explicit
    bf16 runs where the CPU has it and is one clear error, before the model loads, where it has not."""
    from mpt import load
    from mpt.model.load import cpu_has_bf16

    args = ["generate", str(checkpoint), "Hello world", "--max-new-tokens", "6", "--device", "cpu", *quantize]
    dtype = "bfloat16" if cpu_has_bf16() else "float32"
    assert main([*args, "--dtype", "auto"]) == 0
    want = load(checkpoint, device="cpu", dtype=dtype, quantize=(quantize or [None])[-1])
    assert capsys.readouterr().out == want.generate("Hello world", max_new_tokens=6).text + "\n"
    if cpu_has_bf16():
        assert main([*args, "--dtype", "bf16"]) == 0
        assert capsys.readouterr().out == want.generate("Hello world", max_new_tokens=6).text + "\n"
    else:
        assert main([*args, "--dtype", "bf16"]) == 2
        assert "--dtype bf16: this CPU has no native bfloat16" in capsys.readouterr().err
