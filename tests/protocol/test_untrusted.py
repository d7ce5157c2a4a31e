"""Another party's JSON and chat templates cannot crash the process (protocol/_untrusted.py).

web3 raises the recursion limit to 100000, so json's C decoder, Jinja's parser, CPython's
compiler and a template macro calling itself recurse until the C stack overflows: a segfault.
The depth rule must never report less than what json.loads would reach; the attacks themselves
run in a subprocess at the end, with web3 imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import jinja2
import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.protocol import (
    MAX_JSON_DEPTH,
    MAX_TAG_OPERATORS,
    MAX_TEMPLATE_NESTING,
    InvalidChatTemplate,
    InvalidJSON,
    ProtocolError,
    TokenCounter,
    TokenizerBundle,
    check_chat_template,
    json_too_deep,
    loads_untrusted,
)
from tokenizers import Tokenizer, models


def brackets(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def depth_of(value: Any) -> int:
    """Nesting depth as json's decoder recurses: one level per array or object."""
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def word_level_bundle(template: str = "{{ messages[0]['content'] }}") -> TokenizerBundle:
    tok = Tokenizer(models.WordLevel({"hi": 0, "[UNK]": 1}, unk_token="[UNK]"))
    return TokenizerBundle(tok.to_str(), template, None, None)


# --- the depth rule ------------------------------------------------------------------------


def test_depth_counts_levels_not_brackets() -> None:
    assert not json_too_deep(brackets(MAX_JSON_DEPTH))
    assert json_too_deep(brackets(MAX_JSON_DEPTH + 1))
    assert json_too_deep("{" * 40 + "[" * 40)  # unclosed: json recurses before it fails
    assert json_too_deep('{"a":' * 65 + "1" + "}" * 65)
    assert not json_too_deep(json.dumps([[1]] * 10_000))  # 20,000 openers, depth 2
    assert not json_too_deep("]" * 1000 + "[" * 64)  # closers first: still 64 deep at most
    assert json_too_deep(brackets(3), limit=2) and not json_too_deep(brackets(2), limit=2)
    assert not json_too_deep("") and not json_too_deep(b"")


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"t": "[{" * 10_000}),  # brackets in a string
        json.dumps({"t": '\\"[[[[' * 100}),  # escaped backslash and quote, then brackets
        json.dumps(["\\" * 7 + '"[' * 100, "\\\\", '"']),  # runs of backslashes
        json.dumps({"é🎉[": ["ü[" * 100, "\u005b" * 100]}, ensure_ascii=False),  # non-ASCII
        json.dumps({"k": "\u2028[" * 100}, ensure_ascii=True),  # \u escapes
    ],
)
def test_brackets_inside_strings_do_not_count(text: str) -> None:
    assert depth_of(json.loads(text)) <= 2
    assert not json_too_deep(text) and not json_too_deep(text.encode())


@pytest.mark.parametrize(
    "text",
    [
        '{"a": "x\\"", "b": ' + brackets(100) + "}",  # an escaped quote does not end the string
        '["\\\\", ' + brackets(100) + "]",  # an escaped backslash does not escape the quote
        '["\\\\\\"", ' + brackets(100) + "]",
        '["é", "🎉", ' + brackets(100) + "]",
        '"' + '\\"' * 10 + '"' + brackets(100),
    ],
)
def test_strings_do_not_hide_nesting_after_them(text: str) -> None:
    assert json_too_deep(text) and json_too_deep(text.encode())


def test_utf16_json_is_checked_as_the_text_json_decodes_it_to() -> None:
    # json.loads(bytes) reads UTF-16: "∀" (U+2200) carries a '"' byte and "嵝" (U+5D5D) two ']'
    # bytes, so a byte-level scan would count 200 closers inside a string and then miss the
    # real depth of 151 that follows (no run of openers to give it away).
    text = '["∀' + "嵝" * 100 + '∀",' + "[[]," * 150 + "1" + "]" * 150 + "]"
    data = text.encode("utf-16-le")
    assert depth_of(json.loads(data)) == 152
    assert json_too_deep(data)
    with pytest.raises(InvalidJSON, match="nested deeper than 64"):
        loads_untrusted(data)


def test_a_4_mib_body_is_checked_in_well_under_a_second() -> None:
    for body in (b"[" * (4 << 20), b"[" + b"[1]," * (1 << 20) + b"1]", b"[[]" * (1 << 20)):
        start = time.perf_counter()
        json_too_deep(body)
        assert time.perf_counter() - start < 0.5
    assert json_too_deep(b"[[]" * (1 << 20)) and not json_too_deep(b"[" + b"[1]," * 100 + b"1]")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ é🎉\n\x00a'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\a', max_size=4), children, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, limit=st.integers(0, 12), ascii_only=st.booleans())
