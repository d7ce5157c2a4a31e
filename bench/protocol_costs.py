"""Protocol costs: what signing, verifying and metering add to one request.

    python -m bench.protocol_costs

Receipt and usage-record sign/verify (eth-account signing, coincurve recovery), the client
SDK's verification of one bill for a 1,000-token prompt (its own count of the prompt with the
real SmolLM2 tokenizer and chat template, then ``verify_bill`` and the countersignature), and
the node's added time to first token over the bare engine (from the serving section).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._common import RESULTS, Target, console, percentile, save, show_targets, table

__all__ = ["Verifier", "real_counter", "run", "time_per_call"]

COMPLETION_TOKENS = 64
FILLER = (
    "The tally stick was split in two, and each party kept one half as a record of the debt. "
    "When the halves were matched again, the notches had to agree, or the claim was void. "
    "Merchants, tax collectors and farmers relied on this simple proof for centuries. "
)


def time_per_call(fn: Callable[[], Any], n: int) -> dict[str, float]:
    """Milliseconds per call of ``fn`` over ``n`` calls: p50, p95 and mean."""
    fn()  # warm caches (domain separators, tokenizer internals) outside the measurement
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return {
        "p50_ms": percentile(samples, 50),
        "p95_ms": percentile(samples, 95),
        "mean_ms": statistics.fmean(samples),
    }


def real_counter() -> Any:
    """A ``TokenCounter`` of the real SmolLM2 tokenizer and chat template."""
    from tallystick.protocol import TokenCounter, TokenizerBundle
    from transformers import AutoTokenizer

    from .serving import ensure_hf_model

    return TokenCounter(TokenizerBundle.from_hf(AutoTokenizer.from_pretrained(ensure_hf_model())))


@dataclass
class Verifier:
    """One bill as a client receives it: a prompt of about ``prompt_tokens`` tokens, a signed
    record for it and a 64-token completion; ``verify()`` runs the client's whole check."""

    counter: Any
    prompt_tokens: int

    def __post_init__(self) -> None:
        from eth_account import Account
        from tallystick.protocol import ZERO_ROOT, Domain, Prices

        self.provider, self.client = Account.create(), Account.create()
        self.domain = Domain(31337, "0x" + "e5" * 20)
        self.messages = [{"role": "user", "content": self._text(self.prompt_tokens)}]
        self.prompt_ids = self.counter.chat_prompt_ids(self.messages)
        eos = set(self.counter.eos_token_ids)
        ids = [i for i in self.counter.text_prompt_ids(FILLER * 4) if i not in eos]
        self.completion_ids = ids[-COMPLETION_TOKENS:]
        self.text = self.counter.decode(self.completion_ids)
        self.channel = self._channel(Prices(10**12, 4 * 10**12))
        self.tally = self._tally(ZERO_ROOT)
        self.signed = self._record()

    def _text(self, tokens: int) -> str:
        ids = self.counter.text_prompt_ids(FILLER * (tokens // 40 + 2))
        body = self.counter.decode(ids[:tokens])
        # The chat template adds a few tokens; trim words until the prompt fits the target.
        while len(self.counter.chat_prompt_ids([{"role": "user", "content": body}])) > tokens:
            body = body.rsplit(" ", 1)[0]
        return body

    def _channel(self, prices: Any) -> Any:
        from tallystick.client import OpenChannel
        from tallystick.protocol import ETH, ChannelStatus

        return OpenChannel(
            channel_id=b"\x42" * 32,
            chain_id=self.domain.chain_id,
            escrow=self.domain.escrow,
            client=self.client.address,
            provider=self.provider.address,
            endpoint="http://127.0.0.1:1",
            model="SmolLM2-135M-Instruct",
            token=ETH,
            prices=prices,
            deposit=10**18,
            tokenizer_hash=b"\x00" * 32,
            context_length=8192,
            status=ChannelStatus.OPEN,
        )

    def _tally(self, root: bytes) -> Any:
        from tallystick.client import ChannelTally

        return ChannelTally(7, 5_000, 900, root, None, True)

    def _record(self) -> Any:
        from tallystick.protocol import UsageRecord, hash_token_ids, sign_usage_record

        t = self.tally
        record = UsageRecord(
            channel_id=self.channel.channel_id,
            seq=t.seq + 1,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.completion_ids),
            prompt_hash=hash_token_ids(self.prompt_ids),
            completion_hash=hash_token_ids(self.completion_ids),
            input_tokens=t.input_tokens + len(self.prompt_ids),
            output_tokens=t.output_tokens + len(self.completion_ids),
            prev_root=t.usage_root,
        )
        return sign_usage_record(self.provider, self.domain, record)

    def own_count(self) -> list[int]:
        """The client's own count of the prompt (chat template, then the tokenizer)."""
        return list(self.counter.chat_prompt_ids(self.messages))

    def verify(self) -> Any:
        """The client's path: own prompt count, ``verify_bill``, countersigned receipt."""
        from tallystick.client import Served, verify_bill
        from tallystick.protocol import Receipt, sign_receipt

        own = self.own_count()
        served = Served(own, self.text, "length", max_tokens=COMPLETION_TOKENS)
        bill = verify_bill(
            self.channel, self.tally, self.signed, self.completion_ids, served, self.counter
        )
        r = bill.record.record
        receipt = Receipt(r.channel_id, r.input_tokens, r.output_tokens, r.usage_root())
        return sign_receipt(self.client, self.domain, receipt)


def signing_costs(n: int) -> dict[str, dict[str, float]]:
    """Receipt and usage-record sign / verify (recover and compare), ms per call."""
    from eth_account import Account
    from tallystick.protocol import (
        Domain,
        Receipt,
        UsageRecord,
        recover_receipt_signer,
        recover_usage_record_signer,
        sign_receipt,
        sign_usage_record,
    )

    account = Account.create()
    domain = Domain(31337, "0x" + "e5" * 20)
    receipt = Receipt(b"\x22" * 32, 123_456, 7_890, b"\x33" * 32)
    record = UsageRecord(
        b"\x22" * 32, 9, 1000, 64, b"\x01" * 32, b"\x02" * 32, 9000, 576, b"\x03" * 32
    )
    signed_r, signed_u = (
        sign_receipt(account, domain, receipt),
        sign_usage_record(account, domain, record),
    )

    def check(recovered: str) -> None:
        if recovered != account.address:
            raise AssertionError("recovered the wrong signer")

    return {
        **request_auth_costs(n),
        "receipt sign": time_per_call(lambda: sign_receipt(account, domain, receipt), n),
        "receipt verify": time_per_call(lambda: check(recover_receipt_signer(domain, signed_r)), n),
        "usage record sign": time_per_call(lambda: sign_usage_record(account, domain, record), n),
        "usage record verify": time_per_call(
            lambda: check(recover_usage_record_signer(domain, signed_u)), n
        ),
    }  # fmt: skip


def request_auth_costs(n: int) -> dict[str, dict[str, float]]:
    """The per-request signature (§4.3) over a chat body with a ~1,000-token prompt, ms.

    Client: hash the body, sign, format the header. Node: parse the header, hash the body it
    received, recover the signer (then a dict lookup for one use and a compare for the seq).
    """
    import json

    from eth_account import Account
    from tallystick.protocol import (
        Domain,
        RequestAuth,
        SignedRequestAuth,
        recover_request_auth_signer,
        request_hash,
        sign_request_auth,
    )

    account = Account.create()
    domain = Domain(31337, "0x" + "e5" * 20)
    prompt = " ".join(f"word{i}" for i in range(1000))
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
    ).encode()
    path, root, cid = "/v1/chat/completions", b"\x33" * 32, b"\x22" * 32

    def sign() -> str:
        auth = RequestAuth.for_request(cid, 7, root, "POST", path, body, 60)
        return sign_request_auth(account, domain, auth).header()

    header = sign()

    def verify() -> None:
        signed = SignedRequestAuth.from_header(header)
        if signed.auth.request_hash != request_hash("POST", path, body):
            raise AssertionError("the body does not match")
        if recover_request_auth_signer(domain, signed) != account.address:
            raise AssertionError("recovered the wrong signer")
        signed.auth.struct_hash()  # the one-use key

    return {
        f"request signature sign (client, {len(body):,}-byte body)": time_per_call(sign, n),
        f"request signature verify (node, {len(body):,}-byte body)": time_per_call(verify, n),
    }


