// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {ITallyEscrow} from "../src/interfaces/ITallyEscrow.sol";
import {MockUSDC} from "../src/mocks/MockUSDC.sol";

/// @notice The three holes of issue 10, replayed as the attack run found them. Each test failed on the escrow
/// before the fix (claims by anyone, a key change that voids receipts, `open` without the token).
contract TallyEscrowRegressionTest is EscrowFixture {
    uint96 internal constant DEPOSIT = 1 ether;

    /// Hole 1: the provider claimed (1000, 500) and holds a countersigned (6000, 50500); the client claims its own
    /// (6001, 500) to make every receipt the provider holds fail with EscrowTotalsDecreased, then closes. Now only
    /// the provider moves the claimed totals, and it is paid in full.
    function test_aClientCannotJamTheProvidersClaimsWithItsOwnReceipt() public {
        bytes32 id = _openEth(DEPOSIT);
        _claim(id, 1000, 500);
        ITallyEscrow.Receipt memory owed = _receipt(id, 6000, 50_500);
        bytes memory owedSig = _sign(CLIENT_KEY, owed);
        ITallyEscrow.Receipt memory jam = _receipt(id, 6001, 500);
        bytes memory jamSig = _sign(CLIENT_KEY, jam);

        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowNotProvider.selector, client, provider));
        vm.prank(client);
        escrow.claim(jam, jamSig);
        (ITallyEscrow.Receipt[] memory rs, bytes[] memory sigs) = (new ITallyEscrow.Receipt[](1), new bytes[](1));
        (rs[0], sigs[0]) = (jam, jamSig);
        vm.expectEmit(address(escrow));
        emit ITallyEscrow.ReceiptSkipped(
            0, id, abi.encodeWithSelector(ITallyEscrow.EscrowNotProvider.selector, client, provider)
        );
        vm.prank(client);
        assertEq(escrow.claimMany(rs, sigs), 0);

        vm.prank(client);
        escrow.requestClose(id);
        uint256 owedCost = _refCost(6000, 50_500, PRICE_IN, PRICE_OUT);
        vm.prank(provider);
        assertEq(escrow.claim(owed, owedSig), owedCost - _refCost(1000, 500, PRICE_IN, PRICE_OUT));
        vm.warp(block.timestamp + CHALLENGE);
        uint256 before = client.balance;
        escrow.finalize(id);
        assertEq(escrow.earnings(provider, ETH), owedCost, "the provider is paid every token it served");
        assertEq(client.balance - before, DEPOSIT - owedCost);
    }

    /// Hole 2: the session key countersigns (40000, 20000); the client revokes it and closes unilaterally. The
    /// receipt stays claimable (for one challenge period after the revocation, within the close deadline).
    function test_revokingASessionKeyDoesNotVoidWhatItCountersigned() public {
        bytes32 id = _openAs(client, ETH_MODEL, ETH, DEPOSIT, session, PRICE_IN, PRICE_OUT);
        ITallyEscrow.Receipt memory r = _receipt(id, 40_000, 20_000);
        bytes memory sig = _sign(SESSION_KEY, r);
        vm.startPrank(client);
        escrow.authorizeSessionKey(id, address(0));
        escrow.requestClose(id);
        vm.stopPrank();
        vm.warp(block.timestamp + CHALLENGE - 1);
        uint256 cost = _refCost(40_000, 20_000, PRICE_IN, PRICE_OUT);
        vm.prank(provider);
        assertEq(escrow.claim(r, sig), cost);
        vm.warp(block.timestamp + 1);
        uint256 before = client.balance;
        escrow.finalize(id);
        assertEq(client.balance - before, DEPOSIT - cost, "the client gets back only what it did not spend");
    }

    /// Hole 3: the provider re-lists the model with another ERC-20 at the same prices; a client with a standing
    /// allowance for both opens with the token it accepted: refused, nothing moves.
    function test_aProviderCannotSwitchTheTokenUnderAnOpen() public {
        MockUSDC other = new MockUSDC();
        other.mint(client, 1e12);
        vm.prank(client);
        other.approve(address(escrow), type(uint256).max); // usdc is approved too (fixture)
        (uint96 maxIn, uint96 maxOut, address accepted) = registry.quote(provider, USDC_MODEL);
        vm.prank(provider);
        registry.listModel(USDC_MODEL_NAME, PRICE_IN, PRICE_OUT, address(other), TOKENIZER_HASH, 8192);
        (uint256 usdcBefore, uint256 otherBefore) = (usdc.balanceOf(client), other.balanceOf(client));
        vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowTokenMismatch.selector, address(other), accepted));
        _openAs(client, USDC_MODEL, accepted, 5e6, address(0), maxIn, maxOut);
        assertEq(usdc.balanceOf(client), usdcBefore);
        assertEq(other.balanceOf(client), otherBefore, "the switched token was not pulled");
        assertEq(other.balanceOf(address(escrow)), 0);
    }
}
