// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Test} from "./utils/Test.sol";
import {MockUSDC} from "../src/mocks/MockUSDC.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @notice MockUSDC's EIP-3009 `transferWithAuthorization`, checked against FiatToken v2's behaviour.
contract MockUSDCTest is Test {
    MockUSDC internal usdc;

    uint256 internal constant PAYER_KEY = 0xA11CE;
    uint256 internal constant OTHER_KEY = 0xB0B;
    address internal payer;
    address internal constant PAYEE = address(0xFEE);
    address internal constant FACILITATOR = address(0xFAC);
    uint256 internal constant NOW = 1_700_000_000;
    bytes32 internal constant NONCE = keccak256("nonce");

    struct Auth {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    function setUp() public {
        usdc = new MockUSDC();
        payer = vm.addr(PAYER_KEY);
        usdc.mint(payer, 1_000e6);
        vm.warp(NOW);
    }

    // ------------------------------------------------------------------ token and domain

    function test_token_hasSixDecimalsAndPublicMint() public {
        assertEq(usdc.decimals(), 6, "decimals");
        vm.prank(address(0xD00D));
        usdc.mint(PAYEE, 5);
        assertEq(usdc.balanceOf(PAYEE), 5, "anyone mints");
    }

    function test_typehash_isRebuiltFromFiatTokensString() public view {
        bytes32 expected = keccak256(
            "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
        );
        assertEq(usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), expected);
    }

    function test_domainSeparator_isUsdCoinVersion2OnThisChainAndAddress() public view {
        assertEq(usdc.DOMAIN_SEPARATOR(), _domain(block.chainid, address(usdc)), "domain");
        assertEq(bytes(usdc.name()), bytes("USD Coin"), "name() matches the domain name");
        assertEq(bytes(usdc.version()), bytes("2"), "version() matches the domain version");
    }

    // ------------------------------------------------------------------ success

    function test_transferWithAuthorization_movesTheValueWhenAFacilitatorSubmitsIt() public {
        Auth memory a = _auth(250e6, NONCE);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_KEY, _digest(a));
        assertFalse(usdc.authorizationState(payer, NONCE), "unused before");

        vm.expectEmit(address(usdc));
        emit MockUSDC.AuthorizationUsed(payer, NONCE);
        vm.expectEmit(address(usdc));
        emit IERC20.Transfer(payer, PAYEE, 250e6);
        vm.prank(FACILITATOR);
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, v, r, s);

        assertEq(usdc.balanceOf(payer), 750e6, "payer");
        assertEq(usdc.balanceOf(PAYEE), 250e6, "payee");
        assertEq(usdc.balanceOf(FACILITATOR), 0, "facilitator only pays gas");
        assertTrue(usdc.authorizationState(payer, NONCE), "used after");
    }

    function test_transferWithAuthorization_acceptsThe65ByteSignatureOverload() public {
        Auth memory a = _auth(1e6, NONCE);
        vm.expectEmit(address(usdc));
        emit MockUSDC.AuthorizationUsed(payer, NONCE);
        vm.prank(FACILITATOR);
        usdc.transferWithAuthorization(
            a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, _packed(PAYER_KEY, _digest(a))
        );
        assertEq(usdc.balanceOf(PAYEE), 1e6, "payee");
        assertTrue(usdc.authorizationState(payer, NONCE), "used");
    }

    function test_transferWithAuthorization_takesAnyUnusedNonceInAnyOrder() public {
        _submit(_auth(1e6, keccak256("b")), PAYER_KEY);
        _submit(_auth(2e6, keccak256("a")), PAYER_KEY);
        assertEq(usdc.balanceOf(PAYEE), 3e6, "both settled");
        assertFalse(usdc.authorizationState(payer, keccak256("c")), "an unseen nonce stays unused");
    }

    function test_authorizationState_isPerAuthorizer() public {
        _submit(_auth(1e6, NONCE), PAYER_KEY);
        address other = vm.addr(OTHER_KEY);
        usdc.mint(other, 1e6);
        assertFalse(usdc.authorizationState(other, NONCE), "another payer's nonce is untouched");
        Auth memory a = _auth(1e6, NONCE);
        a.from = other;
        _submit(a, OTHER_KEY);
        assertEq(usdc.balanceOf(PAYEE), 2e6, "payee");
    }

    function testFuzz_transferWithAuthorization_conservesBalances(uint256 value, bytes32 nonce) public {
        value = bound(value, 0, usdc.balanceOf(payer));
        uint256 supply = usdc.totalSupply();
        _submit(_auth(value, nonce), PAYER_KEY);
        assertEq(usdc.balanceOf(PAYEE), value, "payee");
        assertEq(usdc.balanceOf(payer), 1_000e6 - value, "payer");
        assertEq(usdc.totalSupply(), supply, "supply");
        assertTrue(usdc.authorizationState(payer, nonce), "used");
    }

    // ------------------------------------------------------------------ reverts

    function test_transferWithAuthorization_revertsOnAReplayedNonce() public {
        Auth memory a = _auth(1e6, NONCE);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_KEY, _digest(a));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, v, r, s);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.MockUSDCAuthorizationUsed.selector, payer, NONCE));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, v, r, s);
    }

    function test_transferWithAuthorization_revertsOnANonceReplayedThroughTheOtherOverload() public {
        Auth memory a = _auth(1e6, NONCE);
        bytes memory sig = _packed(PAYER_KEY, _digest(a));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PAYER_KEY, _digest(a));
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.MockUSDCAuthorizationUsed.selector, payer, NONCE));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, v, r, s);
    }

    function test_transferWithAuthorization_revertsAtAndAfterValidBefore() public {
        Auth memory a = _auth(1e6, NONCE);
        a.validBefore = NOW; // the bound is strict: expired at validBefore itself
        bytes memory sig = _packed(PAYER_KEY, _digest(a));
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.MockUSDCAuthorizationExpired.selector, NOW, NOW));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);

        a.validBefore = NOW - 1;
        sig = _packed(PAYER_KEY, _digest(a));
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.MockUSDCAuthorizationExpired.selector, NOW - 1, NOW));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);
        assertFalse(usdc.authorizationState(payer, NONCE), "nonce not spent");
    }

    function test_transferWithAuthorization_revertsAtAndBeforeValidAfter() public {
        Auth memory a = _auth(1e6, NONCE);
        a.validAfter = NOW; // the bound is strict: not yet valid at validAfter itself
        bytes memory sig = _packed(PAYER_KEY, _digest(a));
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.MockUSDCAuthorizationNotYetValid.selector, NOW, NOW));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);

        vm.warp(NOW + 1); // one second later the same authorization goes through
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);
        assertEq(usdc.balanceOf(PAYEE), 1e6, "payee");
    }

    function test_transferWithAuthorization_revertsWhenSignedByAnotherKey() public {
        Auth memory a = _auth(1e6, NONCE);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OTHER_KEY, _digest(a));
        vm.expectRevert(
            abi.encodeWithSelector(MockUSDC.MockUSDCInvalidSigner.selector, vm.addr(OTHER_KEY), payer)
        );
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, v, r, s);
        assertFalse(usdc.authorizationState(payer, NONCE), "nonce not spent");
    }

    function test_transferWithAuthorization_revertsWhenTheFacilitatorChangesTheValue() public {
        Auth memory a = _auth(1e6, NONCE);
        bytes memory sig = _packed(PAYER_KEY, _digest(a));
        a.value = 2e6;
        address recovered = ECDSA.recover(_digest(a), sig);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.MockUSDCInvalidSigner.selector, recovered, payer));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);
    }

    function test_transferWithAuthorization_revertsWhenTheFacilitatorRedirectsThePayment() public {
        Auth memory a = _auth(1e6, NONCE);
        bytes memory sig = _packed(PAYER_KEY, _digest(a));
        a.to = FACILITATOR;
        address recovered = ECDSA.recover(_digest(a), sig);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.MockUSDCInvalidSigner.selector, recovered, payer));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);
    }

    function test_transferWithAuthorization_revertsOnASignatureForAnotherChain() public {
        Auth memory a = _auth(1e6, NONCE);
        bytes32 otherChain = _hash(_domain(block.chainid + 1, address(usdc)), a);
        bytes memory sig = _packed(PAYER_KEY, otherChain);
        address recovered = ECDSA.recover(_digest(a), sig);
        vm.expectRevert(abi.encodeWithSelector(MockUSDC.MockUSDCInvalidSigner.selector, recovered, payer));
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);
    }

    function test_transferWithAuthorization_revertsOnAShortSignature() public {
        Auth memory a = _auth(1e6, NONCE);
        (, bytes32 r, bytes32 s) = vm.sign(PAYER_KEY, _digest(a));
        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureLength.selector, 64));
        usdc.transferWithAuthorization(
            a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, abi.encodePacked(r, s)
        );
    }

    function test_transferWithAuthorization_revertsBeyondTheBalanceAndKeepsTheNonce() public {
        Auth memory a = _auth(1_000e6 + 1, NONCE);
        bytes memory sig = _packed(PAYER_KEY, _digest(a));
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, payer, 1_000e6, 1_000e6 + 1)
        );
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);
        assertFalse(usdc.authorizationState(payer, NONCE), "the revert leaves the nonce unused");
    }

    // ------------------------------------------------------------------ helpers

    function _auth(uint256 value, bytes32 nonce) internal view returns (Auth memory) {
        return Auth(payer, PAYEE, value, NOW - 60, NOW + 600, nonce);
    }

    function _submit(Auth memory a, uint256 key) internal {
        bytes memory sig = _packed(key, _digest(a));
        vm.prank(FACILITATOR);
        usdc.transferWithAuthorization(a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, sig);
    }

    function _packed(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _digest(Auth memory a) internal view returns (bytes32) {
        return _hash(_domain(block.chainid, address(usdc)), a);
    }

    /// @dev The EIP-712 digest built by hand, independently of the contract's helpers.
    function _hash(bytes32 domain, Auth memory a) internal pure returns (bytes32) {
        bytes32 typehash = keccak256(
            "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
        );
        bytes32 structHash =
            keccak256(abi.encode(typehash, a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce));
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function _domain(uint256 chainId, address verifyingContract) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("USD Coin"),
                keccak256("2"),
                chainId,
                verifyingContract
            )
        );
    }
}
