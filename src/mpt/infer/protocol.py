"""The OpenAI API's request bodies (the part we serve), validated strictly, and its error shape.

Strict: a string where a number belongs is an error, as with OpenAI, not silently converted.
Options that would change the answer but that we do not implement (suffix, presence/frequency
penalties, tools and functions, chat logprobs, ``best_of`` > 1, a ``response_format`` other than text)
are refused with a 400 rather than ignored; ``logit_bias`` is honoured. The legacy completions
API's ``prompt`` as token ids, ``logprobs`` and ``echo`` (with ``max_tokens: 0``) are served, as by
OpenAI and vLLM: that is how lm-eval's ``local-completions`` scores text through a server. Every number has
bounds and no float may be NaN or infinite, so no value a client sends can overflow later.
"""

from __future__ import annotations

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
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


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
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)] | None = None
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


TokenIds = Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(min_length=1)]


class CompletionRequest(_Request):
    prompt: (str | Annotated[list[str], Field(min_length=1)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1)])
    max_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None  # 0: score the prompt only (echo)
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # 20: vLLM's limit (OpenAI's is 5)
    suffix: None = None
    best_of: Literal[1] | None = None

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
        raise APIError(400, f"{loc}: {e['msg']}", param=str(e["loc"][0])) from None