def _serving_ttft(serving: dict[str, Any] | None) -> tuple[float | None, str]:
    if serving is None:
        path = RESULTS / "serving.json"
        if not path.exists():
            return None, "no serving figures (run python -m bench.serving)"
        serving = json.loads(path.read_text())
        source = f"from {path.name} ({serving.get('generated_at', '?')})"
    else:
        source = "from this run's serving section"
    added = serving.get("node_added_ttft_s")
    return (None if added is None else added * 1e3), source


def run(
    serving: dict[str, Any] | None = None,
    *,
    counter: Any = None,
    sign_n: int = 500,
    verify_n: int = 50,
) -> dict[str, Any]:
    """Measure, print and save ``protocol_costs.json``; ``serving`` is the serving section's."""
    console.print("[bold]Protocol costs[/] (one core of this machine, ms per call)")
    signing = signing_costs(sign_n)
    verifier = Verifier(counter or real_counter(), 1000)
    verify = time_per_call(verifier.verify, verify_n)
    count = time_per_call(verifier.own_count, verify_n)
    added_ttft, source = _serving_ttft(serving)
    rows = [[name, f"{v['p50_ms']:.3f}", f"{v['p95_ms']:.3f}"] for name, v in signing.items()]
    rows.append(
        [f"client verification, {len(verifier.prompt_ids)}-token prompt",
         f"{verify['p50_ms']:.3f}", f"{verify['p95_ms']:.3f}"]
    )  # fmt: skip
    rows.append(["  of which: own prompt count (template + tokenizer)",
                 f"{count['p50_ms']:.3f}", f"{count['p95_ms']:.3f}"])  # fmt: skip
    console.print(table("Protocol costs", ["operation", "p50 ms", "p95 ms"], rows))
    console.print(f"[dim]node added TTFT {source}[/]")
    sign_key = next(k for k in signing if k.startswith("request signature sign"))
    verify_key = next(k for k in signing if k.startswith("request signature verify"))
    targets = [
        Target(
            "request signature sign p50 (client)", signing[sign_key]["p50_ms"], 0.5, False, "ms"
        ),
        Target(
            "request signature verify p50 (node)", signing[verify_key]["p50_ms"], 0.5, False, "ms"
        ),
        Target("receipt sign p50", signing["receipt sign"]["p50_ms"], 0.5, False, "ms"),
        Target("receipt verify p50", signing["receipt verify"]["p50_ms"], 0.5, False, "ms"),
        Target("client verification, 1,000-token prompt", verify["p50_ms"], 5.0, False, "ms"),
        Target("node added TTFT over bare engine (p50, 1 stream)", added_ttft, 10.0, False, "ms"),
    ]
    show_targets("Protocol cost targets", targets)
    result = {
        "signing": signing,
        "client_verification": {"prompt_tokens": len(verifier.prompt_ids), **verify},
        "client_own_prompt_count": count,
        "node_added_ttft_ms": added_ttft,
        "node_added_ttft_source": source,
        "targets": [t.to_json() for t in targets],
    }
    save("protocol_costs", result)
    return result


if __name__ == "__main__":
    run()
