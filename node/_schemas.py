"""Request bodies: the OpenAI fields the node supports; any other is a 400.

A parameter the node does not implement (``tools``, ``response_format``, ``logit_bias``, a
vendor's ``top_k``…) is refused with ``unsupported_parameter`` naming it, never ignored: a
client that asked for JSON mode or a tool call would otherwise get an answer that looks
right and is not. Sent with the value that means "not used" (``tools: []``,
``presence_penalty: 0``, ``null``), it is accepted, as OpenAI's clients send such defaults.

The same pydantic models validate requests and describe them in ``/openapi.json``, so the
published schema is exactly what the node accepts (the API fuzz test relies on it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from tallystick.protocol import MAX_JSON_DEPTH, ProtocolError, SignedReceipt, json_too_deep

from ._errors import ApiError

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "ErrorEnvelope",
    "ReceiptBody",
    "parse_body",
    "parse_json",
    "receipt_from_body",
    "receipt_from_header",
]

M = TypeVar("M", bound=BaseModel)

INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
MAX_CHOICES = 16
StopString = Annotated[str, Field(min_length=1)]


def _integral(value: Any) -> Any:
    # JSON has one number type: 2.0 is the integer 2 (JSON Schema agrees), 2.5 is not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
# Constraints inside the Annotated so the JSON schema renders them (minimum/maximum) even in
# an optional field.
TokenLimit = Annotated[int, Field(ge=1, le=UINT32_MAX), BeforeValidator(_integral)]
Seed = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX), BeforeValidator(_integral)]

Hex32 = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{64}$")]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The message as one string: text parts joined by a newline (docs/protocol.md §6)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ApiError(
                    400,
                    f"content part type {part.type!r} is not supported; send text parts",
                    param="messages",
                    code="unsupported_content",
                )
        return "\n".join(part.text or "" for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


# OpenAI request parameters the node does not implement, each with the test of a value that
# means "not used" (such a value is dropped; any other is refused).
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "tools": lambda v: v == [],
    "tool_choice": lambda v: v in ("none", "auto"),
    "parallel_tool_calls": lambda v: True,  # says nothing without tools
    "functions": lambda v: v == [],
    "function_call": lambda v: v in ("none", "auto"),
    "response_format": lambda v: v == {"type": "text"},
    "logit_bias": lambda v: v == {},
    "presence_penalty": lambda v: v == 0,
    "frequency_penalty": lambda v: v == 0,
    "echo": lambda v: v is False,
    "best_of": lambda v: v == 1,
    "suffix": lambda v: v == "",
    "store": lambda v: v is False,
    "metadata": lambda v: True,  # tags for stored completions; nothing is stored
    "service_tier": lambda v: v in ("auto", "default"),
}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_unused(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            k: v
            for k, v in data.items()
            if k in cls.model_fields or not (v is None or (k in _NEUTRAL and _NEUTRAL[k](v)))
        }

    model: str
    max_tokens: TokenLimit | None = None
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: Seed | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    n: Int = Field(default=1, ge=1, le=MAX_CHOICES)
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def check_n(self) -> None:
        if self.n != 1:
            raise ApiError(
                400,
                "only n=1 is supported; send n requests instead",
                param="n",
                code="unsupported_value",
            )


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: TokenLimit | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20), BeforeValidator(_integral)] | None = None

    def logprob_count(self) -> int | None:
        """None: no logprobs; k: each id's logprob and the k most likely ones."""
        if self.top_logprobs and not self.logprobs:
            raise ApiError(
                400,
                "top_logprobs needs logprobs: true",
                param="top_logprobs",
                code="invalid_value",
            )
        return (self.top_logprobs or 0) if self.logprobs else None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, Any]]:
        """What the chat template renders: role and text content only (§6)."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5), BeforeValidator(_integral)] | None = None

    def logprob_count(self) -> int | None:
        """The legacy API's ``logprobs``: how many alternatives per id (0: only the id's)."""
        return self.logprobs

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def limit(self) -> int | None:
        return self.max_tokens


class ReceiptBody(_Lenient):
    """A countersigned cumulative Receipt (docs/protocol.md §8), as ``/openapi.json`` shows it.

    The node reads receipts with ``SignedReceipt.from_json`` (``receipt_from_body``), the one
    parser of the wire form; this model only describes it.
    """

    channelId: Hex32
    inputTokens: Int = Field(ge=0, le=UINT64_MAX)
    outputTokens: Int = Field(ge=0, le=UINT64_MAX)
    usageRoot: Hex32
    signature: Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{130}$")]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """The OpenAI error envelope every error response carries."""

    error: ErrorBody


def parse_body(raw: bytes, model: type[M]) -> M:
    """Strict UTF-8, then JSON, then the schema; every failure is a 400 envelope."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def receipt_from_body(raw: bytes) -> SignedReceipt:
    """A receipt posted as the body (§8): strict JSON, then the protocol's parser."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return _receipt(lambda: SignedReceipt.from_json(data))


def receipt_from_header(value: str) -> SignedReceipt:
    """The ``X-Tally-Receipt`` header (§8), parsed by the protocol."""
    return _receipt(lambda: SignedReceipt.from_header(value))


def _receipt(parse: Callable[[], SignedReceipt]) -> SignedReceipt:
    try:
        return parse()
    except ProtocolError as exc:
        raise ApiError(
            400, f"malformed receipt: {exc}", param=exc.field, code="invalid_receipt"
        ) from None
    except ValueError as exc:  # in range for the wire, not for the type (a 65-byte v, say)
        raise ApiError(400, f"malformed receipt: {exc}", code="invalid_receipt") from None


def parse_json(raw: bytes) -> Any:
    """Strict UTF-8 JSON without NaN/Infinity; nesting too deep for the parser is a 400."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, f"the body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding"
        ) from None
    _check_depth(text)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise ApiError(400, "the body's JSON is nested too deeply", code="invalid_json") from None