def test_depth_rule_agrees_with_the_parsed_value(value: Any, limit: int, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    expected = depth_of(json.loads(text)) > limit
    assert json_too_deep(text, limit) == expected
    assert json_too_deep(text.encode(), limit) == expected


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet='[]{}"\\ ,:1a'))
def test_depth_rule_never_passes_what_json_parses_deeper(text: str) -> None:
    # Arbitrary (mostly malformed) input: whatever json accepts is within the rule.
    try:
        value = json.loads(text)
    except ValueError:
        return
    assert json_too_deep(text, 3) == (depth_of(value) > 3)


# --- loads_untrusted -----------------------------------------------------------------------


def test_loads_untrusted_parses_and_refuses_with_readable_messages() -> None:
    assert loads_untrusted(b'{"a": [1, "]]"]}') == {"a": [1, "]]"]}
    assert loads_untrusted('{"a": 1}', max_bytes=8) == {"a": 1}
    with pytest.raises(InvalidJSON, match=r"^the answer is larger than 7 bytes$"):
        loads_untrusted('{"a": 1}', what="the answer", max_bytes=7)
    with pytest.raises(InvalidJSON, match=r"^the answer is larger than 1 MiB$"):
        loads_untrusted(b" " * ((1 << 20) + 1), what="the answer", max_bytes=1 << 20)
    with pytest.raises(InvalidJSON, match=r"^the record is nested deeper than 64 levels$"):
        loads_untrusted(brackets(200_000), what="the record")
    with pytest.raises(InvalidJSON, match="nested deeper than 3 levels"):
        loads_untrusted(brackets(4), max_depth=3)
    with pytest.raises(InvalidJSON, match=r"^the JSON is not JSON: Expecting value"):
        loads_untrusted(b'{"a": }')
    with pytest.raises(InvalidJSON, match="is not JSON: 'utf-8' codec can't decode"):
        loads_untrusted(b'"\xff"')
    assert issubclass(InvalidJSON, ProtocolError)


# --- chat templates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        brackets(MAX_TEMPLATE_NESTING + 1, "{% if x %}", "{% endif %}"),
        brackets(MAX_TEMPLATE_NESTING + 1, "{% for x in y %}", "{% endfor %}"),
        brackets(MAX_TEMPLATE_NESTING + 1, "{% macro m() %}", "{% endmacro %}"),
        "{{ " + "not " * (MAX_TAG_OPERATORS + 1) + "x }}",
        "{{ " + brackets(MAX_TAG_OPERATORS + 1, "(", ")") + " }}",
        "{{ x" + "+x" * (MAX_TAG_OPERATORS + 1) + " }}",
        "{{ x" + ".a" * (MAX_TAG_OPERATORS + 1) + " }}",
        "{{ " + "a if b else " * (MAX_TAG_OPERATORS // 2 + 1) + "c }}",
    ],
)
def test_templates_past_the_bounds_are_refused(template: str) -> None:
    with pytest.raises(InvalidChatTemplate, match="nests too deeply to compile safely"):
        check_chat_template(template)
    with pytest.raises(InvalidChatTemplate, match="nests too deeply"):
        TokenCounter(word_level_bundle(template))


@pytest.mark.parametrize(
    "template",
    [
        "{% for x in y %}{% if x %}" * 8 + "a" + "{% endif %}{% endfor %}" * 8,
        brackets(MAX_TEMPLATE_NESTING, "{% set x %}", "{% endset %}"),
        "{% set x = 1 %}" * 1000 + "{{ x }}",  # assignments open no block
        "{{ " + "not " * MAX_TAG_OPERATORS + "x }}",
        "{{ " + brackets(MAX_TAG_OPERATORS, "f(", ")") + " }}",
        "{{ " + brackets(MAX_TAG_OPERATORS, "[", "]") + " }}",
        "{{ [" + ", ".join(["1"] * 5000) + "] }}",  # long but flat
        "{{ '{% if %}' ~ '{{' }}{% raw %}{% for %}{% endraw %}",  # delimiters in strings, raw
    ],
)
def test_templates_within_the_bounds_compile(template: str) -> None:
    check_chat_template(template)
    TokenCounter(word_level_bundle(template))


def test_a_template_that_does_not_lex_or_parse_is_refused() -> None:
    with pytest.raises(InvalidChatTemplate, match="does not compile"):
        check_chat_template("{{ (] }}")
    with pytest.raises(InvalidChatTemplate, match="does not compile"):
        TokenCounter(word_level_bundle("{% if x %}"))


