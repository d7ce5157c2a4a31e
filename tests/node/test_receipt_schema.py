"""/openapi.json describes the receipt body with ReceiptBody; the node reads it with the
protocol's SignedReceipt.from_json. The description must not drift from the parser."""

from __future__ import annotations

from eth_account import Account
from tallystick.node._schemas import ReceiptBody
from tallystick.protocol import Domain, Receipt, SignedReceipt, sign_receipt

DOMAIN = Domain(31337, "0x" + "ab" * 20)


def test_the_documented_receipt_is_the_wire_form_the_protocol_writes() -> None:
    signed = sign_receipt(
        Account.from_key("0x" + "11" * 32), DOMAIN, Receipt(b"\x01" * 32, 7, 3, b"\x02" * 32)
    )
    wire = signed.to_json()
    assert list(ReceiptBody.model_fields) == list(wire)
    assert ReceiptBody.model_validate(wire).model_dump() == wire
    assert SignedReceipt.from_json(wire) == signed
