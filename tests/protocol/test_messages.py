"""The wire messages of §8: one writer (to_json) and one reader (from_json) for each."""

import json

import pytest
from eth_account import Account
from tallystick.protocol import (
    RECEIPT_HEADER,
    ZERO_ROOT,
    ClosingReceipt,
    Domain,
    InvalidJSON,
    ProtocolError,
    Receipt,
    SignedReceipt,
    UsageBill,
    UsageRecord,
    hash_token_ids,
    sign_receipt,
    sign_usage_record,
)

CLIENT = Account.from_key("0x" + "11" * 32)
PROVIDER = Account.from_key("0x" + "22" * 32)
DOMAIN = Domain(31337, "0x" + "ab" * 20)
CHANNEL = bytes(range(32))
RECEIPT = sign_receipt(CLIENT, DOMAIN, Receipt(CHANNEL, 7, 3, b"\x01" * 32))


def _bill(proof: list[int] | None = None) -> UsageBill:
    record = UsageRecord(
        channel_id=CHANNEL,
        seq=1,
        prompt_tokens=2,
        completion_tokens=3,
        prompt_hash=hash_token_ids([5, 6]),
        completion_hash=hash_token_ids([7, 8, 9]),
        input_tokens=2,
        output_tokens=3,
        prev_root=ZERO_ROOT,
    )
    signed = sign_usage_record(PROVIDER, DOMAIN, record)
    return UsageBill(signed, [7, 8, 9], {"ttft_ms": 1.5, "total_ms": 9}, proof or [])


def test_usage_bill_round_trips_in_the_shape_of_section_8() -> None:
    bill = _bill(proof=[10, -20, 30])
    wire = json.loads(json.dumps(bill.to_json()))
    assert list(wire) == [
        "record",
        "signature",
        "completion_token_ids",
        "prompt_token_ids_hash",
        "timings",
        "proof",
    ]
    assert wire["prompt_token_ids_hash"] == "0x" + hash_token_ids([5, 6]).hex()
    assert UsageBill.from_json(wire) == bill
    # GET .../records/{seq} adds the model; the reader ignores what it does not know
    assert UsageBill.from_json({"model": "m", **wire}) == bill


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"completion_token_ids": [1, -1]}, "completion_token_ids"),
        ({"completion_token_ids": [True]}, "completion_token_ids"),
        ({"completion_token_ids": "1,2"}, "completion_token_ids"),
        ({"signature": "0x12"}, "signature"),
    ],
)
def test_usage_bill_names_the_malformed_field(patch: dict, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        UsageBill.from_json({**_bill().to_json(), **patch})
    assert info.value.field == field


def test_usage_bill_without_ids_or_object_is_refused() -> None:
    wire = _bill().to_json()
    del wire["completion_token_ids"]
    with pytest.raises(ProtocolError, match="completion_token_ids"):
        UsageBill.from_json(wire)
    with pytest.raises(ProtocolError, match="no tallystick usage record"):
        UsageBill.from_json(None)


@pytest.mark.parametrize("proof", [None, "0x12", [1, "2"], {"a": 1}])
def test_a_missing_or_malformed_proof_reads_as_none(proof: object) -> None:
    wire = {**_bill(proof=[1, 2, 3]).to_json(), "proof": proof, "timings": "fast"}
    bill = UsageBill.from_json(wire)
    assert (bill.proof, bill.timings) == ([], {})


def test_receipt_header_round_trips_and_is_compact() -> None:
    header = RECEIPT.to_header()
    assert " " not in header and json.loads(header) == RECEIPT.to_json()
    assert SignedReceipt.from_header(header) == RECEIPT
    assert RECEIPT_HEADER == "X-Tally-Receipt"


@pytest.mark.parametrize(
    ("value", "message"),
    [("{not json", "X-Tally-Receipt is not JSON"), ("[" * 20_000, "nested deeper")],
)
def test_receipt_header_refuses_what_is_not_json(value: str, message: str) -> None:
    with pytest.raises(InvalidJSON, match=message):
        SignedReceipt.from_header(value)


def test_receipt_errors_name_the_first_bad_field_in_wire_order() -> None:
    with pytest.raises(ProtocolError) as info:
        SignedReceipt.from_json({"channelId": 5})
    assert info.value.field == "channelId"
    wire = RECEIPT.to_json()
    del wire["signature"]
    with pytest.raises(ProtocolError) as info:
        SignedReceipt.from_json(wire)
    assert info.value.field == "signature"


def test_an_integral_float_is_an_integer_and_a_fraction_is_not() -> None:
    # JSON has one number type (§8.3); the node's schema has always read 7.0 as 7.
    wire = {**RECEIPT.to_json(), "inputTokens": 7.0}
    assert SignedReceipt.from_json(wire) == RECEIPT
    with pytest.raises(ProtocolError) as info:
        SignedReceipt.from_json({**wire, "inputTokens": 7.5})
    assert info.value.field == "inputTokens"


def test_closing_receipt_round_trips() -> None:
    provider_sig = sign_receipt(PROVIDER, DOMAIN, RECEIPT.receipt).signature
    closing = ClosingReceipt(RECEIPT, provider_sig, 4)
    wire = json.loads(json.dumps(closing.to_json()))
    assert set(wire) == {"receipt", "providerSignature", "seq"}
    assert ClosingReceipt.from_json(wire) == closing
    with pytest.raises(ProtocolError) as info:
        ClosingReceipt.from_json({**wire, "providerSignature": "0x" + "00" * 64})
    assert info.value.field == "providerSignature"
