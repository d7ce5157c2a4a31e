"""Tokenizer bundles from nodes, checked against the on-chain ``tokenizerHash``, cached on disk."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from tallystick.protocol import TokenCounter, TokenizerBundle

from ._node import NodeClient

__all__ = ["TokenizerCache"]


class TokenizerCache:
    """Counters by tokenizer hash: memory, then ``directory/<hash>.json``, then the node."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._counters: dict[bytes, TokenCounter] = {}
        self._lock = threading.Lock()

    def counter(self, node: NodeClient, model: str, expected_hash: bytes) -> TokenCounter:
        """The counter for ``model``; raises ``TokenizerMismatch`` if the node serves another."""
        with self._lock:
            if expected_hash in self._counters:
                return self._counters[expected_hash]
        bundle = self._from_disk(expected_hash)
        if bundle is None:
            data = node.tokenizer_bytes(model)
            bundle = TokenizerBundle.from_bytes(data, expected_hash)
            self._to_disk(expected_hash, data)
        counter = TokenCounter(bundle)
        with self._lock:
            self._counters[expected_hash] = counter
        return counter

    def _path(self, expected_hash: bytes) -> Path:
        return self.directory / f"{expected_hash.hex()}.json"

    def _from_disk(self, expected_hash: bytes) -> TokenizerBundle | None:
        path = self._path(expected_hash)
        if not path.exists():
            return None
        # Re-checked on load: a file edited on disk must not change what the client counts.
        return TokenizerBundle.from_bytes(path.read_bytes(), expected_hash)

    def _to_disk(self, expected_hash: bytes, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path(expected_hash).with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(self._path(expected_hash))