def _check_depth(text: str) -> None:
    """Refuse JSON nested deeper than ``MAX_JSON_DEPTH`` before parsing it.

    json's C decoder recurses once per level and trusts the interpreter's recursion limit,
    which web3 raises to 100000: a 4 MiB body of ``[`` would overflow the C stack and kill
    the process (a segfault, not a RecursionError).
    """
    if json_too_deep(text):  # the protocol's rule, shared with the client
        raise ApiError(
            400,
            f"the body's JSON is nested deeper than {MAX_JSON_DEPTH} levels",
            code="invalid_json",
        )


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and a NaN temperature
    # would slip through every range check.
    raise ApiError(
        400, f"the body is not valid JSON: {name} is not a JSON value", code="invalid_json"
    )


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-before"}


def _validation_error(exc: ValidationError) -> ApiError:
    err = _most_telling(exc.errors(include_url=False, include_input=False))
    loc = [str(p) for p in err["loc"] if not _is_branch_tag(p)]
    param = loc[0] if loc else None
    where = ".".join(loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return ApiError(
            400,
            f"the parameter {where!r} is not supported by this node; remove it "
            "(docs/protocol.md §8 lists the supported parameters)",
            param=param,
            code="unsupported_parameter",
        )
    if err["type"] == "missing":
        return ApiError(
            400,
            f"missing required parameter: {where}",
            param=param,
            code="missing_required_parameter",
        )
    return ApiError(400, f"invalid value for {where}: {message}", param=param, code="invalid_value")


def _most_telling(errors: list[Any]) -> Any:
    """Of a union's errors, one from the branch the value's type matched (its range, say)."""
    field = errors[0]["loc"][:1]
    same = [e for e in errors if e["loc"][:1] == field]
    specific = [e for e in same if not str(e["type"]).endswith("_type")]
    return (specific or same)[0]


def _is_branch_tag(part: Any) -> bool:
    # pydantic names union branches in the location ("stop.list[constrained-str]"); users
    # know fields and indexes only.
    text = str(part)
    return not isinstance(part, int) and ("[" in text or "-" in text or text in _TYPE_NAMES)
