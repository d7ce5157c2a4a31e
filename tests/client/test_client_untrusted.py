"""A hostile node cannot crash the client: deep or huge JSON, deep chat templates, odd framing.

web3 raises the recursion limit to 100000, so json's C decoder (and Jinja) would recurse until
the C stack overflows on a deeply nested input: a segfault. The client refuses such answers
before parsing them (``InvalidResponse``) and countersigns nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_utils import keccak
from tallystick.client import InvalidResponse, NodeError, Tallystick, Wallet
from tallystick.client._json import MAX_JSON_DEPTH, read_capped, too_deep
from tallystick.client._node import NodeClient
from tallystick.client._tokenizers import (
    MAX_TAG_OPERATORS,
    MAX_TEMPLATE_NESTING,
    TokenizerCache,
    check_chat_template,
)
from tallystick.client._transport import _sse_events
from tallystick.protocol import ProtocolError, TokenCounter

from tests.kit.client import (
    ENDPOINT,
    MESSAGES,
    MODEL,
    FakeNode,
    assert_nothing_countersigned,
    fake_chat,
)

HERE = Path(__file__).parent
DEEP = 1_000  # deep enough to refuse, shallow enough not to crash the test run without the guard


def nested(depth: int) -> bytes:
    return b'{"choices": ' + b"[" * depth + b"]" * depth + b"}"


def hostile(fake: FakeNode, routes: dict[str, Callable[[httpx.Request], httpx.Response]]) -> Any:
    """The fake node, with some paths answered by ``routes`` instead."""

    def handle(request: httpx.Request) -> httpx.Response:
        route = routes.get(request.url.path)
        return route(request) if route else fake.handle(request)

    return httpx.MockTransport(handle)


def client_on(transport: httpx.BaseTransport, wallet: Wallet, fake: FakeNode, tmp: Path) -> Any:
    c = Tallystick(wallet, tmp / "store.db", transport=transport, tokenizer_dir=tmp / "tok")
    c.store.add_channel(fake.channel_info())
    return c


def sse(*events: bytes) -> httpx.Response:
    body = b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


# --- the depth rule ------------------------------------------------------------------------


def test_depth_rule_counts_levels_not_brackets_and_ignores_strings() -> None:
    assert not too_deep(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert too_deep(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert not too_deep(json.dumps([[1]] * 10_000))  # many openers, depth 2
    assert not too_deep(json.dumps({"t": "[{" * 10_000, "e": '\\"[[[['}))  # brackets in strings
    assert too_deep('{"a": "x\\"", "b": ' + "[" * 100 + "]" * 100 + "}")
    assert too_deep("[" * 4_000_000)


def test_a_4_mib_body_of_brackets_is_refused_in_well_under_a_second() -> None:
    start = time.perf_counter()
    assert too_deep(b"[" * (4 << 20))
    assert time.perf_counter() - start < 1.0


# --- completions ---------------------------------------------------------------------------


def test_deep_plain_completion_is_refused_nothing_countersigned(
    wallet: Wallet, fake: FakeNode, tmp_path: Path
) -> None:
    route = {"/v1/chat/completions": lambda r: httpx.Response(200, content=nested(DEEP))}
    with client_on(hostile(fake, route), wallet, fake, tmp_path) as client:
        with pytest.raises(InvalidResponse, match="nested deeper than 64 levels") as info:
            fake_chat(client)
        assert info.value.status == 200 and info.value.code == "invalid_response"
        assert_nothing_countersigned(client, fake)


def test_deep_stream_chunk_is_refused_before_the_caller_sees_it(
    wallet: Wallet, fake: FakeNode, tmp_path: Path
) -> None:
    choice = {"index": 0, "delta": {"content": "hi"}, "finish_reason": None}
    meta = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    first = json.dumps({**meta, "choices": [choice]}).encode()
    route = {"/v1/chat/completions": lambda r: sse(first, nested(DEEP))}
    with client_on(hostile(fake, route), wallet, fake, tmp_path) as client:
        stream = fake_chat(client, stream=True)
        seen = []
        with pytest.raises(InvalidResponse, match="stream chunk is nested deeper"):
            seen.extend(stream)
        assert [c.choices[0].delta.content for c in seen] == ["hi"]
        assert_nothing_countersigned(client, fake)


def test_deep_error_envelope_is_refused(wallet: Wallet, fake: FakeNode, tmp_path: Path) -> None:
    route = {"/v1/chat/completions": lambda r: httpx.Response(402, content=nested(DEEP))}
    with client_on(hostile(fake, route), wallet, fake, tmp_path) as client:
        with pytest.raises(InvalidResponse) as info:
            fake_chat(client)
        assert info.value.status == 402
        assert_nothing_countersigned(client, fake)


def test_openai_sdk_never_parses_a_deep_answer(
    wallet: Wallet, fake: FakeNode, tmp_path: Path
) -> None:
    routes = {
        "/v1/chat/completions": lambda r: httpx.Response(200, content=nested(DEEP)),
        "/v1/models": lambda r: httpx.Response(200, content=nested(DEEP)),
    }
    with client_on(hostile(fake, routes), wallet, fake, tmp_path) as client:
        sdk = client.openai(fake.channel_id)
        with pytest.raises(InvalidResponse, match="completion is nested deeper"):
            sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        with pytest.raises(InvalidResponse, match="200 answer is nested deeper"):
            sdk.models.list()  # passed through the transport, checked all the same
        assert_nothing_countersigned(client, fake)


def test_gzip_answers_pass_through_decoded(wallet: Wallet, fake: FakeNode, tmp_path: Path) -> None:
    def gzipped(request: httpx.Request) -> httpx.Response:
        plain = fake.handle(request)
        return httpx.Response(
            200,
            content=gzip.compress(plain.content),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )

    with client_on(hostile(fake, {"/v1/chat/completions": gzipped}), wallet, fake, tmp_path) as c:
        reply = c.openai(fake.channel_id).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=16
        )
        assert reply.choices[0].message.content == "hello world"
        assert c.store.tally(fake.channel_id).seq == 1


# --- other node answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "path"),
    [
        (lambda n: n.models(), "/v1/models"),
        (
            lambda n: n.record(b"\x01" * 32, 1, lambda *_: "t"),
            f"/v1/tally/channels/0x{'01' * 32}/records/1",
        ),
        (lambda n: n.channel(b"\x01" * 32, lambda *_: "t"), f"/v1/tally/channels/0x{'01' * 32}"),
    ],
)
def test_node_answers_are_depth_checked(call: Any, path: str) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=nested(DEEP)))
    node = NodeClient(ENDPOINT, httpx.Client(transport=transport))
    with pytest.raises(InvalidResponse, match="nested deeper"):
        call(node)


def test_bodies_are_read_up_to_a_limit() -> None:
    def chunks() -> Any:
        yield from [b"x" * 1000] * 10  # no content-length: counted while reading

    streamed = httpx.Response(200, content=chunks())
    with pytest.raises(InvalidResponse, match="larger than"):
        read_capped(streamed, 5000, "the body")
    declared = httpx.Response(200, content=b"x" * 10, headers={"content-length": str(1 << 30)})
    with pytest.raises(InvalidResponse, match="larger than"):
        read_capped(declared, 5000, "the body")
    assert read_capped(httpx.Response(200, content=b"ok"), 5000, "the body") == b"ok"


def test_sse_events_are_bounded_framed_like_the_spec_and_linear() -> None:
    with pytest.raises(InvalidResponse, match="stream event is larger"):
        list(_sse_events(iter([b"data: " + b"x" * 100] * 100), limit=5000))
    # \r, \r\n (even split across chunks) and \n all end lines; what is passed on uses \n.
    events = list(_sse_events(iter([b"data: 1\r", b"\r", b"data: 2\r\n\r", b"\ndata: 3\n\n"])))
    assert events == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    # One 8 MiB event in 1 KiB chunks: linear, not a rescan of the buffer per chunk.
    start = time.perf_counter()
    (event,) = _sse_events(iter([b"data: "] + [b"x" * 1024] * 8192 + [b"\n\n"]))
    assert len(event) == 6 + (8 << 20) + 2 and time.perf_counter() - start < 2.0


# --- tokenizer bundles ---------------------------------------------------------------------


def bundle_route(data: bytes) -> dict[str, Callable[[httpx.Request], httpx.Response]]:
    return {f"/v1/tally/tokenizer/{MODEL}": lambda r: httpx.Response(200, content=data)}


def test_deep_tokenizer_bundle_with_a_matching_hash_is_refused(
    wallet: Wallet, fake: FakeNode, tmp_path: Path
) -> None:
    # The provider chose the on-chain hash, so a matching hash proves nothing about safety.
    data = nested(DEEP)
    fake_hash = keccak(data)
    cache = TokenizerCache(tmp_path / "tok")
    node = NodeClient(ENDPOINT, httpx.Client(transport=hostile(fake, bundle_route(data))))
    with pytest.raises(InvalidResponse, match="tokenizer bundle is nested deeper"):
        cache.counter(node, MODEL, fake_hash)
    assert not (tmp_path / "tok").exists()  # nothing cached


def test_deep_chat_template_is_refused_before_jinja_compiles_it(
    wallet: Wallet, fake: FakeNode, tmp_path: Path
) -> None:
    evil = replace(fake.bundle, chat_template="{{ " + "not " * 5000 + "x }}")
    data = evil.canonical_bytes()
    cache = TokenizerCache(tmp_path / "tok")
    node = NodeClient(ENDPOINT, httpx.Client(transport=hostile(fake, bundle_route(data))))
    with pytest.raises(InvalidResponse, match="chat template nests too deeply"):
        cache.counter(node, MODEL, evil.hash())


@pytest.mark.parametrize(
    "template",
    [
        "{% if x %}" * (MAX_TEMPLATE_NESTING + 1) + "{% endif %}" * (MAX_TEMPLATE_NESTING + 1),
        "{% for x in y %}" * (MAX_TEMPLATE_NESTING + 1) + "{% endfor %}" * 17,
        "{{ " + "not " * (MAX_TAG_OPERATORS + 1) + "x }}",
        "{{ " + "(" * (MAX_TAG_OPERATORS + 1) + "1" + ")" * (MAX_TAG_OPERATORS + 1) + " }}",
        "{{ x" + "+x" * (MAX_TAG_OPERATORS + 1) + " }}",
        "{{ " + "a if b else " * (MAX_TAG_OPERATORS // 2 + 1) + "c }}",
        "{{ (] }}",  # does not lex
    ],
)
def test_templates_past_the_bounds_are_refused(template: str) -> None:
    with pytest.raises(InvalidResponse, match="chat template"):
        check_chat_template(template)


@pytest.mark.parametrize(
    "template",
    [
        "{% for x in y %}{% if x %}" * 8 + "a" + "{% endif %}{% endfor %}" * 8,
        "{% set x %}" * MAX_TEMPLATE_NESTING + "{% endset %}" * MAX_TEMPLATE_NESTING,
        "{% set x = 1 %}" * 1000 + "{{ x }}",  # assignments open no block
        "{{ " + "not " * MAX_TAG_OPERATORS + "x }}",
        "{{ x" + "+x" * MAX_TAG_OPERATORS + " }}",
        "{{ " + "f(" * MAX_TAG_OPERATORS + ")" * MAX_TAG_OPERATORS + " }}",
        "{{ [" + ", ".join(["1"] * 5000) + "] }}",  # long but flat
    ],
)
def test_templates_within_the_bounds_compile(fake: FakeNode, template: str) -> None:
    check_chat_template(template)
    TokenCounter(replace(fake.bundle, chat_template=template))  # compiles, no crash


def test_the_real_chat_templates_pass(fake: FakeNode) -> None:
    check_chat_template(fake.bundle.chat_template)
    real = HERE.parents[1] / ".models" / "SmolLM2-135M-Instruct-hf" / "chat_template.jinja"
    if real.exists():
        check_chat_template(real.read_text())


# --- the process survives a real attack ----------------------------------------------------

_ATTACK = """
import sys, os, json
sys.path.insert(0, {root!r})  # the checkout: tests.kit
from pathlib import Path
import httpx
from tests.kit.client import FakeNode, new_provider
from tallystick.client import InvalidResponse, Tallystick, Wallet
assert sys.getrecursionlimit() >= 100000  # web3's, the condition of the crash
wallet = Wallet.from_key("0x" + os.urandom(32).hex())
fake = FakeNode(new_provider(), wallet.address, os.urandom(32))
deep = b'{{"choices": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
def handle(request):
    if request.url.path.endswith("/completions"):
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, content=b"data: " + deep + b"\\n\\n")
        return httpx.Response(200, content=deep)
    return fake.handle(request)
tmp = Path({tmp!r})
for stream in (False, True):
    with Tallystick(wallet, tmp / f"s{{stream}}.db", transport=httpx.MockTransport(handle)) as c:
        c.store.add_channel(fake.channel_info())
        try:
            reply = c.chat.completions.create(
                model="tiny-chat", messages=[{{"role": "user", "content": "hi"}}], stream=stream
            )
            list(reply) if stream else None
        except InvalidResponse as exc:
            print("refused", stream, exc)
        assert c.store.tally(fake.channel_id).receipt is None and fake.receipts == []
print("alive")
"""


def test_a_200k_deep_answer_does_not_kill_the_process(tmp_path: Path) -> None:
    script = _ATTACK.format(root=str(HERE.parents[1]), tmp=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.count("refused") == 2 and done.stdout.strip().endswith("alive")


def test_invalid_response_is_a_node_error_and_a_protocol_error() -> None:
    exc = InvalidResponse("the completion is not JSON", 200)
    assert isinstance(exc, NodeError) and isinstance(exc, ProtocolError)
    assert str(exc) == "node error 200 (invalid_response): the completion is not JSON"
