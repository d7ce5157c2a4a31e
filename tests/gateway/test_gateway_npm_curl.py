"""The official ``openai`` npm package (the project's Node 22) and ``curl`` against the gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.chain

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY });
const messages = [{ role: "user", content: "What is the capital of France?" }];
const request = { model: "fake-model", messages, max_tokens: 8 };
const plain = await client.chat.completions.create(request);
let streamed = "";
const stream = await client.chat.completions.create({ ...request, stream: true });
for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? "";
let status = 0;
try {
  await new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "tsk-wrong", maxRetries: 0 })
    .chat.completions.create({ model: "fake-model", messages, max_tokens: 8 });
} catch (e) { status = e.status; }
const answer = plain.choices[0].message.content;
console.log(JSON.stringify({ plain: answer, streamed, usage: plain.usage, status }));
"""


def _node() -> str:
    for candidate in (ROOT / ".tools" / "node" / "bin" / "node", shutil.which("node")):
        if candidate and Path(candidate).exists():
            version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True)
            if int(version.stdout.strip().lstrip("v").split(".")[0]) >= 22:
                return str(candidate)
    pytest.skip("Node >= 22 not found: run `make setup`")


def test_openai_npm_package_plain_streaming_and_errors(gateway, api_key, tmp_path):
    if not (ROOT / "node_modules" / "openai").exists():
        pytest.skip("the openai npm package is missing: run `make setup`")
    script = ROOT / "node_modules" / ".gateway-test.mjs"  # resolves "openai" from node_modules
    script.write_text(SCRIPT)
    try:
        env = {**os.environ, "BASE_URL": gateway.base_url, "API_KEY": api_key}
        result = subprocess.run(
            [_node(), str(script)], capture_output=True, text=True, env=env, timeout=120
        )
    finally:
        script.unlink()
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["plain"] and out["streamed"]
    assert out["usage"]["completion_tokens"] > 0
    assert out["status"] == 401


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl not found")
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=60)


def test_curl_plain_streaming_and_error(gateway, api_key):
    auth = ["-H", f"Authorization: Bearer {api_key}", "-H", "Content-Type: application/json"]
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    plain = _curl(*auth, "-d", json.dumps(body), gateway.base_url + "/chat/completions")
    reply = json.loads(plain.stdout)
    assert reply["choices"][0]["message"]["content"]

    streamed = _curl(
        "-N",
        *auth,
        "-d",
        json.dumps({**body, "stream": True}),
        gateway.base_url + "/chat/completions",
    )
    events = [ln[6:] for ln in streamed.stdout.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, events[:-1])
        if c.get("choices")
    )
    assert text

    bad = _curl(
        "-w", "%{http_code}", *auth, "-d", "{not json", gateway.base_url + "/chat/completions"
    )
    assert bad.stdout.endswith("400")
    assert json.loads(bad.stdout[:-3])["error"]["code"] == "invalid_json"
