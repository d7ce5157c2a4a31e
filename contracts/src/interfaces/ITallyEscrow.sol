// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/**
 * @dev Per-token payment channels paid against client-signed cumulative receipts
 * (docs/protocol.md §3-§5, §7.2 and §9).
 *
 * A client opens a channel to one provider for one model, escrowing a deposit in the payment token
 * it accepted and snapshotting the listing's prices. Every request ends in a cumulative `Receipt`
 * the client (or its session key) signs; only the channel's provider claims receipts, and a claim
 * pays `min(cost, deposit) - paid`. A channel closes cooperatively (a final receipt signed by both,
 * sent by either party) or unilaterally (`requestClose` by the client, then `finalize` once the
 * challenge period is over, during which the provider can still claim).
 */
interface ITallyEscrow {
    /**
     * @dev A channel's life: `None -> Open -> (Closing ->) Closed`. A Closed channel's id is never reused.
     */
    enum Status {
        None,
        Open,
        Closing,
        Closed
    }

    /**
     * @dev The cumulative totals of a channel since it opened, and the root of its usage chain (§5).
     * EIP-712 type: `Receipt(bytes32 channelId,uint64 inputTokens,uint64 outputTokens,bytes32 usageRoot)`.
     */
    struct Receipt {
        bytes32 channelId;
        uint64 inputTokens;
        uint64 outputTokens;
        bytes32 usageRoot;
    }

    /**
     * @dev The view of a channel returned by {getChannel}; storage packs it into four slots.
     * `inputTokens`/`outputTokens` are the totals of the last claimed receipt; `closesAt` is zero
     * until {requestClose}; `sessionKey` is the current key (zero when none).
     */
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

