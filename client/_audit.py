"""The audit (docs/protocol.md §10.4): re-run one prefill with reference weights and check that
every completion id is the one the seeded sampler must pick, and that the provider's logit
proof matches the recomputed logits.

``AuditCase`` is self-contained (the provider-signed record, the prompt and completion ids,
the proof, what the client asked for and the domain), so anyone holding the weights can
re-check a published report with ``audit(case, Reference.load(weights))``.
Needs torch and transformers (``pip install 'tallystick[node]'``); the rest of the SDK does not.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tallystick.protocol import (
    PROOF_SCALE,
    Domain,
    ProtocolError,
    SignedUsageRecord,
    gumbel_noise,
    hash_proof,
    hash_token_ids,
    model_hash,
    params_units,
    recover_usage_record_signer,
)
from tallystick.protocol._fidelity import nucleus

from ._errors import ClientError

if TYPE_CHECKING:
    import torch

__all__ = ["AuditCase", "AuditReport", "AuditTolerance", "Reference", "audit"]


GREEDY_TOLERANCE = 1.0


@dataclass(frozen=True)
class AuditTolerance:
    """How far an honest provider's logits may sit from the auditor's (measured, §10.4)."""

    # |committed logit - recomputed logit|: honest max 0.0005 (the proof's rounding) in 320
    # generations through a real node (threads 1/2, batch 1/4/8, streamed or not, T 0/0.7);
    # the smallest among substituted weights 0.52 (1% noise). 0.06 sits between (§10.4).
    proof: float = 0.06
    # how far the chosen id's score (logit + T * noise) may fall below the best one
    margin: float = 0.06
    # a top_p boundary closer than this in cumulative probability is not held against anyone
    top_p: float = 1e-3
    # A greedy audit (a temperature-0 record without a logit proof, from a node that
    # advertises audit "greedy": llama.cpp): how far below the reference's best logit the
    # id's logit may be. llama.cpp's quantised kernels put it at most 0.55 below (§10.5).
    greedy: float = GREEDY_TOLERANCE


@dataclass(frozen=True)
class AuditCase:
    """Everything an audit needs; ``to_json``/``from_json`` make it a report's evidence."""

    model: str
    provider: str  # the address the record must be signed by
    chain_id: int
    escrow: str
    signed: SignedUsageRecord
    prompt_ids: list[int]
    completion_ids: list[int]
    proof: list[int]
    seed: int  # what the client asked for
    temperature: float
    top_p: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "chainId": self.chain_id,
            "escrow": self.escrow,
            **self.signed.to_json(),
            "prompt_ids": self.prompt_ids,
            "completion_ids": self.completion_ids,
            "proof": self.proof,
            "request": {"seed": self.seed, "temperature": self.temperature, "top_p": self.top_p},
        }

    @classmethod
    def from_json(cls, obj: Any) -> AuditCase:
        try:
            request = obj["request"]
            return cls(
                model=str(obj["model"]),
                provider=str(obj["provider"]),
                chain_id=int(obj["chainId"]),
                escrow=str(obj["escrow"]),
                signed=SignedUsageRecord.from_json(obj),
                prompt_ids=[int(i) for i in obj["prompt_ids"]],
                completion_ids=[int(i) for i in obj["completion_ids"]],
                proof=[int(v) for v in obj["proof"]],
                seed=int(request["seed"]),
                temperature=float(request["temperature"]),
                top_p=float(request.get("top_p", 1.0)),
            )
        except (KeyError, TypeError, ValueError, ProtocolError) as exc:
            raise ClientError(f"not an audit case: {exc}") from exc


@dataclass(frozen=True)
class AuditReport:
    """The verdict ("pass", "fail"; "unverifiable" when the weights do not match) and figures."""

    verdict: str
    reasons: list[str]
    figures: dict[str, Any]
    case: AuditCase = field(repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": self.reasons,
            "figures": self.figures,
            "case": self.case.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Any) -> AuditReport:
        return cls(
            str(obj["verdict"]),
            list(obj["reasons"]),
            dict(obj["figures"]),
            AuditCase.from_json(obj["case"]),
        )


class Reference:
    """Local reference weights: the model, its modelHash, one prefill at a time."""

    def __init__(self, model: Any, model_hash: bytes, *, threads: int | None = None) -> None:
        self.model = model
        self.model_hash = model_hash
        self.threads = threads

    @classmethod
    def load(cls, source: str | Path, *, threads: int | None = None) -> Reference:
        """Load a local weights file or folder and hash it as §10.1 defines."""
        from tallystick.node.engines import load_model

        digest = model_hash(source)
        return cls(load_model(str(source)).model, digest, threads=threads)

    def logits(self, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
        """(n, vocab) float32: row i is what predicted ``completion_ids[i]``."""
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        n = len(completion_ids)
        ids = torch.tensor([prompt_ids + completion_ids[:-1]], dtype=torch.long)  # (1, len)
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=False, logits_to_keep=n)
        return out.logits[0, -n:, :].float()  # (n, vocab)


