"""§10 building blocks: modelHash, the seeded noise, the proof encoding, the record's fields."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from eth_utils import keccak
from tallystick.protocol import (
    ZERO_ROOT,
    ProtocolError,
    UsageRecord,
    decode_proof,
    encode_proof,
    gumbel_noise,
    hash_proof,
    hash_token_ids,
    model_hash,
    params_units,
)
from tallystick.protocol._fidelity import noise_key, nucleus


def test_model_hash_of_a_file_and_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "b.safetensors").write_bytes(b"bb")
    (tmp_path / "a.safetensors").write_bytes(b"a")
    (tmp_path / "config.json").write_text("{}")
    assert model_hash(tmp_path) == keccak(keccak(b"a") + keccak(b"bb"))
    assert model_hash(tmp_path / "a.safetensors") == keccak(keccak(b"a"))
    (tmp_path / "a.safetensors").write_bytes(b"A")
    assert model_hash(tmp_path) != keccak(keccak(b"a") + keccak(b"bb"))


def test_model_hash_of_nothing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors"):
        model_hash(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model file"):
        model_hash(tmp_path / "missing.gguf")


def test_noise_depends_on_seed_and_position_only() -> None:
    a = gumbel_noise(7, 3, 1000)
    torch.set_num_threads(2)
    try:
        assert torch.equal(a, gumbel_noise(7, 3, 1000))
    finally:
        torch.set_num_threads(1)
    assert not torch.equal(a, gumbel_noise(7, 4, 1000))
    assert not torch.equal(a, gumbel_noise(8, 3, 1000))
    assert noise_key(-1, 0) != noise_key(2**64 - 1 - 2**63, 0)
    assert 0 <= noise_key(-(2**63), 2**32 - 1) < 2**63


def test_gumbel_max_samples_the_softmax() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0])
    t = 0.7
    counts = torch.zeros(3)
    for pos in range(3000):
        counts[int(torch.argmax(logits + t * gumbel_noise(1, pos, 3)))] += 1
    expected = torch.softmax(logits / t, -1) * 3000
    assert torch.all((counts - expected).abs() < 4 * expected.sqrt() + 5), (counts, expected)


def test_nucleus_keeps_the_smallest_top_set() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert nucleus(logits, 1.0, 0.7).tolist() == [True, True, False, False]
    assert nucleus(logits, 1.0, 0.1).tolist() == [True, False, False, False]


def test_proof_encoding_round_trips_and_hashes_as_int32() -> None:
    proof = encode_proof([1.5, -20.25, 0.0004])
    assert proof == [1536, -20736, 0]
    assert decode_proof(proof) == [1.5, -20.25, 0.0]
    assert hash_proof(proof) == keccak(b"\x00\x00\x06\x00\xff\xff\xaf\x00\x00\x00\x00\x00")
    assert hash_proof([]) == keccak(b"")
    with pytest.raises(ValueError, match="int32"):
        hash_proof([2**31])


def test_params_units_rounds_to_millionths() -> None:
    assert params_units(0.7) == 700_000
    assert params_units(1.0) == 1_000_000
    assert params_units(0.1234567) == 123_457


def _record(**kw: object) -> UsageRecord:
    base = UsageRecord(b"\x01" * 32, 1, 2, 3, hash_token_ids([1, 2]), hash_token_ids([3, 4, 5]),
                       2, 3, ZERO_ROOT)  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def test_record_json_carries_the_seed_as_a_decimal_string() -> None:
    r = _record(seed=-(2**63), temperature=700_000, top_p=900_000, model_hash=b"\x02" * 32,
                proof_hash=hash_proof([1, 2, 3]))  # fmt: skip
    obj = r.to_json()
    assert obj["seed"] == str(-(2**63))
    assert UsageRecord.from_json(obj) == r
    for bad in (5, "0x10", "1e3", str(2**63), ""):
        with pytest.raises(ProtocolError, match="seed"):
            UsageRecord.from_json({**obj, "seed": bad})


@pytest.mark.parametrize("field", ["seed", "temperature", "topP", "modelHash", "proofHash"])
def test_every_new_field_changes_the_struct_hash(field: str) -> None:
    r = _record()
    changed = {
        "seed": replace(r, seed=1),
        "temperature": replace(r, temperature=1),
        "topP": replace(r, top_p=999_999),
        "modelHash": replace(r, model_hash=b"\x09" * 32),
        "proofHash": replace(r, proof_hash=b"\x09" * 32),
    }[field]
    assert changed.struct_hash() != r.struct_hash()
