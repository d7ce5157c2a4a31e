"""The SDK against a real node serving SmolLM2-135M-Instruct (TransformersEngine) on anvil:
chat plain and streaming, and a stop string, each verified against the real tokenizer and
countersigned. One node (one model load) for the whole module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tallystick.client import Chain, Tallystick, Wallet
from tallystick.protocol import Prices, cost_of

from tests.kit.node import serve_node

pytestmark = [pytest.mark.chain, pytest.mark.model]
PRICES = Prices(input_per_m=1_000_000, output_per_m=2_000_000)
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def smol(
    model_dir: Path,
    model_file: str,
    anvil: Any,
    w3: Any,
    accounts: Any,
    _session_deployment: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The node, listed in a chain state this module alone sees (snapshot, then revert)."""
    from tallystick.node.engines import TransformersEngine

    engine = TransformersEngine.load(str(model_dir / model_file), max_batch=2)
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    try:
        with serve_node(
            engine,
            PRICES,
            deployment=_session_deployment,
            provider=accounts.provider,
            rpc=anvil.url,
            db=tmp_path_factory.mktemp("smol") / "node.db",
        ) as endpoint:
            yield {"endpoint": endpoint, "model": engine.model_name, "d": _session_deployment}
    finally:
        w3.provider.make_request("evm_revert", [snapshot])


@pytest.fixture(scope="module")
def client(
    smol: dict[str, Any], accounts: Any, w3: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tallystick]:
    d = smol["d"]
    chain = Chain(w3, d.registry.address, d.escrow.address)
    store = tmp_path_factory.mktemp("smol-client") / "c.db"
    with Tallystick(Wallet(accounts.client), store, chain=chain) as c:
        c.channels.open(smol["model"], 10**12)  # checks /v1/models against the listing
        yield c


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_plain_and_streaming_chat_are_verified_and_countersigned(
    client: Tallystick, smol: dict[str, Any]
) -> None:
    model, messages = smol["model"], _ask("What is the capital of France?")
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    text = reply.choices[0].message.content
    bill = reply.tally
    assert text and bill.completion_tokens <= MAX_TOKENS
    assert bill.prompt_tokens == reply.usage.prompt_tokens
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == text  # greedy: the same answer, token by token
    assert stream.tally is not None
    assert stream.tally.completion_ids == bill.completion_ids
    info = client.channels.list()[0]
    tally = client.store.tally(info.channel_id)
    assert tally.seq == stream.tally.record.record.seq and tally.delivered
    view = client.node(smol["endpoint"]).channel(info.channel_id, client.biller.authorizer(info))
    assert view["countersigned"]["seq"] == tally.seq and view["unpaid"] == 0
    assert stream.tally.total_cost == cost_of(tally.input_tokens, tally.output_tokens, PRICES)


def test_stop_string_answer_is_verified(client: Tallystick, smol: dict[str, Any]) -> None:
    reply = client.chat.completions.create(
        model=smol["model"],
        messages=_ask("Count from 1 to 10, separated by commas."),
        max_tokens=MAX_TOKENS,
        temperature=0,
        stop=[","],
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and "," not in choice.message.content
    bill = reply.tally
    counter = client.biller.counter(client.channels.list()[0])
    decoded = counter.decode(bill.completion_ids)
    # The ids that completed the stop string are billed; the text stops right before it.
    assert decoded.startswith(choice.message.content + ",")
    assert bill.completion_tokens < MAX_TOKENS


def test_audits_of_plain_and_streamed_answers_pass_in_the_background(
    smol: dict[str, Any],
    accounts: Any,
    w3: Any,
    model_dir: Path,
    model_file: str,
    tmp_path: Path,
) -> None:
    """§10: the SDK sends a seed, the node signs what produced the ids, the audit replays it."""
    d = smol["d"]
    chain = Chain(w3, d.registry.address, d.escrow.address)
    weights = model_dir / model_file
    with Tallystick(
        Wallet(accounts.client), tmp_path / "c.db", chain=chain, audit_weights=weights,
        audit_fraction=1.0,
    ) as c:  # fmt: skip
        c.channels.open(smol["model"], 10**12)
        provider = c.channels.list()[0].provider
        for temperature, stream in ((0.0, False), (0.7, True), (0.7, False)):
            args = {"model": smol["model"], "messages": _ask("Tell me about the sea."),
                    "max_tokens": MAX_TOKENS, "temperature": temperature}  # fmt: skip
            if stream:
                for _ in c.chat.completions.create(**args, stream=True):
                    pass
            else:
                c.chat.completions.create(**args)
        reports = c.auditor.drain(timeout=600)
        assert [r.verdict for r in reports] == ["pass"] * 3, [r.to_json() for r in reports]
        assert {r.case.signed.record.temperature for r in reports} == {0, 700_000}
        assert all(r.case.signed.record.model_hash == reports[0].case.signed.record.model_hash
                   != bytes(32) for r in reports)  # fmt: skip
        assert c.audit_record(provider).passed == 3
        assert [o.provider for o in c.providers(smol["model"])] == [provider]
        # a forged proof is a failed audit, the provider leaves discovery
        case = reports[0].case
        forged = type(case)(**{**case.__dict__, "proof": [v + 200 for v in case.proof]})
        assert c.audit(forged).verdict == "fail"
        c.audits.add(c.audit(forged))
        assert c.providers(smol["model"]) == []
        assert c.audits.failures(provider)[0].verdict == "fail"
