"""Tokenizer bundles, their hash, and token counting by the counting rule (§6, §6.1).

The client must count exactly as the node does without torch or transformers, so counting
uses only the ``tokenizers`` library and a Jinja2 environment built like the one
transformers' ``apply_chat_template`` uses (``transformers/utils/chat_template_utils.py``:
an immutable sandbox with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, a
``{% generation %}`` tag, and the ``raise_exception``, ``strftime_now``, ``tojson``, ``dict`` and
``namespace`` helpers). The tests check both agree id for id.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from eth_utils import keccak
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ._errors import InvalidChatTemplate, ProtocolError, TokenizerMismatch
from ._types import hex32
from ._untrusted import check_chat_template, loads_untrusted

_BUNDLE_KEYS = ("bos_token", "chat_template", "eos_token", "tokenizer_json")
MAX_BUNDLE_BYTES = 256 << 20  # the largest real tokenizer.json files are ~35 MB
# Nested calls (macros, recursive loops, caller()) a template may make while rendering: real
# templates nest a handful; each level costs C stack, and a macro calling itself would
# otherwise recurse until web3's recursion limit of 100000 overflows it.
MAX_TEMPLATE_CALL_DEPTH = 64


@dataclass(frozen=True)
class TokenizerBundle:
    """What ``tokenizerHash`` commits to: the tokenizer, the chat template and bos/eos strings."""

    tokenizer_json: str
    chat_template: str
    bos_token: str | None
    eos_token: str | None

    def __post_init__(self) -> None:
        for name in ("tokenizer_json", "chat_template"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        for name in ("bos_token", "eos_token"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or None")

    def to_json(self) -> dict[str, Any]:
        """The JSON object served at ``GET /v1/tally/tokenizer/{model}``."""
        return {key: getattr(self, key) for key in _BUNDLE_KEYS}

    def canonical_bytes(self) -> bytes:
        """Sorted keys, no whitespace, UTF-8, non-ASCII unescaped (§6.1)."""
        return _canonical(self.to_json())

    @cached_property
    def _hash(self) -> bytes:
        return keccak(self.canonical_bytes())

    def hash(self) -> bytes:
        """``tokenizerHash = keccak256(canonical JSON bytes)``."""
        return self._hash

    @classmethod
    def from_bytes(cls, data: bytes, expected_hash: bytes | None = None) -> TokenizerBundle:
        """Parse served bytes; they must be canonical, so the hash is that of the bytes received.

        A matching hash proves nothing about safety (the provider chose it), so the bytes are
        size- and depth-checked before parsing: ``InvalidJSON``, a ``ProtocolError``.
        """
        if expected_hash is not None and keccak(data) != expected_hash:
            raise TokenizerMismatch(
                f"tokenizer bundle hashes to {hex32(keccak(data))}, expected {hex32(expected_hash)}"
            )
        obj = loads_untrusted(data, what="the tokenizer bundle", max_bytes=MAX_BUNDLE_BYTES)
        if not isinstance(obj, dict) or sorted(obj) != list(_BUNDLE_KEYS):
            raise ProtocolError(f"tokenizer bundle must have exactly the keys {list(_BUNDLE_KEYS)}")
        try:
            bundle = cls(**obj)
        except ValueError as exc:
            raise ProtocolError(f"tokenizer bundle: {exc}") from exc
        if bundle.canonical_bytes() != data:
            raise ProtocolError("tokenizer bundle bytes are not in canonical JSON form (§6.1)")
        return bundle

    @classmethod
    def from_hf(cls, tokenizer: Any) -> TokenizerBundle:
        """Build the bundle of a transformers (fast) tokenizer; duck-typed, imports nothing."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError("from_hf needs a fast tokenizer (one with a backend_tokenizer)")
        return cls(
            tokenizer_json=backend.to_str(),
            chat_template=_default_chat_template(tokenizer),
            bos_token=_token_string(tokenizer.bos_token),
            eos_token=_token_string(tokenizer.eos_token),
        )


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _default_chat_template(tokenizer: Any) -> str:
    try:
        template = tokenizer.get_chat_template()
    except ValueError:  # base models without a template can still serve /v1/completions
        return ""
    return template if isinstance(template, str) else ""


def _token_string(token: Any) -> str | None:
    return None if token is None else str(token)


