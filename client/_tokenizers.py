"""Tokenizer bundles from nodes, checked against the on-chain ``tokenizerHash``, cached on disk.

The hash does not make a bundle safe to load: the provider chose it when it listed the model.
So the bundle is size-bounded and depth-checked before its JSON is parsed, and its chat
template is checked for nesting before Jinja compiles it: Jinja's parser and CPython's compiler
recurse once per level and trust the recursion limit web3 raises to 100000, so a template of a
few thousand nested ``not`` or ``{% for %}`` overflows the C stack and kills the process. The
checks are the protocol's (``TokenizerBundle.from_bytes``, ``check_chat_template``); their
errors become ``InvalidResponse`` here, and the template is checked before anything is cached.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from tallystick.protocol import (
    MAX_TAG_OPERATORS,
    MAX_TEMPLATE_NESTING,
    InvalidChatTemplate,
    InvalidJSON,
    TokenCounter,
    TokenizerBundle,
)
from tallystick.protocol import check_chat_template as _check_chat_template

from ._counting import PromptCounter
from ._errors import InvalidResponse
from ._node import NodeClient

__all__ = ["MAX_TAG_OPERATORS", "MAX_TEMPLATE_NESTING", "TokenizerCache", "check_chat_template"]


class TokenizerCache:
    """Counters by tokenizer hash: memory, then ``directory/<hash>.json``, then the node."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._counters: dict[bytes, PromptCounter] = {}
        self._lock = threading.Lock()

    def counter(self, node: NodeClient, model: str, expected_hash: bytes) -> TokenCounter:
        """The counter for ``model``; raises ``TokenizerMismatch`` if the node serves another."""
        return self.prompt_counter(node, model, expected_hash).counter

    def prompt_counter(self, node: NodeClient, model: str, expected_hash: bytes) -> PromptCounter:
        """The cached chat-prompt counter of ``model`` (one per bundle, shared by channels)."""
        with self._lock:
            if expected_hash in self._counters:
                return self._counters[expected_hash]
        bundle = self._from_disk(expected_hash)
        if bundle is None:
            data = node.tokenizer_bytes(model)
            bundle = _load(data, expected_hash)
            self._to_disk(expected_hash, data)
        counter = PromptCounter(_counter(bundle))
        with self._lock:
            return self._counters.setdefault(expected_hash, counter)

    def _path(self, expected_hash: bytes) -> Path:
        return self.directory / f"{expected_hash.hex()}.json"

    def _from_disk(self, expected_hash: bytes) -> TokenizerBundle | None:
        path = self._path(expected_hash)
        if not path.exists():
            return None
        # Re-checked on load: a file edited on disk must not change what the client counts.
        return _load(path.read_bytes(), expected_hash)

    def _to_disk(self, expected_hash: bytes, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A name unique to this call: clients sharing the folder must not rename each other's file.
        fd, name = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
        os.replace(name, self._path(expected_hash))


def _load(data: bytes, expected_hash: bytes) -> TokenizerBundle:
    """A bundle from served bytes, checked for hash, depth and template nesting, in that order."""
    try:
        bundle = TokenizerBundle.from_bytes(data, expected_hash)
    except InvalidJSON as exc:
        raise InvalidResponse(str(exc)) from exc
    check_chat_template(bundle.chat_template)
    return bundle


def _counter(bundle: TokenizerBundle) -> TokenCounter:
    try:
        return TokenCounter(bundle)
    except InvalidChatTemplate as exc:  # e.g. CPython refused what Jinja accepted
        raise InvalidResponse(str(exc)) from exc


def check_chat_template(source: str) -> None:
    """``InvalidResponse`` unless the template nests within the protocol's bounds."""
    try:
        _check_chat_template(source)
    except InvalidChatTemplate as exc:
        raise InvalidResponse(str(exc)) from exc
