"""RequestAuth (§4.3): encoding equals eth-account's EIP-712 encoder, the spec's test vector,
the wire form, and a signature moved to another body, channel, seq, root, chain or escrow
recovering to another address."""

from dataclasses import replace

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from tallystick.protocol import (
    Domain,
    InvalidRequestAuth,
    RequestAuth,
    SignedRequestAuth,
    recover_request_auth_signer,
    request_auth_message,
    request_hash,
    sign_request_auth,
)
from tallystick.protocol._eip712 import digest, typed_data
from tallystick.protocol._request_auth import REQUEST_AUTH_TYPE, REQUEST_AUTH_TYPEHASH

ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = Domain(31337, ESCROW)
CLIENT = Account.from_key(b"\x11" * 32)
CHANNEL = bytes.fromhex("ab" * 32)
BODY = (
    b'{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"Hi"}],"max_tokens":8}'
)
AUTH = RequestAuth(
    CHANNEL, 3, b"\x07" * 32, request_hash("POST", "/v1/chat/completions", BODY), 1_900_000_000, 42
)

# The vector printed in docs/protocol.md §4.3 (key 0x11…11, the domain above).
VECTOR_REQUEST_HASH = "0e3637fb69a44864f61fcb3a47fd6b7d5060065aabc4edd0523d6f335fb0545f"
VECTOR_STRUCT_HASH = "fedabb111a687da22da34c89142360d8851a23047c12c96e3362b98e21d606e6"
VECTOR_DIGEST = "f3f1261a318e439e45d2bb6ca96a778fa045928d54b1f1907e75ba1b7ccb8a1f"
VECTOR_SIGNATURE = (
    "ec9188ded1346a8e1ecdbd098d708ae5ccb1c0bffaf96cdde01fb6593b9afb2b"
    "7eff2f59ee3c51d2ef0fd000fd0e9770d998de61011c5541257caf4ffa1e344b1b"
)


def test_the_type_hash_is_built_from_its_string() -> None:
    assert REQUEST_AUTH_TYPE == (
        "RequestAuth(bytes32 channelId,uint64 seq,bytes32 lastRoot,bytes32 requestHash,"
        "uint64 expiresAt,uint64 nonce)"
    )
    assert keccak(text=REQUEST_AUTH_TYPE) == REQUEST_AUTH_TYPEHASH


def test_request_hash_is_the_abi_encoded_hashes_of_method_path_and_body() -> None:
    expected = keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32"],
            [keccak(b"POST"), keccak(b"/v1/chat/completions"), keccak(BODY)],
        )
    )
    assert request_hash("post", "/v1/chat/completions", BODY) == expected
    assert expected.hex() == VECTOR_REQUEST_HASH
    assert request_hash("GET", "/v1/x", b"") != request_hash("POST", "/v1/x", b"")


def test_encoding_equals_encode_typed_data() -> None:
    message = {
        "channelId": CHANNEL,
        "seq": 3,
        "lastRoot": b"\x07" * 32,
        "requestHash": AUTH.request_hash,
        "expiresAt": 1_900_000_000,
        "nonce": 42,
    }
    reference = encode_typed_data(full_message=typed_data(DOMAIN, "RequestAuth", message))
    assert request_auth_message(DOMAIN, AUTH) == reference


def test_the_spec_vector() -> None:
    assert AUTH.struct_hash().hex() == VECTOR_STRUCT_HASH
    assert digest(request_auth_message(DOMAIN, AUTH)).hex() == VECTOR_DIGEST
    signed = sign_request_auth(CLIENT, DOMAIN, AUTH)
    assert signed.signature.hex() == VECTOR_SIGNATURE  # RFC 6979: deterministic
    assert recover_request_auth_signer(DOMAIN, signed) == CLIENT.address


def test_wire_form_round_trips() -> None:
    signed = sign_request_auth(CLIENT, DOMAIN, AUTH)
    header = signed.header()
    assert header.startswith("Tally tsr1.")
    assert SignedRequestAuth.from_header(header) == signed
    assert SignedRequestAuth.parse(signed.encode().upper().replace("TSR1", "tsr1")) == signed


@pytest.mark.parametrize(
    "change",
    [
        {"channel_id": b"\xcd" * 32},
        {"seq": 4},
        {"last_root": b"\x08" * 32},
        {"request_hash": request_hash("POST", "/v1/chat/completions", BODY + b" ")},
        {"request_hash": request_hash("POST", "/v1/completions", BODY)},
        {"expires_at": 1_900_000_001},
        {"nonce": 43},
    ],
)
def test_a_signature_moved_to_another_request_recovers_another_address(change: dict) -> None:
    signed = sign_request_auth(CLIENT, DOMAIN, AUTH)
    moved = SignedRequestAuth(replace(AUTH, **change), signed.signature)
    assert recover_request_auth_signer(DOMAIN, moved) != CLIENT.address


@pytest.mark.parametrize("domain", [Domain(1, ESCROW), Domain(31337, "0x" + "22" * 20)])
def test_a_signature_for_another_chain_or_escrow_recovers_another_address(domain: Domain) -> None:
    signed = sign_request_auth(CLIENT, domain, AUTH)
    assert recover_request_auth_signer(DOMAIN, signed) != CLIENT.address


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Bearer tsk1.ab.1.cd", "must be 'Tally tsr1"),
        ("Tally ", "must be 'Tally tsr1"),
        ("Tally tsr1.ab", "has the form"),
        ("Tally tsr1." + ".".join(["zz" * 32, "1", "00" * 32, "00" * 32, "1", "1", "00" * 65]),
         "channelId must be 64 hex"),
        ("Tally tsr1." + ".".join(["00" * 32, "01", "00" * 32, "00" * 32, "1", "1", "00" * 65]),
         "seq must be a decimal"),
        ("Tally tsr1." + ".".join(["00" * 32, "1", "00" * 32, "00" * 32, str(2**64), "1",
                                   "00" * 65]), "expiresAt must be a decimal"),
        ("Tally tsr1." + ".".join(["00" * 32, "1", "00" * 32, "00" * 32, "1", "1", "00" * 64]),
         "130 hex"),
    ],
)  # fmt: skip
def test_malformed_headers_are_refused_with_a_reason(header: str, message: str) -> None:
    with pytest.raises(InvalidRequestAuth, match=message):
        SignedRequestAuth.from_header(header)


def test_for_request_sets_expiry_and_a_fresh_nonce() -> None:
    a = RequestAuth.for_request(CHANNEL, 1, b"\x00" * 32, "GET", "/v1/x", b"", ttl_s=60)
    b = RequestAuth.for_request(CHANNEL, 1, b"\x00" * 32, "GET", "/v1/x", b"", ttl_s=60)
    assert a.nonce != b.nonce
    assert not a.expired() and a.expired(now=a.expires_at)
    with pytest.raises(ValueError, match="ttl_s"):
        RequestAuth.for_request(CHANNEL, 1, b"\x00" * 32, "GET", "/v1/x", b"", ttl_s=0)
