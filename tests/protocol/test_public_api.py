"""tallystick.protocol exposes exactly the documented surface (docs/internals.md)."""

import types

import tallystick.protocol as protocol

DOCUMENTED = {
    # types
    "Domain", "Prices", "Receipt", "SignedReceipt", "UsageRecord", "SignedUsageRecord",
    "RequestAuth", "SignedRequestAuth",
    # wire messages (§8)
    "UsageBill", "ClosingReceipt", "RECEIPT_HEADER",
    # identifiers, pricing, usage chain
    "model_id", "channel_id", "new_salt", "cost_of", "hash_token_ids", "next_usage_root",
    "ZERO_ROOT",
    # amounts in a token's own units
    "TokenInfo", "ETH_INFO", "token_info", "format_amount", "format_price", "parse_amount",
    "AmountSpec",
    # EIP-712
    "receipt_message", "usage_record_message", "request_auth_message", "request_hash",
    "sign_receipt", "sign_usage_record", "sign_request_auth", "recover_receipt_signer",
    "recover_usage_record_signer", "recover_request_auth_signer",
    # tokenizer
    "TokenizerBundle", "TokenCounter",
    # keys (the client's wallet and the node load them alike)
    "account_from_key", "account_from_keystore",
    # chain
    "connect", "Registry", "Escrow", "ProviderInfo", "Listing", "ChannelState", "ChannelStatus",
    "ETH", "TxResult",
    "deploy", "Deployment", "load_artifact", "FailoverHTTPProvider", "rpc_label", "split_rpc_urls",
    "DeployedAddresses", "read_deployment",
    # untrusted input
    "loads_untrusted", "json_too_deep", "check_chat_template", "MAX_JSON_DEPTH", "MAX_JSON_BYTES",
    "MAX_TEMPLATE_NESTING", "MAX_TAG_OPERATORS",
    # proof of the model (§10)
    "model_hash", "gumbel_noise", "params_units", "encode_proof", "decode_proof", "hash_proof",
    "PROOF_SCALE", "SAMPLER",
    # errors
    "TallystickError", "ProtocolError", "InvalidSignature", "InvalidRequestAuth",
    "TokenizerMismatch", "InvalidJSON", "InvalidChatTemplate", "ChainError", "ContractError",
    "ChainUnavailable", "DeploymentNotFound", "InvalidKey",
}  # fmt: skip
EXTRA = {
    "recover_message_signer", "is_loopback",
    "Event", "SkippedReceipt", "Token", "decode_revert", "explain_contract_error",
    "parse_since",
}  # fmt: skip


def test_all_is_exactly_the_public_surface() -> None:
    assert set(protocol.__all__) == DOCUMENTED | EXTRA
    assert len(protocol.__all__) == len(set(protocol.__all__))


def test_every_name_resolves() -> None:
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None, name


def test_nothing_public_is_left_out_of_all() -> None:
    public = {
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(protocol.__all__) | {"annotations"}
