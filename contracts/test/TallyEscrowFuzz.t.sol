// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {ITallyEscrow} from "../src/interfaces/ITallyEscrow.sol";

/// @notice Property tests on amounts and totals (runs: test.solidity.fuzz.runs in hardhat.config.js).
contract TallyEscrowFuzzTest is EscrowFixture {
    function _list(uint96 pi, uint88 po) internal returns (bytes32 model) {
        vm.prank(provider);
        model = registry.listModel("fuzz-model", pi, po, address(usdc), TOKENIZER_HASH, 1);
    }

    function _openAt(bytes32 model, uint96 deposit) internal returns (bytes32) {
        (uint96 maxIn, uint96 maxOut,) = registry.quote(provider, model);
        vm.prank(client);
        return escrow.open(provider, model, address(usdc), deposit, address(0), maxIn, maxOut, _salt());
    }

    /// Opens exactly when both listed prices are within the limits, and then snapshots the listed prices.
    function testFuzz_open_refusesAnyPriceAboveItsLimit(uint96 pi, uint88 po, uint96 maxIn, uint96 maxOut) public {
        bytes32 model = _list(pi, po);
        bool above = pi > maxIn || po > maxOut;
        if (above) {
            vm.expectRevert(
                abi.encodeWithSelector(ITallyEscrow.EscrowPriceAboveLimit.selector, pi, uint96(po), maxIn, maxOut)
            );
        }
        vm.prank(client);
        bytes32 id = escrow.open(provider, model, address(usdc), 1e6, address(0), maxIn, maxOut, _salt());
        if (above) {
            assertEq(usdc.balanceOf(address(escrow)), 0, "nothing moved");
        } else {
            assertEq(escrow.getChannel(id).inputPricePerM, pi);
            assertEq(escrow.getChannel(id).outputPricePerM, po);
            assertEq(usdc.balanceOf(address(escrow)), 1e6);
        }
    }

    function testFuzz_costOf_matchesTheReferenceFormula(uint64 i, uint64 o, uint96 pi, uint88 po) public {
        bytes32 id = _openAt(_list(pi, po), 1);
        assertEq(escrow.costOf(id, i, o), _refCost(i, o, pi, po));
    }

    function testFuzz_costOf_isMonotonicInBothTotals(uint64 i, uint64 o, uint64 di, uint64 dio, uint96 pi, uint88 po)
        public
    {
        bytes32 id = _openAt(_list(pi, po), 1);
        uint64 i2 = uint64(bound(uint256(i) + di, i, type(uint64).max));
        uint64 o2 = uint64(bound(uint256(o) + dio, o, type(uint64).max));
        assertLe(escrow.costOf(id, i, o), escrow.costOf(id, i2, o2), "cost never decreases");
    }

    function testFuzz_open_escrowsAnyEthAmount(uint96 amount) public {
        amount = uint96(bound(amount, 1, 1_000_000 ether));
        bytes32 id = _openEth(amount);
        assertEq(address(escrow).balance, amount);
        assertEq(escrow.getChannel(id).deposit, amount);
    }

    function testFuzz_open_escrowsAnyUsdcAmount(uint96 amount) public {
        vm.assume(amount > 0);
        bytes32 id = _openUsdc(amount);
        assertEq(usdc.balanceOf(address(escrow)), amount);
        assertEq(escrow.getChannel(id).deposit, amount);
    }

    function testFuzz_topUp_addsUpOrRevertsPastUint96(uint96 a, uint96 b) public {
        vm.assume(a > 0 && b > 0);
        usdc.mint(client, b); // the client holds uint96.max from setUp; top-ups beyond it need more
        bytes32 id = _openUsdc(a);
        uint256 sum = uint256(a) + b;
        if (sum > type(uint96).max) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowAmountTooLarge.selector, sum));
        }
        vm.prank(client);
        escrow.topUp(id, b);
        if (sum <= type(uint96).max) {
            assertEq(escrow.getChannel(id).deposit, sum);
            assertEq(usdc.balanceOf(address(escrow)), sum);
        }
    }

    /// Two successive claims pay min(cost, deposit) in total, or the second reverts when a total went down.
    function testFuzz_claim_paysMinOfCostAndDepositOnCumulativeTotals(
        uint96 deposit,
        uint64 i1,
        uint64 o1,
        uint64 i2,
        uint64 o2,
        uint96 pi,
        uint88 po
    ) public {
        vm.assume(deposit > 0 && (i1 > 0 || o1 > 0));
        bytes32 id = _openAt(_list(pi, po), deposit);
        uint256 first = _claim(id, i1, o1);
        assertEq(first, _min(_refCost(i1, o1, pi, po), deposit));
        ITallyEscrow.Receipt memory r = _receipt(id, i2, o2);
        bytes memory sig = _sign(CLIENT_KEY, r);
        if (i2 < i1 || o2 < o1) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowTotalsDecreased.selector, i2, o2, i1, o1));
            vm.prank(provider);
            escrow.claim(r, sig);
            return;
        }
        if (i2 == i1 && o2 == o1) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowReceiptNotNewer.selector, i2, o2));
            vm.prank(provider);
            escrow.claim(r, sig);
            return;
        }
        vm.prank(provider);
        uint256 second = escrow.claim(r, sig);
        assertEq(first + second, _min(_refCost(i2, o2, pi, po), deposit), "paid = min(cost, deposit)");
        assertEq(escrow.earnings(provider, address(usdc)), first + second);
        assertLe(escrow.getChannel(id).paid, deposit, "never more than the deposit");
    }

    function testFuzz_claimMany_paysEachChannelItsCostAndSkipsTheRest(uint64[4] memory totals, uint8 badMask)
        public
    {
        uint96 deposit = 1e12;
        ITallyEscrow.Receipt[] memory rs = new ITallyEscrow.Receipt[](4);
        bytes[] memory sigs = new bytes[](4);
        uint256 expected;
        for (uint256 k; k < 4; ++k) {
            bytes32 id = _openUsdc(deposit);
            uint64 t = uint64(bound(totals[k], 1, type(uint64).max));
            rs[k] = _receipt(id, t, t / 3);
            bool bad = (badMask >> k) & 1 == 1;
            sigs[k] = _sign(bad ? STRANGER_KEY : CLIENT_KEY, rs[k]);
            if (!bad) expected += _min(_refCost(t, t / 3, PRICE_IN, PRICE_OUT), deposit);
        }
        vm.prank(provider);
        assertEq(escrow.claimMany(rs, sigs), expected);
        assertEq(escrow.earnings(provider, address(usdc)), expected);
    }

    function testFuzz_closeCooperative_splitsTheDepositExactly(uint96 deposit, uint64 i, uint64 o) public {
        vm.assume(deposit > 0);
        bytes32 id = _openUsdc(deposit);
        ITallyEscrow.Receipt memory r = _receipt(id, i, o);
        uint256 before = usdc.balanceOf(client);
        bytes memory clientSig = _sign(CLIENT_KEY, r);
        bytes memory providerSig = _sign(PROVIDER_KEY, r);
        vm.prank(provider);
        escrow.closeCooperative(r, clientSig, providerSig);
        uint256 paid = _min(_refCost(i, o, PRICE_IN, PRICE_OUT), deposit);
        assertEq(escrow.earnings(provider, address(usdc)), paid);
        assertEq(usdc.balanceOf(client) - before, deposit - paid, "refund = deposit - paid");
        assertEq(usdc.balanceOf(address(escrow)), paid);
    }

    function testFuzz_finalize_onlyAfterTheChallengePeriodAndRefundsTheRest(
        uint96 deposit,
        uint64 i,
        uint32 wait
    ) public {
        vm.assume(deposit > 0 && i > 0);
        bytes32 id = _openUsdc(deposit);
        uint256 paid = _claim(id, i, 0);
        vm.prank(client);
        escrow.requestClose(id);
        uint32 closesAt = escrow.getChannel(id).closesAt;
        vm.warp(block.timestamp + wait);
        if (block.timestamp < closesAt) {
            vm.expectRevert(abi.encodeWithSelector(ITallyEscrow.EscrowChallengeNotOver.selector, id, closesAt));
            escrow.finalize(id);
            return;
        }
        uint256 before = usdc.balanceOf(client);
        escrow.finalize(id);
        assertEq(usdc.balanceOf(client) - before, deposit - paid);
        assertEq(usdc.balanceOf(address(escrow)), paid);
    }

    function testFuzz_withdraw_paysExactlyTheEarnings(uint96 deposit, uint64 i, uint64 o) public {
        vm.assume(deposit > 0 && (i > 0 || o > 0));
        bytes32 id = _openUsdc(deposit);
        uint256 paid = _claim(id, i, o);
        vm.assume(paid > 0);
        vm.prank(provider);
        assertEq(escrow.withdraw(address(usdc), provider), paid);
        assertEq(usdc.balanceOf(provider), paid);
        assertEq(escrow.earnings(provider, address(usdc)), 0);
        assertEq(usdc.balanceOf(address(escrow)), deposit - paid);
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }
}
