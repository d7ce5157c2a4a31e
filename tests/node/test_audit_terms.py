"""What a node tells clients an audit of its records can check (docs/protocol.md §10.5)."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from tallystick.node._routes import _audit_terms
from tallystick.node.engines import UpstreamEngine, tiny_tokenizer_bundle

WEIGHTS = b"\x05" * 32


def test_the_in_process_seeded_engine_is_audited_on_every_record() -> None:
    engine = SimpleNamespace(model_hash=WEIGHTS, sampler="gumbel-keccak-mt19937-v1")
    assert _audit_terms(engine)["audit"] == "seeded"
    assert _audit_terms(SimpleNamespace(model_hash=None, sampler="x"))["audit"] == "none"


@pytest.mark.parametrize(("llamacpp", "terms"), [({"n_ctx": 8192}, "greedy"), (None, "none")])
def test_an_upstream_is_greedy_only_in_front_of_llamacpps_native_ids(
    llamacpp: dict | None, terms: str
) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    bundle = tiny_tokenizer_bundle()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bundle.tokenizer_json), eos_token=bundle.eos_token
    )
    tokenizer.chat_template = bundle.chat_template
    engine = UpstreamEngine(
        "http://upstream.test", tokenizer, model_name="m", context_length=2048,
        transport=httpx.MockTransport(lambda r: httpx.Response(500)),
    )  # fmt: skip
    engine.llamacpp = llamacpp  # what start() learns from /props
    engine.model_hash = WEIGHTS  # type: ignore[attr-defined]  # given --model FILE
    got = _audit_terms(engine)
    assert (got["audit"], got["sampler"]) == (terms, None)
    engine.model_hash = None  # type: ignore[attr-defined]  # no weights named: nothing to audit
    assert _audit_terms(engine)["audit"] == "none"
