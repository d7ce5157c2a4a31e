"""``tallystick.protocol``: the shared language of client, node and contracts.

EIP-712 types and signatures, pricing, the usage chain, request signatures, tokenizer bundles and
token counting, contract artefacts and typed chain bindings. See docs/protocol.md (the
normative spec) and docs/internals.md (this surface).
"""

from ._abi import load_artifact
from ._addresses import DeployedAddresses, read_deployment
from ._bindings import (
    ETH,
    ChannelState,
    ChannelStatus,
    Escrow,
    Event,
    Listing,
    ProviderInfo,
    Registry,
    SkippedReceipt,
    Token,
    TxResult,
    connect,
)
from ._deploy import Deployment, deploy
from ._eip712 import (
    receipt_message,
    recover_message_signer,
    recover_receipt_signer,
    recover_request_auth_signer,
    recover_usage_record_signer,
    request_auth_message,
    sign_receipt,
    sign_request_auth,
    sign_usage_record,
    usage_record_message,
)
from ._endpoint import is_loopback
from ._errors import (
    ChainError,
    ChainUnavailable,
    ContractError,
    DeploymentNotFound,
    InvalidChatTemplate,
    InvalidJSON,
    InvalidKey,
    InvalidRequestAuth,
    InvalidSignature,
    ProtocolError,
    TallystickError,
    TokenizerMismatch,
)
from ._explain import explain_contract_error
from ._fidelity import (
    PROOF_SCALE,
    SAMPLER,
    decode_proof,
    encode_proof,
    gumbel_noise,
    hash_proof,
    model_hash,
    params_units,
)
from ._ids import channel_id, model_id, new_salt
from ._keys import account_from_key, account_from_keystore
from ._messages import ClosingReceipt, UsageBill
from ._pricing import cost_of
from ._request_auth import RequestAuth, SignedRequestAuth, request_hash
from ._revert import decode_revert
from ._rpc import FailoverHTTPProvider, rpc_label, split_rpc_urls
from ._since import parse_since
from ._tokenizer import TokenCounter, TokenizerBundle
from ._types import RECEIPT_HEADER, Domain, Prices, Receipt, SignedReceipt
from ._units import (
    ETH_INFO,
    AmountSpec,
    TokenInfo,
    format_amount,
    format_price,
    parse_amount,
    token_info,
)
from ._untrusted import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_TAG_OPERATORS,
    MAX_TEMPLATE_NESTING,
    check_chat_template,
    json_too_deep,
    loads_untrusted,
)
from ._usage import (
    ZERO_ROOT,
    SignedUsageRecord,
    UsageRecord,
    hash_token_ids,
    next_usage_root,
)

__all__ = [
    "ETH",
    "ETH_INFO",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TAG_OPERATORS",
    "MAX_TEMPLATE_NESTING",
    "PROOF_SCALE",
    "RECEIPT_HEADER",
    "SAMPLER",
    "ZERO_ROOT",
    "AmountSpec",
    "ChainError",
    "ChainUnavailable",
    "ChannelState",
    "ChannelStatus",
    "ClosingReceipt",
    "ContractError",
    "DeployedAddresses",
    "Deployment",
    "DeploymentNotFound",
    "Domain",
    "Escrow",
    "Event",
    "FailoverHTTPProvider",
    "InvalidChatTemplate",
    "InvalidJSON",
    "InvalidKey",
    "InvalidRequestAuth",
    "InvalidSignature",
    "Listing",
    "Prices",
    "ProtocolError",
    "ProviderInfo",
    "Receipt",
    "Registry",
    "RequestAuth",
    "SignedReceipt",
    "SignedRequestAuth",
    "SignedUsageRecord",
    "SkippedReceipt",
    "TallystickError",
    "Token",
    "TokenCounter",
    "TokenInfo",
    "TokenizerBundle",
    "TokenizerMismatch",
    "TxResult",
    "UsageBill",
    "UsageRecord",
    "account_from_key",
    "account_from_keystore",
    "channel_id",
    "check_chat_template",
    "connect",
    "cost_of",
    "decode_proof",
    "decode_revert",
    "deploy",
    "encode_proof",
    "explain_contract_error",
    "format_amount",
    "format_price",
    "gumbel_noise",
    "hash_proof",
    "hash_token_ids",
    "is_loopback",
    "json_too_deep",
    "load_artifact",
    "loads_untrusted",
    "model_hash",
    "model_id",
    "new_salt",
    "next_usage_root",
    "params_units",
    "parse_amount",
    "parse_since",
    "read_deployment",
    "receipt_message",
    "recover_message_signer",
    "recover_receipt_signer",
    "recover_request_auth_signer",
    "recover_usage_record_signer",
    "request_auth_message",
    "request_hash",
    "rpc_label",
    "sign_receipt",
    "sign_request_auth",
    "sign_usage_record",
    "split_rpc_urls",
    "token_info",
    "usage_record_message",
]
