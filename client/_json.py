"""Reading what a node sends: bounded in size, and refused before parsing when nested too deeply.

web3 raises the interpreter's recursion limit to 100000 on import, and json's C decoder trusts
it: a body of ~200,000 ``[`` overflows the C stack and kills the process (a segfault, not an
exception). A malicious node could so kill every client that reads its answer, so every JSON
a node sends is depth-checked first, the same rule as the node's own (``node/_schemas.py``).

The check belongs next to the wire format in ``tallystick.protocol`` (the node has its own
copy); it lives here until that package takes it.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

import httpx

from ._errors import InvalidResponse

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_ERROR_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TOKENIZER_BYTES",
    "loads",
    "read_capped",
    "too_deep",
]

MAX_JSON_DEPTH = 64  # the node's limit for requests; protocol JSON is at most ~5 levels deep
# A completion lists every generated id (~7 bytes each): 64 MiB holds far more than any context.
MAX_BODY_BYTES = 64 << 20
MAX_EVENT_BYTES = 16 << 20  # one SSE event (the final one carries the record and all ids)
MAX_ERROR_BYTES = 1 << 20  # an OpenAI error envelope is a few hundred bytes
MAX_TOKENIZER_BYTES = 256 << 20  # the largest real tokenizer.json files are ~35 MB

# A JSON string, unrolled so that runs of plain characters are one regex step (5x faster than
# an alternation per character on a multi-megabyte tokenizer bundle).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def too_deep(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``data`` nests arrays/objects deeper than ``limit`` (brackets in strings aside)."""
    raw = data.encode() if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # cannot be deeper than its number of openers: the usual case, in C
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    # accumulate/map run in C and any() stops at the first level past the limit.
    return any(map(limit.__lt__, accumulate(map(_STEP.__getitem__, brackets))))


def loads(data: bytes | str, what: str, status: int = 200) -> Any:
    """Parse JSON from a node; ``InvalidResponse`` if it is nested too deeply or malformed."""
    if too_deep(data):
        raise InvalidResponse(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", status)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidResponse(f"{what} is not JSON: {exc}", status) from exc


def read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """The (decoded) body of a streamed response; ``InvalidResponse`` past ``limit`` bytes."""
    try:
        declared = int(response.headers.get("content-length", "0"))
    except ValueError:
        declared = 0
    if declared > limit:
        response.close()
        raise _too_large(what, limit, response.status_code)
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise _too_large(what, limit, response.status_code)
    finally:
        response.close()
    return bytes(body)


def _too_large(what: str, limit: int, status: int) -> InvalidResponse:
    return InvalidResponse(f"{what} is larger than {limit >> 20} MiB", status)
