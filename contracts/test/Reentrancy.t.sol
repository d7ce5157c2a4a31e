// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {ITallyEscrow} from "../src/interfaces/ITallyEscrow.sol";
import {ReentrantToken} from "../src/mocks/ReentrantToken.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @notice A malicious token re-enters the escrow from transfer/transferFrom; every re-entry must fail
/// with ReentrancyGuardReentrantCall and leave the books exact.
contract ReentrancyTest is EscrowFixture {
    ReentrantToken internal evil;
    bytes32 internal evilModel;

    function setUp() public override {
        super.setUp();
        evil = new ReentrantToken();
        vm.prank(provider);
        evilModel = registry.listModel("evil-model", PRICE_IN, PRICE_OUT, address(evil), TOKENIZER_HASH, 1);
        evil.mint(client, 1e12);
        vm.prank(client);
        evil.approve(address(escrow), type(uint256).max);
    }

    bytes32[] internal evilChannels;

    function _openEvil(uint96 amount) internal returns (bytes32 id) {
        vm.prank(client);
        id = escrow.open(provider, evilModel, address(evil), amount, address(0), PRICE_IN, PRICE_OUT, _salt());
        evilChannels.push(id);
    }

    function _assertBlocked() internal view {
        assertTrue(evil.attempted(), "the token tried to re-enter");
        assertFalse(evil.reentrySucceeded(), "the re-entry failed");
        assertEq(
            evil.reentryResult(),
            abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector),
            "blocked by the reentrancy guard"
        );
    }

    function _assertConservation() internal view {
        (, uint256 open) = _sumEvil();
        assertEq(evil.balanceOf(address(escrow)), open + escrow.earnings(provider, address(evil)), "conservation");
    }

    function _sumEvil() internal view returns (uint256 n, uint256 escrowed) {
        n = evilChannels.length;
        for (uint256 i; i < n; ++i) {
            ITallyEscrow.ChannelView memory c = escrow.getChannel(evilChannels[i]);
            if (c.status == ITallyEscrow.Status.Open || c.status == ITallyEscrow.Status.Closing) {
                escrowed += c.deposit - c.paid;
            }
        }
    }

    function test_reentrantToken_cannotClaimFromInsideOpen() public {
        bytes32 id = _openEvil(1e9);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 1e6);
        evil.arm(address(escrow), abi.encodeCall(escrow.claim, (r, _sign(CLIENT_KEY, r))));
        _openEvil(1e9);
        _assertBlocked();
        assertEq(escrow.getChannel(id).paid, 0);
        _assertConservation();
    }

    function test_reentrantToken_cannotTopUpFromInsideTopUp() public {
        bytes32 id = _openEvil(1e9);
        evil.arm(address(escrow), abi.encodeCall(escrow.topUp, (id, 1)));
        vm.prank(client);
        escrow.topUp(id, 5);
        _assertBlocked();
        assertEq(escrow.getChannel(id).deposit, 1e9 + 5);
        _assertConservation();
    }

    function test_reentrantToken_cannotWithdrawTwice() public {
        bytes32 id = _openEvil(1e9);
        _claim(id, 1e6, 1e6);
        evil.arm(address(escrow), abi.encodeCall(escrow.withdraw, (address(evil), provider)));
        vm.prank(provider);
        escrow.withdraw(address(evil), provider);
        _assertBlocked();
        assertEq(evil.balanceOf(provider), PRICE_IN + PRICE_OUT, "paid once");
        _assertConservation();
    }

    function test_reentrantToken_cannotFinalizeTwiceOrClaimDuringTheRefund() public {
        bytes32 id = _openEvil(1e9);
        bytes32 other = _openEvil(1e9);
        ITallyEscrow.Receipt memory r = _receipt(other, 1e6, 0);
        vm.prank(client);
        escrow.requestClose(id);
        vm.warp(block.timestamp + CHALLENGE);
        evil.arm(address(escrow), abi.encodeCall(escrow.finalize, (id)));
        uint256 before = evil.balanceOf(client);
        escrow.finalize(id);
        _assertBlocked();
        assertEq(evil.balanceOf(client) - before, 1e9, "refunded once");
        evil.arm(address(escrow), abi.encodeCall(escrow.claim, (r, _sign(CLIENT_KEY, r))));
        vm.prank(client);
        escrow.requestClose(other);
        vm.warp(block.timestamp + CHALLENGE);
        escrow.finalize(other);
        _assertBlocked();
        _assertConservation();
    }

    function test_reentrantToken_cannotReenterFromTheCooperativeRefund() public {
        bytes32 id = _openEvil(1e9);
        ITallyEscrow.Receipt memory r = _receipt(id, 1e6, 1e6);
        bytes memory c = _sign(CLIENT_KEY, r);
        bytes memory p = _sign(PROVIDER_KEY, r);
        evil.arm(address(escrow), abi.encodeCall(escrow.closeCooperative, (r, c, p)));
        vm.prank(provider);
        escrow.closeCooperative(r, c, p);
        _assertBlocked();
        assertEq(escrow.earnings(provider, address(evil)), PRICE_IN + PRICE_OUT);
        _assertConservation();
    }

    function test_reentrantToken_claimManyCannotBeReenteredFromTheWithdrawOfABatch() public {
        bytes32 id = _openEvil(1e9);
        _claim(id, 1, 1e6);
        ITallyEscrow.Receipt[] memory rs = new ITallyEscrow.Receipt[](1);
        bytes[] memory sigs = new bytes[](1);
        rs[0] = _receipt(id, 2e6, 2e6);
        sigs[0] = _sign(CLIENT_KEY, rs[0]);
        evil.arm(address(escrow), abi.encodeCall(escrow.claimMany, (rs, sigs)));
        vm.prank(provider);
        escrow.withdraw(address(evil), provider);
        _assertBlocked();
        assertEq(escrow.getChannel(id).inputTokens, 1);
        _assertConservation();
    }
}
