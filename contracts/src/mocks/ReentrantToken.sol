// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice A malicious token: on its next transfer or transferFrom it calls `target` with `data` (for example
/// TallyEscrow.claim, withdraw or finalize) and records what happened, so a test can assert the re-entry failed.
contract ReentrantToken is ERC20 {
    address public target;
    bytes public data;
    bool public armed;
    bool public attempted;
    bool public reentrySucceeded;
    bytes public reentryResult;

    constructor() ERC20("Reentrant Token", "REENT") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Arms a single re-entry into `target_` with `data_` on the next transfer.
    function arm(address target_, bytes calldata data_) external {
        target = target_;
        data = data_;
        armed = true;
        attempted = false;
        reentrySucceeded = false;
        delete reentryResult;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (armed && from != address(0) && to != address(0)) {
            armed = false; // disarmed first, so the re-entry cannot recurse through this hook
            attempted = true;
            (reentrySucceeded, reentryResult) = target.call(data);
        }
    }
}
