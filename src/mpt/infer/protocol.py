"""The OpenAI API's wire format, as far as we serve it: request bodies validated strictly, response bodies built.

Strict: a string where a number belongs is an error, as with OpenAI, not silently converted.
Options that would change the answer but that we do not implement (suffix, penalties, tools, chat
logprobs, ``best_of`` > 1, a non-text ``response_format``) are refused with a 400; ``logit_bias`` is
honoured. The legacy API's token-id prompts, ``logprobs`` and ``echo`` (with ``max_tokens: 0``) are
served, as by OpenAI and vLLM: lm-eval's ``local-completions`` scores text that way. Every number
has bounds and no float may be NaN or infinite. Responses: one :class:`ResponseHead` per request
(id, object, time, model), the choices, usage, stream events, and errors (:class:`APIError`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class APIError(Exception):
    """An error the client caused (4xx) or the server hit (5xx), rendered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False


# Stop strings are matched on the decode thread for every token: their number and length are capped
# (OpenAI allows 4; none of its users needs a stop string longer than a paragraph).
MAX_STOPS = 4
MAX_STOP_CHARS = 256
MAX_TOKEN_ID = 2**31 - 1


def _kind(value: object) -> str:
    """A JSON value's type, as a client would name it."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check_stop(stop: object) -> object:
    """What is wrong with ``stop``, said plainly (pydantic's union errors named the wrong member's type)."""
    if stop is None:
        return stop
    if not isinstance(stop, str | list):
        raise ValueError(f"stop must be a string or a list of at most {MAX_STOPS} strings, not {_kind(stop)}")
    if isinstance(stop, list) and len(stop) > MAX_STOPS:
        raise ValueError(f"stop holds {len(stop)} strings; at most {MAX_STOPS} stop strings are allowed")
    for i, s in enumerate([stop] if isinstance(stop, str) else stop):
        where = "stop" if isinstance(stop, str) else f"stop[{i}]"
        if not isinstance(s, str):
            raise ValueError(f"{where} is {_kind(s)}; each stop must be a string")
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(f"{where} has {len(s)} characters; a stop string may have at most {MAX_STOP_CHARS}")
    return stop


def _check_token_ids(ids: list, where: str) -> None:
    if not ids:
        raise ValueError(f"{where} is an empty list of token ids; a prompt needs at least one token")
    for i, t in enumerate(ids):
        if not isinstance(t, int) or isinstance(t, bool):
            raise ValueError(f"{where}[{i}] is {_kind(t)}; token ids are integers (a list of token ids cannot "
                             "mix in other values)")
        if not 0 <= t <= MAX_TOKEN_ID:
            raise ValueError(f"{where}[{i}] = {t} is not a token id (0 or more, below 2**31)")


def _check_prompt(prompt: object) -> object:
    """The four shapes OpenAI's legacy API takes, with an error that says which part is wrong."""
    shapes = "a string, a list of strings, a list of token ids, or a list of lists of token ids"
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        raise ValueError(f"prompt must be {shapes}, not {_kind(prompt)}")
    if not prompt:
        raise ValueError(f"prompt is an empty list; send {shapes}")
    first = prompt[0]
    if isinstance(first, str):
        for i, p in enumerate(prompt):
            if not isinstance(p, str):
                raise ValueError(f"prompt[{i}] is {_kind(p)}; a list of prompts holds strings, or lists of "
                                 "token ids, not both")
    elif isinstance(first, list):
        for i, p in enumerate(prompt):
            if not isinstance(p, list):
                raise ValueError(f"prompt[{i}] is {_kind(p)}; a list of token-id prompts holds lists of integers")
            _check_token_ids(p, f"prompt[{i}]")
    elif isinstance(first, int) and not isinstance(first, bool):
        _check_token_ids(prompt, "prompt")
    else:
        raise ValueError(f"prompt[0] is {_kind(first)}; the prompt must be {shapes}")
    return prompt


MAX_LOGIT_BIAS = 300


