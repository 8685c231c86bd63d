"""Command-line help of the options ``generate``, ``chat`` and ``serve`` share, written once."""

MODEL = "Hugging Face-format MPT checkpoint folder (with tokenizer files) or hub name"
TOKENIZER = "tokenizer folder or tokenizer.json (default: the model's)"
DEVICE = "cpu, cuda, cuda:1 ... (default: cuda when available)"
DTYPE = "weights dtype (default: bfloat16 on GPU, float32 on CPU)"
QUANTIZE = "int8: int8 weights for the linear layers (a quarter of fp32's bytes; faster on CPU)"
COMPILE = ("decode steps through torch.compile over a static cache: auto = on for CUDA (CUDA graphs), off on CPU "
           "(each new batch shape compiles for tens of seconds there)")
TEMPERATURE = "0 is greedy"
TOP_P = "nucleus sampling mass"
TOP_K = "sample among the k likeliest tokens (0: off)"
REPETITION_PENALTY = "> 1 discourages repeats"
SEED = "seed for sampling (default: random)"
