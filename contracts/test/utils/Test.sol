// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Vm} from "./Vm.sol";

/// @notice A minimal forge-style test base: the cheatcode handle, assertions, `bound`, and the
/// invariant-target hooks the fuzzer reads (`targetContracts`, `targetSenders`).
abstract contract Test {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    bool public constant IS_TEST = true;

    address[] private _targetContracts;
    address[] private _targetSenders;

    // ------------------------------------------------------------ invariant targets

    function targetContract(address target) internal {
        _targetContracts.push(target);
    }

    function targetSender(address sender) internal {
        _targetSenders.push(sender);
    }

    function targetContracts() public view returns (address[] memory) {
        return _targetContracts;
    }

    function targetSenders() public view returns (address[] memory) {
        return _targetSenders;
    }

    // ------------------------------------------------------------ assertions

    function assertEq(uint256 a, uint256 b, string memory what) internal pure {
        vm.assertEq(a, b, what);
    }

    function assertEq(uint256 a, uint256 b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(address a, address b, string memory what) internal pure {
        vm.assertEq(a, b, what);
    }

    function assertEq(address a, address b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(bytes32 a, bytes32 b, string memory what) internal pure {
        vm.assertEq(a, b, what);
    }

    function assertEq(bytes32 a, bytes32 b) internal pure {
        vm.assertEq(a, b, "");
    }

    function assertEq(bytes memory a, bytes memory b, string memory what) internal pure {
        vm.assertEq(a, b, what);
    }

    function assertEq(bool a, bool b, string memory what) internal pure {
        vm.assertEq(a, b, what);
    }

    function assertLe(uint256 a, uint256 b, string memory what) internal pure {
        vm.assertLe(a, b, what);
    }

    function assertGe(uint256 a, uint256 b, string memory what) internal pure {
        vm.assertGe(a, b, what);
    }

    function assertTrue(bool c, string memory what) internal pure {
        vm.assertTrue(c, what);
    }

    function assertFalse(bool c, string memory what) internal pure {
        vm.assertFalse(c, what);
    }

    // ------------------------------------------------------------ fuzz helpers

    /// @dev Maps `x` into [min, max] uniformly enough for fuzzing, keeping small values as they are
    /// (as forge-std's `bound` does, so the fuzzer's edge cases survive).
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        if (x >= min && x <= max) return x;
        uint256 size = max - min;
        if (size == type(uint256).max) return x;
        return min + (x % (size + 1));
    }
}
