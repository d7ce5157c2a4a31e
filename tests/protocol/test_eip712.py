"""EIP-712 (§4): our fast encoding equals eth-account's, signatures round-trip, and a
signature made for another channel, chain or escrow recovers to a different address."""

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from tallystick.protocol import (
    ZERO_ROOT,
    Domain,
    InvalidSignature,
    ProtocolError,
    Receipt,
    SignedReceipt,
    UsageRecord,
    hash_token_ids,
    receipt_message,
    recover_message_signer,
    recover_receipt_signer,
    recover_usage_record_signer,
    sign_receipt,
    sign_usage_record,
    usage_record_message,
)
from tallystick.protocol._eip712 import digest, typed_data

ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = Domain(31337, ESCROW)
CLIENT = Account.from_key(b"\x11" * 32)
PROVIDER = Account.from_key(b"\x22" * 32)
CHANNEL = bytes.fromhex("ab" * 32)
RECEIPT = Receipt(CHANNEL, 1234, 5678, b"\x07" * 32)
RECORD = UsageRecord(
    channel_id=CHANNEL,
    seq=3,
    prompt_tokens=17,
    completion_tokens=9,
    prompt_hash=hash_token_ids(list(range(17))),
    completion_hash=hash_token_ids([5] * 9),
    input_tokens=1234,
    output_tokens=5678,
    prev_root=b"\x05" * 32,
    seed=-(2**63) + 7,
    temperature=700_000,
    top_p=950_000,
    model_hash=b"\x0a" * 32,
    proof_hash=b"\x0b" * 32,
)


def reference(primary: str, message: dict, domain: Domain = DOMAIN):
    return encode_typed_data(full_message=typed_data(domain, primary, message))


def test_receipt_encoding_equals_encode_typed_data() -> None:
    message = {
        "channelId": CHANNEL,
        "inputTokens": 1234,
        "outputTokens": 5678,
        "usageRoot": b"\x07" * 32,
    }
    assert receipt_message(DOMAIN, RECEIPT) == reference("Receipt", message)


def test_usage_record_encoding_equals_encode_typed_data() -> None:
    message = {
        "channelId": CHANNEL,
        "seq": 3,
        "promptTokens": 17,
        "completionTokens": 9,
        "promptHash": RECORD.prompt_hash,
        "completionHash": RECORD.completion_hash,
        "inputTokens": 1234,
        "outputTokens": 5678,
        "prevRoot": b"\x05" * 32,
        "seed": -(2**63) + 7,
        "temperature": 700_000,
        "topP": 950_000,
        "modelHash": b"\x0a" * 32,
        "proofHash": b"\x0b" * 32,
    }
    assert usage_record_message(DOMAIN, RECORD) == reference("UsageRecord", message)


def test_domain_separator_binds_chain_and_escrow() -> None:
    other_chain = Domain(1, ESCROW)
    other_escrow = Domain(31337, "0x" + "11" * 20)
    message = {"channelId": CHANNEL, "inputTokens": 1, "outputTokens": 2, "usageRoot": ZERO_ROOT}
    for domain in (other_chain, other_escrow):
        assert domain.separator != DOMAIN.separator
        receipt = Receipt(CHANNEL, 1, 2, ZERO_ROOT)
        assert receipt_message(domain, receipt) == reference("Receipt", message, domain)


def test_receipt_signature_round_trip() -> None:
    signed = sign_receipt(CLIENT, DOMAIN, RECEIPT)
    assert recover_receipt_signer(DOMAIN, signed) == CLIENT.address
    # eth-account agrees on the signature itself, not just on recovery.
    expected = Account.sign_message(reference_receipt(), CLIENT.key).signature
    assert signed.signature == bytes(expected)
    assert SignedReceipt.from_json(signed.to_json()) == signed


def reference_receipt():
    message = {"channelId": CHANNEL, "inputTokens": 1234, "outputTokens": 5678}
    return reference("Receipt", {**message, "usageRoot": b"\x07" * 32})


def test_usage_record_signature_round_trip() -> None:
    signed = sign_usage_record(PROVIDER, DOMAIN, RECORD)
    assert recover_usage_record_signer(DOMAIN, signed) == PROVIDER.address


@pytest.mark.parametrize(
    "domain",
    [Domain(1, ESCROW), Domain(31337, "0x" + "11" * 20)],
    ids=["another chain", "another escrow"],
)
def test_signature_for_another_domain_recovers_someone_else(domain: Domain) -> None:
    signed = sign_receipt(CLIENT, domain, RECEIPT)
    assert recover_receipt_signer(DOMAIN, signed) != CLIENT.address


def test_signature_for_another_channel_recovers_someone_else() -> None:
    other = Receipt(bytes.fromhex("cd" * 32), 1234, 5678, b"\x07" * 32)
    moved = SignedReceipt(RECEIPT, sign_receipt(CLIENT, DOMAIN, other).signature)
    assert recover_receipt_signer(DOMAIN, moved) != CLIENT.address


def test_a_record_signature_is_not_a_receipt_signature() -> None:
    signed = sign_usage_record(CLIENT, DOMAIN, RECORD)
    assert recover_message_signer(receipt_message(DOMAIN, RECEIPT), signed.signature) != (
        CLIENT.address
    )


def test_malformed_signatures_are_refused() -> None:
    good = sign_receipt(CLIENT, DOMAIN, RECEIPT).signature
    message = receipt_message(DOMAIN, RECEIPT)
    with pytest.raises(InvalidSignature, match="65 bytes"):
        recover_message_signer(message, good[:64])
    with pytest.raises(InvalidSignature, match="v must be 27 or 28"):
        recover_message_signer(message, good[:64] + bytes([good[64] - 27]))
    # The malleable twin (n - s, flipped v) is a valid ECDSA signature that OpenZeppelin refuses.
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = (n - int.from_bytes(good[32:64], "big")).to_bytes(32, "big")
    twin = good[:32] + high_s + bytes([55 - good[64]])
    with pytest.raises(InvalidSignature, match="upper half"):
        recover_message_signer(message, twin)
    with pytest.raises(InvalidSignature, match="does not recover"):
        recover_message_signer(message, b"\x00" * 64 + b"\x1b")


def test_digest_is_eip191_of_domain_and_struct() -> None:
    from eth_account.messages import _hash_eip191_message

    message = receipt_message(DOMAIN, RECEIPT)
    assert digest(message) == _hash_eip191_message(message)


def test_receipt_wire_errors_are_readable() -> None:
    wire = sign_receipt(CLIENT, DOMAIN, RECEIPT).to_json()
    with pytest.raises(ProtocolError, match="signature must be 65 bytes"):
        SignedReceipt.from_json({**wire, "signature": "0x1234"})
    with pytest.raises(ProtocolError, match="outputTokens must be in"):
        SignedReceipt.from_json({**wire, "outputTokens": 2**64})
