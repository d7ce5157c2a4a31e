// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {Vm} from "./utils/Vm.sol";
import {TallyEscrow} from "../src/TallyEscrow.sol";
import {ITallyEscrow} from "../src/interfaces/ITallyEscrow.sol";
import {IProviderRegistry} from "../src/interfaces/IProviderRegistry.sol";
import {FeeOnTransferToken} from "../src/mocks/FeeOnTransferToken.sol";

/// @dev A client contract that refuses ETH, to exercise EscrowEthTransferFailed.
contract EthRefuser {
    function open(TallyEscrow escrow, address provider, bytes32 modelId, uint96 maxIn, uint96 maxOut)
        external
        payable
        returns (bytes32)
    {
        return escrow.open{value: msg.value}(
            provider, modelId, address(0), uint96(msg.value), address(0), maxIn, maxOut, bytes32(0)
        );
    }

    function requestClose(TallyEscrow escrow, bytes32 channelId) external {
        escrow.requestClose(channelId);
    }
}

/// @dev A registry quoting an output price above uint88 (ProviderRegistry refuses to list one).
contract OversizedPriceRegistry {
    uint96 internal immutable outputPrice;

    constructor(uint96 outputPrice_) {
        outputPrice = outputPrice_;
    }

    function quote(address, bytes32) external view returns (uint96, uint96, address) {
        return (1, outputPrice, address(0));
    }
}

