"""The usage chain (§4.2, §5): token-id hashes, record hashes, roots, wire form."""

import struct

import pytest
from eth_utils import keccak
from tallystick.protocol import (
    ZERO_ROOT,
    ProtocolError,
    SignedUsageRecord,
    UsageRecord,
    hash_token_ids,
    next_usage_root,
)

CHANNEL = bytes(range(32))


def record(seq: int, prev_root: bytes, prompt: list[int], completion: list[int], totals=(0, 0)):
    return UsageRecord(
        channel_id=CHANNEL,
        seq=seq,
        prompt_tokens=len(prompt),
        completion_tokens=len(completion),
        prompt_hash=hash_token_ids(prompt),
        completion_hash=hash_token_ids(completion),
        input_tokens=totals[0] + len(prompt),
        output_tokens=totals[1] + len(completion),
        prev_root=prev_root,
    )


def test_hash_token_ids_is_keccak_of_big_endian_u32() -> None:
    assert hash_token_ids([]) == keccak(b"")
    assert hash_token_ids([1, 256, 2**32 - 1]) == keccak(
        b"\x00\x00\x00\x01" + b"\x00\x00\x01\x00" + b"\xff\xff\xff\xff"
    )
    ids = list(range(0, 50_000, 7))
    assert hash_token_ids(ids) == keccak(struct.pack(f">{len(ids)}I", *ids))


@pytest.mark.parametrize("bad", [[-1], [2**32]])
def test_hash_token_ids_refuses_out_of_range_ids(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="token ids"):
        hash_token_ids(bad)


def test_struct_hash_matches_its_definition() -> None:
    r = record(1, ZERO_ROOT, [1, 2, 3], [4, 5])
    type_hash = keccak(
        text="UsageRecord(bytes32 channelId,uint64 seq,uint32 promptTokens,"
        "uint32 completionTokens,bytes32 promptHash,bytes32 completionHash,"
        "uint64 inputTokens,uint64 outputTokens,bytes32 prevRoot,int64 seed,"
        "uint32 temperature,uint32 topP,bytes32 modelHash,bytes32 proofHash)"
    )
    words = [1, 3, 2]
    encoded = type_hash + CHANNEL + b"".join(w.to_bytes(32, "big") for w in words)
    encoded += r.prompt_hash + r.completion_hash
    encoded += (3).to_bytes(32, "big") + (2).to_bytes(32, "big") + ZERO_ROOT
    # the defaults: seed 0, temperature 0, top_p 1.0, no model hash, the empty proof
    encoded += bytes(64) + (1_000_000).to_bytes(32, "big") + bytes(32) + keccak(b"")
    assert r.struct_hash() == keccak(encoded)


def test_chain_of_three_records() -> None:
    r1 = record(1, ZERO_ROOT, [1, 2], [3])
    root1 = next_usage_root(ZERO_ROOT, r1)
    assert root1 == keccak(ZERO_ROOT + r1.struct_hash()) == r1.usage_root()
    r2 = record(2, root1, [4], [5, 6], totals=(2, 1))
    root2 = next_usage_root(root1, r2)
    r3 = record(3, root2, [], [7], totals=(3, 3))
    assert r3.usage_root() == keccak(root2 + r3.struct_hash())
    assert len({root1, root2, r3.usage_root()}) == 3


def test_a_record_cannot_be_chained_onto_another_root() -> None:
    r2 = record(2, b"\x01" * 32, [4], [5])
    with pytest.raises(ProtocolError, match="seq 2 extends root 0x0101"):
        next_usage_root(ZERO_ROOT, r2)


def test_changing_any_field_changes_the_hash() -> None:
    base = record(1, ZERO_ROOT, [1, 2], [3])
    variants = [
        record(2, ZERO_ROOT, [1, 2], [3]),
        record(1, ZERO_ROOT, [1, 3], [3]),
        record(1, ZERO_ROOT, [1, 2], [4]),
        record(1, ZERO_ROOT, [1, 2], [3], totals=(1, 0)),
        record(1, b"\x02" * 32, [1, 2], [3]),
    ]
    assert len({base.struct_hash(), *(v.struct_hash() for v in variants)}) == 6


def test_json_round_trip() -> None:
    r = record(7, b"\x09" * 32, [1, 2], [3], totals=(100, 200))
    signed = SignedUsageRecord(r, b"\x01" * 65)
    wire = signed.to_json()
    assert wire["record"]["seq"] == 7
    assert wire["record"]["prevRoot"] == "0x" + "09" * 32
    assert SignedUsageRecord.from_json(wire) == signed
    assert UsageRecord.from_json(r.to_json()) == r


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"seq": -1}, "seq must be in"),
        ({"promptTokens": 2**32}, "promptTokens must be in"),
        ({"promptHash": "0x12"}, "promptHash must be 32 bytes"),
        ({"prevRoot": "zz"}, "prevRoot must be a 0x-prefixed hex"),
        ({"channelId": "0x" + "zz" * 32}, "channelId is not valid hex"),
        ({"inputTokens": "5"}, "inputTokens must be an integer"),
    ],
)
def test_from_json_errors_are_readable(patch: dict, message: str) -> None:
    wire = {**record(1, ZERO_ROOT, [1], [2]).to_json(), **patch}
    with pytest.raises(ProtocolError, match=message):
        UsageRecord.from_json(wire)


def test_from_json_names_a_missing_field() -> None:
    wire = record(1, ZERO_ROOT, [1], [2]).to_json()
    del wire["completionHash"]
    with pytest.raises(ProtocolError, match="missing field 'completionHash'"):
        UsageRecord.from_json(wire)
    with pytest.raises(ProtocolError, match="expected a JSON object"):
        UsageRecord.from_json([1, 2])
