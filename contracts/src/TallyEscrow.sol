// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";
import {ITallyEscrow} from "./interfaces/ITallyEscrow.sol";

/// @notice Per-token payment channels paid against client-signed cumulative receipts.
/// See docs/protocol.md §3-§5 and §7.2.
contract TallyEscrow is ITallyEscrow, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    bytes32 public constant RECEIPT_TYPEHASH =
        keccak256("Receipt(bytes32 channelId,uint64 inputTokens,uint64 outputTokens,bytes32 usageRoot)");

    /// @dev Prices are per million tokens.
    uint256 private constant PRICE_UNIT = 1_000_000;

    /// @dev Four slots. Slot D is zero at `open`, so opening a channel writes three.
    struct Channel {
        // slot A
        address client;
        uint96 inputPricePerM;
        // slot B: uint88 leaves room for the status; the registry and `open` refuse larger output prices
        address provider;
        uint88 outputPricePerM;
        Status status;
        // slot C
        address token;
        uint96 deposit;
        // slot D: everything a claim writes
        uint96 paid;
        uint64 inputTokens;
        uint64 outputTokens;
        uint32 closesAt;
    }

    address public immutable registry;
    uint32 public immutable challengePeriod;
    mapping(bytes32 channelId => Channel) private _channels;
    mapping(bytes32 channelId => address) private _sessionKeys;
    /// @dev Written only when a key is replaced or revoked, read only for a signer that is neither the client
    /// nor the current key: `open` and the common claim never touch it.
    mapping(bytes32 channelId => mapping(address key => uint32 validUntil)) private _retiredKeys;
    mapping(address provider => mapping(address token => uint256)) public earnings;

    constructor(address registry_, uint32 challengePeriod_) EIP712("TallyEscrow", "1") {
        if (registry_ == address(0)) revert EscrowZeroRegistry();
        registry = registry_;
        challengePeriod = challengePeriod_;
    }

    // ---------------------------------------------------------------- client: open, top up, close

    function open(
        address provider,
        bytes32 modelId,
        address token,
        uint96 amount,
        address sessionKey,
        uint96 maxInputPricePerM,
        uint96 maxOutputPricePerM,
        bytes32 salt
    ) external payable nonReentrant returns (bytes32 channelId) {
        if (amount == 0) revert EscrowZeroAmount();
        (uint96 inputPrice, uint96 outputPrice, address listed) = IProviderRegistry(registry).quote(provider, modelId);
        // The client pays in the token it accepted, never in one the provider re-listed before this transaction.
        if (listed != token) revert EscrowTokenMismatch(listed, token);
        if (inputPrice > maxInputPricePerM || outputPrice > maxOutputPricePerM) {
            revert EscrowPriceAboveLimit(inputPrice, outputPrice, maxInputPricePerM, maxOutputPricePerM);
        }
        // Defence in depth: the escrow may be deployed against any registry, and the cast below must not truncate.
        if (outputPrice > type(uint88).max) revert EscrowPriceTooLarge(outputPrice);
        _checkValue(token, amount);
        // A client-chosen salt instead of a running count: no counter to write (~5k gas), and the client knows
        // the id before the transaction is mined. The check reads slot A, which the write below then finds warm.
        channelId = keccak256(abi.encode(address(this), msg.sender, provider, modelId, salt));
        Channel storage c = _channels[channelId];
        if (c.client != address(0)) revert EscrowChannelExists(channelId);
        c.client = msg.sender;
        c.inputPricePerM = inputPrice;
        c.provider = provider;
        c.outputPricePerM = uint88(outputPrice);
        c.status = Status.Open;
        c.token = token;
        c.deposit = amount;
        // The snapshot prices are not in the event (two words, ~550 gas): getChannel returns them for good.
        emit ChannelOpened(channelId, msg.sender, provider, modelId, token, amount);
        if (sessionKey != address(0)) {
            _sessionKeys[channelId] = sessionKey;
            emit SessionKeyAuthorized(channelId, sessionKey);
        }
        if (token != address(0)) _pull(token, amount);
    }

    function topUp(bytes32 channelId, uint96 amount) external payable nonReentrant {
        Channel storage c = _openChannelOfCaller(channelId);
        if (amount == 0) revert EscrowZeroAmount();
        uint256 deposit = uint256(c.deposit) + amount;
        if (deposit > type(uint96).max) revert EscrowAmountTooLarge(deposit);
        address token = c.token;
        _checkValue(token, amount);
        c.deposit = uint96(deposit);
        emit ChannelToppedUp(channelId, amount, uint96(deposit));
        if (token != address(0)) _pull(token, amount);
    }

    /// @notice `sessionKey = address(0)` revokes the channel's session key. The key it replaces stays valid for
    /// claims for one challenge period (docs/protocol.md §7.3).
    function authorizeSessionKey(bytes32 channelId, address sessionKey) external {
        _openChannelOfCaller(channelId);
        address previous = _sessionKeys[channelId];
        if (previous != address(0) && previous != sessionKey) {
            // Ends at or before any closesAt: requestClose can only come later (the channel is Open now).
            uint32 validUntil = SafeCast.toUint32(block.timestamp + challengePeriod);
            _retiredKeys[channelId][previous] = validUntil;
            emit SessionKeyRetired(channelId, previous, validUntil);
        }
        _sessionKeys[channelId] = sessionKey;
        emit SessionKeyAuthorized(channelId, sessionKey);
    }

    function requestClose(bytes32 channelId) external {
        Channel storage c = _openChannelOfCaller(channelId);
        uint32 closesAt = SafeCast.toUint32(block.timestamp + challengePeriod);
        c.status = Status.Closing;
        c.closesAt = closesAt;
        emit CloseRequested(channelId, closesAt);
    }

    function finalize(bytes32 channelId) external nonReentrant {
        Channel storage c = _channels[channelId];
        Status status = c.status;
        if (status != Status.Closing) {
            if (status == Status.None) revert EscrowChannelNotFound(channelId);
            if (status == Status.Closed) revert EscrowChannelClosed(channelId);
            revert EscrowChannelNotClosing(channelId, status);
        }
        if (block.timestamp < c.closesAt) revert EscrowChallengeNotOver(channelId, c.closesAt);
        _close(c, channelId);
    }

    // ---------------------------------------------------------------- provider: claim, close, withdraw

    function claim(Receipt calldata receipt, bytes calldata signature) external nonReentrant returns (uint96 amount) {
        bytes memory err;
        (amount, err) = _tryClaim(receipt, signature, false);
        if (err.length != 0) _revertWith(err);
    }

    /// @notice Claims each receipt; a bad one (another provider's included) emits ReceiptSkipped with the error
    /// `claim` would revert with.
    function claimMany(Receipt[] calldata receipts, bytes[] calldata signatures)
        external
        nonReentrant
        returns (uint256 total)
    {
        uint256 n = receipts.length;
        if (n != signatures.length) revert EscrowLengthMismatch(n, signatures.length);
        for (uint256 i; i < n; ++i) {
            (uint96 amount, bytes memory err) = _tryClaim(receipts[i], signatures[i], false);
            if (err.length == 0) {
                // Cannot overflow: every amount is bounded by a uint96 deposit and n is a calldata length.
                unchecked {
                    total += amount;
                }
            } else {
                emit ReceiptSkipped(i, receipts[i].channelId, err);
            }
        }
    }

    /// @notice Claims a final receipt signed by both parties (totals may equal the last claimed) and refunds the rest.
    function closeCooperative(Receipt calldata receipt, bytes calldata clientSignature, bytes calldata providerSignature)
        external
        nonReentrant
    {
        bytes32 channelId = receipt.channelId;
        Channel storage c = _channels[channelId];
        address provider = c.provider;
        if (provider == address(0)) revert EscrowChannelNotFound(channelId);
        // The provider's signature alone must not let whoever captured it close the channel (§7.2).
        if (msg.sender != provider && msg.sender != c.client) revert EscrowNotParty(msg.sender, c.client, provider);
        (address signer, ECDSA.RecoverError e,) = ECDSA.tryRecoverCalldata(receiptDigest(receipt), providerSignature);
        if (e != ECDSA.RecoverError.NoError) revert EscrowInvalidSignature(channelId);
        if (signer != provider) revert EscrowInvalidProviderSigner(signer, provider);
        (, bytes memory err) = _tryClaim(receipt, clientSignature, true);
        if (err.length != 0) _revertWith(err);
        _close(c, channelId);
    }

    function withdraw(address token, address to) external nonReentrant returns (uint256 amount) {
        if (to == address(0)) revert EscrowZeroRecipient();
        amount = earnings[msg.sender][token];
        if (amount == 0) revert EscrowNothingToWithdraw(msg.sender, token);
        earnings[msg.sender][token] = 0;
        emit Withdrawn(msg.sender, token, to, amount);
        _send(token, to, amount);
    }

    // ---------------------------------------------------------------- views

    function getChannel(bytes32 channelId) external view returns (ChannelView memory v) {
        Channel storage c = _channels[channelId];
        v.client = c.client;
        v.provider = c.provider;
        v.token = c.token;
        v.status = c.status;
        v.inputPricePerM = c.inputPricePerM;
        v.outputPricePerM = c.outputPricePerM;
        v.deposit = c.deposit;
        v.paid = c.paid;
        v.inputTokens = c.inputTokens;
        v.outputTokens = c.outputTokens;
        v.closesAt = c.closesAt;
        v.sessionKey = _sessionKeys[channelId];
    }

    function retiredKeyValidUntil(bytes32 channelId, address key) external view returns (uint32) {
        return _retiredKeys[channelId][key];
    }

    /// @notice `floor((I * inputPricePerM + O * outputPricePerM) / 1e6)` with the channel's snapshot prices.
    function costOf(bytes32 channelId, uint64 inputTokens, uint64 outputTokens) external view returns (uint256) {
        Channel storage c = _channels[channelId];
        if (c.client == address(0)) revert EscrowChannelNotFound(channelId);
        return _cost(inputTokens, outputTokens, c.inputPricePerM, c.outputPricePerM);
    }

    /// @notice The EIP-712 digest a receipt's signer signs (domain "TallyEscrow", "1", this chain, this escrow).
    function receiptDigest(Receipt calldata receipt) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_TYPEHASH, receipt.channelId, receipt.inputTokens, receipt.outputTokens, receipt.usageRoot
                )
            )
        );
    }

    // ---------------------------------------------------------------- internals

    /// @dev The claim rules of §7.2, shared by claim, claimMany and closeCooperative. Returns the ABI-encoded
    /// custom error instead of reverting, so that a batch can skip a bad receipt; on success it pays.
    /// `cooperative`: closeCooperative, whose caller was checked and whose final totals may equal the claimed.
    function _tryClaim(Receipt calldata receipt, bytes calldata signature, bool cooperative)
        private
        returns (uint96 amount, bytes memory err)
    {
        bytes32 channelId = receipt.channelId;
        Channel storage c = _channels[channelId];
        Channel memory m = c;
        if (m.status != Status.Open) {
            if (m.status == Status.None) return (0, abi.encodeWithSelector(EscrowChannelNotFound.selector, channelId));
            if (m.status == Status.Closed) return (0, abi.encodeWithSelector(EscrowChannelClosed.selector, channelId));
            if (block.timestamp >= m.closesAt) {
                return (0, abi.encodeWithSelector(EscrowChallengeExpired.selector, channelId, m.closesAt));
            }
        }
        // Only the provider chooses which countersigned receipt settles its channel: anyone else could claim a
        // receipt the client signed for itself (totals a token above the last claim in one component) and void
        // every receipt the provider holds.
        if (!cooperative && msg.sender != m.provider) {
            return (0, abi.encodeWithSelector(EscrowNotProvider.selector, msg.sender, m.provider));
        }
        uint64 inputTokens = receipt.inputTokens;
        uint64 outputTokens = receipt.outputTokens;
        if (inputTokens < m.inputTokens || outputTokens < m.outputTokens) {
            return (
                0,
                abi.encodeWithSelector(
                    EscrowTotalsDecreased.selector, inputTokens, outputTokens, m.inputTokens, m.outputTokens
                )
            );
        }
        if (!cooperative && inputTokens == m.inputTokens && outputTokens == m.outputTokens) {
            return (0, abi.encodeWithSelector(EscrowReceiptNotNewer.selector, inputTokens, outputTokens));
        }
        err = _checkClientSignature(channelId, m.client, receiptDigest(receipt), signature);
        if (err.length != 0) return (0, err);

        uint256 cost = _cost(inputTokens, outputTokens, m.inputPricePerM, m.outputPricePerM);
        uint96 capped = cost < m.deposit ? uint96(cost) : m.deposit;
        // Cannot underflow: `paid` is min(cost, deposit) of an earlier receipt, the totals only grow (cost is
        // monotonic) and the deposit only grows. The earnings are bounded by the escrow's token balance.
        unchecked {
            amount = capped - m.paid;
            earnings[m.provider][m.token] += amount;
        }
        c.paid = capped;
        c.inputTokens = inputTokens;
        c.outputTokens = outputTokens;
        emit ReceiptClaimed(channelId, inputTokens, outputTokens, receipt.usageRoot, amount);
    }

    function _checkClientSignature(bytes32 channelId, address client, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bytes memory)
    {
        (address signer, ECDSA.RecoverError e,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (e != ECDSA.RecoverError.NoError) {
            return abi.encodeWithSelector(EscrowInvalidSignature.selector, channelId);
        }
        // The session key is read only when the client did not sign itself (a cold read saved per receipt), and
        // the retired keys only when neither did. A retired key pays until its grace ends (§7.3); the escrow
        // cannot tell when a receipt was signed, and its provider may hold receipts the key countersigned.
        if (
            signer != client && signer != _sessionKeys[channelId]
                && block.timestamp >= _retiredKeys[channelId][signer]
        ) {
            return abi.encodeWithSelector(EscrowInvalidSigner.selector, signer, client);
        }
        return "";
    }

    function _cost(uint64 inputTokens, uint64 outputTokens, uint96 inputPricePerM, uint96 outputPricePerM)
        private
        pure
        returns (uint256)
    {
        // Cannot overflow: 2 * 2^64 * 2^96 < 2^256.
        unchecked {
            return (uint256(inputTokens) * inputPricePerM + uint256(outputTokens) * outputPricePerM) / PRICE_UNIT;
        }
    }

    function _openChannelOfCaller(bytes32 channelId) private view returns (Channel storage c) {
        c = _channels[channelId];
        address client = c.client;
        if (client == address(0)) revert EscrowChannelNotFound(channelId);
        if (msg.sender != client) revert EscrowNotClient(msg.sender, client);
        if (c.status != Status.Open) revert EscrowChannelNotOpen(channelId, c.status);
    }

    /// @dev Refunds what was not paid to the client and marks the channel Closed (its id is never reused).
    function _close(Channel storage c, bytes32 channelId) private {
        uint96 paid = c.paid;
        // Cannot underflow: a claim never pays more than the deposit.
        uint96 refund;
        unchecked {
            refund = c.deposit - paid;
        }
        c.status = Status.Closed;
        emit ChannelClosed(channelId, paid, refund);
        if (refund != 0) _send(c.token, c.client, refund);
    }

    function _checkValue(address token, uint96 amount) private view {
        uint256 expected = token == address(0) ? amount : 0;
        if (msg.value != expected) revert EscrowWrongValue(msg.value, expected);
    }

    /// @dev Pulls exactly `amount`; a token that delivers less (fee on transfer) is refused.
    function _pull(address token, uint96 amount) private {
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this));
        received = received > before ? received - before : 0;
        if (received != amount) revert EscrowFeeOnTransfer(token, amount, received);
    }

    function _send(address token, address to, uint256 amount) private {
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert EscrowEthTransferFailed(to, amount);
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }

    function _revertWith(bytes memory err) private pure {
        assembly ("memory-safe") {
            revert(add(err, 0x20), mload(err))
        }
    }
}
