"""Reading what another party sends without letting it crash the process.

web3 raises the interpreter's recursion limit to 100000 on import. json's C decoder, Jinja's
parser and CPython's compiler recurse once per nesting level and trust that limit, so a body of
~200,000 ``[`` or a chat template of a few thousand nested ``not`` or ``{% if %}`` overflows the
C stack: a segfault, not an exception, and nothing upstream can catch it. So JSON from anyone
else is depth-checked before it is parsed, and a chat template is walked (by Jinja's lexer, a
flat token stream) before Jinja compiles it. Both checks are linear and run mostly in C.

Client and node share these; the node keeps its own HTTP error envelopes around them.
"""

from __future__ import annotations

import json
from itertools import accumulate
from typing import Any

import jinja2

from ._errors import InvalidChatTemplate, InvalidJSON

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TAG_OPERATORS",
    "MAX_TEMPLATE_NESTING",
    "check_chat_template",
    "json_too_deep",
    "loads_untrusted",
]

MAX_JSON_DEPTH = 64  # protocol JSON nests at most ~5 levels; json's decoder is safe far deeper
MAX_JSON_BYTES = 64 << 20  # a completion lists every id (~7 bytes each): far more than a context

# Real chat templates nest blocks ~6 deep and use ~20 operators in their longest tag. Below
# these, Jinja compiles without crashing and within CPython's own static limits (20 nested
# loops, 200 nested parentheses), which raise SyntaxError rather than crash.
MAX_TEMPLATE_NESTING = 16
MAX_TAG_OPERATORS = 128

# Every byte but the four brackets (deleted by bytes.translate), and the brackets as signed
# steps: "[" and "{" open (+1), "]" and "}" close (0xff is -1 read as a signed byte).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")

_BLOCK_OPENERS = frozenset(
    {"if", "for", "macro", "call", "filter", "with", "block", "autoescape", "generation", "set"}
)
# Names that are operators in Jinja expressions: each may add a level to the parse tree.
_WORD_OPERATORS = frozenset({"not", "and", "or", "if", "else", "is", "in"})
# Operators that separate or close and add no level: a long list literal is one level deep.
_FLAT_OPERATORS = frozenset({",", ":", ")", "]", "}", "="})


def json_too_deep(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``json.loads(data)`` would nest arrays/objects deeper than ``limit``.

    Brackets inside strings do not count (escaped quotes and backslashes are handled). On
    malformed input the answer errs towards "too deep", never below what the parser reaches
    before it fails.
    """
    raw = _utf8(data)
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # cannot be deeper than its number of openers: the usual case, in C
    # Drop escaped backslashes, then escaped quotes, so every '"' left delimits a string
    # (left-to-right pairing is exactly how a JSON string reads its escapes).
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])  # even pieces lie outside strings
    steps = outside.translate(None, _NOT_BRACKETS).translate(_STEPS)
    if b"\x01" * (limit + 1) in steps:
        return True  # a plain run of openers, the usual attack: found by memmem
    return max(accumulate(memoryview(steps).cast("b")), default=0) > limit


def _utf8(data: bytes | str) -> bytes:
    # In UTF-8 no byte of a multi-byte character is ASCII, so brackets and quotes can be
    # scanned as bytes. json.loads(bytes) also reads UTF-16/32 (where they cannot), so such
    # input is checked as the text json would decode it to.
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    encoding = json.detect_encoding(data)
    if encoding in ("utf-8", "utf-8-sig"):
        return data
    try:
        return data.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
    except UnicodeError:
        return b""  # json.loads fails to decode it before parsing anything


def loads_untrusted(
    data: bytes | str,
    *,
    what: str = "the JSON",
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """``json.loads`` for another party's bytes: ``InvalidJSON`` if too large, deep or malformed.

    ``what`` names the input in the message (``"the completion is nested deeper than 64
    levels"``).
    """
    if len(data) > max_bytes:
        raise InvalidJSON(f"{what} is larger than {_size(max_bytes)}")
    if json_too_deep(data, max_depth):
        raise InvalidJSON(f"{what} is nested deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError, MemoryError) as exc:  # JSONDecodeError, UnicodeError
        raise InvalidJSON(f"{what} is not JSON: {exc}") from exc


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def check_chat_template(source: str) -> None:
    """``InvalidChatTemplate`` unless the template's blocks and expressions nest within bounds.

    Walks Jinja's lexer (a flat token stream, no recursion): blocks may nest at most
    ``MAX_TEMPLATE_NESTING`` deep, and one tag may hold at most ``MAX_TAG_OPERATORS``
    operators and opening brackets, which bounds how deep its expression can nest.
    """
    try:
        _walk(jinja2.Environment().lex(source))
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidChatTemplate(f"the chat template does not compile: {exc}") from exc


def _walk(tokens: Any) -> None:
    depth = 0
    keyword: str | None = None  # the first name of the current {% %} tag
    expect_keyword, assigns, operators = False, False, 0
    for _, kind, value in tokens:
        if kind in ("block_begin", "variable_begin"):
            expect_keyword, keyword, assigns, operators = kind == "block_begin", None, False, 0
        elif kind == "name" and expect_keyword:
            keyword, expect_keyword = value, False
            depth -= value.startswith("end")
        elif kind == "operator" or (kind == "name" and value in _WORD_OPERATORS):
            operators += value not in _FLAT_OPERATORS
            assigns = assigns or value == "="
        elif kind == "block_end" and keyword in _BLOCK_OPENERS:
            depth += not (keyword == "set" and assigns)  # {% set x = ... %} opens nothing
        if depth > MAX_TEMPLATE_NESTING or operators > MAX_TAG_OPERATORS:
            raise InvalidChatTemplate(
                "the chat template nests too deeply to compile safely (more than "
                f"{MAX_TEMPLATE_NESTING} blocks or {MAX_TAG_OPERATORS} operators in a tag)"
            )
