"""Proof of the model (docs/protocol.md §10) on the real SmolLM2 weights, a smaller run of the
fidelity bench: honest generations across batch sizes, thread counts and temperatures all
pass their audit, and every substitution the issue names is caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.model

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def harness(model_dir: Path, model_file: str) -> Any:
    from bench.fidelity import Harness

    return Harness(model_dir / model_file)


# Two torch threads crawl when the box's cores are busy (docs/internals.md): a longer timeout.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("batch", "threads"), [(1, 1), (4, 2), (8, 1)])
def test_honest_generations_pass_their_audit(harness: Any, batch: int, threads: int) -> None:
    from bench.fidelity import prompts

    engine = harness.engine(threads=threads)
    for i, temperature in enumerate((0.0, 0.7)):
        ids = prompts(harness.counter, batch, 40 * batch + 10 * i)
        for gen in harness.run(engine, ids, batch, 300 + batch, temperature, 16):
            report = harness.audit(gen)
            assert report.verdict == "pass", report.to_json()
            assert report.figures["tokens"] == len(gen.completion_ids) > 0


@pytest.mark.parametrize("kind", ["round4", "perturb", "drop_layer", "random_init"])
def test_substituted_weights_fail_every_audit(harness: Any, kind: str) -> None:
    from bench.fidelity import prompts

    engine = harness.engine(kind)
    for i, temperature in enumerate((0.0, 0.7)):
        ids = prompts(harness.counter, 3, 600 + 3 * i)
        for gen in harness.run(engine, ids, 3, 800, temperature, MAX_TOKENS):
            report = harness.audit(gen)
            assert report.verdict == "fail", (kind, report.figures)
            assert report.figures["proof_failures"] > 0


def test_a_temperature_other_than_the_requested_one_fails(harness: Any) -> None:
    from bench.fidelity import prompts

    engine = harness.engine()
    for requested in (0.0, 0.7):
        ids = prompts(harness.counter, 3, 700)
        for gen in harness.run(engine, ids, 3, 900, requested + 0.3, MAX_TOKENS):
            report = harness.audit(gen, claimed_temperature=requested)
            assert report.verdict == "fail", report.figures
            assert report.figures["token_failures"] > 0


def test_a_failed_report_re_checks_from_its_json_alone(harness: Any) -> None:
    from tallystick.client import AuditReport, audit

    from bench.fidelity import prompts

    (gen,) = harness.run(harness.engine("perturb"), prompts(harness.counter, 1), 1, 5, 0.7, 16)
    report = harness.audit(gen)
    again = audit(AuditReport.from_json(report.to_json()).case, harness.reference)
    assert (report.verdict, again.verdict) == ("fail", "fail")
    assert again.figures["proof_failures"] == report.figures["proof_failures"]


def test_weights_that_do_not_match_the_record_make_the_audit_unverifiable(harness: Any) -> None:
    from tallystick.client import Reference, audit

    from bench.fidelity import prompts

    (gen,) = harness.run(harness.engine(), prompts(harness.counter, 1), 1, 6, 0.0, 8)
    case = harness.audit(gen).case
    other = Reference(harness.reference.model, b"\x01" * 32)
    assert audit(case, other).verdict == "unverifiable"
