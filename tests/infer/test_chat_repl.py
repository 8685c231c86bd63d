"""`mpt chat`: the terminal loop streams, resets and says when it drops turns; piped input reads as a transcript."""

import io

from mpt.infer.chat import render
from mpt.infer.chat_repl import ChatConfig, run_chat


def test_chat_loop_streams_resets_and_says_when_it_drops_turns(llm):
    lines = iter(["Hello there, how are you today?", "Tell me more about the fox please.", "/reset",
                  "Hi", "/exit", "never read"])
    out, err = io.StringIO(), io.StringIO()
    cfg = ChatConfig(system="Be brief.", max_new_tokens=12, temperature=0.0, context_length=100)
    history = run_chat(llm, cfg, read=lambda _: next(lines), out=out, err=err)
    assert "dropped the 2 oldest message(s)" in err.getvalue()
    assert "[conversation reset]" in err.getvalue()
    assert [m.role for m in history] == ["system", "user", "assistant"] and history[1].content == "Hi"
    # the last reply is the greedy continuation of the rendered conversation
    expected = llm.generate(render(history[:2], llm.tokenizer), max_new_tokens=12, stop=["<|im_end|>"]).text
    assert history[2].content == expected and out.getvalue().count("assistant> ") == 3


def test_mpt_chat_with_piped_input_reads_as_a_transcript(checkpoint):
    """input("you> ") on a pipe left the prompt on the reply's line ("you> assistant> ...")."""
    import shutil
    import subprocess

    out = subprocess.run([shutil.which("mpt"), "chat", str(checkpoint), "--device", "cpu", "--max-new-tokens", "4",
                          "--temperature", "0"], input="Hello there\n/exit\n", capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    # the random tiny model's reply may hold any characters; the turns around it are what is checked
    assert out.stdout.startswith("you> Hello there\nassistant> "), out.stdout
    assert out.stdout.endswith("\nyou> /exit\n") and out.stdout.count("you> ") == 2, out.stdout