def audit(
    case: AuditCase, reference: Reference, tolerance: AuditTolerance | None = None
) -> AuditReport:
    """Check ``case`` against ``reference``; never raises for a provider's fault."""
    tol = tolerance or AuditTolerance()
    started = time.perf_counter()
    if case.signed.record.model_hash != reference.model_hash:
        reason = (
            f"the record names modelHash 0x{case.signed.record.model_hash.hex()}, the reference "
            f"weights hash to 0x{reference.model_hash.hex()}"
        )
        return AuditReport("unverifiable", [reason], {}, case)
    greedy = not case.proof
    if greedy and params_units(case.temperature) != 0:
        reason = "no logit proof and a temperature above 0: nothing replays the node's sampler"
        return AuditReport("unverifiable", [reason], {}, case)
    reasons = _check_record(case)
    figures: dict[str, Any] = {"tokens": len(case.completion_ids)}
    figures["mode"] = "greedy" if greedy else "seeded"
    if not reasons and case.completion_ids:
        logits = reference.logits(case.prompt_ids, case.completion_ids)
        check = _check_greedy if greedy else _check_tokens
        token_reasons, token_figures = check(case, logits, tol)
        reasons += token_reasons
        figures.update(token_figures)
    figures["audit_s"] = round(time.perf_counter() - started, 4)
    figures["tolerance"] = asdict(tol)
    return AuditReport("fail" if reasons else "pass", reasons, figures, case)


def _check_record(case: AuditCase) -> list[str]:
    """The signed statement itself: signer, hashes, counts and the asked-for sampling."""
    r = case.signed.record
    reasons = []
    try:
        signer = recover_usage_record_signer(Domain(case.chain_id, case.escrow), case.signed)
    except ProtocolError as exc:
        signer = f"nobody ({exc})"
    if signer.lower() != case.provider.lower():
        reasons.append(f"the record is signed by {signer}, not by the provider {case.provider}")
    checks = [
        ("promptHash", r.prompt_hash == hash_token_ids(case.prompt_ids)),
        ("completionHash", r.completion_hash == hash_token_ids(case.completion_ids)),
        ("completionTokens", r.completion_tokens == len(case.completion_ids)),
        ("proofHash", r.proof_hash == hash_proof(case.proof)),
        ("seed", r.seed == case.seed),
        ("temperature", r.temperature == params_units(case.temperature)),
        ("topP", r.top_p == params_units(case.top_p)),
    ]
    reasons += [f"the record's {name} does not match the request" for name, ok in checks if not ok]
    if case.proof and len(case.proof) != len(case.completion_ids):
        reasons.append(
            f"the proof has {len(case.proof)} values for {len(case.completion_ids)} completion ids"
        )
    return reasons


def _check_tokens(
    case: AuditCase, logits: torch.Tensor, tol: AuditTolerance
) -> tuple[list[str], dict[str, Any]]:
    """Per position: the proof within ``tol.proof``, the id within ``tol.margin`` of the best."""
    import torch

    ids = torch.tensor(case.completion_ids, dtype=torch.long)  # (n,)
    chosen = logits.gather(1, ids[:, None])[:, 0]  # (n,)
    committed = torch.tensor(case.proof, dtype=torch.float32) / PROOF_SCALE  # (n,)
    proof_err = (chosen - committed).abs()  # (n,)
    margins = torch.tensor([_margin(case, i, row, tol) for i, row in enumerate(logits)])  # (n,)
    bad_proof = int((proof_err > tol.proof + 0.5 / PROOF_SCALE).sum())
    bad_token = int((margins < -tol.margin).sum())
    figures = {
        "proof_failures": bad_proof,
        "token_failures": bad_token,
        "max_proof_error": round(float(proof_err.max()), 5),
        "min_margin": round(float(margins.min()), 5),
    }
    reasons = []
    if bad_proof:
        reasons.append(f"{bad_proof} of {len(ids)} committed logits differ from the reference")
    if bad_token:
        reasons.append(f"{bad_token} of {len(ids)} ids are not the seeded sampler's choice")
    return reasons, figures


def _check_greedy(
    case: AuditCase, logits: torch.Tensor, tol: AuditTolerance
) -> tuple[list[str], dict[str, Any]]:
    """Temperature 0 without a proof: each id's logit within ``tol.greedy`` of the best."""
    import torch

    ids = torch.tensor(case.completion_ids, dtype=torch.long)  # (n,)
    margins = logits.gather(1, ids[:, None])[:, 0] - logits.max(dim=1).values  # (n,)
    bad = int((margins < -tol.greedy).sum())
    figures = {
        "token_failures": bad,
        "argmax_match_rate": round(float((margins >= 0).float().mean()), 5),
        "min_margin": round(float(margins.min()), 5),
    }
    reasons = []
    if bad:
        reasons.append(
            f"{bad} of {len(case.completion_ids)} ids sit more than {tol.greedy} below the "
            "reference's greedy choice"
        )
    return reasons, figures


def _margin(case: AuditCase, position: int, row: torch.Tensor, tol: AuditTolerance) -> float:
    """Score of the chosen id minus the best score (>= 0 when it is the sampler's pick)."""
    import torch

    t = params_units(case.temperature) / 1e6
    top_p = params_units(case.top_p) / 1e6
    choice = case.completion_ids[position]
    if t == 0:
        return float(row[choice] - row.max())
    scores = row + t * gumbel_noise(case.seed, position, row.shape[0])  # (vocab,)
    mine = float(scores[choice])
    if top_p < 1.0:
        # the chosen id must be in the nucleus, the rivals are those surely in it
        if not bool(nucleus(row, t, min(1.0, top_p + tol.top_p))[choice]):
            return float("-inf")
        scores = scores.masked_fill(~nucleus(row, t, max(1e-6, top_p - tol.top_p)), -torch.inf)
    return mine - float(scores.max())
