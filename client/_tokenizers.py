"""Tokenizer bundles from nodes, checked against the on-chain ``tokenizerHash``, cached on disk.

The hash does not make a bundle safe to load: the provider chose it when it listed the model.
So the bundle is size-bounded and depth-checked before its JSON is parsed, and its chat
template is checked for nesting before Jinja compiles it: Jinja's parser and CPython's compiler
recurse once per level and trust the recursion limit web3 raises to 100000, so a template of a
few thousand nested ``not`` or ``{% for %}`` overflows the C stack and kills the process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import jinja2
from tallystick.protocol import TokenCounter, TokenizerBundle

from ._counting import PromptCounter
from ._errors import InvalidResponse
from ._json import MAX_JSON_DEPTH, too_deep
from ._node import NodeClient

__all__ = ["MAX_TAG_OPERATORS", "MAX_TEMPLATE_NESTING", "TokenizerCache", "check_chat_template"]

# Real chat templates nest blocks ~6 deep and use ~20 operators in their longest tag. Below
# these, Jinja compiles without crashing and within CPython's own static limits (20 nested
# loops, 200 nested parentheses), which raise SyntaxError rather than ProtocolError.
MAX_TEMPLATE_NESTING = 16
MAX_TAG_OPERATORS = 128
_BLOCK_OPENERS = frozenset(
    {"if", "for", "macro", "call", "filter", "with", "block", "autoescape", "generation", "set"}
)
# Names that are operators in Jinja expressions: each may add a level to the parse tree.
_WORD_OPERATORS = frozenset({"not", "and", "or", "if", "else", "is", "in"})
# Operators that separate or close and add no level: a long list literal is one level deep.
_FLAT_OPERATORS = frozenset({",", ":", ")", "]", "}", "="})


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
        tmp = self._path(expected_hash).with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(self._path(expected_hash))


def _load(data: bytes, expected_hash: bytes) -> TokenizerBundle:
    """A bundle from served bytes, checked for depth, hash and template nesting, in that order."""
    if too_deep(data):
        raise InvalidResponse(f"the tokenizer bundle is nested deeper than {MAX_JSON_DEPTH} levels")
    bundle = TokenizerBundle.from_bytes(data, expected_hash)
    check_chat_template(bundle.chat_template)
    return bundle


def _counter(bundle: TokenizerBundle) -> TokenCounter:
    try:
        return TokenCounter(bundle)
    except (SyntaxError, RecursionError, MemoryError) as exc:
        # Jinja turns the template into Python; CPython may refuse what Jinja accepted.
        raise InvalidResponse(f"the chat template does not compile: {exc}") from exc


def check_chat_template(source: str) -> None:
    """``InvalidResponse`` unless the template's blocks and expressions nest within bounds.

    Walks Jinja's lexer (a flat token stream, no recursion): blocks may nest at most
    ``MAX_TEMPLATE_NESTING`` deep, and one tag may hold at most ``MAX_TAG_OPERATORS``
    operators and opening brackets, which bounds how deep its expression can nest.
    """
    depth = 0
    keyword: str | None = None  # the first name of the current {% %} tag
    expect_keyword, assigns, operators = False, False, 0
    try:
        for _, kind, value in jinja2.Environment().lex(source):
            if kind in ("block_begin", "variable_begin"):
                expect_keyword, keyword, assigns, operators = kind == "block_begin", None, False, 0
            elif kind == "name" and expect_keyword:
                keyword, expect_keyword = value, False
                depth -= value.startswith("end")
            elif kind == "operator" or (kind == "name" and value in _WORD_OPERATORS):
                operators += value not in _FLAT_OPERATORS
                assigns = assigns or value == "="
            elif kind == "block_end" and keyword in _BLOCK_OPENERS:
                depth += not (keyword == "set" and assigns)  # {% set x = ... %} opens nothing
            if depth > MAX_TEMPLATE_NESTING or operators > MAX_TAG_OPERATORS:
                raise InvalidResponse(
                    "the chat template nests too deeply to compile safely (more than "
                    f"{MAX_TEMPLATE_NESTING} blocks or {MAX_TAG_OPERATORS} operators in a tag)"
                )
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidResponse(f"the chat template does not compile: {exc}") from exc
