"""`mpt export --format gguf` against llama.cpp itself: logits, greedy tokens and tokenization (not in CI).

llama.cpp runs through llama-cpp-python in its own cached virtual environment (``--peer-venv``,
created when missing: pip compiles llama.cpp, minutes), one subprocess per file so that an abort
inside llama.cpp is a result, not a crash of this script. For random-weight MPTs (d_model 256, 4 heads,
4 layers; GPT-NeoX tokenizer, vocab 50,432, and a tokenizer trained by ``mpt tokenizer train``) it
checks f32 and q8_0 logits over a prompt against our model, 32 greedy tokens, llama.cpp's tokenization
of a few thousand characters of mixed text against ``tokenizers``', configs beyond the defaults, and
llama.cpp's own ``convert_hf_to_gguf.py`` on our Hugging Face export (from the llama.cpp copy inside
llama-cpp-python's source release). Prints a table, then one JSON line.

    python benchmarks/check_gguf.py [--peer-venv ~/.cache/mpt-peers/llamacpp] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

N_NEW = 32
F32_TOLERANCE = 2e-3
MIXED = (
    "MPT-7B is a decoder-only transformer pretrained from scratch on 1T tokens of English text and code. "
    "It's trained with ALiBi, so it doesn't need positional embeddings; we've seen it extrapolate to 84k tokens.\n"
    "Numbers: 3.14159, 2,718, 1e-5, 0x1F, 2024-06-01, $1,234.56 and 99.9%.\n\n"
    "    def forward(self, x):\n        return self.down_proj(F.gelu(self.up_proj(x)))  # tabs\there\n"
    "\t\tindented   with    runs      of       spaces\n"
    "Français : café, naïve, déjà vu, Œuvre. Deutsch: Größe, Übermaß. Español: ¿Qué tal? ¡Olé!\n"
    "Русский текст, Ελληνικά, العربية, עברית, हिन्दी, 中文字符, 日本語のテキスト, 한국어 문장.\n"
    "Emoji 🙂🚀👩‍💻 and symbols ©®™ ← → ∑ ∫ √ ≤ ≥ ≠ ∞.\n"
    "<|im_start|>user\nWhat's new?<|im_end|>\n<|im_start|>assistant\nNothing.<|im_end|><|endoftext|>"
    "URLs: https://example.com/a?b=c&d=e#f, emails: someone@example.org.\n"
)

WORKER = r'''
import json, sys
import numpy as np
from llama_cpp import Llama

job = json.loads(open(sys.argv[1]).read())
llm = Llama(job["gguf"], n_ctx=job["n_ctx"], logits_all=True, verbose=False, n_threads=job["threads"],
            type_k=0, type_v=0)  # f32 key/value cache: the default f16 cache would round every key and value
out = {}
if "text" in job:
    ids = llm.tokenize(job["text"].encode(), add_bos=False, special=True)
    out["tokens"] = ids
    out["roundtrip"] = llm.detokenize(ids, special=True).decode("utf-8", "replace") == job["text"]
if "prompt" in job:
    llm.eval(job["prompt"])
    np.save(job["logits"], np.array(llm.scores[:len(job["prompt"])], dtype=np.float32))
    greedy = []
    for _ in range(job["n_new"]):
        greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([greedy[-1]])
    out["greedy"] = greedy
print(json.dumps(out))
'''


def ensure_peer(venv: Path) -> Path:
    """The peer's python; makes the venv (llama-cpp-python compiles llama.cpp: minutes) when missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
        # Built for this CPU but without llama.cpp's AMX kernels: on a CPU with AMX they crash q8_0 matmuls
        # (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp issue #20824; seen here with 0.3.36). GCC lets an
        # explicit -mno-* win over what -march=native turns on, and ignores it on CPUs without AMX.
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        env = {**os.environ, "CMAKE_ARGS": f'-DCMAKE_C_FLAGS="{no_amx}" -DCMAKE_CXX_FLAGS="{no_amx}"'}
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-cache-dir", "llama-cpp-python", "numpy"],
                       check=True, env=env)
    return python


def llama_cpp_source(python: Path, cache: Path) -> Path:
    """llama.cpp's tree as shipped in the installed llama-cpp-python's source release (its converter lives there)."""
    version = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    root = cache / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not root.is_dir():
        subprocess.run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(cache)], check=True)
        subprocess.run(["tar", "xzf", str(cache / f"llama_cpp_python-{version}.tar.gz"), "-C", str(cache)], check=True)
    return root


