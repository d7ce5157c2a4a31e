"""Bearer tokens (§4.3): wire form, parse errors, signer, expiry."""

import time

import pytest
from eth_account import Account
from tallystick.protocol import (
    BearerToken,
    Domain,
    InvalidBearerToken,
    make_bearer_token,
)

DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
CLIENT = Account.from_key(b"\x11" * 32)
CHANNEL = bytes.fromhex("ab" * 32)


def test_round_trip_and_signer() -> None:
    token = make_bearer_token(CLIENT, DOMAIN, CHANNEL, ttl_s=600)
    wire = token.encode()
    assert wire.startswith("tsk1." + "ab" * 32 + ".")
    assert len(wire.split(".")[3]) == 130
    parsed = BearerToken.parse(wire)
    assert parsed == token
    assert parsed.signer(DOMAIN) == CLIENT.address
    assert not parsed.expired()
    assert parsed.expired(now=time.time() + 601)


def test_uppercase_hex_and_surrounding_space_are_accepted() -> None:
    token = make_bearer_token(CLIENT, DOMAIN, CHANNEL, ttl_s=60)
    head, channel, expires, sig = token.encode().split(".")
    assert BearerToken.parse(f" {head}.{channel.upper()}.{expires}.{sig.upper()}\n") == token


def test_a_token_for_another_domain_recovers_someone_else() -> None:
    token = make_bearer_token(CLIENT, Domain(1, DOMAIN.escrow), CHANNEL, ttl_s=60)
    assert token.signer(DOMAIN) != CLIENT.address


def test_changing_the_expiry_changes_the_signer() -> None:
    token = make_bearer_token(CLIENT, DOMAIN, CHANNEL, ttl_s=60)
    forged = BearerToken(token.channel_id, token.expires_at + 3600, token.signature)
    assert forged.signer(DOMAIN) != CLIENT.address


SIG = "11" * 64 + "1b"
CH = "ab" * 32


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("", "has the form tsk1"),
        ("sk-abcdef", "has the form tsk1"),
        (f"tsk2.{CH}.100.{SIG}", "has the form tsk1"),
        (f"tsk1.{CH}.100", "has the form tsk1"),
        (f"tsk1.{CH}.100.{SIG}.x", "has the form tsk1"),
        (f"tsk1.{CH[:-2]}.100.{SIG}", "channel id must be 64 hex"),
        (f"tsk1.0x{CH[2:]}.100.{SIG}", "channel id must be 64 hex"),
        (f"tsk1.{CH}.-5.{SIG}", "expiresAt must be unix seconds"),
        (f"tsk1.{CH}.+5.{SIG}", "expiresAt must be unix seconds"),
        (f"tsk1.{CH}.0100.{SIG}", "expiresAt must be unix seconds"),
        (f"tsk1.{CH}.{2**64}.{SIG}", "expiresAt must be unix seconds"),
        (f"tsk1.{CH}.1e9.{SIG}", "expiresAt must be unix seconds"),
        (f"tsk1.{CH}.100.{SIG[:-2]}", "signature must be 130 hex"),
        (f"tsk1.{CH}.100.{SIG[:-2]}zz", "signature must be 130 hex"),
    ],
)
def test_parse_errors_are_readable(wire: str, message: str) -> None:
    with pytest.raises(InvalidBearerToken, match=message):
        BearerToken.parse(wire)


def test_parse_refuses_non_strings() -> None:
    with pytest.raises(InvalidBearerToken, match="must be a string"):
        BearerToken.parse(None)


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        make_bearer_token(CLIENT, DOMAIN, CHANNEL, ttl_s=0)