@pytest.mark.parametrize("error", [SyntaxError("too many nested"), RecursionError, MemoryError])
def test_what_cpython_refuses_to_compile_is_a_chat_template_error(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    # No template within the bounds makes CPython refuse it (that is the point of the
    # bounds); the translation is still checked, with the compiler failing on purpose.
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(jinja2.Environment, "compile", refuse)
    with pytest.raises(InvalidChatTemplate, match="does not compile"):
        TokenCounter(word_level_bundle("{{ 'a fresh template' }}"))


@pytest.mark.parametrize(
    "template",
    [
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "{% for x in ['a'] recursive %}{{ loop(x) }}{% endfor %}",  # a string iterates itself
        "{% macro f() %}{{ caller() }}{% endmacro %}"
        "{% macro g() %}{% call f() %}{{ g() }}{% endcall %}{% endmacro %}{{ g() }}",
    ],
)
def test_a_template_recursing_while_rendering_is_stopped(template: str) -> None:
    counter = TokenCounter(word_level_bundle(template))
    with pytest.raises(InvalidChatTemplate, match="nests calls deeper than 64"):
        counter.render_chat([{"role": "user", "content": "hi"}])


def test_bounded_recursion_renders() -> None:
    template = (
        "{% macro f(n) %}{% if n > 0 %}({{ f(n - 1) }}){% endif %}{% endmacro %}"
        "{{ f(30) }}{{ f(30) }}"
    )
    counter = TokenCounter(word_level_bundle(template))
    assert counter.render_chat([{"role": "user", "content": "hi"}]) == ("(" * 30 + ")" * 30) * 2


# --- tokenizer bundles ---------------------------------------------------------------------


def test_a_deep_bundle_with_a_matching_hash_is_refused_before_parsing() -> None:
    data = ('{"bos_token":' + brackets(100_000) + "}").encode()
    with pytest.raises(InvalidJSON, match=r"^the tokenizer bundle is nested deeper than 64"):
        TokenizerBundle.from_bytes(data, expected_hash=keccak(data))


def test_a_bundle_with_a_deep_template_is_refused_by_the_counter() -> None:
    evil = replace(word_level_bundle(), chat_template="{{ " + "not " * 5000 + "x }}")
    bundle = TokenizerBundle.from_bytes(evil.canonical_bytes(), evil.hash())  # parses fine
    with pytest.raises(InvalidChatTemplate, match="nests too deeply"):
        TokenCounter(bundle)


# --- the process survives the real attacks -------------------------------------------------

_ATTACKS = """
import sys
import web3  # raises the recursion limit: the condition of the crash
from dataclasses import replace
from eth_utils import keccak
from tallystick.protocol import InvalidChatTemplate, InvalidJSON, TokenCounter, TokenizerBundle
from tallystick.protocol import loads_untrusted
from tokenizers import Tokenizer, models

assert sys.getrecursionlimit() >= 100000
tok = Tokenizer(models.WordLevel({"hi": 0, "[UNK]": 1}, unk_token="[UNK]")).to_str()
plain = TokenizerBundle(tok, "{{ messages[0]['content'] }}", None, None)
deep = ('{"bos_token":' + "[" * 200_000 + "]" * 200_000 + "}").encode()
utf16 = '["\\u2200' + "\\u5d5d" * 100_000 + '\\u2200",' + "[[]," * 200_000 + "1" + "]" * 200_001
templates = {
    "not": "{{ " + "not " * 5000 + "x }}",
    "if": "{% if x %}" * 3000 + "{% endif %}" * 3000,
    "parens": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
}
try:
    TokenizerBundle.from_bytes(deep, keccak(deep))
except InvalidJSON as exc:
    print("refused json:", exc)
try:
    loads_untrusted(utf16.encode("utf-16-le"))
except InvalidJSON as exc:
    print("refused json:", exc)
for name, template in templates.items():
    evil = replace(plain, chat_template=template)
    try:
        TokenCounter(TokenizerBundle.from_bytes(evil.canonical_bytes(), evil.hash()))
    except InvalidChatTemplate as exc:
        print("refused template:", name, exc)
macro = replace(plain, chat_template="{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
try:
    TokenCounter(macro).chat_prompt_ids([{"role": "user", "content": "hi"}])
except InvalidChatTemplate as exc:
    print("refused render:", exc)
print("alive")
"""


def test_the_attacks_are_refused_and_the_process_survives() -> None:
    command = [sys.executable, "-c", _ATTACKS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    out = done.stdout
    assert out.count("refused json:") == 2 and out.count("refused template:") == 3, out
    assert "refused render:" in out and out.strip().endswith("alive"), out
