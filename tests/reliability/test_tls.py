"""TLS: ``tallystick-node serve --tls-cert/--tls-key`` serves HTTPS (a real self-signed
certificate made by openssl), the SDK pays over it end to end, a non-loopback bind without
TLS is refused unless ``--insecure-http``, and the SDK warns on ``http://`` to another host."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kit.chain import MODEL
from tests.kit.node import MESSAGES, NodeProcess

pytestmark = pytest.mark.chain

DEPOSIT = 10**15


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (openssl, as an operator would)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "node.crt", folder / "node.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=tallystick-test", "-keyout", str(key),
         "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _serve(market: Any, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` with ``args``, expected to stop before it binds (its checks come first)."""
    node = NodeProcess(market, tmp_path, args=list(args))
    return subprocess.run(
        node.command(), env=node.environment(), capture_output=True, text=True, timeout=60
    )


def test_the_node_serves_https_and_the_sdk_pays_over_it(
    market: Any, make_client: Any, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    node = NodeProcess(market, tmp_path, args=["--tls-cert", str(cert), "--tls-key", str(key)])
    node.process = subprocess.Popen(node.command(), env=node.environment(), stderr=subprocess.PIPE)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{market.port}"
        _wait_https(url, trust, node)
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets nowhere
            httpx.get(f"http://127.0.0.1:{market.port}/v1/models", timeout=5)
        with pytest.raises(httpx.ConnectError):  # an untrusted certificate is refused
            httpx.get(url + "/v1/models", timeout=5)
        market.registry.update_endpoint(market.accounts.provider, url)
        client = make_client(
            market.accounts.client, "tls", transport=httpx.HTTPTransport(verify=trust)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # https: no InsecureEndpointWarning
            info = client.channels.open(MODEL, DEPOSIT)
            reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
            streamed = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=8, stream=True
            )
            "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            closed = client.channels.close(info.channel_id)
        assert info.endpoint == url and reply.tally.record.record.seq == 1
        assert client.store.tally(info.channel_id).seq == 2
        assert closed.refund == DEPOSIT - closed.paid > 0
    finally:
        node.stop()


def _wait_https(url: str, trust: ssl.SSLContext, node: NodeProcess) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert node.process is not None
        if node.process.poll() is not None:
            raise AssertionError(node.process.stderr.read() if node.process.stderr else "")
        try:
            if httpx.get(url + "/v1/models", verify=trust, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the HTTPS node did not answer")


def test_a_public_bind_without_tls_is_refused_unless_insecure_http(
    market: Any, tmp_path: Path
) -> None:
    refused = _serve(market, tmp_path, "--host", "0.0.0.0")
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: refusing to serve plain HTTP on 0.0.0.0")
    assert "--tls-cert" in line and "--insecure-http" in line and "Traceback" not in refused.stderr
    half = _serve(market, tmp_path, "--host", "0.0.0.0", "--tls-cert", str(tmp_path / "x"))
    assert half.returncode == 2 and "give both or neither" in half.stderr
    missing = _serve(
        market, tmp_path, "--tls-cert", str(tmp_path / "no.crt"), "--tls-key", str(tmp_path / "k")
    )
    assert missing.returncode == 2 and "cannot use --tls-cert" in missing.stderr
    assert "Traceback" not in missing.stderr
    behind_proxy = NodeProcess(
        market, tmp_path, args=["--host", "0.0.0.0", "--insecure-http"], name="proxied"
    ).start()
    try:
        assert httpx.get(behind_proxy.url + "/v1/models", timeout=5).status_code == 200
    finally:
        behind_proxy.stop()


def test_the_sdk_warns_on_plain_http_to_another_host(tmp_path: Path) -> None:
    from tallystick.client import InsecureEndpointWarning
    from tallystick.client._node import NodeClient

    http = httpx.Client()
    with pytest.warns(InsecureEndpointWarning, match="http://10.1.2.3:8000 is plain HTTP"):
        NodeClient("http://10.1.2.3:8000", http)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for local in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000",
                      "https://node.example"):  # fmt: skip
            NodeClient(local, http)
    http.close()
