import pytest
from transformers import AutoTokenizer

from mpt.cli import main
from mpt.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer


def test_train_save_reload_chat(shared, tmp_path, capsys):
    src = shared / "data" / "pretrain" / "arxiv_sample.jsonl"
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(src), "--out", str(out), "--vocab-size", "1000"]) == 0
    assert "1,000 tokens on 20 records" in capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 1000
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 0, "<|padding|>", 1)
    text = "We prove the theorem in Section 3.  Ünïcödé and\ttabs survive: ∑ x_i^2"
    assert tok.decode(tok(text).input_ids) == text                     # byte-level: lossless on any text
    assert len(tok(" the theorem").input_ids) < len(" the theorem")    # merges were learnt
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.convert_tokens_to_ids("<|im_end|>") in ids


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100 is below 260"):
        train_tokenizer(TokenizerTrainConfig(inputs=["x"], out=str(tmp_path), vocab_size=100))


def test_into_a_pipe_the_output_is_the_one_summary_line(shared, tmp_path):
    """The Rust trainer's bars, drawn into a pipe, left three blank lines on stdout."""
    import shutil
    import subprocess

    src = shared / "data" / "pretrain" / "arxiv_sample.jsonl"
    out = subprocess.run([shutil.which("mpt"), "tokenizer", "train", str(src), "--out", str(tmp_path / "tok"),
                          "--vocab-size", "1000"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("trained a byte-level BPE tokenizer") and out.stdout.count("\n") == 1, out.stdout
    assert out.stderr == ""