class TokenCounter:
    """Counts (and decodes) tokens for one bundle by the counting rule of §6."""

    def __init__(self, bundle: TokenizerBundle) -> None:
        self.bundle = bundle
        self._tokenizer = _load_tokenizer(bundle)
        self._template = _compile_template(bundle.chat_template) if bundle.chat_template else None

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        """The chat prompt as text: the template with ``add_generation_prompt = true``."""
        if self._template is None:
            raise ProtocolError("this model has no chat template; use /v1/completions")
        chat = _normalise_messages(messages)
        context: dict[str, Any] = {"messages": chat, "tools": None, "documents": None}
        context["add_generation_prompt"] = True
        # transformers passes only the special tokens that are set.
        for name in ("bos_token", "eos_token"):
            if getattr(self.bundle, name) is not None:
                context[name] = getattr(self.bundle, name)
        try:
            return self._template.render(**context)
        except _TooDeep as exc:
            raise InvalidChatTemplate(str(exc)) from exc
        except Exception as exc:  # a template is code: it can fail with any error (TypeError, ...)
            raise ProtocolError(f"chat template refused the messages: {exc}") from exc

    def chat_prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Ids of the rendered chat prompt, encoded without special tokens (§6)."""
        return self._encode(self.render_chat(messages), add_special_tokens=False)

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """Ids of a text-completion prompt, encoded with special tokens (§6)."""
        if not isinstance(prompt, str):
            raise ProtocolError("a text prompt must be a string")
        return self._encode(prompt, add_special_tokens=True)

    def _encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        # The offset-free encoder: the same ids, ~20-35% faster on a 1,500-token prompt
        # (offsets are computed, then thrown away, by encode()).
        (encoding,) = self._tokenizer.encode_batch_fast(
            [text], add_special_tokens=add_special_tokens
        )
        return list(encoding.ids)

    def decode(self, ids: Sequence[int]) -> str:
        """``decode(ids, skip_special_tokens=True)``, without clean-up of tokenization spaces."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    @cached_property
    def eos_token_ids(self) -> list[int]:
        """The id(s) of the end-of-sequence token, or ``[]`` when the bundle has none."""
        if self.bundle.eos_token is None:
            return []
        eos = self._tokenizer.token_to_id(self.bundle.eos_token)
        return [] if eos is None else [eos]

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary including added tokens."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    @cached_property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the added tokens marked special: they decode to "" (§6, special ids)."""
        added = self._tokenizer.get_added_tokens_decoder()
        return frozenset(int(i) for i, token in added.items() if token.special)

    def known(self, token_id: int) -> bool:
        """``token_id`` is in the vocabulary (an id the tokenizer can decode to its token)."""
        return 0 <= token_id < self.vocab_size and self._tokenizer.id_to_token(token_id) is not None

    def canonical_ids(self, text: str) -> list[int]:
        """The canonical encoding of completion text (no special tokens added), §6."""
        return self._encode(text, add_special_tokens=False)


def _normalise_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # §6: the template sees {"role", "content"} only, content a string (text parts joined by
    # "\n"), so client and node count the same whatever extra fields a request carries.
    if not isinstance(messages, list | tuple) or not messages:
        raise ProtocolError("messages must be a non-empty list")
    chat = []
    for message in messages:
        if not isinstance(message, dict):
            raise ProtocolError(f"each message must be an object, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str):
            raise ProtocolError("each message needs a string role")
        chat.append({"role": str(role), "content": _content_text(message.get("content"))})
    return chat


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return str(content)
    if not isinstance(content, list | tuple):
        raise ProtocolError("message content must be a string or a list of text parts")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ProtocolError(f"content part type {kind!r} is not supported; send text parts")
        text = part.get("text")
        if not isinstance(text, str):
            raise ProtocolError("a text content part needs a string 'text'")
        texts.append(text)
    return "\n".join(texts)


# --- Loading, cached by bundle hash: a 1.5 MB tokenizer.json takes ~0.1 s to parse. ---

_CACHE_SIZE = 8
_tokenizers: OrderedDict[bytes, Tokenizer] = OrderedDict()
_lock = threading.Lock()


def _load_tokenizer(bundle: TokenizerBundle) -> Tokenizer:
    key = bundle.hash()
    with _lock:
        if key in _tokenizers:
            _tokenizers.move_to_end(key)
            return _tokenizers[key]
    try:
        tokenizer = Tokenizer.from_str(bundle.tokenizer_json)
    except Exception as exc:  # the Rust side raises a bare Exception on bad JSON
        raise ProtocolError(f"tokenizer_json is not a tokenizers serialisation: {exc}") from exc
    with _lock:
        _tokenizers[key] = tokenizer
        while len(_tokenizers) > _CACHE_SIZE:
            _tokenizers.popitem(last=False)
    return tokenizer


@lru_cache(maxsize=32)
def _compile_template(source: str) -> jinja2.Template:
    # The bundle comes from the provider: its template is checked for nesting before Jinja's
    # parser and CPython's compiler (both recursive) see it.
    check_chat_template(source)
    try:
        return _environment().from_string(source)
    except (jinja2.TemplateSyntaxError, SyntaxError, RecursionError, MemoryError) as exc:
        # Jinja turns the template into Python; CPython may refuse what Jinja accepted.
        raise InvalidChatTemplate(f"the chat template does not compile: {exc}") from exc


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with nested calls from templates bounded (a macro may call itself)."""

    _depth = threading.local()

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(__self._depth, "n", 0)
        if depth >= MAX_TEMPLATE_CALL_DEPTH:
            raise _TooDeep(f"the chat template nests calls deeper than {MAX_TEMPLATE_CALL_DEPTH}")
        __self._depth.n = depth + 1
        try:
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            __self._depth.n = depth


class _TooDeep(jinja2.exceptions.SecurityError):
    pass


def _environment() -> ImmutableSandboxedEnvironment:
    env = _ChatSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


class _GenerationTag(jinja2.ext.Extension):
    # transformers marks assistant spans with {% generation %}; for counting it renders as-is.
    tags = {"generation"}  # noqa: RUF012 (jinja reads a class attribute)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render", [], [])
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    # A callable stand-in for dict that exposes no class internals to the sandbox.
    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Namespaces refuse underscore names so templates cannot reach CPython internals.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes, got {name!r}"
            )
