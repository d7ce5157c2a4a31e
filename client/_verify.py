"""Verification of a provider's bill before the client pays it (docs/protocol.md §4.2, §5, §6).

``verify_bill`` is pure: it takes what the client asked for, what it received, the provider's
signed record and the channel's last verified state, and returns the cost of the request or
raises ``BillingDispute`` listing every field that does not check out.

Beyond the signature, the chain of records and the counts, the client countersigns only ids it
could check (DESIGN.md guarantee 7): every id in the vocabulary, a special id only as the one
final id, no more ids than the canonical encoding of the text plus a measured ``Tolerance``,
and never a cumulative cost above the deposit. The record must also state the sampling the
client asked for (seed, temperature, top_p) and the weights its channel's listing commits to
(modelHash, §10.2): a record true to what the node did but not to what was asked is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tallystick.protocol import (
    ProtocolError,
    SignedUsageRecord,
    TokenCounter,
    cost_of,
    hash_token_ids,
    params_units,
    recover_usage_record_signer,
)

from ._errors import BillingDispute, Mismatch
from ._types import ChannelTally, OpenChannel

__all__ = [
    "DEFAULT_TOLERANCE",
    "Served",
    "Tolerance",
    "VerifiedBill",
    "payable_output_tokens",
    "verify_bill",
]


@dataclass(frozen=True)
class Tolerance:
    """How many ids a bill may carry beyond the canonical encoding of its text (§6).

    A model may sample a word in more pieces than the tokenizer would cut it into ("The" as
    "T" + "he"); a node may pad the same way. A bill of ``n`` visible ids for text whose
    canonical encoding has ``c`` ids is accepted when ``n <= c + absolute + relative * c``
    (rounded down). The defaults come from honest SmolLM2 generations at temperature 0 and 1
    (docs/protocol.md §6 gives the figures and the command that measures them).
    """

    absolute: int = 4
    relative: float = 0.05

    def __post_init__(self) -> None:
        if self.absolute < 0 or self.relative < 0:
            raise ValueError("tolerances must be >= 0")

    def allowed(self, canonical: int) -> int:
        """The most visible ids a text of ``canonical`` canonical ids may be billed."""
        return canonical + self.absolute + int(self.relative * canonical)


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class Served:
    """One request as the client saw it: its own prompt ids and what came back."""

    prompt_ids: list[int]  # counted by the client, by the counting rule of §6
    text: str  # the completion text received
    finish_reason: str | None
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    # The sampling asked for (§10.2): the record must state exactly these. None: not known
    # (the transport always fills them in: a seed of its own when the body named none).
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_ids": self.prompt_ids,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "stop": list(self.stop),
            "max_tokens": self.max_tokens,
            "seed": None if self.seed is None else str(self.seed),
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Served:
        seed = obj.get("seed")
        return cls(
            list(obj["prompt_ids"]),
            str(obj["text"]),
            obj.get("finish_reason"),
            tuple(obj.get("stop") or ()),
            obj.get("max_tokens"),
            None if seed is None else int(seed),
            obj.get("temperature"),
            obj.get("top_p"),
        )


@dataclass(frozen=True)
class VerifiedBill:
    """A bill that checked out: the signed record, this request's cost and the channel total."""

    record: SignedUsageRecord
    completion_ids: list[int]
    cost: int
    total_cost: int

    @property
    def prompt_tokens(self) -> int:
        return self.record.record.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.record.record.completion_tokens


def verify_bill(
    channel: OpenChannel,
    tally: ChannelTally,
    signed: SignedUsageRecord,
    completion_ids: Sequence[int],
    served: Served,
    counter: TokenCounter,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    *,
    max_unseen: int | None = None,
) -> VerifiedBill:
    """Check every field of ``signed`` against the client's own view; raise on any mismatch.

    ``max_unseen`` is given for a request whose answer stopped early (docs/protocol.md §6):
    the ids must then decode to text that starts with what was received, and at most
    ``max_unseen`` ids may lie beyond it (the node counts what it sent, which includes what
    was still in flight when the client stopped reading). A stream the node ended itself is
    checked with ``max_unseen = 0``: only what arrived is paid. Everything else (signature,
    chain of records, prompt count, sampling, deposit, vocabulary) is checked alike.
    """
    ids = list(completion_ids)
    if max_unseen is None:
        text = _check_text(ids, served, counter)
    else:
        text = _check_unseen(ids, served.text, counter, max_unseen)
    mismatches = [
        *_check_signature(channel, signed),
        *_check_chain(channel, tally, signed),
        *_check_counts(signed, ids, served),
        *_check_sampling(channel, signed, served),
        *_check_deposit(channel, signed),
        *_check_ids(ids, counter, tolerance),
        *text,
    ]
    return _bill(channel, tally, signed, ids, mismatches)