contract TallyEscrowTest is EscrowFixture {
    uint96 internal constant DEPOSIT = 1 ether;

    // ------------------------------------------------------------------ EIP-712

    function test_receiptTypehash_isRebuiltFromItsString() public view {
        bytes32 expected =
            keccak256("Receipt(bytes32 channelId,uint64 inputTokens,uint64 outputTokens,bytes32 usageRoot)");
        assertEq(escrow.RECEIPT_TYPEHASH(), expected);
    }

    function test_receiptDigest_equalsTheEip712DigestBuiltByHand() public view {
        ITallyEscrow.Receipt memory r = _receipt(keccak256("channel"), 123, 456);
        assertEq(escrow.receiptDigest(r), _digest(block.chainid, address(escrow), r));
    }

    function test_constructor_setsRegistryAndChallengePeriod() public view {
        assertEq(escrow.registry(), address(registry));
        assertEq(escrow.challengePeriod(), CHALLENGE);
    }

    function test_constructor_revertsWithoutARegistry() public {
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowZeroRegistry.selector));
        new TallyEscrow(address(0), CHALLENGE);
    }

    // ------------------------------------------------------------------ open

    function test_open_ethEscrowsTheDepositAndSnapshotsTheListing() public {
        bytes32 expectedId = _channelId(ETH_MODEL, bytes32(uint256(1)));
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ChannelOpened(expectedId, client, provider, ETH_MODEL, ETH, DEPOSIT);
        bytes32 id = _openEth(DEPOSIT);
        assertEq(id, expectedId, "channelId = keccak256(abi.encode(escrow, client, provider, modelId, salt))");
        assertEq(address(escrow).balance, DEPOSIT);
        ITallyEscrow.ChannelView memory c = escrow.getChannel(id);
        assertEq(c.client, client);
        assertEq(c.provider, provider);
        assertEq(c.token, ETH);
        assertEq(uint256(c.status), uint256(ITallyEscrow.Status.Open));
        assertEq(c.inputPricePerM, PRICE_IN);
        assertEq(c.outputPricePerM, PRICE_OUT);
        assertEq(c.deposit, DEPOSIT);
        assertEq(c.paid, 0);
        assertEq(c.sessionKey, address(0));
    }

    function test_open_usdcPullsExactlyTheAmount() public {
        uint256 before = usdc.balanceOf(client);
        bytes32 id = _openUsdc(5e6);
        assertEq(usdc.balanceOf(address(escrow)), 5e6);
        assertEq(before - usdc.balanceOf(client), 5e6);
        assertEq(escrow.getChannel(id).token, address(usdc));
    }

    function test_open_sameClientProviderModelGetsANewChannelForEachSalt() public {
        bytes32 a = _openEth(DEPOSIT);
        bytes32 b = _openEth(DEPOSIT);
        assertTrue(a != b, "another salt, another channel");
        assertEq(b, _channelId(ETH_MODEL, bytes32(uint256(2))));
    }

    /// The id is known before the transaction (the SDK stores it first); a used id is never opened again, even
    /// once its channel is closed, so receipts of a closed channel can never pay again.
    function test_open_revertsOnAnIdAlreadyUsedEvenAfterItClosed() public {
        bytes32 salt = keccak256("salt");
        vm.prank(client);
        bytes32 id = escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, address(0), PRICE_IN, PRICE_OUT, salt);
        assertEq(id, _channelId(ETH_MODEL, salt));
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowChannelExists.selector, id));
        vm.prank(client);
        escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, address(0), PRICE_IN, PRICE_OUT, salt);
        vm.prank(client);
        escrow.requestClose(id);
        vm.warp(block.timestamp + CHALLENGE);
        escrow.finalize(id);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowChannelExists.selector, id));
        vm.prank(client);
        escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, address(0), PRICE_IN, PRICE_OUT, salt);
    }

    /// The same salt from another client (or for another provider or model) is another id: nobody can take
    /// the id a client is about to open.
    function test_open_theSameSaltFromAnotherClientIsAnotherChannel() public {
        bytes32 salt = keccak256("salt");
        vm.prank(stranger);
        bytes32 taken = escrow.open{value: 1}(provider, ETH_MODEL, ETH, 1, address(0), PRICE_IN, PRICE_OUT, salt);
        vm.prank(client);
        bytes32 id = escrow.open{value: 1}(provider, ETH_MODEL, ETH, 1, address(0), PRICE_IN, PRICE_OUT, salt);
        assertTrue(id != taken, "the client is in the id");
        assertEq(id, _channelId(ETH_MODEL, salt));
    }

    function test_open_storesTheSessionKeyAndEmitsIt() public {
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.SessionKeyAuthorized(_channelId(ETH_MODEL, bytes32(uint256(1))), session);
        vm.prank(client);
        bytes32 id = escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, session, PRICE_IN, PRICE_OUT, _salt());
        assertEq(escrow.getChannel(id).sessionKey, session);
    }

    function test_open_revertsOnZeroAmount() public {
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowZeroAmount.selector));
        vm.prank(client);
        escrow.open(provider, ETH_MODEL, ETH, 0, address(0), PRICE_IN, PRICE_OUT, _salt());
    }

    function test_open_revertsForAModelNeverListed() public {
        bytes32 unknown = keccak256("unknown-model");
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, provider, unknown)
        );
        vm.prank(client);
        escrow.open{value: 1}(provider, unknown, ETH, 1, address(0), PRICE_IN, PRICE_OUT, _salt());
    }

    function test_open_revertsForADelistedModel() public {
        vm.prank(provider);
        registry.delist(ETH_MODEL);
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, provider, ETH_MODEL)
        );
        vm.prank(client);
        escrow.open{value: 1}(provider, ETH_MODEL, ETH, 1, address(0), PRICE_IN, PRICE_OUT, _salt());
    }

    function test_open_revertsWhenEthValueDiffersFromAmount() public {
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowWrongValue.selector, 5, 6));
        vm.prank(client);
        escrow.open{value: 5}(provider, ETH_MODEL, ETH, 6, address(0), PRICE_IN, PRICE_OUT, _salt());
    }

    function test_open_revertsWhenEthIsSentToATokenChannel() public {
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowWrongValue.selector, 1, 0));
        vm.prank(client);
        escrow.open{value: 1}(provider, USDC_MODEL, address(usdc), 1e6, address(0), PRICE_IN, PRICE_OUT, _salt());
    }

    function test_open_refusesAFeeOnTransferToken() public {
        FeeOnTransferToken fot = new FeeOnTransferToken(100); // 1 %
        vm.prank(provider);
        bytes32 model = registry.listModel("fot-model", PRICE_IN, PRICE_OUT, address(fot), TOKENIZER_HASH, 1);
        fot.mint(client, 1e6);
        vm.startPrank(client);
        fot.approve(address(escrow), 1e6);
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowFeeOnTransfer.selector, address(fot), 1e6, 99e4)
        );
        escrow.open(provider, model, address(fot), 1e6, address(0), PRICE_IN, PRICE_OUT, _salt());
        vm.stopPrank();
    }

    function test_open_revertsWhenTheInputPriceIsAboveItsLimit() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                ITallyEscrow.EscrowPriceAboveLimit.selector, PRICE_IN, PRICE_OUT, PRICE_IN - 1, PRICE_OUT
            )
        );
        vm.prank(client);
        escrow.open{value: 1}(provider, ETH_MODEL, ETH, 1, address(0), PRICE_IN - 1, PRICE_OUT, _salt());
    }

    function test_open_revertsWhenTheOutputPriceIsAboveItsLimit() public {
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowPriceAboveLimit.selector, PRICE_IN, PRICE_OUT, PRICE_IN, 0)
        );
        vm.prank(client);
        escrow.open(provider, USDC_MODEL, address(usdc), 1e6, address(0), PRICE_IN, 0, _salt());
    }

    function test_open_snapshotsTheListingNotTheLimits() public {
        vm.prank(client);
        bytes32 id = escrow.open{value: 1}(
            provider, ETH_MODEL, ETH, 1, address(0), type(uint96).max, type(uint96).max, _salt());
        ITallyEscrow.ChannelView memory c = escrow.getChannel(id);
        assertEq(c.inputPricePerM, PRICE_IN, "a limit above the price is not the price");
        assertEq(c.outputPricePerM, PRICE_OUT);
    }

    /// The client quotes, the provider raises its price in the block before the client's open: refused,
    /// nothing moves, and the client can still open knowingly at the new prices.
    function test_open_refusesAPriceRaisedBetweenQuoteAndOpen() public {
        (uint96 quotedIn, uint96 quotedOut,) = registry.quote(provider, USDC_MODEL);
        vm.prank(provider);
        registry.setPrice(USDC_MODEL, quotedIn, quotedOut * 3);
        uint256 clientBefore = usdc.balanceOf(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                ITallyEscrow.EscrowPriceAboveLimit.selector, quotedIn, quotedOut * 3, quotedIn, quotedOut
            )
        );
        vm.prank(client);
        escrow.open(provider, USDC_MODEL, address(usdc), 5e6, address(0), quotedIn, quotedOut, _salt());
        assertEq(usdc.balanceOf(client), clientBefore, "the deposit stayed with the client");
        assertEq(usdc.balanceOf(address(escrow)), 0);
        assertEq(uint256(_status(_channelId(USDC_MODEL, bytes32(uint256(1))))), 0, "no channel was opened");
        vm.prank(client);
        bytes32 id = escrow.open(provider, USDC_MODEL, address(usdc), 5e6, address(0), quotedIn, quotedOut * 3, _salt());
        assertEq(escrow.getChannel(id).outputPricePerM, quotedOut * 3, "accepted knowingly");
    }

    function test_open_refusesAnEthPriceRaisedBetweenQuoteAndOpen() public {
        vm.prank(provider);
        registry.setPrice(ETH_MODEL, PRICE_IN + 1, PRICE_OUT);
        uint256 clientBefore = client.balance;
        vm.expectRevert(
            abi.encodeWithSelector(
                ITallyEscrow.EscrowPriceAboveLimit.selector, PRICE_IN + 1, PRICE_OUT, PRICE_IN, PRICE_OUT
            )
        );
        vm.prank(client);
        escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, address(0), PRICE_IN, PRICE_OUT, _salt());
        assertEq(client.balance, clientBefore, "the value went back with the revert");
        assertEq(address(escrow).balance, 0);
    }

    /// ProviderRegistry refuses such listings, but an escrow deployed against another registry must not
    /// truncate the price into its uint88 slot.
    function test_open_revertsWhenARegistryQuotesAnOutputPriceThatDoesNotFitTheChannel() public {
        uint96 price = uint96(type(uint88).max) + 1;
        TallyEscrow other = new TallyEscrow(address(new OversizedPriceRegistry(price)), CHALLENGE);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowPriceTooLarge.selector, uint256(price)));
        vm.prank(client);
        other.open{value: 1}(provider, ETH_MODEL, ETH, 1, address(0), PRICE_IN, type(uint96).max, _salt());
    }

    function test_setPrice_doesNotLeakIntoAnOpenChannel() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.prank(provider);
        registry.setPrice(ETH_MODEL, PRICE_IN * 10, PRICE_OUT * 10);
        ITallyEscrow.ChannelView memory c = escrow.getChannel(id);
        assertEq(c.inputPricePerM, PRICE_IN);
        assertEq(c.outputPricePerM, PRICE_OUT);
        assertEq(escrow.costOf(id, 1e6, 1e6), PRICE_IN + PRICE_OUT);
        assertEq(_claim(id, 1e6, 1e6), PRICE_IN + PRICE_OUT, "paid at the snapshot prices");
        bytes32 fresh = _openEth(DEPOSIT);
        assertEq(escrow.costOf(fresh, 1e6, 1e6), (PRICE_IN + PRICE_OUT) * 10, "new channels take the new price");
    }

    // ------------------------------------------------------------------ topUp

    function test_topUp_addsToTheEthDeposit() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ChannelToppedUp(id, 3, DEPOSIT + 3);
        vm.prank(client);
        escrow.topUp{value: 3}(id, 3);
        assertEq(escrow.getChannel(id).deposit, DEPOSIT + 3);
        assertEq(address(escrow).balance, DEPOSIT + 3);
    }

    function test_topUp_pullsUsdc() public {
        bytes32 id = _openUsdc(1e6);
        vm.prank(client);
        escrow.topUp(id, 2e6);
        assertEq(escrow.getChannel(id).deposit, 3e6);
        assertEq(usdc.balanceOf(address(escrow)), 3e6);
    }

    function test_topUp_revertsForAnUnknownChannel() public {
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelNotFound.selector, bytes32(uint256(1))));
        vm.prank(client);
        escrow.topUp{value: 1}(bytes32(uint256(1)), 1);
    }

    function test_topUp_revertsForAnyoneButTheClient() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotClient.selector, stranger, client));
        vm.prank(stranger);
        escrow.topUp{value: 1}(id, 1);
    }

    function test_topUp_revertsOnceClosingWasRequested() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.startPrank(client);
        escrow.requestClose(id);
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowChannelNotOpen.selector, id, ITallyEscrow.Status.Closing)
        );
        escrow.topUp{value: 1}(id, 1);
        vm.stopPrank();
    }

    function test_topUp_revertsOnZeroAmount() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowZeroAmount.selector));
        vm.prank(client);
        escrow.topUp(id, 0);
    }

    function test_topUp_revertsWhenTheDepositWouldExceedUint96() public {
        bytes32 id = _openUsdc(type(uint96).max - 10);
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowAmountTooLarge.selector, uint256(type(uint96).max) + 1)
        );
        vm.prank(client);
        escrow.topUp(id, 11);
    }

    function test_topUp_revertsOnWrongEthValue() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowWrongValue.selector, 1, 2));
        vm.prank(client);
        escrow.topUp{value: 1}(id, 2);
    }

    // ------------------------------------------------------------------ authorizeSessionKey

    function test_authorizeSessionKey_letsTheKeySignReceipts() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.SessionKeyAuthorized(id, session);
        vm.prank(client);
        escrow.authorizeSessionKey(id, session);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 0);
        bytes memory sessionSig = _sign(SESSION_KEY, r);
        vm.prank(provider);
        assertEq(escrow.claim(r, sessionSig), PRICE_IN);
    }

    /// docs/protocol.md §7.3: a revoked key pays for what it countersigned for one challenge period, then never.
    function test_authorizeSessionKey_aRevokedKeyStaysValidForClaimsForOneChallengePeriod() public {
        bytes32 id = _openWithSessionKey();
        uint32 validUntil = uint32(block.timestamp + CHALLENGE);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.SessionKeyRetired(id, session, validUntil);
        vm.prank(client);
        escrow.authorizeSessionKey(id, address(0));
        assertEq(escrow.getChannel(id).sessionKey, address(0));
        assertEq(escrow.retiredKeyValidUntil(id, session), validUntil);
        vm.warp(validUntil - 1);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 0);
        bytes memory sig = _sign(SESSION_KEY, r);
        vm.prank(provider);
        assertEq(escrow.claim(r, sig), PRICE_IN, "countersigned before the revocation: still claimable");
        vm.warp(validUntil);
        r = _receipt(id, 2e6, 0);
        sig = _sign(SESSION_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, session, client));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    function test_authorizeSessionKey_aReplacedKeyStaysValidForClaimsForOneChallengePeriod() public {
        vm.warp(1000);
        bytes32 id = _openWithSessionKey();
        address next = vm.addr(0x5E56);
        vm.prank(client);
        escrow.authorizeSessionKey(id, next);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 0);
        bytes memory byOld = _sign(SESSION_KEY, r);
        vm.warp(1000 + CHALLENGE - 1);
        vm.prank(provider);
        assertEq(escrow.claim(r, byOld), PRICE_IN);
        vm.warp(1000 + CHALLENGE);
        r = _receipt(id, 2e6, 0);
        byOld = _sign(SESSION_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, session, client));
        vm.prank(provider);
        escrow.claim(r, byOld);
        bytes memory byNext = _sign(0x5E56, r);
        vm.prank(provider);
        assertEq(escrow.claim(r, byNext), PRICE_IN, "the new key signs on");
    }

    function test_authorizeSessionKey_theSameKeyAgainRetiresNothing() public {
        bytes32 id = _openWithSessionKey();
        vm.recordLogs();
        vm.prank(client);
        escrow.authorizeSessionKey(id, session);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(logs.length, 1, "SessionKeyAuthorized only");
        assertEq(escrow.retiredKeyValidUntil(id, session), 0);
    }

    /// Retiring a key again (it came back, then left again) restarts its grace from the second change.
    function test_authorizeSessionKey_aKeyRetiredTwiceIsValidUntilOnePeriodAfterTheLastChange() public {
        // Absolute times: via-IR may reuse one read of block.timestamp across warps.
        vm.warp(1000);
        bytes32 id = _openWithSessionKey();
        address next = vm.addr(0x5E56);
        vm.startPrank(client);
        escrow.authorizeSessionKey(id, next);
        vm.warp(1100);
        escrow.authorizeSessionKey(id, session);
        vm.warp(1200);
        escrow.authorizeSessionKey(id, address(0));
        vm.stopPrank();
        assertEq(escrow.retiredKeyValidUntil(id, session), 1200 + CHALLENGE);
        assertEq(escrow.retiredKeyValidUntil(id, next), 1100 + CHALLENGE);
    }

    /// The grace of a key always ends at or before the channel's close deadline (a close comes later).
    function test_authorizeSessionKey_aRetiredKeysGraceEndsNoLaterThanTheCloseDeadline() public {
        bytes32 id = _openWithSessionKey();
        vm.startPrank(client);
        escrow.authorizeSessionKey(id, address(0));
        vm.warp(block.timestamp + 10); // a close always comes at or after the change
        escrow.requestClose(id);
        vm.stopPrank();
        assertLe(escrow.retiredKeyValidUntil(id, session), escrow.getChannel(id).closesAt, "grace <= closesAt");
    }

    function test_authorizeSessionKey_revertsForAnUnknownChannel() public {
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelNotFound.selector, bytes32(uint256(7))));
        vm.prank(client);
        escrow.authorizeSessionKey(bytes32(uint256(7)), session);
    }

    function test_authorizeSessionKey_revertsForAnyoneButTheClient() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotClient.selector, provider, client));
        vm.prank(provider);
        escrow.authorizeSessionKey(id, provider);
    }

    function test_authorizeSessionKey_revertsOnAClosingChannel() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.startPrank(client);
        escrow.requestClose(id);
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowChannelNotOpen.selector, id, ITallyEscrow.Status.Closing)
        );
        escrow.authorizeSessionKey(id, session);
        vm.stopPrank();
    }

    // ------------------------------------------------------------------ claim

    function test_claim_paysTheCostOfTheCumulativeTotals() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1_234_567, 89_012);
        uint96 cost = uint96((1_234_567 * uint256(PRICE_IN) + 89_012 * uint256(PRICE_OUT)) / 1e6);
        bytes memory clientSig = _sign(CLIENT_KEY, r);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ReceiptClaimed(id, 1_234_567, 89_012, r.usageRoot, cost);
        vm.prank(provider);
        assertEq(escrow.claim(r, clientSig), cost);
        assertEq(escrow.earnings(provider, ETH), cost);
        ITallyEscrow.ChannelView memory c = escrow.getChannel(id);
        assertEq(c.paid, cost);
        assertEq(c.inputTokens, 1_234_567);
        assertEq(c.outputTokens, 89_012);
    }

    function test_claim_paysOnlyTheDifferenceToTheLastClaim() public {
        bytes32 id = _openEth(DEPOSIT);
        assertEq(_claim(id, 9, 2), 1); // 1.7 floors to 1
        // Cumulative 3.4 floors to 3: the second claim pays 2, where flooring per request would pay 1.
        assertEq(_claim(id, 18, 4), 2);
        assertEq(escrow.earnings(provider, ETH), 3, "rounding is on cumulative totals, never per claim");
    }

    function test_claim_isCappedAtTheDepositAndATopUpPaysTheRestWithANewerReceipt() public {
        bytes32 id = _openEth(1000);
        assertEq(_claim(id, 1e6, 1e6), 1000);
        vm.prank(client);
        escrow.topUp{value: 1e6}(id, 1e6);
        assertEq(_claim(id, 1e6, 1e6 + 1), PRICE_IN + PRICE_OUT - 1000);
    }

    function test_claim_acceptsAReceiptDuringTheChallengePeriod() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.prank(client);
        escrow.requestClose(id);
        vm.warp(block.timestamp + CHALLENGE - 1);
        assertEq(_claim(id, 1e6, 0), PRICE_IN);
    }

    function test_claim_revertsAfterTheChallengePeriod() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.prank(client);
        escrow.requestClose(id);
        uint32 closesAt = escrow.getChannel(id).closesAt;
        vm.warp(closesAt);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 0);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowChallengeExpired.selector, id, closesAt));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    function test_claim_revertsAfterFinalize() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.prank(client);
        escrow.requestClose(id);
        vm.warp(block.timestamp + CHALLENGE);
        escrow.finalize(id);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 0);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelClosed.selector, id));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    function test_claim_revertsForAnUnknownChannel() public {
        ITallyEscrow.Receipt memory r = _receipt(keccak256("nope"), 1, 1);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelNotFound.selector, r.channelId));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    function test_claim_revertsWhenInputTotalGoesDown() public {
        bytes32 id = _openEth(DEPOSIT);
        _claim(id, 100, 100);
        ITallyEscrow.Receipt memory r = _receipt(id, 99, 200);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowTotalsDecreased.selector, 99, 200, 100, 100));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    function test_claim_revertsWhenOutputTotalGoesDown() public {
        bytes32 id = _openEth(DEPOSIT);
        _claim(id, 100, 100);
        ITallyEscrow.Receipt memory r = _receipt(id, 200, 99);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowTotalsDecreased.selector, 200, 99, 100, 100));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    function test_claim_revertsOnTheSameReceiptTwice() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 100, 100);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.prank(provider);
        escrow.claim(r, sig);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowReceiptNotNewer.selector, 100, 100));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    function test_claim_revertsOnAMalformedSignature() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1, 1);
        vm.expectRevert(_err(ITallyEscrow.EscrowInvalidSignature.selector, id));
        vm.prank(provider);
        escrow.claim(r, hex"1234");
    }

    function test_claim_revertsOnAHighSSignature() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1, 1);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(CLIENT_KEY, escrow.receiptDigest(r));
        // The malleable twin (n - s, flipped v) recovers the same key; OpenZeppelin's ECDSA refuses it.
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes memory twin = abi.encodePacked(rr, bytes32(n - uint256(s)), v == 27 ? uint8(28) : uint8(27));
        vm.expectRevert(_err(ITallyEscrow.EscrowInvalidSignature.selector, id));
        vm.prank(provider);
        escrow.claim(r, twin);
    }

    function test_claim_revertsOnASignatureFromAnyoneButTheClientOrItsSessionKey() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1, 1);
        bytes memory byStranger = _sign(STRANGER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, stranger, client));
        vm.prank(provider);
        escrow.claim(r, byStranger);
        bytes memory byProvider = _sign(PROVIDER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, provider, client));
        vm.prank(provider);
        escrow.claim(r, byProvider);
    }

    function test_claim_revertsOnAReceiptSignedForAnotherChannel() public {
        bytes32 a = _openEth(DEPOSIT);
        bytes32 b = _openEth(DEPOSIT);
        bytes memory sigForA = _sign(CLIENT_KEY, _receipt(a, 1e6, 1e6));
        ITallyEscrow.Receipt memory onB = _receipt(b, 1e6, 1e6);
        address recovered = _recover(escrow.receiptDigest(onB), sigForA);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, recovered, client));
        vm.prank(provider);
        escrow.claim(onB, sigForA);
    }

    function test_claim_revertsOnAReceiptSignedForAnotherChain() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 1e6);
        bytes32 otherChainDigest = _digest(block.chainid + 1, address(escrow), r);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(CLIENT_KEY, otherChainDigest);
        bytes memory otherChainSig = abi.encodePacked(rr, s, v);
        address recovered = _recover(escrow.receiptDigest(r), otherChainSig);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, recovered, client));
        vm.prank(provider);
        escrow.claim(r, otherChainSig);
    }

    function test_claim_revertsAfterAChainFork() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 1e6);
        bytes memory sig = _sign(CLIENT_KEY, r);
        uint256 forkedChain = block.chainid + 1;
        vm.chainId(forkedChain);
        assertEq(escrow.receiptDigest(r), _digest(forkedChain, address(escrow), r), "domain follows block.chainid");
        address recovered = _recover(escrow.receiptDigest(r), sig);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, recovered, client));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    function test_claim_revertsOnAReceiptSignedForAnotherEscrow() public {
        bytes32 id = _openEth(DEPOSIT);
        TallyEscrow other = new TallyEscrow(address(registry), CHALLENGE);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 1e6);
        bytes memory otherEscrowSig = _signWith(other, CLIENT_KEY, r);
        address recovered = _recover(escrow.receiptDigest(r), otherEscrowSig);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, recovered, client));
        vm.prank(provider);
        escrow.claim(r, otherEscrowSig);
    }

    function test_claim_revertsOnTheSessionKeyOfAnotherChannel() public {
        vm.startPrank(client);
        escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, session, PRICE_IN, PRICE_OUT, _salt());
        bytes32 b = escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, address(0), PRICE_IN, PRICE_OUT, _salt());
        vm.stopPrank();
        ITallyEscrow.Receipt memory r = _receipt(b, 1e6, 1e6);
        bytes memory sig = _sign(SESSION_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, session, client));
        vm.prank(provider);
        escrow.claim(r, sig);
    }

    // ------------------------------------------------------------------ claimMany

    function test_claimMany_claimsEveryReceiptAndReturnsTheTotal() public {
        bytes32 a = _openEth(DEPOSIT);
        bytes32 b = _openEth(DEPOSIT);
        (ITallyEscrow.Receipt[] memory rs, bytes[] memory sigs) = _batch2(_receipt(a, 1e6, 0), _receipt(b, 0, 1e6));
        vm.prank(provider);
        assertEq(escrow.claimMany(rs, sigs), PRICE_IN + PRICE_OUT);
        assertEq(escrow.earnings(provider, ETH), PRICE_IN + PRICE_OUT);
    }

    function test_claimMany_skipsAReceiptSignedForAnotherChannel() public {
        bytes32 a = _openEth(DEPOSIT);
        bytes32 b = _openEth(DEPOSIT);
        ITallyEscrow.Receipt[] memory rs = new ITallyEscrow.Receipt[](2);
        bytes[] memory sigs = new bytes[](2);
        rs[0] = _receipt(b, 1e6, 0);
        sigs[0] = _sign(CLIENT_KEY, _receipt(a, 1e6, 0)); // signed for channel a
        rs[1] = _receipt(a, 0, 1e6);
        sigs[1] = _sign(CLIENT_KEY, rs[1]);
        address recovered = _recover(escrow.receiptDigest(rs[0]), sigs[0]);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ReceiptSkipped(
            0, b, abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, recovered, client)
        );
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ReceiptClaimed(a, 0, 1e6, rs[1].usageRoot, PRICE_OUT);
        vm.prank(provider);
        assertEq(escrow.claimMany(rs, sigs), PRICE_OUT, "the batch goes on after a bad receipt");
        assertEq(escrow.getChannel(b).paid, 0);
    }

    function test_claimMany_skipsStaleUnknownAndClosedChannelsWithTheClaimError() public {
        bytes32 a = _openEth(DEPOSIT);
        bytes32 closed = _openEth(DEPOSIT);
        vm.prank(client);
        escrow.requestClose(closed);
        vm.warp(block.timestamp + CHALLENGE);
        escrow.finalize(closed);
        _claim(a, 50, 50);
        ITallyEscrow.Receipt[] memory rs = new ITallyEscrow.Receipt[](4);
        rs[0] = _receipt(a, 40, 60);
        rs[1] = _receipt(keccak256("unknown"), 1, 1);
        rs[2] = _receipt(closed, 1, 1);
        rs[3] = _receipt(a, 50, 50);
        bytes[] memory sigs = new bytes[](4);
        for (uint256 i; i < 4; ++i) sigs[i] = _sign(CLIENT_KEY, rs[i]);
        vm.recordLogs();
        vm.prank(provider);
        assertEq(escrow.claimMany(rs, sigs), 0);
        bytes[4] memory reasons = [
            abi.encodeWithSelector(ITallyEscrow.EscrowTotalsDecreased.selector, 40, 60, 50, 50),
            _err(ITallyEscrow.EscrowChannelNotFound.selector, rs[1].channelId),
            _err(ITallyEscrow.EscrowChannelClosed.selector, closed),
            abi.encodeWithSelector(ITallyEscrow.EscrowReceiptNotNewer.selector, 50, 50)
        ];
        _assertSkipped(vm.getRecordedLogs(), rs, reasons);
    }

    function test_claimMany_skipsADuplicateOfAReceiptInTheSameBatch() public {
        bytes32 a = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(a, 1e6, 0);
        (ITallyEscrow.Receipt[] memory rs, bytes[] memory sigs) = _batch2(r, r);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ReceiptSkipped(
            1, a, abi.encodeWithSelector(ITallyEscrow.EscrowReceiptNotNewer.selector, 1e6, 0)
        );
        vm.prank(provider);
        assertEq(escrow.claimMany(rs, sigs), PRICE_IN, "paid once");
    }

    function test_claimMany_revertsWhenSignaturesDoNotMatchReceipts() public {
        ITallyEscrow.Receipt[] memory rs = new ITallyEscrow.Receipt[](2);
        bytes[] memory sigs = new bytes[](1);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowLengthMismatch.selector, 2, 1));
        vm.prank(provider);
        escrow.claimMany(rs, sigs);
    }

    function test_claimMany_emptyBatchPaysNothing() public {
        vm.prank(provider);
        assertEq(escrow.claimMany(new ITallyEscrow.Receipt[](0), new bytes[](0)), 0);
    }

    // ------------------------------------------------------------------ closeCooperative

    function test_closeCooperative_paysTheFinalReceiptAndRefundsTheRest() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 1e6);
        uint256 clientBefore = client.balance;
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ChannelClosed(id, PRICE_IN + PRICE_OUT, DEPOSIT - PRICE_IN - PRICE_OUT);
        vm.prank(provider);
        bytes memory clientSig = _sign(CLIENT_KEY, r);
        bytes memory providerSig = _sign(PROVIDER_KEY, r);
        vm.prank(provider);
        escrow.closeCooperative(r, clientSig, providerSig);
        assertEq(client.balance - clientBefore, DEPOSIT - PRICE_IN - PRICE_OUT);
        assertEq(escrow.earnings(provider, ETH), PRICE_IN + PRICE_OUT);
        assertEq(uint256(_status(id)), uint256(ITallyEscrow.Status.Closed));
        assertEq(address(escrow).balance, PRICE_IN + PRICE_OUT);
    }

    function test_closeCooperative_acceptsTheLastClaimedTotalsAgain() public {
        bytes32 id = _openUsdc(5e6);
        _claim(id, 1e6, 1e6);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 1e6);
        uint256 before = usdc.balanceOf(client);
        bytes memory clientSig = _sign(CLIENT_KEY, r);
        bytes memory providerSig = _sign(PROVIDER_KEY, r);
        vm.prank(provider);
        escrow.closeCooperative(r, clientSig, providerSig);
        assertEq(usdc.balanceOf(client) - before, 5e6 - PRICE_IN - PRICE_OUT);
        assertEq(usdc.balanceOf(address(escrow)), PRICE_IN + PRICE_OUT);
    }

    function test_closeCooperative_acceptsTheSessionKeyForTheClient() public {
        vm.prank(client);
        bytes32 id = escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, session, PRICE_IN, PRICE_OUT, _salt());
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 0);
        bytes memory sessionSig = _sign(SESSION_KEY, r);
        bytes memory providerSig = _sign(PROVIDER_KEY, r);
        vm.prank(provider);
        escrow.closeCooperative(r, sessionSig, providerSig);
        assertEq(uint256(_status(id)), uint256(ITallyEscrow.Status.Closed));
    }

    function test_closeCooperative_revertsWithoutTheProvidersSignature() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1, 1);
        bytes memory clientSig = _sign(CLIENT_KEY, r);
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowInvalidProviderSigner.selector, client, provider)
        );
        vm.prank(provider);
        escrow.closeCooperative(r, clientSig, clientSig);
        vm.expectRevert(_err(ITallyEscrow.EscrowInvalidSignature.selector, id));
        vm.prank(provider);
        escrow.closeCooperative(r, clientSig, hex"00");
    }

    function test_closeCooperative_revertsWithoutTheClientsSignature() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1, 1);
        bytes memory providerSig = _sign(PROVIDER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, provider, client));
        vm.prank(provider);
        escrow.closeCooperative(r, providerSig, providerSig);
    }

    function test_closeCooperative_revertsForAnUnknownChannel() public {
        ITallyEscrow.Receipt memory r = _receipt(keccak256("x"), 1, 1);
        bytes memory c = _sign(CLIENT_KEY, r);
        bytes memory p = _sign(PROVIDER_KEY, r);
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelNotFound.selector, r.channelId));
        vm.prank(provider);
        escrow.closeCooperative(r, c, p);
    }

    function test_closeCooperative_revertsOnAClosedChannel() public {
        bytes32 id = _openEth(DEPOSIT);
        ITallyEscrow.Receipt memory r = _receipt(id, 1, 1);
        bytes memory c = _sign(CLIENT_KEY, r);
        bytes memory p = _sign(PROVIDER_KEY, r);
        vm.prank(provider);
        escrow.closeCooperative(r, c, p);
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelClosed.selector, id));
        vm.prank(provider);
        escrow.closeCooperative(r, c, p);
    }

    function test_closeCooperative_revertsOnLowerTotals() public {
        bytes32 id = _openEth(DEPOSIT);
        _claim(id, 10, 10);
        ITallyEscrow.Receipt memory r = _receipt(id, 5, 10);
        bytes memory c = _sign(CLIENT_KEY, r);
        bytes memory p = _sign(PROVIDER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowTotalsDecreased.selector, 5, 10, 10, 10));
        vm.prank(provider);
        escrow.closeCooperative(r, c, p);
    }

    // ------------------------------------------------------------------ requestClose / finalize

    function test_requestClose_startsTheChallengePeriod() public {
        bytes32 id = _openEth(DEPOSIT);
        uint32 closesAt = uint32(block.timestamp + CHALLENGE);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.CloseRequested(id, closesAt);
        vm.prank(client);
        escrow.requestClose(id);
        ITallyEscrow.ChannelView memory c = escrow.getChannel(id);
        assertEq(uint256(c.status), uint256(ITallyEscrow.Status.Closing));
        assertEq(c.closesAt, closesAt);
    }

    function test_requestClose_revertsForAnyoneButTheClient() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotClient.selector, provider, client));
        vm.prank(provider);
        escrow.requestClose(id);
    }

    function test_requestClose_revertsForAnUnknownChannel() public {
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelNotFound.selector, bytes32(0)));
        vm.prank(client);
        escrow.requestClose(bytes32(0));
    }

    function test_requestClose_revertsWhenAlreadyClosing() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.startPrank(client);
        escrow.requestClose(id);
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowChannelNotOpen.selector, id, ITallyEscrow.Status.Closing)
        );
        escrow.requestClose(id);
        vm.stopPrank();
    }

    function test_finalize_refundsWhatWasNotPaidAfterTheChallengePeriod() public {
        bytes32 id = _openUsdc(5e6);
        _claim(id, 1e6, 0);
        vm.prank(client);
        escrow.requestClose(id);
        vm.warp(block.timestamp + CHALLENGE);
        uint256 before = usdc.balanceOf(client);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ChannelClosed(id, PRICE_IN, 5e6 - PRICE_IN);
        vm.prank(stranger); // anyone may finalize
        escrow.finalize(id);
        assertEq(usdc.balanceOf(client) - before, 5e6 - PRICE_IN);
        assertEq(uint256(_status(id)), uint256(ITallyEscrow.Status.Closed));
    }

    function test_finalize_revertsDuringTheChallengePeriod() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.prank(client);
        escrow.requestClose(id);
        uint32 closesAt = uint32(block.timestamp + CHALLENGE);
        vm.warp(closesAt - 1);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowChallengeNotOver.selector, id, closesAt));
        escrow.finalize(id);
    }

    function test_finalize_revertsOnAnOpenChannel() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowChannelNotClosing.selector, id, ITallyEscrow.Status.Open)
        );
        escrow.finalize(id);
    }

    function test_finalize_revertsForAnUnknownChannel() public {
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelNotFound.selector, bytes32(uint256(3))));
        escrow.finalize(bytes32(uint256(3)));
    }

    function test_finalize_revertsTheSecondTime() public {
        bytes32 id = _openEth(DEPOSIT);
        vm.prank(client);
        escrow.requestClose(id);
        vm.warp(block.timestamp + CHALLENGE);
        escrow.finalize(id);
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelClosed.selector, id));
        escrow.finalize(id);
    }

    function test_finalize_revertsWhenTheClientRefusesEth() public {
        EthRefuser refuser = new EthRefuser();
        bytes32 id = refuser.open{value: 1000}(escrow, provider, ETH_MODEL, PRICE_IN, PRICE_OUT);
        refuser.requestClose(escrow, id);
        vm.warp(block.timestamp + CHALLENGE);
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowEthTransferFailed.selector, address(refuser), 1000)
        );
        escrow.finalize(id);
    }

    // ------------------------------------------------------------------ withdraw

    function test_withdraw_paysTheProvidersEthEarnings() public {
        bytes32 id = _openEth(DEPOSIT);
        _claim(id, 1e6, 1e6);
        address to = address(0xCAFE);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.Withdrawn(provider, ETH, to, PRICE_IN + PRICE_OUT);
        vm.prank(provider);
        assertEq(escrow.withdraw(ETH, to), PRICE_IN + PRICE_OUT);
        assertEq(to.balance, PRICE_IN + PRICE_OUT);
        assertEq(escrow.earnings(provider, ETH), 0);
    }

    function test_withdraw_paysTheProvidersUsdcEarnings() public {
        bytes32 id = _openUsdc(5e6);
        _claim(id, 1e6, 1e6);
        vm.prank(provider);
        escrow.withdraw(address(usdc), provider);
        assertEq(usdc.balanceOf(provider), PRICE_IN + PRICE_OUT);
    }

    function test_withdraw_revertsWithNothingToWithdraw() public {
        vm.expectRevert(
            abi.encodeWithSelector(ITallyEscrow.EscrowNothingToWithdraw.selector, provider, address(usdc))
        );
        vm.prank(provider);
        escrow.withdraw(address(usdc), provider);
    }

    function test_withdraw_revertsToTheZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowZeroRecipient.selector));
        vm.prank(provider);
        escrow.withdraw(ETH, address(0));
    }

    function test_withdraw_revertsWhenTheRecipientRefusesEth() public {
        bytes32 id = _openEth(DEPOSIT);
        _claim(id, 1e6, 0);
        address refuser = address(new EthRefuser());
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowEthTransferFailed.selector, refuser, PRICE_IN));
        vm.prank(provider);
        escrow.withdraw(ETH, refuser);
    }

    // ------------------------------------------------------------------ views

    function test_costOf_usesTheSnapshotPricesAndFloors() public {
        bytes32 id = _openEth(DEPOSIT);
        assertEq(escrow.costOf(id, 9, 2), 1); // (9 * 1e5 + 2 * 4e5) / 1e6 = 1.7
        assertEq(escrow.costOf(id, type(uint64).max, type(uint64).max), _refCost(type(uint64).max, type(uint64).max, PRICE_IN, PRICE_OUT));
    }

    function test_costOf_revertsForAnUnknownChannel() public {
        vm.expectRevert(_err(ITallyEscrow.EscrowChannelNotFound.selector, bytes32(uint256(9))));
        escrow.costOf(bytes32(uint256(9)), 1, 1);
    }

    function test_getChannel_ofAnUnknownChannelIsEmpty() public view {
        ITallyEscrow.ChannelView memory c = escrow.getChannel(keccak256("none"));
        assertEq(uint256(c.status), uint256(ITallyEscrow.Status.None));
        assertEq(c.client, address(0));
    }

    // ------------------------------------------------------------------ helpers

    function _openWithSessionKey() internal returns (bytes32) {
        vm.prank(client);
        return escrow.open{value: DEPOSIT}(provider, ETH_MODEL, ETH, DEPOSIT, session, PRICE_IN, PRICE_OUT, _salt());
    }

    /// @dev The EIP-712 digest of docs/protocol.md §4, built from the type strings.
    function _digest(uint256 chainId, address verifyingContract, ITallyEscrow.Receipt memory r)
        internal
        pure
        returns (bytes32)
    {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("TallyEscrow"),
                keccak256("1"),
                chainId,
                verifyingContract
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Receipt(bytes32 channelId,uint64 inputTokens,uint64 outputTokens,bytes32 usageRoot)"),
                r.channelId,
                r.inputTokens,
                r.outputTokens,
                r.usageRoot
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function _recover(bytes32 digest, bytes memory sig) internal pure returns (address) {
        (bytes32 r, bytes32 s) = abi.decode(sig, (bytes32, bytes32));
        return ecrecover(digest, uint8(sig[64]), r, s);
    }

    function _batch2(ITallyEscrow.Receipt memory a, ITallyEscrow.Receipt memory b)
        internal
        view
        returns (ITallyEscrow.Receipt[] memory rs, bytes[] memory sigs)
    {
        rs = new ITallyEscrow.Receipt[](2);
        sigs = new bytes[](2);
        rs[0] = a;
        rs[1] = b;
        sigs[0] = _sign(CLIENT_KEY, a);
        sigs[1] = _sign(CLIENT_KEY, b);
    }

    function _assertSkipped(
        Vm.Log[] memory logs,
        ITallyEscrow.Receipt[] memory rs,
        bytes[4] memory reasons
    ) internal pure {
        uint256 seen;
        bytes32 topic = ITallyEscrow.ReceiptSkipped.selector;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] != topic) continue;
            (uint256 index, bytes memory reason) = abi.decode(logs[i].data, (uint256, bytes));
            assertEq(index, seen, "skips are reported in order");
            assertEq(logs[i].topics[1], rs[index].channelId);
            assertEq(reason, reasons[index], "the reason is the error claim() reverts with");
            ++seen;
        }
        assertEq(seen, 4);
    }
}
