// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @notice Per-token payment channels paid against client-signed cumulative receipts.
/// See docs/protocol.md §3-§5 and §7.2.
interface ITallyEscrow {
    enum Status {
        None,
        Open,
        Closing,
        Closed
    }

    /// @dev EIP-712: Receipt(bytes32 channelId,uint64 inputTokens,uint64 outputTokens,bytes32 usageRoot)
    struct Receipt {
        bytes32 channelId;
        uint64 inputTokens;
        uint64 outputTokens;
        bytes32 usageRoot;
    }

    /// @dev The view of a channel; storage packs it into four slots.
    struct ChannelView {
        address client;
        address provider;
        address token;
        Status status;
        uint96 inputPricePerM;
        uint96 outputPricePerM;
        uint96 deposit;
        uint96 paid;
        uint64 inputTokens;
        uint64 outputTokens;
        uint32 closesAt;
        address sessionKey;
    }

    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed client,
        address indexed provider,
        bytes32 modelId,
        address token,
        uint96 deposit,
        uint96 inputPricePerM,
        uint96 outputPricePerM
    );
    event ChannelToppedUp(bytes32 indexed channelId, uint96 amount, uint96 deposit);
    event SessionKeyAuthorized(bytes32 indexed channelId, address indexed sessionKey);
    event ReceiptClaimed(
        bytes32 indexed channelId, uint64 inputTokens, uint64 outputTokens, bytes32 usageRoot, uint96 amount
    );
    event ReceiptSkipped(uint256 index, bytes32 indexed channelId, bytes reason);
    event CloseRequested(bytes32 indexed channelId, uint32 closesAt);
    event ChannelClosed(bytes32 indexed channelId, uint96 paid, uint96 refund);
    event Withdrawn(address indexed provider, address indexed token, address to, uint256 amount);

    error EscrowChannelNotFound(bytes32 channelId);
    error EscrowChannelNotOpen(bytes32 channelId, Status status);
    error EscrowChannelClosed(bytes32 channelId);
    error EscrowNotClient(address caller, address client);
    error EscrowZeroAmount();
    error EscrowAmountTooLarge(uint256 amount);
    error EscrowWrongValue(uint256 sent, uint256 expected);
    error EscrowFeeOnTransfer(address token, uint256 expected, uint256 received);
    error EscrowInvalidSignature(bytes32 channelId);
    error EscrowInvalidSigner(address signer, address client);
    error EscrowInvalidProviderSigner(address signer, address provider);
    error EscrowTotalsDecreased(uint64 inputTokens, uint64 outputTokens, uint64 previousInput, uint64 previousOutput);
    error EscrowReceiptNotNewer(uint64 inputTokens, uint64 outputTokens);
    error EscrowChallengeExpired(bytes32 channelId, uint32 closesAt);
    error EscrowChallengeNotOver(bytes32 channelId, uint32 closesAt);
    error EscrowLengthMismatch(uint256 receipts, uint256 signatures);
    error EscrowNothingToWithdraw(address provider, address token);
    error EscrowEthTransferFailed(address to, uint256 amount);
    /// @dev The registry quoted an output price that does not fit the channel's packed storage (uint88).
    /// `ProviderRegistry` refuses such listings; the escrow still checks, as it trusts no registry to.
    error EscrowPriceTooLarge(uint256 outputPricePerM);
    /// @dev The listing's price at `open` is above the client's limit (e.g. raised in the block before).
    error EscrowPriceAboveLimit(
        uint96 inputPricePerM, uint96 outputPricePerM, uint96 maxInputPricePerM, uint96 maxOutputPricePerM
    );
    error EscrowChannelNotClosing(bytes32 channelId, Status status);
    error EscrowZeroRecipient();

    /// @notice Escrows `amount` and snapshots the listing's prices, refused with EscrowPriceAboveLimit when
    /// either is above the client's limit: pass the prices you were quoted, so a price raised between the
    /// quote and this transaction cannot reach the channel (type(uint96).max means no limit).
    function open(
        address provider,
        bytes32 modelId,
        uint96 amount,
        address sessionKey,
        uint96 maxInputPricePerM,
        uint96 maxOutputPricePerM
    ) external payable returns (bytes32 channelId);
    function topUp(bytes32 channelId, uint96 amount) external payable;
    function authorizeSessionKey(bytes32 channelId, address sessionKey) external;
    function claim(Receipt calldata receipt, bytes calldata signature) external returns (uint96 amount);
    function claimMany(Receipt[] calldata receipts, bytes[] calldata signatures) external returns (uint256 total);
    function closeCooperative(Receipt calldata receipt, bytes calldata clientSignature, bytes calldata providerSignature)
        external;
    function requestClose(bytes32 channelId) external;
    function finalize(bytes32 channelId) external;
    function withdraw(address token, address to) external returns (uint256 amount);

    function registry() external view returns (address);
    function challengePeriod() external view returns (uint32);
    function channelCount() external view returns (uint256);
    function getChannel(bytes32 channelId) external view returns (ChannelView memory);
    function earnings(address provider, address token) external view returns (uint256);
    function costOf(bytes32 channelId, uint64 inputTokens, uint64 outputTokens) external view returns (uint256);
    function receiptDigest(Receipt calldata receipt) external view returns (bytes32);
    function RECEIPT_TYPEHASH() external view returns (bytes32);
}