def run_peer(python: Path, job: dict, work: Path) -> dict:
    """One file in llama.cpp; a crash (GGML_ASSERT aborts the process) comes back as {"error": ...}."""
    (work / "worker.py").write_text(WORKER)
    spec = work / "job.json"
    spec.write_text(json.dumps(job))
    done = subprocess.run([str(python), str(work / "worker.py"), str(spec)], capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        said = [line for line in lines if "GGML_ASSERT" in line or "error" in line.lower()] or lines[-1:] or [""]
        return {"error": f"llama.cpp exited {done.returncode}: {said[0].strip()[:160]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ours(model, prompt, llama_gelu=False):
    """Our logits over ``prompt`` and greedy continuation; ``llama_gelu``: with ggml's CPU GELU instead (the
    tanh form, looked up in a float16 table: float16 in, float16 out), to show what the rest of the gap is."""
    import torch
    import torch.nn.functional as F

    from mpt.infer import generate_ids

    exact = F.gelu
    if llama_gelu:
        F.gelu = lambda x: exact(x.half().float(), approximate="tanh").half().float()
    try:
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0].numpy()
        greedy = None if llama_gelu else generate_ids(model, torch.tensor([prompt]), N_NEW).tolist()[0][len(prompt):]
    finally:
        F.gelu = exact
    return logits, greedy


def compare_model(label, model, src, tokenizer, outtypes, python, work, threads, force=False):
    """Rows for one model: export each outtype, run it in llama.cpp, compare with ours."""
    import numpy as np

    import mpt.infer.gguf_export as ge

    prompt = tokenizer(MIXED[:400])["input_ids"][:48]
    ref, greedy = ours(model, prompt)
    matched, _ = ours(model, prompt, llama_gelu=True)
    rows = []
    for outtype in outtypes:
        dst = work / f"{label}-{outtype}.gguf"
        check = ge.check_representable
        if force:  # write what the export refuses, to show what llama.cpp does with it
            ge.check_representable = lambda config: None
        try:
            ge.export_gguf(ge.GGUFExportConfig(src=str(src), dst=str(dst), outtype=outtype))
        finally:
            ge.check_representable = check
        got = run_peer(python, {"gguf": str(dst), "n_ctx": 256, "threads": threads, "prompt": prompt,
                                "n_new": N_NEW, "logits": str(work / "logits.npy")}, work)
        row = {"model": label, "outtype": outtype, "MiB": round(dst.stat().st_size / 2**20, 1)}
        if "error" in got:
            rows.append({**row, "error": got["error"]})
            continue
        theirs = np.load(work / "logits.npy")
        rows.append({**row, "max_abs_diff": float(np.abs(theirs - ref).max()),
                     "diff_vs_ours_with_llama_gelu": float(np.abs(theirs - matched).max()),
                     "argmax_agree": f"{int((theirs.argmax(-1) == ref.argmax(-1)).sum())}/{len(prompt)}",
                     "greedy_identical": f"{sum(a == b for a, b in zip(got['greedy'], greedy, strict=False))}/{N_NEW}"})
    return rows


def build(label, tokenizer_dir, work, **fields):
    import torch
    from transformers import AutoTokenizer

    from mpt import MPTConfig, MPTForCausalLM
    from mpt.model.hf import save_pretrained

    torch.manual_seed(0)
    base = dict(d_model=256, n_heads=4, n_layers=4, max_seq_len=512, vocab_size=50432)
    model = MPTForCausalLM(MPTConfig(**{**base, **fields})).eval()
    src = work / label
    save_pretrained(model, src, tokenizer_from=tokenizer_dir)
    return model, src, AutoTokenizer.from_pretrained(src)


def train_tokenizer(work: Path) -> Path:
    """`mpt tokenizer train` on Python's own library sources and the mixed text (offline, seconds)."""
    import textwrap

    from mpt.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    corpus = work / "corpus"
    corpus.mkdir()
    for module in ("textwrap", "json/decoder", "argparse", "difflib"):
        (corpus / f"{module.replace('/', '_')}.txt").write_text(
            (Path(textwrap.__file__).parent / f"{module}.py").read_text())
    (corpus / "mixed.txt").write_text(MIXED * 20)
    train_tokenizer(TokenizerTrainConfig(inputs=[str(corpus)], out=str(work / "trained-tok"), vocab_size=4096,
                                         progress=False))
    return work / "trained-tok"


def tokenization_rows(cases, python, work, threads):
    """llama.cpp's tokens for the mixed text (and an NFD copy) against `tokenizers`'."""
    import textwrap
    import unicodedata

    code = (Path(textwrap.__file__).read_text())[:1500]
    text = MIXED + code + MIXED.upper()
    rows = []
    for label, gguf, tok in cases:
        for name, sample in (("mixed", text), ("mixed, NFD", unicodedata.normalize("NFD", MIXED))):
            want = tok.backend_tokenizer.encode(sample, add_special_tokens=False).ids
            got = run_peer(python, {"gguf": str(gguf), "n_ctx": 64, "threads": threads, "text": sample}, work)
            theirs = got.get("tokens", [])
            first = next((i for i, (a, b) in enumerate(zip(want, theirs, strict=False)) if a != b), None)
            rows.append({"tokenizer": label, "text": name, "chars": len(sample), "tokens": len(want),
                         "identical": want == theirs, "first_difference": first,
                         "detokenizes_back": got.get("roundtrip"), **({"error": got["error"]} if "error" in got else {})})
    return rows


def converter_rows(python, llama_src, srcs, work, threads, model, tokenizer):
    """llama.cpp's convert_hf_to_gguf.py on our HF export: as written, and with MosaicML's class name."""
    import shutil

    import numpy as np
    import transformers

    rows = []
    env = {**os.environ, "PYTHONPATH": str(llama_src / "gguf-py")}

    def convert(folder, out):
        done = subprocess.run([sys.executable, str(llama_src / "convert_hf_to_gguf.py"), str(folder), "--outfile",
                               str(out), "--outtype", "f32"], capture_output=True, text=True, env=env)
        errors = [line for line in done.stderr.splitlines() if "ERROR" in line or "Error" in line]
        return done.returncode, (errors[-1] if errors else "")[:160]

    for label, folder in srcs:
        rc, error = convert(folder, work / f"conv-{label}.gguf")
        rows.append({"converter_input": f"{label}: our export as written", "converted": rc == 0, "error": error})
    for label, folder in srcs:  # what the issue did by hand; transformers serve would then fail to find the class
        renamed = work / f"renamed-{label}"
        shutil.copytree(folder, renamed)
        fields = json.loads((renamed / "config.json").read_text())
        fields["architectures"] = ["MPTForCausalLM"]
        (renamed / "config.json").write_text(json.dumps(fields))
        rc, error = convert(renamed, work / f"conv-renamed-{label}.gguf")
        row = {"converter_input": f"{label}: architectures renamed to MPTForCausalLM", "converted": rc == 0,
               "error": error, "transformers_has_MPTForCausalLM": hasattr(transformers, "MPTForCausalLM")}
        if rc == 0 and label == srcs[0][0]:
            prompt = tokenizer(MIXED[:400])["input_ids"][:48]
            ref, _ = ours(model, prompt)
            got = run_peer(python, {"gguf": str(work / f"conv-renamed-{label}.gguf"), "n_ctx": 256, "threads": threads,
                                    "prompt": prompt, "n_new": 0, "logits": str(work / "logits.npy")}, work)
            row["max_abs_diff"] = got.get("error") or float(np.abs(np.load(work / "logits.npy") - ref).max())
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=False))  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-venv", type=Path, default=Path.home() / ".cache" / "mpt-peers" / "llamacpp")
    parser.add_argument("--neox", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "tokenizers"
                        / "gpt-neox-20b", help="folder holding GPT-NeoX-20B's tokenizer.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    python = ensure_peer(args.peer_venv)
    llama_src = llama_cpp_source(python, args.peer_venv.parent / "sdist")
    work = Path(tempfile.mkdtemp(prefix="check-gguf-"))
    trained = train_tokenizer(work)
    neox_model, neox_src, neox_tok = build("neox", args.neox, work)
    trained_model, trained_src, trained_tok = build("trained", trained, work, vocab_size=4096)
    models = compare_model("neox", neox_model, neox_src, neox_tok, ("f32", "q8_0"), python, work, args.threads)
    models += compare_model("trained", trained_model, trained_src, trained_tok, ("f32", "q8_0"), python, work,
                            args.threads)
    for label, fields, force in (
            ("untied+bias+learned_pos+clip+ffn3x", dict(tie_word_embeddings=False, no_bias=False, learned_pos_emb=True,
                                                        expansion_ratio=3, attn_config={"alibi": False, "clip_qkv": 0.5}), False),
            ("6 heads (ALiBi, not 2^k)", dict(d_model=384, n_heads=6), False),
            ("qk_ln (refused; forced)", dict(attn_config={"qk_ln": True}), True)):
        model, src, tok = build(label.split(" ")[0].replace("+", "_"), args.neox, work, **fields)
        if not fields.get("no_bias", True):
            with torch.no_grad():  # biases start at zero: give them something to carry
                for name, p in model.named_parameters():
                    if name.endswith("bias"):
                        p.add_(torch.randn_like(p) * 0.1)
            from mpt.model.hf import save_pretrained

            save_pretrained(model, src)
        models += compare_model(label, model, src, tok, ("f32",), python, work, args.threads, force=force)
    tokens = tokenization_rows([("neox", work / "neox-f32.gguf", neox_tok),
                                ("trained", work / "trained-f32.gguf", trained_tok)], python, work, args.threads)
    converter = converter_rows(python, llama_src, [("neox", neox_src), ("trained", trained_src)], work, args.threads,
                               neox_model, neox_tok)
    for rows in (models, tokens, converter):
        print(table(rows) + "\n")
    f32 = [r for r in models if r["outtype"] == "f32" and r["model"] in ("neox", "trained")]
    print(json.dumps({"bench": "check_gguf", "f32_tolerance": F32_TOLERANCE,
                      "f32_within_tolerance": all(r.get("max_abs_diff", 1) <= F32_TOLERANCE for r in f32),
                      "models": models, "tokenization": tokens, "converter": converter}))


if __name__ == "__main__":
    main()
