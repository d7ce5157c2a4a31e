"""Reading what a node sends: bounded in size, and refused before parsing when nested too deeply.

web3 raises the interpreter's recursion limit to 100000 on import, and json's C decoder trusts
it: a body of ~200,000 ``[`` overflows the C stack and kills the process (a segfault, not an
exception). A malicious node could so kill every client that reads its answer, so every JSON
a node sends is depth-checked first, by the protocol's rule (``tallystick.protocol``'s
``json_too_deep``, which the node applies to requests too).
"""

from __future__ import annotations

from typing import Any

import httpx
from tallystick.protocol import MAX_JSON_DEPTH, InvalidJSON, loads_untrusted
from tallystick.protocol import json_too_deep as too_deep

from ._errors import InvalidResponse, from_httpx

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

# A completion lists every generated id (~7 bytes each): 64 MiB holds far more than any context.
MAX_BODY_BYTES = 64 << 20
MAX_EVENT_BYTES = 16 << 20  # one SSE event (the final one carries the record and all ids)
MAX_ERROR_BYTES = 1 << 20  # an OpenAI error envelope is a few hundred bytes
MAX_TOKENIZER_BYTES = 256 << 20  # the largest real tokenizer.json files are ~35 MB


def loads(data: bytes | str, what: str, status: int = 200) -> Any:
    """Parse JSON from a node; ``InvalidResponse`` if it is nested too deeply or malformed."""
    try:
        # Sizes are bounded while reading (read_capped), each with its own limit.
        return loads_untrusted(data, what=what, max_bytes=len(data))
    except InvalidJSON as exc:
        raise InvalidResponse(str(exc), status) from exc


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
    except httpx.HTTPError as exc:  # the connection broke mid-body
        raise from_httpx(exc, _url(response)) from exc
    finally:
        response.close()
    return bytes(body)


def _url(response: httpx.Response) -> object:
    try:
        return response.request.url
    except RuntimeError:  # a transport's response: no request attached
        return "(the node)"


def _too_large(what: str, limit: int, status: int) -> InvalidResponse:
    return InvalidResponse(f"{what} is larger than {limit >> 20} MiB", status)
