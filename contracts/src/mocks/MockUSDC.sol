// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

/// @title MockUSDC
/// @notice A MOCK 6-decimal stablecoin for local chains, tests and benchmarks; anyone can mint. It is
/// not USDC. It implements EIP-3009 `transferWithAuthorization` the way Circle's FiatToken v2 does
/// (same type string, function signatures, `authorizationState`, `AuthorizationUsed` event, EIP-712
/// domain "USD Coin" / "2"), so x402's "exact" scheme can settle against it on a local chain.
/// @dev Unlike FiatToken it has no proxy, pause, blacklist or minter roles, no ERC-1271 signers, and
/// no receive/cancelAuthorization; its gas is therefore a lower bound for the real token's. It
/// reverts with custom errors where FiatToken reverts with strings.
contract MockUSDC is ERC20, EIP712 {
    /// @notice EIP-3009's type hash, as FiatToken v2 spells it.
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );

    /// @dev authorizer => nonce => used. Nonces are random 32-byte values, not a counter (EIP-3009),
    /// so one payer can have many authorizations in flight.
    mapping(address authorizer => mapping(bytes32 nonce => bool used)) private _authorizationUsed;

    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);

    error MockUSDCAuthorizationNotYetValid(uint256 validAfter, uint256 timestamp);
    error MockUSDCAuthorizationExpired(uint256 validBefore, uint256 timestamp);
    error MockUSDCAuthorizationUsed(address authorizer, bytes32 nonce);
    error MockUSDCInvalidSigner(address signer, address from);

    constructor() ERC20("USD Coin", "USDC") EIP712("USD Coin", "2") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice The EIP-712 domain version; x402 facilitators read it with `name()` to check a payer's domain.
    function version() external pure returns (string memory) {
        return "2";
    }

    /// @notice FiatToken's name for the EIP-712 domain separator of this chain and address.
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice Whether `authorizer` has used (true) or not yet used (false) `nonce`.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationUsed[authorizer][nonce];
    }

    /// @notice Moves `value` from `from` to `to` on `from`'s EIP-712 signature (v, r, s); anyone
    /// may submit it (x402's facilitator does).
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        bytes32 digest = _authorize(from, to, value, validAfter, validBefore, nonce);
        _settle(ECDSA.recover(digest, v, r, s), from, to, value, nonce);
    }

    /// @notice As above with the 65-byte signature r ‖ s ‖ v (FiatToken v2.2's overload).
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external {
        bytes32 digest = _authorize(from, to, value, validAfter, validBefore, nonce);
        _settle(ECDSA.recover(digest, signature), from, to, value, nonce);
    }

    /// @dev FiatToken's checks in its order (validAfter, validBefore, unused nonce); the digest to sign.
    function _authorize(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) private view returns (bytes32) {
        // Both bounds are strict, as in FiatToken: valid when validAfter < now < validBefore.
        if (block.timestamp <= validAfter) revert MockUSDCAuthorizationNotYetValid(validAfter, block.timestamp);
        if (block.timestamp >= validBefore) revert MockUSDCAuthorizationExpired(validBefore, block.timestamp);
        if (_authorizationUsed[from][nonce]) revert MockUSDCAuthorizationUsed(from, nonce);
        return _hashTypedDataV4(
            keccak256(abi.encode(TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce))
        );
    }

    /// @dev Checks the signer, spends the nonce, then moves the tokens.
    function _settle(address signer, address from, address to, uint256 value, bytes32 nonce) private {
        if (signer != from) revert MockUSDCInvalidSigner(signer, from);
        _authorizationUsed[from][nonce] = true;
        emit AuthorizationUsed(from, nonce);
        _transfer(from, to, value);
    }
}
