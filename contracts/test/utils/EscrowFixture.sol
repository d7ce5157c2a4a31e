// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Test} from "./Test.sol";
import {ProviderRegistry} from "../../src/ProviderRegistry.sol";
import {TallyEscrow} from "../../src/TallyEscrow.sol";
import {ITallyEscrow} from "../../src/interfaces/ITallyEscrow.sol";
import {IProviderRegistry} from "../../src/interfaces/IProviderRegistry.sol";
import {MockUSDC} from "../../src/mocks/MockUSDC.sol";

/// @notice A deployed registry + escrow + USDC, one provider with an ETH and a USDC listing, one funded client.
abstract contract EscrowFixture is Test {
    uint32 internal constant CHALLENGE = 1 hours;
    uint96 internal constant PRICE_IN = 100_000; // per million tokens
    uint96 internal constant PRICE_OUT = 400_000;
    bytes32 internal constant TOKENIZER_HASH = keccak256("tokenizer bundle");
    string internal constant ETH_MODEL_NAME = "SmolLM2-135M-Instruct";
    string internal constant USDC_MODEL_NAME = "SmolLM2-135M-Instruct-usdc";
    bytes32 internal constant ETH_MODEL = keccak256(bytes(ETH_MODEL_NAME));
    bytes32 internal constant USDC_MODEL = keccak256(bytes(USDC_MODEL_NAME));
    address internal constant ETH = address(0);

    uint256 internal constant CLIENT_KEY = 0xC11E47;
    uint256 internal constant PROVIDER_KEY = 0xB0B;
    uint256 internal constant SESSION_KEY = 0x5E55;
    uint256 internal constant STRANGER_KEY = 0xBAD;

    uint256 private _salts;

    ProviderRegistry internal registry;
    TallyEscrow internal escrow;
    MockUSDC internal usdc;
    address internal client;
    address internal provider;
    address internal session;
    address internal stranger;

    function setUp() public virtual {
        client = vm.addr(CLIENT_KEY);
        provider = vm.addr(PROVIDER_KEY);
        session = vm.addr(SESSION_KEY);
        stranger = vm.addr(STRANGER_KEY);
        registry = new ProviderRegistry();
        escrow = new TallyEscrow(address(registry), CHALLENGE);
        usdc = new MockUSDC();
        vm.startPrank(provider);
        registry.register("https://node.example", "{}");
        registry.listModel(ETH_MODEL_NAME, PRICE_IN, PRICE_OUT, ETH, TOKENIZER_HASH, 8192);
        registry.listModel(USDC_MODEL_NAME, PRICE_IN, PRICE_OUT, address(usdc), TOKENIZER_HASH, 8192);
        vm.stopPrank();
        vm.deal(client, 1_000_000 ether);
        vm.deal(stranger, 1_000 ether);
        usdc.mint(client, type(uint96).max);
        vm.prank(client);
        usdc.approve(address(escrow), type(uint256).max);
    }

    /// @dev A fresh channel salt (the SDK picks random ones; any unused value will do).
    function _salt() internal returns (bytes32) {
        return bytes32(++_salts);
    }

    /// @dev The id `open` gives a channel of `client` (docs/protocol.md §2).
    function _channelId(bytes32 modelId, bytes32 salt) internal view returns (bytes32) {
        return keccak256(abi.encode(address(escrow), client, provider, modelId, salt));
    }

    /// @dev `who` opens a channel to `provider` paying in `token` (value sent for ETH), with a fresh salt.
    function _openAs(
        address who,
        bytes32 modelId,
        address token,
        uint96 amount,
        address sessionKey,
        uint96 maxIn,
        uint96 maxOut
    ) internal returns (bytes32) {
        bytes32 salt = _salt();
        vm.prank(who);
        return escrow.open{value: token == ETH ? amount : 0}(provider, modelId, token, amount, sessionKey, maxIn, maxOut, salt);
    }

    /// @dev Opens as a client does: with the prices it was just quoted as its limits.
    function _openEth(uint96 amount) internal returns (bytes32) {
        (uint96 maxIn, uint96 maxOut,) = registry.quote(provider, ETH_MODEL);
        vm.prank(client);
        return escrow.open{value: amount}(provider, ETH_MODEL, ETH, amount, address(0), maxIn, maxOut, _salt());
    }

    function _openUsdc(uint96 amount) internal returns (bytes32) {
        (uint96 maxIn, uint96 maxOut,) = registry.quote(provider, USDC_MODEL);
        vm.prank(client);
        return escrow.open(provider, USDC_MODEL, address(usdc), amount, address(0), maxIn, maxOut, _salt());
    }

    function _receipt(bytes32 channelId, uint64 inputTokens, uint64 outputTokens)
        internal
        pure
        returns (ITallyEscrow.Receipt memory)
    {
        return ITallyEscrow.Receipt(channelId, inputTokens, outputTokens, keccak256(abi.encode(inputTokens, outputTokens)));
    }

    function _sign(uint256 key, ITallyEscrow.Receipt memory r) internal view returns (bytes memory) {
        return _signWith(escrow, key, r);
    }

    function _signWith(TallyEscrow on, uint256 key, ITallyEscrow.Receipt memory r)
        internal
        view
        returns (bytes memory)
    {
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(key, on.receiptDigest(r));
        return abi.encodePacked(rr, s, v);
    }

    function _claim(bytes32 channelId, uint64 inputTokens, uint64 outputTokens) internal returns (uint96) {
        ITallyEscrow.Receipt memory r = _receipt(channelId, inputTokens, outputTokens);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.prank(provider);
        return escrow.claim(r, sig);
    }

    /// @dev The reference cost of docs/protocol.md §3, written independently of the contract's.
    function _refCost(uint256 i, uint256 o, uint256 pi, uint256 po) internal pure returns (uint256) {
        uint256 a = i * pi;
        uint256 b = o * po;
        return a / 1e6 + b / 1e6 + (a % 1e6 + b % 1e6) / 1e6;
    }

    function _err(bytes4 selector, bytes32 channelId) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(selector, channelId);
    }

    function _status(bytes32 channelId) internal view returns (ITallyEscrow.Status) {
        return escrow.getChannel(channelId).status;
    }
}
