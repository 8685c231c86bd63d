"""Command-line help and value types of the options ``generate``, ``chat`` and ``serve`` share, written once."""

from typing import Literal

# What --dtype takes: auto is resolved by mpt.model.load.inference_dtype, the rest are the dtypes by name.
Dtype = Literal["auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16"]

MODEL = "Hugging Face-format MPT checkpoint folder (with tokenizer files) or hub name"
TOKENIZER = "tokenizer folder or tokenizer.json (default: the model's)"
DEVICE = "cpu, cuda, cuda:1 ... (default: cuda when available)"
DTYPE = ("weights dtype; auto: bf16 on a CPU with avx512_bf16 or AMX, else fp32 (bf16 on GPU); bf16 on a CPU "
         "without them is refused (default: bf16 on GPU, fp32 on CPU)")
QUANTIZE = "int8: int8 weights for the linear layers (a quarter of fp32's bytes; faster on CPU)"
COMPILE = ("decode steps through torch.compile over a static cache: auto = on for CUDA (CUDA graphs), off on CPU "
           "(where the compile takes longer than a short generation saves)")
SERVE_COMPILE = ("decode steps through torch.compile over a static cache, compiled for every batch size before the "
                 "server opens its port: auto = on (CPU and CUDA); off decodes eagerly and starts at once")
TEMPERATURE = "0 is greedy"
TOP_P = "nucleus sampling mass"
TOP_K = "sample among the k likeliest tokens (0: off)"
REPETITION_PENALTY = "> 1 discourages repeats"
SEED = "seed for sampling (default: random)"