    /**
     * @dev Emitted when `client` opens `channelId` to `provider` for `modelId`, escrowing `deposit` of
     * `token` (zero: ETH). The snapshot prices never change: {getChannel} returns them.
     */
    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed client,
        address indexed provider,
        bytes32 modelId,
        address token,
        uint96 deposit
    );

    /**
     * @dev Emitted when the client adds `amount` to the channel's deposit, which becomes `deposit`.
     */
    event ChannelToppedUp(bytes32 indexed channelId, uint96 amount, uint96 deposit);

    /**
     * @dev Emitted when `sessionKey` becomes the channel's session key (zero: none), at {open} or by
     * {authorizeSessionKey}.
     */
    event SessionKeyAuthorized(bytes32 indexed channelId, address indexed sessionKey);

    /**
     * @dev Emitted when {authorizeSessionKey} replaces or revokes `sessionKey`. Its signatures stay valid
     * for claims until `validUntil` (one challenge period after the change), so the provider can still
     * claim what the key countersigned: the provider's node must claim them before then.
     */
    event SessionKeyRetired(bytes32 indexed channelId, address indexed sessionKey, uint32 validUntil);

    /**
     * @dev Emitted when the provider is credited `amount` for the receipt with these totals and `usageRoot`.
     */
    event ReceiptClaimed(
        bytes32 indexed channelId, uint64 inputTokens, uint64 outputTokens, bytes32 usageRoot, uint96 amount
    );

    /**
     * @dev Emitted by {claimMany} for the receipt at `index` that it did not claim; `reason` is the
     * ABI-encoded custom error {claim} would revert with.
     */
    event ReceiptSkipped(uint256 index, bytes32 indexed channelId, bytes reason);

    /**
     * @dev Emitted when the client starts the challenge period of `channelId`, which ends at `closesAt`.
     */
    event CloseRequested(bytes32 indexed channelId, uint32 closesAt);

    /**
     * @dev Emitted when `channelId` closes: the provider was paid `paid` in all and `refund` went back
     * to the client.
     */
    event ChannelClosed(bytes32 indexed channelId, uint96 paid, uint96 refund);

    /**
     * @dev Emitted when `provider` withdraws `amount` of its earnings in `token` to `to`.
     */
    event Withdrawn(address indexed provider, address indexed token, address to, uint256 amount);

    /**
     * @dev No channel has the id `channelId`.
     */
    error EscrowChannelNotFound(bytes32 channelId);

    /**
     * @dev The channel must be Open for this call, and is in `status`.
     */
    error EscrowChannelNotOpen(bytes32 channelId, Status status);

    /**
     * @dev The channel is Closed.
     */
    error EscrowChannelClosed(bytes32 channelId);

    /**
     * @dev {open} would create `channelId`, which already exists: choose another salt.
     */
    error EscrowChannelExists(bytes32 channelId);

    /**
     * @dev Only the channel's `client` may make this call, and `caller` is not it.
     */
    error EscrowNotClient(address caller, address client);

    /**
     * @dev Only the channel's `provider` may claim its receipts, and `caller` is not it.
     */
    error EscrowNotProvider(address caller, address provider);

    /**
     * @dev Only the channel's `client` or `provider` may close it cooperatively, and `caller` is neither.
     */
    error EscrowNotParty(address caller, address client, address provider);

    /**
     * @dev An amount of zero was passed where a deposit or top-up is required.
     */
    error EscrowZeroAmount();

    /**
     * @dev The deposit would become `amount`, which does not fit a uint96.
     */
    error EscrowAmountTooLarge(uint256 amount);

    /**
     * @dev `msg.value` is `sent` where `expected` was required (the amount for ETH, zero for a token).
     */
    error EscrowWrongValue(uint256 sent, uint256 expected);

    /**
     * @dev The escrow received `received` of `token` instead of `expected`: fee-on-transfer tokens are refused.
     */
    error EscrowFeeOnTransfer(address token, uint256 expected, uint256 received);

    /**
     * @dev The listing is paid in `listed`, not in the token `expected` the client accepted.
     */
    error EscrowTokenMismatch(address listed, address expected);

    /**
     * @dev A receipt signature of `channelId` is malformed, or malleable (high s).
     */
    error EscrowInvalidSignature(bytes32 channelId);

    /**
     * @dev The receipt was signed by `signer`, which is neither the channel's `client`, its current session
     * key, nor a retired session key within its grace period.
     */
    error EscrowInvalidSigner(address signer, address client);

    /**
     * @dev A cooperative close's provider signature was made by `signer`, not by the channel's `provider`.
     */
    error EscrowInvalidProviderSigner(address signer, address provider);

    /**
     * @dev A total went down: (`inputTokens`, `outputTokens`) against the last claimed
     * (`previousInput`, `previousOutput`).
     */
    error EscrowTotalsDecreased(uint64 inputTokens, uint64 outputTokens, uint64 previousInput, uint64 previousOutput);

    /**
     * @dev The receipt's totals equal the last claimed ones: it would pay nothing.
     */
    error EscrowReceiptNotNewer(uint64 inputTokens, uint64 outputTokens);

    /**
     * @dev The challenge period of `channelId` ended at `closesAt`: no more claims.
     */
    error EscrowChallengeExpired(bytes32 channelId, uint32 closesAt);

    /**
     * @dev {finalize} before the challenge period of `channelId` ends at `closesAt`.
     */
    error EscrowChallengeNotOver(bytes32 channelId, uint32 closesAt);

    /**
     * @dev {claimMany} got `receipts` receipts and `signatures` signatures.
     */
    error EscrowLengthMismatch(uint256 receipts, uint256 signatures);

    /**
     * @dev `provider` has no earnings in `token`.
     */
    error EscrowNothingToWithdraw(address provider, address token);

    /**
     * @dev Sending `amount` wei to `to` failed (a refund or a withdrawal).
     */
    error EscrowEthTransferFailed(address to, uint256 amount);

    /**
     * @dev The registry quoted an output price that does not fit the channel's packed storage (uint88).
     * `ProviderRegistry` refuses such listings; the escrow still checks, as it trusts no registry to.
     */
    error EscrowPriceTooLarge(uint256 outputPricePerM);

    /**
     * @dev The listing's prices at {open} are above the client's limits (e.g. raised in the block before).
     */
    error EscrowPriceAboveLimit(
        uint96 inputPricePerM, uint96 outputPricePerM, uint96 maxInputPricePerM, uint96 maxOutputPricePerM
    );

    /**
     * @dev {finalize} of a channel that is in `status`, not Closing.
     */
    error EscrowChannelNotClosing(bytes32 channelId, Status status);

    /**
     * @dev {withdraw} to the zero address.
     */
    error EscrowZeroRecipient();

    /**
     * @dev The escrow was deployed without a registry.
     */
    error EscrowZeroRegistry();

    /**
     * @dev Opens a channel to `provider` for `modelId` and escrows `amount` of `token`, the payment token
     * the client accepted (zero: ETH, sent as `msg.value`; an ERC-20 is pulled, so approve `amount` first).
     *
     * Snapshots the listing's prices; reverts with {EscrowTokenMismatch} when the listing is paid in
     * another token, and with {EscrowPriceAboveLimit} when a price is above its limit: pass the token and
     * prices you were quoted, so a listing changed between the quote and this transaction cannot reach
     * the channel (`type(uint96).max` means no price limit). Nothing moves before these checks.
     *
     * The channel id is `keccak256(abi.encode(address(this), msg.sender, provider, modelId, salt))`, known
     * before the transaction is mined; an id already used reverts with {EscrowChannelExists}.
     * `sessionKey` (zero: none) may sign receipts for this channel alone.
     *
     * Emits {ChannelOpened}, and {SessionKeyAuthorized} when `sessionKey` is set.
     */
    function open(
        address provider,
        bytes32 modelId,
        address token,
        uint96 amount,
        address sessionKey,
        uint96 maxInputPricePerM,
        uint96 maxOutputPricePerM,
        bytes32 salt
    ) external payable returns (bytes32 channelId);

    /**
     * @dev Adds `amount` to the deposit of an Open channel; only its client. Emits {ChannelToppedUp}.
     */
    function topUp(bytes32 channelId, uint96 amount) external payable;

    /**
     * @dev Makes `sessionKey` the channel's session key (zero revokes it); only the client of an Open channel.
     *
     * A key replaced or revoked stays valid for claims for one challenge period, so receipts it
     * countersigned before the change can still be claimed (docs/protocol.md §7.3); it can sign no new
     * receipt the provider's node accepts. Emits {SessionKeyAuthorized}, and {SessionKeyRetired} for the
     * key it replaces.
     */
    function authorizeSessionKey(bytes32 channelId, address sessionKey) external;

    /**
     * @dev Credits the channel's provider with `min(cost, deposit) - paid` for `receipt`; only the provider.
     *
     * The channel must be Open, or Closing before `closesAt`; the totals must not go down and must not both
     * equal the last claimed ones; `signature` must be the client's, its session key's, or a retired session
     * key's within its grace period. Returns the amount credited. Emits {ReceiptClaimed}.
     */
    function claim(Receipt calldata receipt, bytes calldata signature) external returns (uint96 amount);

    /**
     * @dev {claim} for each receipt; only receipts of channels whose provider is the caller are claimed. A
     * receipt {claim} would refuse is skipped with {ReceiptSkipped} and the batch goes on. Returns the total
     * credited.
     */
    function claimMany(Receipt[] calldata receipts, bytes[] calldata signatures) external returns (uint256 total);

    /**
     * @dev Claims a final `receipt` signed by the client (or a valid session key) and by the provider, then
     * refunds the rest of the deposit to the client and closes the channel. Only the channel's client or
     * provider may send it, so a captured final receipt does not let anyone else close the channel. The
     * totals may equal the last claimed ones. Emits {ReceiptClaimed} and {ChannelClosed}.
     */
    function closeCooperative(Receipt calldata receipt, bytes calldata clientSignature, bytes calldata providerSignature)
        external;

    /**
     * @dev Starts the challenge period of an Open channel (only its client): the provider can claim until
     * `closesAt = now + challengePeriod`, then anyone may {finalize}. Emits {CloseRequested}.
     */
    function requestClose(bytes32 channelId) external;

    /**
     * @dev Closes a Closing channel once its challenge period is over and refunds `deposit - paid` to the
     * client; anyone may call it. Emits {ChannelClosed}.
     */
    function finalize(bytes32 channelId) external;

    /**
     * @dev Sends the caller's earnings in `token` to `to` and returns the amount. Emits {Withdrawn}.
     */
    function withdraw(address token, address to) external returns (uint256 amount);

    /**
     * @dev The registry whose listings {open} snapshots.
     */
    function registry() external view returns (address);

    /**
     * @dev Seconds between {requestClose} and the end of claims, and the grace period of a retired session key.
     */
    function challengePeriod() external view returns (uint32);

    /**
     * @dev The channel `channelId`; an unknown id returns an all-zero view with status None.
     */
    function getChannel(bytes32 channelId) external view returns (ChannelView memory);

    /**
     * @dev Until when (unix seconds, exclusive) receipts signed by `key`, a retired session key of the
     * channel, are still claimable; zero for a key that was never retired from this channel.
     */
    function retiredKeyValidUntil(bytes32 channelId, address key) external view returns (uint32);

    /**
     * @dev The unwithdrawn earnings of `provider` in `token`.
     */
    function earnings(address provider, address token) external view returns (uint256);

    /**
     * @dev `floor((inputTokens * inputPricePerM + outputTokens * outputPricePerM) / 1e6)` at the channel's
     * snapshot prices (not capped at the deposit).
     */
    function costOf(bytes32 channelId, uint64 inputTokens, uint64 outputTokens) external view returns (uint256);

    /**
     * @dev The EIP-712 digest a receipt's signer signs (domain "TallyEscrow", "1", this chain, this escrow).
     */
    function receiptDigest(Receipt calldata receipt) external view returns (bytes32);

    /**
     * @dev `keccak256("Receipt(bytes32 channelId,uint64 inputTokens,uint64 outputTokens,bytes32 usageRoot)")`.
     */
    function RECEIPT_TYPEHASH() external view returns (bytes32);
}
