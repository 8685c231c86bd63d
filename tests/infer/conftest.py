"""A tiny model and a tiny ChatML tokenizer, built once and saved like a real checkpoint; the servers and
helpers several test files share."""

import pytest

from mpt.infer.sampling import SamplingParams
from mpt.model.hf import save_pretrained
from tests.tiny import tiny_model

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "MPT is a decoder-only transformer with ALiBi attention biases.",
    "Hello world! Café, naïve, 日本語, emoji 🙂 and numbers 12345.",
    "A server batches requests together: new requests join between decode steps.",
] * 20


def build_tokenizer(out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|padding|>", "<|im_start|>",
                                                                  "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|padding|>",
                                 chat_template=CHATML)
    hf.save_pretrained(out_dir)
    return hf


# Where the inference tests' tiny MPT differs from tests.tiny.FIELDS: a vocabulary that holds the tokenizer's 400.
INFER_FIELDS = dict(d_model=64, n_heads=4, max_seq_len=64, vocab_size=416)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A saved tiny MPT with a ChatML byte-level BPE tokenizer (trained here; no shared data needed)."""
    out = tmp_path_factory.mktemp("tiny-mpt")
    build_tokenizer(out)
    save_pretrained(tiny_model(**INFER_FIELDS), out)
    return out


@pytest.fixture(scope="session")
def llm(checkpoint):
    from mpt import load

    return load(checkpoint, device="cpu")


@pytest.fixture(scope="session")
def plain_llm(checkpoint):
    """Without prepacked weights (``mpt.load(..., prepack=False)``)."""
    from mpt import load

    return load(checkpoint, device="cpu", prepack=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """`create_app` served by a real uvicorn on a loopback port, in a background thread, after the warm-up
    `mpt serve` runs before it opens its port (where a compiled decode step compiles)."""

    def __init__(self, llm, **cfg):
        import threading
        import time

        from mpt.infer.server import ServeConfig, create_app, on_a_passing_thread, uvicorn_server, warm_up

        self.port = free_port()
        config = ServeConfig(model="tiny", model_name="tiny", port=self.port, **cfg)
        self.app = create_app(llm, config)
        on_a_passing_thread(lambda: warm_up(llm, config))
        self.server = uvicorn_server(self.app, "127.0.0.1", self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = self.app.state.server

    def client(self, key="test-key", **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)

    def wait_idle(self, timeout=15.0) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.state.jobs and self.state.scheduler.running == 0 and self.state.scheduler.waiting == 0:
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="session")
def server(llm):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    s = RunningServer(llm, api_key="test-key", context_length=2048, max_n=4, max_concurrent=16, max_batch_size=8)
    yield s
    s.close()


@pytest.fixture(scope="module")
def llm8(checkpoint):
    from mpt import load

    return load(checkpoint, device="cpu", quantize="int8")


LONG = "A server batches requests together: new requests join between decode steps. " * 6


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0)


@pytest.fixture(scope="module")
def open_server(llm):
    """No API key: the local-only rules apply. body_timeout is short so a trickling upload is cut quickly."""
    s = RunningServer(llm, context_length=4096, max_concurrent=8, body_timeout=0.5)
    yield s
    s.close()
