// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {TallyEscrow} from "../src/TallyEscrow.sol";
import {ITallyEscrow} from "../src/interfaces/ITallyEscrow.sol";
import {IProviderRegistry} from "../src/interfaces/IProviderRegistry.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

/// @notice The attack table of docs/security.md: every external function of both contracts called by every
/// caller (client, provider, session key current / retired / of another channel, stranger, another provider,
/// another escrow as a caller), each refused with its exact error and moving nothing. Signatures made for another
/// channel, escrow or chain are in TallyEscrow.t.sol (`test_claim_revertsOnAReceiptSignedFor*`).
contract CallersTest is EscrowFixture {
    uint96 internal constant DEPOSIT = 1 ether;
    uint256 internal constant RETIRED_KEY = 0x5E57;
    uint256 internal constant OTHER_SESSION_KEY = 0x5E58;
    uint256 internal constant RIVAL_KEY = 0xB0B2;

    address internal retired; // the channel's previous session key, within its grace
    address internal otherSession; // the session key of the client's other channel
    address internal rival; // another registered provider
    TallyEscrow internal otherEscrow;
    bytes32 internal ch;
    bytes32 internal otherCh;

    function setUp() public override {
        super.setUp();
        retired = vm.addr(RETIRED_KEY);
        otherSession = vm.addr(OTHER_SESSION_KEY);
        rival = vm.addr(RIVAL_KEY);
        otherEscrow = new TallyEscrow(address(registry), CHALLENGE);
        vm.startPrank(rival);
        registry.register("https://rival.example", "{}");
        registry.listModel(ETH_MODEL_NAME, PRICE_IN, PRICE_OUT, ETH, TOKENIZER_HASH, 8192);
        vm.stopPrank();
        ch = _openAs(client, ETH_MODEL, ETH, DEPOSIT, retired, PRICE_IN, PRICE_OUT);
        vm.prank(client);
        escrow.authorizeSessionKey(ch, session); // `retired` is now retired, `session` current
        otherCh = _openAs(client, ETH_MODEL, ETH, DEPOSIT, otherSession, PRICE_IN, PRICE_OUT);
        _claim(ch, 1000, 1000); // the provider has earnings
    }

    /// Everyone but the client (and, for the calls below, but the provider where said).
    function _notClient() internal view returns (address[7] memory) {
        return [provider, session, retired, otherSession, stranger, rival, address(otherEscrow)];
    }

    function _notProvider() internal view returns (address[7] memory) {
        return [client, session, retired, otherSession, stranger, rival, address(otherEscrow)];
    }

    function _snapshot(bytes32 id) internal view returns (bytes32) {
        return keccak256(abi.encode(escrow.getChannel(id), address(escrow).balance, escrow.earnings(provider, ETH)));
    }

    // ------------------------------------------------------------------ open

    /// Nobody opens with the client's money: `open` pulls from msg.sender only, whatever allowance the client gave.
    function test_open_byAnyoneElsePullsOnlyTheirOwnFunds() public {
        address[7] memory callers = _notClient();
        uint256 clientUsdc = usdc.balanceOf(client);
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    IERC20Errors.ERC20InsufficientAllowance.selector, address(escrow), 0, uint256(5e6)
                )
            );
            _openAs(callers[i], USDC_MODEL, address(usdc), 5e6, address(0), PRICE_IN, PRICE_OUT);
        }
        assertEq(usdc.balanceOf(client), clientUsdc, "the client's allowance pulled nothing");
        vm.deal(provider, 1 ether);
        bytes32 own = _openAs(provider, ETH_MODEL, ETH, 1 ether, address(0), PRICE_IN, PRICE_OUT);
        assertEq(escrow.getChannel(own).client, provider, "a provider opening is a client of its own money");
    }

    function test_open_anotherEscrowCannotPullAnAllowanceGivenToThisOne() public {
        bytes32 salt = _salt();
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(otherEscrow), 0, 5e6)
        );
        vm.prank(client);
        otherEscrow.open(provider, USDC_MODEL, address(usdc), 5e6, address(0), PRICE_IN, PRICE_OUT, salt);
    }

    // ------------------------------------------------------------------ client-only functions

    function test_topUp_byAnyoneButTheClientReverts() public {
        address[7] memory callers = _notClient();
        bytes32 before = _snapshot(ch);
        for (uint256 i; i < callers.length; ++i) {
            vm.deal(callers[i], 1);
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotClient.selector, callers[i], client));
            vm.prank(callers[i]);
            escrow.topUp{value: 1}(ch, 1);
        }
        assertEq(_snapshot(ch), before);
    }

    /// A session key signs receipts; it cannot replace itself, revive a retired key or revoke the current one.
    function test_authorizeSessionKey_byAnyoneButTheClientReverts() public {
        address[7] memory callers = _notClient();
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotClient.selector, callers[i], client));
            vm.prank(callers[i]);
            escrow.authorizeSessionKey(ch, callers[i]);
        }
        assertEq(escrow.getChannel(ch).sessionKey, session);
    }

    function test_requestClose_byAnyoneButTheClientReverts() public {
        address[7] memory callers = _notClient();
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotClient.selector, callers[i], client));
            vm.prank(callers[i]);
            escrow.requestClose(ch);
        }
        assertEq(uint256(_status(ch)), uint256(ITallyEscrow.Status.Open));
    }

    /// A channel lives in one escrow: its id (which includes the escrow's address) is unknown to another.
    function test_clientFunctions_onAnotherEscrowFindNoChannel() public {
        bytes memory notFound = abi.encodeWithSelector(ITallyEscrow.EscrowChannelNotFound.selector, ch);
        vm.startPrank(client);
        vm.expectRevert(notFound);
        otherEscrow.topUp{value: 1}(ch, 1);
        vm.expectRevert(notFound);
        otherEscrow.authorizeSessionKey(ch, stranger);
        vm.expectRevert(notFound);
        otherEscrow.requestClose(ch);
        vm.stopPrank();
        vm.expectRevert(notFound);
        otherEscrow.finalize(ch);
    }

    // ------------------------------------------------------------------ finalize

    /// Anyone may finalize once the challenge period is over; the refund always goes to the client.
    function test_finalize_byAnyCallerRefundsOnlyTheClient() public {
        address[7] memory callers = _notClient();
        bytes32[7] memory ids;
        vm.startPrank(client);
        for (uint256 i; i < callers.length; ++i) {
            ids[i] = escrow.open{value: 1000}(provider, ETH_MODEL, ETH, 1000, address(0), PRICE_IN, PRICE_OUT, _salt());
            escrow.requestClose(ids[i]);
        }
        vm.stopPrank();
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    ITallyEscrow.EscrowChallengeNotOver.selector, ids[i], uint32(block.timestamp + CHALLENGE)
                )
            );
            vm.prank(callers[i]);
            escrow.finalize(ids[i]);
        }
        vm.warp(block.timestamp + CHALLENGE);
        for (uint256 i; i < callers.length; ++i) {
            uint256 clientBefore = client.balance;
            uint256 callerBefore = callers[i].balance;
            vm.prank(callers[i]);
            escrow.finalize(ids[i]);
            assertEq(client.balance - clientBefore, 1000, "refunded to the client");
            assertEq(callers[i].balance, callerBefore, "not to the caller");
        }
    }

    // ------------------------------------------------------------------ claim, claimMany

    /// Issue 10, hole 1, for every caller: a receipt the client signed moves the claimed totals only when the
    /// provider sends it, whoever else holds it (the client itself, its keys, a stranger, another provider).
    function test_claim_byAnyoneButTheProviderReverts() public {
        address[7] memory callers = _notProvider();
        ITallyEscrow.Receipt memory r = _receipt(ch, 6001, 1000);
        bytes memory sig = _sign(CLIENT_KEY, r);
        bytes32 before = _snapshot(ch);
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotProvider.selector, callers[i], provider));
            vm.prank(callers[i]);
            escrow.claim(r, sig);
        }
        assertEq(_snapshot(ch), before);
        vm.prank(provider);
        assertEq(escrow.claim(r, sig), _refCost(6001, 1000, PRICE_IN, PRICE_OUT) - _refCost(1000, 1000, PRICE_IN, PRICE_OUT));
    }

    function test_claimMany_byAnyoneButTheProviderSkipsEveryReceipt() public {
        address[7] memory callers = _notProvider();
        ITallyEscrow.Receipt[] memory rs = new ITallyEscrow.Receipt[](2);
        bytes[] memory sigs = new bytes[](2);
        (rs[0], rs[1]) = (_receipt(ch, 2000, 2000), _receipt(otherCh, 10, 10));
        (sigs[0], sigs[1]) = (_sign(SESSION_KEY, rs[0]), _sign(OTHER_SESSION_KEY, rs[1]));
        bytes32 before = keccak256(abi.encode(_snapshot(ch), _snapshot(otherCh)));
        for (uint256 i; i < callers.length; ++i) {
            vm.expectEmit(address(escrow));
            emit ITallyEscrow.ReceiptSkipped(
                1, otherCh, abi.encodeWithSelector(ITallyEscrow.EscrowNotProvider.selector, callers[i], provider)
            );
            vm.prank(callers[i]);
            assertEq(escrow.claimMany(rs, sigs), 0);
        }
        assertEq(keccak256(abi.encode(_snapshot(ch), _snapshot(otherCh))), before);
    }

    /// A provider's batch may carry another provider's receipt: skipped, and the rest is paid.
    function test_claimMany_aProviderClaimsOnlyItsOwnChannelsInAMixedBatch() public {
        bytes32 salt = _salt();
        vm.prank(client);
        bytes32 rivals = escrow.open{value: DEPOSIT}(rival, ETH_MODEL, ETH, DEPOSIT, address(0), PRICE_IN, PRICE_OUT, salt);
        ITallyEscrow.Receipt[] memory rs = new ITallyEscrow.Receipt[](2);
        bytes[] memory sigs = new bytes[](2);
        (rs[0], rs[1]) = (_receipt(rivals, 1e6, 0), _receipt(ch, 1e6, 1000));
        (sigs[0], sigs[1]) = (_sign(CLIENT_KEY, rs[0]), _sign(CLIENT_KEY, rs[1]));
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ReceiptSkipped(
            0, rivals, abi.encodeWithSelector(ITallyEscrow.EscrowNotProvider.selector, provider, rival)
        );
        vm.prank(provider);
        assertEq(escrow.claimMany(rs, sigs), _refCost(1e6, 1000, PRICE_IN, PRICE_OUT) - _refCost(1000, 1000, PRICE_IN, PRICE_OUT));
        assertEq(escrow.getChannel(rivals).paid, 0, "the rival's channel is untouched");
    }

    /// As signers: the client, the current key and a retired key within its grace pay; the session key of another
    /// channel, a key past its grace, the provider and a stranger do not.
    function test_claim_signedByEachKindOfKey() public {
        uint64 total = 1000;
        uint256[3] memory valid = [CLIENT_KEY, SESSION_KEY, RETIRED_KEY];
        for (uint256 i; i < valid.length; ++i) {
            total += 1000;
            ITallyEscrow.Receipt memory r = _receipt(ch, total, total);
            bytes memory sig = _sign(valid[i], r);
            vm.prank(provider);
            escrow.claim(r, sig);
        }
        uint256[3] memory invalid = [OTHER_SESSION_KEY, PROVIDER_KEY, STRANGER_KEY];
        for (uint256 i; i < invalid.length; ++i) {
            ITallyEscrow.Receipt memory r = _receipt(ch, total + 1, total + 1);
            bytes memory sig = _sign(invalid[i], r);
            vm.expectRevert(
                abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, vm.addr(invalid[i]), client)
            );
            vm.prank(provider);
            escrow.claim(r, sig);
        }
        vm.warp(escrow.retiredKeyValidUntil(ch, retired));
        ITallyEscrow.Receipt memory late = _receipt(ch, total + 1, total + 1);
        bytes memory lateSig = _sign(RETIRED_KEY, late);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidSigner.selector, retired, client));
        vm.prank(provider);
        escrow.claim(late, lateSig);
    }

    // ------------------------------------------------------------------ closeCooperative

    function test_closeCooperative_byTheClientCloses() public {
        ITallyEscrow.Receipt memory r = _receipt(ch, 2000, 2000);
        (bytes memory c, bytes memory p) = (_sign(SESSION_KEY, r), _sign(PROVIDER_KEY, r));
        uint256 before = client.balance;
        vm.prank(client);
        escrow.closeCooperative(r, c, p);
        assertEq(client.balance - before, DEPOSIT - _refCost(2000, 2000, PRICE_IN, PRICE_OUT));
    }

    /// A captured final receipt and provider signature close nothing for anyone but the two parties.
    function test_closeCooperative_byAnyoneElseReverts() public {
        address[7] memory callers = [session, retired, otherSession, stranger, rival, address(otherEscrow), address(this)];
        ITallyEscrow.Receipt memory r = _receipt(ch, 2000, 2000);
        (bytes memory c, bytes memory p) = (_sign(CLIENT_KEY, r), _sign(PROVIDER_KEY, r));
        bytes32 before = _snapshot(ch);
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotParty.selector, callers[i], client, provider));
            vm.prank(callers[i]);
            escrow.closeCooperative(r, c, p);
        }
        assertEq(_snapshot(ch), before);
    }

    function test_closeCooperative_refusesSignaturesMadeForAnotherEscrow() public {
        ITallyEscrow.Receipt memory r = _receipt(ch, 2000, 2000);
        bytes memory c = _sign(CLIENT_KEY, r);
        bytes memory foreign = _signWith(otherEscrow, PROVIDER_KEY, r);
        address recovered = _recoverHere(r, foreign);
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowInvalidProviderSigner.selector, recovered, provider));
        vm.prank(client);
        escrow.closeCooperative(r, c, foreign);
    }

    // ------------------------------------------------------------------ withdraw, views

    /// Earnings are the caller's own: nobody else withdraws the provider's, in this escrow or another.
    function test_withdraw_byAnyoneButAnEarnerHasNothingToWithdraw() public {
        address[7] memory callers = _notProvider();
        uint256 earned = escrow.earnings(provider, ETH);
        assertGe(earned, 1, "the provider has earnings");
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNothingToWithdraw.selector, callers[i], ETH));
            vm.prank(callers[i]);
            escrow.withdraw(ETH, callers[i]);
        }
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNothingToWithdraw.selector, provider, ETH));
        vm.prank(provider);
        otherEscrow.withdraw(ETH, provider);
        assertEq(escrow.earnings(provider, ETH), earned);
    }

    function test_views_changeNothingForAnyCaller() public {
        address[7] memory callers = _notProvider();
        bytes32 before = _snapshot(ch);
        for (uint256 i; i < callers.length; ++i) {
            vm.startPrank(callers[i]);
            escrow.getChannel(ch);
            escrow.costOf(ch, 1, 1);
            escrow.receiptDigest(_receipt(ch, 1, 1));
            escrow.retiredKeyValidUntil(ch, retired);
            escrow.earnings(provider, ETH);
            escrow.registry();
            escrow.challengePeriod();
            escrow.RECEIPT_TYPEHASH();
            vm.stopPrank();
        }
        assertEq(_snapshot(ch), before);
    }

    // ------------------------------------------------------------------ ProviderRegistry

    /// Every registry write acts on msg.sender's own record: nobody registers, updates, lists, prices or delists
    /// for another provider (a rival's write changes only the rival's listing; an unregistered caller is refused).
    function test_registry_writesByAnyoneButTheProviderNeverTouchItsRecordOrListing() public {
        address[7] memory callers = _notProvider();
        IProviderRegistry.Listing memory before = registry.getListing(provider, ETH_MODEL);
        for (uint256 i; i < callers.length; ++i) {
            address who = callers[i];
            vm.startPrank(who);
            if (who != rival) {
                vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryNotRegistered.selector, who));
                registry.updateEndpoint("https://evil.example");
                vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryNotRegistered.selector, who));
                registry.updateMetadata("evil");
                vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryNotRegistered.selector, who));
                registry.listModel(ETH_MODEL_NAME, 1, 1, ETH, TOKENIZER_HASH, 1);
                vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, who, ETH_MODEL));
                registry.setPrice(ETH_MODEL, 1, 1);
                vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, who, ETH_MODEL));
                registry.setModelHash(ETH_MODEL, keccak256("other weights"));
                vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, who, ETH_MODEL));
                registry.delist(ETH_MODEL);
            } else {
                registry.updateEndpoint("https://rival2.example");
                registry.setPrice(ETH_MODEL, 1, 1); // its own listing of the same model
                registry.setModelHash(ETH_MODEL, keccak256("other weights"));
                registry.delist(ETH_MODEL);
            }
            // Anyone may publish a failed audit: an event, which changes no listing.
            registry.reportAudit(provider, ETH_MODEL, keccak256("report"), "https://reports.example/1");
            vm.stopPrank();
        }
        IProviderRegistry.Listing memory after_ = registry.getListing(provider, ETH_MODEL);
        assertEq(keccak256(abi.encode(after_)), keccak256(abi.encode(before)), "the provider's listing is unchanged");
        assertEq(bytes(registry.getProvider(provider).endpoint), bytes("https://node.example"), "");
        assertFalse(registry.isListed(rival, ETH_MODEL), "the rival delisted its own listing");
    }

    /// `register` records msg.sender: an escrow or a stranger registering becomes its own (empty) provider.
    function test_register_byAnyCallerRegistersOnlyItself() public {
        vm.prank(stranger);
        registry.register("https://stranger.example", "");
        assertTrue(registry.getProvider(stranger).registered, "the stranger registered itself");
        assertEq(bytes(registry.getProvider(provider).endpoint), bytes("https://node.example"), "");
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryAlreadyRegistered.selector, provider));
        vm.prank(provider);
        registry.register("https://again.example", "");
    }

    // ------------------------------------------------------------------ helpers

    function _recoverHere(ITallyEscrow.Receipt memory r, bytes memory sig) internal view returns (address) {
        (bytes32 rr, bytes32 s) = abi.decode(sig, (bytes32, bytes32));
        return ecrecover(escrow.receiptDigest(r), uint8(sig[64]), rr, s);
    }
}
