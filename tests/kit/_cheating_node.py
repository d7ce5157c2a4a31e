"""``tallystick-node`` that pads its bills: the real node process with its own functions wrapped.

The shipped CLI with FakeEngine (``_fake_node.py``), where ``TALLY_CHEAT`` names one way a
provider can bill ids the client never received as text (issue 11 A). Each cheat wraps a
function of the node itself, so everything else (the gate, the ledger, signing, uvicorn, the
chain) is the real code path, and the bills it sends are signed by the provider's key:

- ``special_ids``: 5 special ids (``<|endoftext|>``, which decodes to "") before the last id;
- ``big_ids``: 5 ids at or above the vocabulary size (they decode to "" too);
- ``split``: every merged id split into its byte pieces ("the" as "t" + "h" + "e");
- ``drain``: ignores the client's max_tokens and the credit rule and pads the bill with
  special ids until it costs twice the deposit;
- ``over_deposit``: ignores max_tokens and the credit rule and generates its whole reply
  (``TALLY_FAKE_REPLY``), billing exactly the ids it sent, however much they cost;
- ``end_early``: streams 3 chunks, then ends the stream cleanly without the rest, the final
  record and ``[DONE]``; bills every id it generated;
- ``end_early_fair``: the same, but bills only the ids it sent;
- ``withhold``: the answer is withheld: a plain request gets ``{}``, a stream its headers and
  first (empty) chunk only; the record of the whole generation is signed and kept in the
  ledger, for the client to fetch.

``TALLY_CHEAT_LOG`` (a file) receives one JSON line per completion request: the body's
``max_tokens``/``max_completion_tokens`` and the limit the node applied.
"""

from __future__ import annotations

import json
import os
from typing import Any

CHEAT = os.environ.get("TALLY_CHEAT", "")


def _log(entry: dict[str, Any]) -> None:
    path = os.environ.get("TALLY_CHEAT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _endoftext(counter: Any) -> int:
    """The lowest special id (``<|endoftext|>``), read from the tokenizer itself."""
    from tokenizers import Tokenizer

    added = Tokenizer.from_str(counter.bundle.tokenizer_json).get_added_tokens_decoder()
    return min(i for i, token in added.items() if token.special)


def _pad_ids(ids: list[int], counter: Any, deposit_ids: int) -> list[int]:
    """The cheat's completion ids for the ``ids`` really generated."""
    head, tail = ids[:-1], ids[-1:]
    if CHEAT == "special_ids":
        return [*head, *[_endoftext(counter)] * 5, *tail]
    if CHEAT == "big_ids":
        return [*head, *range(counter.vocab_size, counter.vocab_size + 5), *tail]
    if CHEAT == "split":
        out: list[int] = []
        for i in ids:
            text = counter.decode([i])
            out += [b for b in text.encode()] if len(text) > 1 else [i]
        return out
    if CHEAT == "drain":
        return [*head, *[_endoftext(counter)] * deposit_ids, *tail]
    return ids


def _wrap_gate() -> None:
    from tallystick.node import _gate

    finalize = _gate.PaymentGate.finalize
    shortfall = _gate.PaymentGate._shortfall

    def padded(self: Any, reservation: Any, model: str, prompt_ids: Any, ids: Any, *a: Any) -> Any:
        channel = reservation.channel
        # Enough special ids to bill twice the deposit at the output price.
        deposit_ids = 2 * channel.deposit * 1_000_000 // max(channel.prices.output_per_m, 1)
        counter = _COUNTER[0]
        return finalize(
            self, reservation, model, prompt_ids, _pad_ids(ids, counter, deposit_ids), *a
        )

    def no_credit_check(self: Any, *args: Any) -> int:
        return 0 if CHEAT in ("drain", "over_deposit") else shortfall(self, *args)

    _gate.PaymentGate.finalize = padded  # type: ignore[method-assign]
    _gate.PaymentGate._shortfall = no_credit_check  # type: ignore[method-assign]


_COUNTER: list[Any] = []


def _wrap_serving() -> None:
    from tallystick.node import _admission, _openai, _routes, _streaming

    max_tokens = _admission._max_tokens

    def logged_max_tokens(node: Any, request: Any, *args: Any) -> int:
        applied = max_tokens(node, request, *args)
        body = request.model_dump()
        _log(
            {
                "max_tokens": body.get("max_tokens"),
                "max_completion_tokens": body.get("max_completion_tokens"),
                "applied": applied,
            }
        )
        _COUNTER[:] = [node.engine.counter]
        if CHEAT in ("drain", "over_deposit"):
            return 10_000  # whatever the client asked for
        return applied

    _admission._max_tokens = logged_max_tokens

    answer_plain = _streaming.answer_plain

    async def ended_early(done: Any, send_chunk: Any) -> None:
        if not await send_chunk(_openai.delta_chunk(done, "", None, first=True)):
            await done.close_engine()
            done.abandon()
            return
        sent, chunks = 0, 0 if CHEAT == "withhold" else 3
        async for event in done.stream:
            if sent < chunks:
                await send_chunk(_openai.delta_chunk(done, event.text, None))
                sent += 1
                done.add(event)
            elif CHEAT != "end_early_fair":
                done.add(event)  # billed, never sent
        await done.close_engine()
        done.finish()  # the record is signed and stored; the stream just ends here

    async def withheld(done: Any, receive: Any) -> dict[str, Any]:
        await answer_plain(done, receive)  # generated, signed and kept in the ledger
        return {}

    if CHEAT.startswith("end_early") or CHEAT == "withhold":
        _routes.run_stream = ended_early
    if CHEAT == "withhold":
        _routes.answer_plain = withheld


def main() -> None:
    from _fake_node import main as fake_main

    _wrap_gate()
    _wrap_serving()
    fake_main()


if __name__ == "__main__":
    main()
