"""Nothing from httpx crosses the SDK's boundary (DESIGN.md guarantee 8): a connection refused,
a timeout, or a node that dies mid-answer (plain or streaming) is a ``NodeUnavailable``, and the
interrupted request stays pending for the next one. The same with a real node process killed
mid-stream: ``tests/reliability/test_stuck_channels.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tallystick.client import NodeUnavailable, Tallystick, Wallet

from tests.kit.client import MODEL, FakeNode

MESSAGES = [{"role": "user", "content": "hello"}]


class _CutStream(httpx.SyncByteStream):
    """The first ``keep`` bytes of a body, then the connection breaks."""

    def __init__(self, body: bytes, keep: int) -> None:
        self.body, self.keep = body, keep

    def __iter__(self) -> Iterator[bytes]:
        yield self.body[: self.keep]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


def _breaking(fake: FakeNode, fault: str) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        completion = request.url.path.endswith("/completions")
        if fault == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if completion and fault == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        response = fake.handle(request)
        if completion and fault == "cut":
            body = response.read()
            keep = body.index(b"\n\n", body.index(b"\n\n") + 2) if b"data:" in body else 10
            return httpx.Response(200, headers=response.headers, stream=_CutStream(body, keep))
        return response

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("fault", ["refused", "timeout", "cut"])
@pytest.mark.parametrize("stream", [False, True])
def test_transport_failures_are_node_unavailable_and_leave_the_request_pending(
    wallet: Wallet, fake: FakeNode, tmp_path: Path, fault: str, stream: bool
) -> None:
    with Tallystick(wallet, tmp_path / "store.db", transport=_breaking(fake, fault)) as client:
        client.store.add_channel(fake.channel_info())
        with pytest.raises(NodeUnavailable) as caught:
            reply = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=16, stream=stream
            )
            for _ in reply if stream else ():
                pass
        assert isinstance(caught.value.__cause__, httpx.HTTPError)
        pending = client.store.pending(fake.channel_id)
        if fault == "refused":
            assert pending is None  # never sent: nothing to settle
        else:
            assert pending is not None and pending.seq == 1
            assert pending.received == (fault == "cut")


def test_node_calls_outside_completions_are_node_unavailable_too(
    wallet: Wallet, fake: FakeNode, tmp_path: Path
) -> None:
    with Tallystick(wallet, tmp_path / "store.db", transport=_breaking(fake, "refused")) as client:
        client.store.add_channel(fake.channel_info())
        with pytest.raises(NodeUnavailable):
            client.channels.close(fake.channel_id)
        with pytest.raises(NodeUnavailable):
            client.node("http://node.test").models()
