"""`mpt export --format gguf`, read back with gguf's own reader: every key and every tensor against the source.

Whether llama.cpp computes the same logits and tokens from these files is benchmarks/check_gguf.py's job
(it needs llama.cpp built); here the file itself is checked, for both tokenizers, and the refusals.
"""

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, TokenType, quants

from mpt.cli import main
from mpt.data.tokenize import load_tokenizer
from mpt.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer
from mpt.infer.gguf_export import GGUFExportConfig, GGUFExportError, export_gguf
from mpt.model.hf import save_pretrained
from tests.tiny import tiny_model

CORPUS = ("The quick brown fox jumps over the lazy dog. MPT uses ALiBi instead of positions.\n"
          "Café, naïve, 日本語 and emoji 🙂; numbers 12345 and    runs of spaces.\n") * 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tokenizer made by `mpt tokenizer train` (ChatML template, four special tokens)."""
    where = tmp_path_factory.mktemp("tok")
    (where / "corpus.txt").write_text(CORPUS)
    train_tokenizer(TokenizerTrainConfig(inputs=[str(where / "corpus.txt")], out=str(where / "tok"), vocab_size=320,
                                         progress=False))
    return where / "tok"


def checkpoint(tmp_path, tokenizer, name="src", model=None, **fields):
    model = model if model is not None else tiny_model(**{"vocab_size": 384, **fields})
    save_pretrained(model, tmp_path / name, tokenizer_from=tokenizer)
    return tmp_path / name, model


def read(path):
    """(metadata without the GGUF header fields, {tensor name: (type, array as stored, numpy shape)})."""
    reader = GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type, np.array(t.data), tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
    return meta, tensors


def expected_names(model) -> dict[str, str]:
    c = model.config
    names = {"transformer.wte.weight": "token_embd.weight", "transformer.norm_f.weight": "output_norm.weight"}
    for i in range(c.n_layers):
        for ours, theirs in (("norm_1", "attn_norm"), ("attn.Wqkv", "attn_qkv"), ("attn.out_proj", "attn_output"),
                             ("norm_2", "ffn_norm"), ("ffn.up_proj", "ffn_up"), ("ffn.down_proj", "ffn_down")):
            names[f"transformer.blocks.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
            if not c.no_bias:
                names[f"transformer.blocks.{i}.{ours}.bias"] = f"blk.{i}.{theirs}.bias"
    if not c.no_bias:
        names["transformer.norm_f.bias"] = "output_norm.bias"
    if c.learned_pos_emb:
        names["transformer.wpe.weight"] = "position_embd.weight"
    if not c.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    return names


def expected_tokenizer_keys(tokenizer_dir, vocab_size) -> dict:
    tok = load_tokenizer(tokenizer_dir)
    backend = tok.backend_tokenizer
    added = backend.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        text = backend.id_to_token(i)
        tokens.append(text if text is not None else f"[PAD{i}]")
        types.append(TokenType.UNUSED if text is None else TokenType.NORMAL if i not in added
                     else TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
    merges = json.loads(backend.to_str())["model"]["merges"]
    out = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "mpt", "tokenizer.ggml.tokens": tokens,
           "tokenizer.ggml.token_type": [int(t) for t in types],
           "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in merges],
           "tokenizer.ggml.bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
           "tokenizer.ggml.eos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
           "tokenizer.ggml.unknown_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
           "tokenizer.ggml.padding_token_id": tok.convert_tokens_to_ids("<|padding|>"),
           "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": False}
    if tok.chat_template:
        out["tokenizer.chat_template"] = tok.chat_template.replace("{% generation %}", "").replace(
            "{% endgeneration %}", "")
    return out


def expected_metadata(model, name, file_type, tokenizer_dir) -> dict:
    c = model.config
    ac = c.attn_config
    meta = {"general.architecture": "mpt", "general.name": name, "general.file_type": file_type,
            "general.quantization_version": 2, "mpt.context_length": c.max_seq_len,
            "mpt.embedding_length": c.d_model, "mpt.block_count": c.n_layers,
            "mpt.feed_forward_length": int(c.expansion_ratio * c.d_model), "mpt.attention.head_count": c.n_heads,
            "mpt.attention.layer_norm_epsilon": float(np.float32(c.layer_norm_epsilon)),
            "mpt.attention.max_alibi_bias": float(ac["alibi_bias_max"]) if ac["alibi"] else 0.0}
    if ac["clip_qkv"] is not None:
        meta["mpt.attention.clamp_kqv"] = float(np.float32(ac["clip_qkv"]))
    return {**meta, **expected_tokenizer_keys(tokenizer_dir, c.vocab_size)}


def check_tensors(model, tensors, outtype):
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = expected_names(model)
    assert set(tensors) == set(names.values()) and set(state) == set(names)
    for ours, theirs in names.items():
        src = state[ours]
        kind, data, shape = tensors[theirs]
        assert shape == src.shape, theirs
        if src.ndim == 1 or outtype == "f32":
            assert kind == GGMLQuantizationType.F32 and np.array_equal(data.reshape(shape), src), theirs
        elif outtype == "f16":
            assert kind == GGMLQuantizationType.F16 and np.array_equal(data.reshape(shape), src.astype(np.float16))
        else:
            assert kind == GGMLQuantizationType.Q8_0, theirs
            back = quants.dequantize(data, GGMLQuantizationType.Q8_0).reshape(shape)
            # q8_0: 32 values share a float16 scale max|x|/127; each is off by at most half a step
            # (plus the scale's own float16 rounding, a few percent of a step at the block's largest value).
            step = np.repeat(np.abs(src.reshape(-1, 32)).max(axis=1) / 127, 32).reshape(shape)
            assert (np.abs(back - src) <= 0.55 * step + 1e-7).all(), theirs


@pytest.mark.parametrize("which", ["trained", "neox"])
def test_f32_every_key_and_tensor(tmp_path, trained, which, request):
    tokenizer = trained if which == "trained" else request.getfixturevalue("shared") / "tokenizers" / "gpt-neox-20b"
    src, model = checkpoint(tmp_path, tokenizer, vocab_size=384 if which == "trained" else 50432)
    out = export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf"), outtype="f32"))
    meta, tensors = read(out)
    assert meta == expected_metadata(model, "src", 0, tokenizer)
    check_tensors(model, tensors, "f32")
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["m.gguf"]  # no partial file left behind


def test_trained_tokenizer_types_and_chat_template(tmp_path, trained):
    import jinja2

    src, _ = checkpoint(tmp_path, trained)
    meta, _ = read(export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf"))))
    types = meta["tokenizer.ggml.token_type"]
    assert [i for i, t in enumerate(types) if t == TokenType.CONTROL] == [0, 1, 2, 3]  # the four special tokens
    assert types[4:320] == [TokenType.NORMAL] * 316 and types[320:] == [TokenType.UNUSED] * 64
    # the template without transformers' {% generation %} markers renders the same text in plain Jinja
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    plain = jinja2.Environment().from_string(meta["tokenizer.chat_template"])
    assert "{% generation %}" in load_tokenizer(trained).chat_template
    assert "{% generation %}" not in meta["tokenizer.chat_template"] and "endgeneration" not in meta["tokenizer.chat_template"]
    assert plain.render(messages=chat, add_generation_prompt=True) == \
        load_tokenizer(trained).apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_neox_whitespace_tokens_are_user_defined(tmp_path, shared):
    tokenizer = shared / "tokenizers" / "gpt-neox-20b"
    src, _ = checkpoint(tmp_path, tokenizer, vocab_size=50432)
    meta, _ = read(export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf"))))
    types, tokens = meta["tokenizer.ggml.token_type"], meta["tokenizer.ggml.tokens"]
    assert types[:2] == [TokenType.CONTROL] * 2 and types[50254:50277] == [TokenType.USER_DEFINED] * 23
    assert {tokens[i] for i in range(50254, 50277)} == {" " * n for n in range(2, 25)}
    assert types[50277:] == [TokenType.UNUSED] * (50432 - 50277) and "tokenizer.chat_template" not in meta


@pytest.mark.parametrize("outtype,file_type", [("f16", 1), ("q8_0", 7)])
def test_f16_and_q8_0(tmp_path, trained, outtype, file_type):
    src, model = checkpoint(tmp_path, trained)
    meta, tensors = read(export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf"), outtype=outtype)))
    assert meta == expected_metadata(model, "src", file_type, trained)
    check_tensors(model, tensors, outtype)


def test_what_llama_cpp_represents_beyond_the_defaults(tmp_path, trained):
    """Untied head, biases, learned positions without ALiBi, a clamp, another FFN width, plain LayerNorm."""
    src, model = checkpoint(tmp_path, trained, tie_word_embeddings=False, no_bias=False, learned_pos_emb=True,
                            attn_config={"alibi": False, "clip_qkv": 6.0}, expansion_ratio=3,
                            norm_type="layernorm", layer_norm_epsilon=1e-6)
    with torch.no_grad():  # biases and norms start at 0 and 1; make them tell their tensors apart
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_pretrained(model, src)
    meta, tensors = read(export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf"), outtype="q8_0")))
    assert meta == expected_metadata(model, "src", 7, trained)
    assert meta["mpt.feed_forward_length"] == 96 and meta["mpt.attention.max_alibi_bias"] == 0.0
    assert {"output.weight", "position_embd.weight", "blk.1.attn_qkv.bias", "output_norm.bias"} <= set(tensors)
    check_tensors(model, tensors, "q8_0")


@pytest.mark.parametrize("fields,named", [
    (dict(logit_scale=0.5), "`logit_scale` = 0.5"),
    (dict(attn_config={"softmax_scale": 0.1}), "`attn_config.softmax_scale` = 0.1"),
    (dict(attn_config={"qk_ln": True}), "`attn_config.qk_ln` = True"),
])
def test_configs_llama_cpp_cannot_represent_are_refused_before_reading_weights(tmp_path, trained, fields, named):
    src, _ = checkpoint(tmp_path, trained, **fields)
    (src / "model.safetensors").unlink()  # refused from config.json alone: the weights are never read
    with pytest.raises(GGUFExportError, match="cannot export to GGUF") as err:
        export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf")))
    assert named in str(err.value) and "--format hf" in str(err.value)
    assert not any(p.suffix in (".gguf", ".partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize("fields,outtype,says", [
    (dict(d_model=48), "q8_0", "d_model = 48 is not a multiple of 32"),
    (dict(expansion_ratio=4.5), "q8_0", "the FFN width 144 (expansion_ratio 4.5 x d_model 32) is not a multiple of 32"),
])
def test_outtypes_the_shapes_cannot_take_are_refused(tmp_path, trained, fields, outtype, says):
    src, _ = checkpoint(tmp_path, trained, **fields)
    (src / "model.safetensors").unlink()
    with pytest.raises(GGUFExportError, match="--outtype q8_0") as err:
        export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf"), outtype=outtype))
    assert says in str(err.value) and "use --outtype f16 or f32" in str(err.value)


def test_f16_refuses_weights_beyond_its_range_and_writes_nothing(tmp_path, trained):
    model = tiny_model(vocab_size=384)
    with torch.no_grad():
        model.transformer.blocks[1].ffn.up_proj.weight[3, 5] = 1e5
    src, _ = checkpoint(tmp_path, trained, model=model)
    with pytest.raises(GGUFExportError, match=r"blocks\.1\.ffn\.up_proj\.weight holds values up to 1e\+05, beyond "
                                              r"float16's largest \(65504\); use --outtype f32 or q8_0"):
        export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf"), outtype="f16"))
    assert not any(p.is_file() for p in tmp_path.iterdir())
    export_gguf(GGUFExportConfig(src=str(src), dst=str(tmp_path / "m.gguf"), outtype="q8_0"))  # q8_0 takes it


def test_command_line(tmp_path, trained, capsys):
    src, _ = checkpoint(tmp_path, trained)
    assert main(["export", str(src), str(tmp_path / "out" / "m.gguf"), "--format", "gguf", "--outtype", "q8_0"]) == 0
    assert "llama.cpp's MPT layout" in capsys.readouterr().out
    assert read(tmp_path / "out" / "m.gguf")[0]["general.file_type"] == 7
    assert main(["export", str(src), str(tmp_path / "hf"), "--outtype", "f16"]) == 2
    assert "--outtype f16 applies to --format gguf only" in capsys.readouterr().err
    assert main(["export", str(src), str(tmp_path / "folder"), "--format", "gguf"]) == 2
    assert "name it OUT.gguf" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "folder").exists()


def test_a_checkpoint_without_a_tokenizer_is_refused(tmp_path):
    save_pretrained(tiny_model(), tmp_path / "bare")
    with pytest.raises(GGUFExportError, match="no tokenizer.json in .*bare: a GGUF file carries its tokenizer; "
                                              "pass --tokenizer PATH"):
        export_gguf(GGUFExportConfig(src=str(tmp_path / "bare"), dst=str(tmp_path / "m.gguf")))
