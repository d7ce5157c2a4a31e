"""Proof of the model (docs/protocol.md §10): the weights hash, the seeded sampler, the proof.

- ``model_hash(path)``: what a listing commits to (the served weights file or files).
- ``gumbel_noise(seed, position, vocab)``: the noise the seeded sampler adds at one position;
  provider and auditor compute the same vector from the record's seed.
- ``encode_proof``/``hash_proof``: the provider's per-token logit commitment.

Torch is imported lazily: the light SDK never needs it, only a sampler or an auditor does.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from eth_utils import keccak

if TYPE_CHECKING:
    import torch

__all__ = [
    "PROOF_SCALE",
    "SAMPLER",
    "decode_proof",
    "encode_proof",
    "gumbel_noise",
    "hash_proof",
    "model_hash",
    "noise_key",
    "nucleus",
    "params_units",
    "weight_files",
]

SAMPLER = "gumbel-keccak-mt19937-v1"  # the name /v1/models gives the seeded sampler
PROOF_SCALE = 1024  # committed logits are round(logit * 1024) as int32 (step 1/1024)
_UNITS = 1_000_000  # temperature and top_p travel as millionths in the record
_CHUNK = 1 << 24


def weight_files(source: str | Path) -> list[Path]:
    """The files a modelHash covers: a ``.gguf`` file itself, or a folder's weight files."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no model file or folder at {path}")
    for pattern in ("*.safetensors", "*.gguf", "*.bin"):
        files = sorted(path.glob(pattern), key=lambda p: p.name)
        if files:
            return files
    raise FileNotFoundError(f"{path} holds no .safetensors, .gguf or .bin weights")


def model_hash(source: str | Path) -> bytes:
    """``keccak256(keccak256(file_1) || ... || keccak256(file_n))`` over ``weight_files``."""
    return keccak(b"".join(_file_hash(f) for f in weight_files(source)))


def _file_hash(path: Path) -> bytes:
    from Crypto.Hash import keccak as pykeccak  # pycryptodome, already under eth-hash

    h = pykeccak.new(digest_bits=256)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def params_units(value: float) -> int:
    """A temperature or top_p as the record carries it (millionths, rounded to nearest)."""
    return round(value * _UNITS)


def noise_key(seed: int, position: int) -> int:
    """The 63-bit generator seed of one completion position: keccak256(int64 seed, uint32 pos)."""
    digest = keccak(struct.pack(">qI", seed, position))
    return int.from_bytes(digest[:8], "big") >> 1


def gumbel_noise(seed: int, position: int, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise (vocab,) float32: ``-log(-log(u))``, ``u`` from torch's CPU
    mt19937 seeded with ``noise_key``; a ``u`` of 0 gives ``-inf`` (never sampled)."""
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(noise_key(seed, position))
    u = torch.rand(vocab, generator=gen, dtype=torch.float32)  # (vocab,)
    return -torch.log(-torch.log(u))


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Mask (vocab,) of the smallest set of top ids whose probability reaches ``top_p``."""
    import torch

    probs = torch.softmax(logits / temperature, dim=-1)  # (vocab,)
    sorted_probs, order = torch.sort(probs, descending=True)
    keep_sorted = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p  # top id always
    keep = torch.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return keep


def encode_proof(logits: Sequence[float]) -> list[int]:
    """The committed form of the chosen ids' logits: ``round(logit * PROOF_SCALE)``."""
    return [_clamp_i32(round(x * PROOF_SCALE)) for x in logits]


def decode_proof(proof: Sequence[int]) -> list[float]:
    return [v / PROOF_SCALE for v in proof]


def hash_proof(proof: Sequence[int]) -> bytes:
    """keccak256 of the proof values as 4-byte big-endian signed integers, concatenated."""
    try:
        return keccak(struct.pack(f">{len(proof)}i", *proof))
    except struct.error as exc:
        raise ValueError(f"proof values must be int32: {exc}") from exc


def _clamp_i32(v: int) -> int:
    return max(-(2**31), min(2**31 - 1, v))
