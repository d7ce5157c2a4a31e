"""A tiny byte-level BPE tokenizer with a ChatML template, built offline for tests and FakeEngine.

Every byte is a token (so any text round-trips and multi-byte UTF-8 characters span several
ids), plus merges for a few common words so that some ids carry several characters.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tallystick.protocol import TokenizerBundle

__all__ = [
    "TINY_CHAT_TEMPLATE",
    "TINY_SPECIAL_TOKENS",
    "tiny_tokenizer_bundle",
    "tiny_tokenizer_json",
]

TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world",
    "is", "a", "of", "and", "to", "in", "it", "you", "what", "capital", "France", "Paris",
)  # fmt: skip

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (ByteLevel's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        pieces = [(word[:i], word[i]) for i in range(1, len(word))]
        pieces.append(("Ġ", word))  # "Ġ" is the byte-level space
        for left, right in pieces:
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
    return vocab, merges


def tiny_tokenizer_json() -> str:
    """The tokenizer.json of the tiny tokenizer (deterministic, no training)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = _vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in TINY_SPECIAL_TOKENS])
    return json.dumps(json.loads(tok.to_str()), sort_keys=True)


def tiny_tokenizer_bundle() -> TokenizerBundle:
    """The tiny tokenizer as a protocol bundle: ChatML template, ``<|im_end|>`` as EOS."""
    from tallystick.protocol import TokenizerBundle

    return TokenizerBundle(
        tokenizer_json=tiny_tokenizer_json(),
        chat_template=TINY_CHAT_TEMPLATE,
        bos_token=None,
        eos_token="<|im_end|>",
    )