class ResponseFormat(BaseModel):
    """Only plain text: JSON modes would need constrained decoding, which this server does not do."""
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    model: str
    max_tokens: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0  # not OpenAI's; vLLM's extension
    repetition_penalty: Annotated[float, Field(ge=0.01, le=100)] = 1.0  # vLLM's extension
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None  # checked by _check_stop
    seed: Annotated[int, Field(ge=-2**63, lt=2**64)] | None = None  # what torch.Generator.manual_seed takes
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    # Token id (a JSON object's keys are strings) -> a number added to its score; OpenAI's bounds and count.
    logit_bias: (Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS)]
                 | None) = None
    response_format: ResponseFormat | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise ValueError(f"{name} is not supported by this server (use repetition_penalty)")
        return self

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, stop: object) -> object:
        return _check_stop(stop)

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not (key.isascii() and key.isdigit() and len(key) <= 10):
                raise ValueError(f"key {key!r} is not a token id (a non-negative integer, as a string)")
        return bias

    @property
    def token_bias(self) -> dict[int, float] | None:
        """``logit_bias`` with integer keys (checked at parsing)."""
        return {int(k): b for k, b in self.logit_bias.items()} if self.logit_bias else None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]  # checked by _check_prompt
    max_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None  # 0: score the prompt only (echo)
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # 20: vLLM's limit (OpenAI's is 5)
    suffix: None = None
    best_of: Literal[1] | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, prompt: object) -> object:
        return _check_prompt(prompt)

    @property
    def scoring(self) -> bool:
        """Echo with at most one new token: lm-eval's log-likelihood requests (``max_tokens: 1``, the new
        token dropped) and score-only ones (``max_tokens: 0``). Limited by their tokens, not by --max-n."""
        return self.echo and self.max_tokens is not None and self.max_tokens <= 1

    def check_scoring(self) -> None:
        """What the fields allow only together; refused with a 400 naming the field."""
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens=0 is only valid with echo: true (to score the prompt)", param="max_tokens")
        if self.stream and (self.echo or self.logprobs is not None):
            raise APIError(400, "echo and logprobs are not supported with stream: true", param="stream")

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a text, or token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, content: object) -> object:
        part = '{"type": "text", "text": "..."}'
        if not isinstance(content, str | list):
            raise ValueError(f"must be a string or a list of {part} parts, not {_kind(content)}")
        for i, p in enumerate(content if isinstance(content, list) else []):
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise ValueError(f"part {i} must be {part} (this server takes text only), not "
                                 f"{json.dumps(p)[:80] if isinstance(p, dict) else _kind(p)}")
        return content

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Literal[False] | None = None
    tools: None = None
    functions: None = None


def parse(model: type[BaseModel], body: bytes):
    """Validate a JSON body; the first problem becomes a 400 naming the field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        e = err.errors()[0]
        if e["type"] == "json_invalid":
            raise APIError(400, f"the request body is not valid JSON: {e['msg']}", code="invalid_json") from None
        if e["type"] == "model_type" or not e["loc"]:
            msg = "the request body must be a JSON object" if e["type"] == "model_type" else e["msg"]
            raise APIError(400, msg.removeprefix("Value error, ")) from None
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")  # our validators' messages name the field themselves
        raise APIError(400, msg if msg.startswith(loc) else f"{loc}: {msg}", param=str(e["loc"][0])) from None


# -- responses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseHead:
    """What a response and each of its stream chunks start with; the one place response ids are made."""

    id: str
    created: int
    model: str
    chat: bool

    @classmethod
    def new(cls, model: str, chat: bool) -> ResponseHead:
        return cls(("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], int(time.time()), model, chat)

    def fields(self, chunk: bool = False) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def choice(head: ResponseHead, index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    """One whole choice: a chat message, or a completion's text."""
    if head.chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def response(head: ResponseHead, choices: list[dict], tokens: dict) -> dict:
    return {**head.fields(), "choices": choices, "usage": tokens}


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def response_bytes(head: ResponseHead, choices: list[dict], tokens: dict) -> bytes:
    """:func:`response` serialized a choice at a time: json.dumps holds the GIL for the whole of what it is
    given (megabytes for 8 x 2,000 scored tokens), and the event loop needs it to send other clients' tokens
    (benchmarks/bench_serve_harm.py measures their waits while such a request is scored)."""
    head_json = _dumps(head.fields())
    return f'{head_json[:-1]},"choices":[{",".join(map(_dumps, choices))}],"usage":{_dumps(tokens)}}}'.encode()


def stream_event(head: ResponseHead, choices: list[dict], **extra) -> str:
    """One server-sent event of a streamed response."""
    return f"data: {json.dumps({**head.fields(chunk=True), 'choices': choices, **extra}, ensure_ascii=False)}\n\n"


def stream_start(head: ResponseHead, indexes: list[int]) -> list[str]:
    """What a stream sends before any token: for chat, each choice's role."""
    if not head.chat:
        return []
    return [stream_event(head, [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None} for i in indexes])]


def stream_update(head: ResponseHead, index: int, text: str, finish: str | None) -> list[str]:
    """The events for one choice's new text and/or its end: none for an update with neither; a chat
    choice's last text and its finish_reason go in two events, as OpenAI sends them."""
    if not text and finish is None:
        return []
    if not head.chat:
        return [stream_event(head, [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}])]
    events = []
    if text:
        events.append(stream_event(head, [{"index": index, "delta": {"content": text}, "logprobs": None,
                                           "finish_reason": None}]))
    if finish is not None:
        events.append(stream_event(head, [{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}]))
    return events


def stream_error(err: APIError) -> str:
    return f"data: {json.dumps(err.body())}\n\n"


STREAM_END = "data: [DONE]\n\n"


class TokenTexts:
    """One token's text, decoded once per response: a scored prompt names the same alternatives again and again."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode, self.texts = decode, {}

    def __call__(self, token: int) -> str:
        text = self.texts.get(token)
        if text is None:
            text = self.texts[token] = self.decode([token])
        return text


def logprobs_body(ids: list[int], lps: list, tops: list, text_of: TokenTexts) -> dict:
    """OpenAI's legacy shape: parallel lists of token strings, log-probabilities, top alternatives, offsets."""
    tokens = [text_of(t) for t in ids]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets,
            "top_logprobs": [None if top is None else {text_of(t): lp for t, lp in top} for top in tops]}