def _bill(
    channel: OpenChannel,
    tally: ChannelTally,
    signed: SignedUsageRecord,
    ids: list[int],
    mismatches: list[Mismatch],
) -> VerifiedBill:
    if mismatches:
        raise BillingDispute(channel.channel_id, signed.record.seq, mismatches)
    r = signed.record
    total = cost_of(r.input_tokens, r.output_tokens, channel.prices)
    previous = cost_of(tally.input_tokens, tally.output_tokens, channel.prices)
    return VerifiedBill(signed, ids, total - previous, total)


def _check_signature(channel: OpenChannel, signed: SignedUsageRecord) -> list[Mismatch]:
    try:
        signer = recover_usage_record_signer(channel.domain, signed)
    except ProtocolError as exc:
        return [Mismatch("signature", channel.provider, f"unrecoverable: {exc}")]
    if signer.lower() != channel.provider.lower():
        return [Mismatch("signer", channel.provider, signer)]
    return []


def _check_chain(
    channel: OpenChannel, tally: ChannelTally, signed: SignedUsageRecord
) -> list[Mismatch]:
    r = signed.record
    expected = {
        "channelId": channel.channel_id,
        "seq": tally.seq + 1,
        "prevRoot": tally.usage_root,
        "inputTokens": tally.input_tokens + r.prompt_tokens,
        "outputTokens": tally.output_tokens + r.completion_tokens,
    }
    got = {
        "channelId": r.channel_id,
        "seq": r.seq,
        "prevRoot": r.prev_root,
        "inputTokens": r.input_tokens,
        "outputTokens": r.output_tokens,
    }
    return [Mismatch(k, v, got[k]) for k, v in expected.items() if got[k] != v]


def _check_counts(signed: SignedUsageRecord, ids: list[int], served: Served) -> list[Mismatch]:
    r = signed.record
    out = []
    if r.prompt_tokens != len(served.prompt_ids):
        out.append(Mismatch("promptTokens", len(served.prompt_ids), r.prompt_tokens))
    if r.prompt_hash != hash_token_ids(served.prompt_ids):
        out.append(Mismatch("promptHash", hash_token_ids(served.prompt_ids), r.prompt_hash))
    if r.completion_tokens != len(ids):
        out.append(Mismatch("completionTokens", len(ids), r.completion_tokens))
    if r.completion_hash != hash_token_ids(ids):
        out.append(Mismatch("completionHash", hash_token_ids(ids), r.completion_hash))
    if served.max_tokens is not None and len(ids) > served.max_tokens:
        out.append(Mismatch("completionTokens<=max_tokens", served.max_tokens, len(ids)))
    return out


def _check_sampling(
    channel: OpenChannel, signed: SignedUsageRecord, served: Served
) -> list[Mismatch]:
    """§10.2: the record states the seed and sampling asked for and the listed weights.

    A node that samples its own way (another seed, a hotter temperature) and says so in the
    record would pass an audit, which checks the record against the weights: only this check
    ties the record to the request. Temperature and top_p compare in millionths, as signed."""
    r = signed.record
    expected: dict[str, Any] = {}
    got: dict[str, Any] = {}
    if served.seed is not None:
        expected["seed"], got["seed"] = served.seed, r.seed
    if served.temperature is not None:
        expected["temperature"] = params_units(served.temperature)
        got["temperature"] = r.temperature
    if served.top_p is not None:
        expected["topP"], got["topP"] = params_units(served.top_p), r.top_p
    if channel.model_hash != bytes(32):  # a listing without a modelHash claims no weights
        expected["modelHash"] = "0x" + channel.model_hash.hex()
        got["modelHash"] = "0x" + r.model_hash.hex()
    return [Mismatch(k, v, got[k]) for k, v in expected.items() if got[k] != v]


