"""One decoder for logs: a transaction's receipt and an event query both end in ``Event``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from eth_utils import event_abi_to_log_topic, to_checksum_address
from web3 import Web3
from web3._utils.events import get_event_data

from .._abi import load_artifact
from .._revert import ARTIFACTS, decode_revert
from ._translate import rpc
from ._values import Event, SkippedReceipt


@cache
def _event_table() -> dict[bytes, dict[str, Any]]:
    table: dict[bytes, dict[str, Any]] = {}
    for name in ARTIFACTS:
        try:
            abi = load_artifact(name)["abi"]
        except FileNotFoundError:
            continue
        for item in abi:
            if item["type"] == "event" and not item.get("anonymous"):
                table.setdefault(bytes(event_abi_to_log_topic(item)), item)
    return table


def decode_logs(w3: Web3, logs: Sequence[Any]) -> list[Event]:
    """Decode every raw log whose event any artefact declares; others are ignored."""
    events = []
    for log in logs:
        if not log["topics"]:
            continue
        abi = _event_table().get(bytes(log["topics"][0]))
        if abi is not None:
            events.append(event(get_event_data(w3.codec, abi, log)))
    return events


def event(data: Any) -> Event:
    """An ``Event`` from web3's decoded log (``get_event_data``, ``event.get_logs``)."""
    return Event(
        name=data["event"],
        args={k: _plain(v) for k, v in data["args"].items()},
        address=to_checksum_address(data["address"]),
        block_number=int(data["blockNumber"]),
        tx_hash=bytes(data["transactionHash"]),
        log_index=int(data["logIndex"]),
    )


def query(event_type: Any, from_block: int, to_block: Any, filters: dict[str, Any]) -> list[Event]:
    """The events of ``event_type`` (a contract's ``events.X``) in a block range, filtered."""
    with rpc():
        logs = event_type.get_logs(
            argument_filters={k: v for k, v in filters.items() if v is not None} or None,
            from_block=from_block,
            to_block=to_block,
        )
    return [event(log) for log in logs]


def skipped(ev: Event) -> SkippedReceipt:
    """A ``ReceiptSkipped`` event with its reason decoded."""
    return SkippedReceipt(
        index=int(ev.args["index"]),
        channel_id=ev.args["channelId"],
        reason=decode_revert(ev.args["reason"]),
        block_number=ev.block_number,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return bytes(value)  # HexBytes -> bytes, so equality with bytes literals is plain
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return value