def _check_deposit(channel: OpenChannel, signed: SignedUsageRecord) -> list[Mismatch]:
    """No countersigned cumulative cost may exceed the deposit: the escrow pays
    ``min(cost, deposit)``, so such a receipt would hand the provider the whole deposit."""
    r = signed.record
    cost = cost_of(r.input_tokens, r.output_tokens, channel.prices)
    if cost > channel.deposit:
        return [Mismatch("costAboveDeposit", f"at most the deposit {channel.deposit}", cost)]
    return []


def _check_ids(ids: list[int], counter: TokenCounter, tolerance: Tolerance) -> list[Mismatch]:
    """§6: ids the client can check. Each in the vocabulary (an unknown id decodes to ""
    silently); a special id (decodes to "") only as the one final id; and no more visible ids
    than the canonical encoding of their text plus the tolerance."""
    out = []
    unknown = [i for i in ids if not counter.known(i)]
    if unknown:
        vocab = f"ids in the vocabulary (below {counter.vocab_size})"
        out.append(Mismatch("vocabulary", vocab, unknown[:64]))
    special = counter.special_token_ids
    hidden = [(n, i) for n, i in enumerate(ids[:-1]) if i in special]
    if hidden:
        out.append(Mismatch("specialIds", "a special id only as the last id", hidden[:64]))
    hide = special | set(unknown)
    visible = [i for i in ids if i not in hide]
    canonical = len(counter.canonical_ids(counter.decode(visible)))
    if len(visible) > tolerance.allowed(canonical):
        expected = (
            f"at most {tolerance.allowed(canonical)} ids for text of {canonical} canonical ids"
        )
        out.append(Mismatch("tokensAboveCanonical", expected, len(visible)))
    return out


def payable_output_tokens(channel: OpenChannel, tally: ChannelTally, prompt_tokens: int) -> int:
    """The most completion ids the deposit can pay after ``tally`` and this prompt (may be <= 0).

    ``cost(I, O) <= D`` exactly when ``I * pi + O * po <= (D + 1) * 10**6 - 1`` (cost rounds
    down), so the largest cumulative ``O`` is that bound divided by ``po``.
    """
    prices = channel.prices
    spendable = (channel.deposit + 1) * 1_000_000 - 1
    spendable -= (tally.input_tokens + prompt_tokens) * prices.input_per_m
    if spendable < 0:
        return -1
    if prices.output_per_m == 0:
        return 2**32 - 1  # completions are free: only the context window bounds them
    return spendable // prices.output_per_m - tally.output_tokens


def _check_text(ids: list[int], served: Served, counter: TokenCounter) -> list[Mismatch]:
    """§6: the completion ids must decode to the text received, and not one id more."""
    decoded = counter.decode(ids)
    text = served.text
    if not decoded.startswith(text):
        return [Mismatch("completionText", text, decoded)]
    if decoded == text:
        return []
    stop = _matched_stop(decoded, text, served)
    if stop is None:
        return [Mismatch("completionText", text, decoded)]
    # The stop string must be completed by the last id; ids billed past it were never needed.
    if stop in counter.decode(ids[:-1])[len(text) :]:
        return [Mismatch("idsAfterStop", f"stop {stop!r} completed by the last id", ids)]
    return []


def _check_unseen(
    ids: list[int], text: str, counter: TokenCounter, max_unseen: int
) -> list[Mismatch]:
    decoded = counter.decode(ids)
    if not decoded.startswith(text):
        return [Mismatch("completionText", text, decoded)]
    if ids and ids[-1] in counter.special_token_ids:
        ids = ids[:-1]  # a final end-of-sequence id shows no text: it is never "unseen"
    # Fewer ids decode to less text, so if the ids without the last max_unseen+1 still
    # cover the received text, more than max_unseen ids were billed beyond it.
    cut = len(ids) - max_unseen - 1
    if cut >= 0 and counter.decode(ids[:cut]).startswith(text):
        return [Mismatch("unseenTokens", f"at most {max_unseen} ids past the received text", ids)]
    return []


def _matched_stop(decoded: str, text: str, served: Served) -> str | None:
    if served.finish_reason != "stop":
        return None
    for s in served.stop:
        if decoded.find(s) == len(text):
            return s
    return None
