// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Test} from "./utils/Test.sol";
import {ProviderRegistry} from "../src/ProviderRegistry.sol";
import {IProviderRegistry} from "../src/interfaces/IProviderRegistry.sol";

contract ProviderRegistryTest is Test {
    ProviderRegistry internal registry;
    address internal constant ALICE = address(0xA11CE);
    address internal constant BOB = address(0xB0B);
    address internal constant USDC = address(0x05DC);
    bytes32 internal constant TOK = keccak256("tokenizer");
    string internal constant MODEL = "SmolLM2-135M-Instruct";
    uint96 internal constant MAX_OUT = type(uint88).max;

    function setUp() public {
        registry = new ProviderRegistry();
    }

    function _registerAlice() internal {
        vm.prank(ALICE);
        registry.register("https://alice.example", "{\"region\":\"eu\"}");
    }

    function _listAlice() internal returns (bytes32) {
        _registerAlice();
        vm.prank(ALICE);
        return registry.listModel(MODEL, 10, 20, USDC, TOK, 8192);
    }


    function test_register_recordsTheProviderAndEnumeratesIt() public {
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ProviderRegistered(ALICE, "https://alice.example", "{\"region\":\"eu\"}");
        _registerAlice();
        IProviderRegistry.Provider memory p = registry.getProvider(ALICE);
        assertEq(bytes(p.endpoint), bytes("https://alice.example"), "endpoint");
        assertEq(bytes(p.metadata), bytes("{\"region\":\"eu\"}"), "metadata");
        assertTrue(p.registered, "registered");
        assertEq(registry.providerCount(), 1);
        assertEq(registry.providerAt(0), ALICE);
    }

    function test_register_revertsTheSecondTime() public {
        _registerAlice();
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryAlreadyRegistered.selector, ALICE));
        vm.prank(ALICE);
        registry.register("https://again", "");
    }

    function test_register_revertsOnAnEmptyEndpoint() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryEmptyEndpoint.selector));
        vm.prank(ALICE);
        registry.register("", "");
    }

    function test_updateEndpoint_replacesIt() public {
        _registerAlice();
        vm.expectEmit(address(registry));
        emit IProviderRegistry.EndpointUpdated(ALICE, "https://new");
        vm.prank(ALICE);
        registry.updateEndpoint("https://new");
        assertEq(bytes(registry.getProvider(ALICE).endpoint), bytes("https://new"), "endpoint");
    }

    function test_updateEndpoint_revertsForAnUnregisteredCaller() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryNotRegistered.selector, BOB));
        vm.prank(BOB);
        registry.updateEndpoint("https://x");
    }

    function test_updateEndpoint_revertsOnAnEmptyEndpoint() public {
        _registerAlice();
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryEmptyEndpoint.selector));
        vm.prank(ALICE);
        registry.updateEndpoint("");
    }

    function test_updateMetadata_replacesIt() public {
        _registerAlice();
        vm.expectEmit(address(registry));
        emit IProviderRegistry.MetadataUpdated(ALICE, "{}");
        vm.prank(ALICE);
        registry.updateMetadata("{}");
        assertEq(bytes(registry.getProvider(ALICE).metadata), bytes("{}"), "metadata");
    }

    function test_updateMetadata_revertsForAnUnregisteredCaller() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryNotRegistered.selector, BOB));
        vm.prank(BOB);
        registry.updateMetadata("{}");
    }

    function test_listModel_usesTheKeccakOfTheNameAsId() public {
        _registerAlice();
        bytes32 expected = keccak256(bytes(MODEL));
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ModelListed(ALICE, expected, MODEL, 10, 20, USDC, TOK, 8192);
        vm.prank(ALICE);
        bytes32 id = registry.listModel(MODEL, 10, 20, USDC, TOK, 8192);
        assertEq(id, expected);
        IProviderRegistry.Listing memory l = registry.getListing(ALICE, id);
        assertEq(l.inputPricePerM, 10);
        assertEq(l.outputPricePerM, 20);
        assertEq(l.token, USDC);
        assertEq(l.tokenizerHash, TOK);
        assertEq(l.contextLength, 8192);
        assertTrue(l.active, "active");
        assertEq(bytes(l.name), bytes(MODEL), "name");
        assertTrue(registry.isListed(ALICE, id), "listed");
        (uint96 pi, uint96 po, address token) = registry.quote(ALICE, id);
        assertEq(pi, 10);
        assertEq(po, 20);
        assertEq(token, USDC);
    }

    function test_listModel_relistingUpdatesWithoutDuplicatingTheModel() public {
        bytes32 id = _listAlice();
        vm.startPrank(ALICE);
        registry.delist(id);
        registry.listModel(MODEL, 30, 40, address(0), TOK, 4096);
        vm.stopPrank();
        bytes32[] memory models = registry.modelsOf(ALICE);
        assertEq(models.length, 1);
        assertEq(models[0], id);
        IProviderRegistry.Listing memory l = registry.getListing(ALICE, id);
        assertTrue(l.active, "active again");
        assertEq(l.inputPricePerM, 30);
        assertEq(l.token, address(0));
        assertEq(l.contextLength, 4096);
    }

    function test_setModelHash_storesTheWeightsHashBesideTheTokenizerHash() public {
        bytes32 id = _listAlice();
        bytes32 weights = keccak256("weights");
        assertEq(registry.getListing(ALICE, id).modelHash, bytes32(0), "no claim at first");
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ModelHashSet(ALICE, id, weights);
        vm.prank(ALICE);
        registry.setModelHash(id, weights);
        assertEq(registry.getListing(ALICE, id).modelHash, weights);
    }

    function test_setModelHash_isClearedByARelisting() public {
        bytes32 id = _listAlice();
        vm.startPrank(ALICE);
        registry.setModelHash(id, keccak256("weights"));
        registry.listModel(MODEL, 30, 40, address(0), TOK, 4096);
        vm.stopPrank();
        assertEq(registry.getListing(ALICE, id).modelHash, bytes32(0));
    }

    function test_setModelHash_revertsForAModelTheCallerHasNotListed() public {
        bytes32 id = _listAlice();
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, BOB, id));
        vm.prank(BOB);
        registry.setModelHash(id, keccak256("weights"));
        vm.startPrank(ALICE);
        registry.delist(id);
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, ALICE, id));
        registry.setModelHash(id, keccak256("weights"));
        vm.stopPrank();
    }

    function test_reportAudit_emitsTheReportForAnyCaller() public {
        bytes32 id = _listAlice();
        vm.expectEmit(address(registry));
        emit IProviderRegistry.AuditReported(BOB, ALICE, id, keccak256("report"), "ipfs://r");
        vm.prank(BOB);
        registry.reportAudit(ALICE, id, keccak256("report"), "ipfs://r");
    }

    function test_listModel_revertsForAnUnregisteredCaller() public {
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryNotRegistered.selector, BOB));
        vm.prank(BOB);
        registry.listModel(MODEL, 1, 1, address(0), TOK, 1);
    }

    function test_listModel_revertsOnAnEmptyName() public {
        _registerAlice();
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryEmptyModelName.selector));
        vm.prank(ALICE);
        registry.listModel("", 1, 1, address(0), TOK, 1);
    }

    function test_listModel_revertsOnZeroContextLength() public {
        _registerAlice();
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryZeroContextLength.selector));
        vm.prank(ALICE);
        registry.listModel(MODEL, 1, 1, address(0), TOK, 0);
    }

    function test_listModel_acceptsTheLargestOutputPriceAChannelHolds() public {
        _registerAlice();
        vm.prank(ALICE);
        bytes32 id = registry.listModel(MODEL, type(uint96).max, MAX_OUT, address(0), TOK, 1);
        (uint96 pi, uint96 po,) = registry.quote(ALICE, id);
        assertEq(pi, type(uint96).max, "input prices use the whole uint96");
        assertEq(po, MAX_OUT);
    }

    /// A listing no TallyEscrow channel could hold (its output price is packed into a uint88) is refused.
    function test_listModel_revertsOnAnOutputPriceAboveUint88() public {
        _registerAlice();
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.RegistryOutputPriceTooLarge.selector, MAX_OUT + 1, MAX_OUT)
        );
        vm.prank(ALICE);
        registry.listModel(MODEL, 1, MAX_OUT + 1, address(0), TOK, 1);
        assertEq(registry.modelsOf(ALICE).length, 0, "nothing listed");
    }

    function test_setPrice_revertsOnAnOutputPriceAboveUint88() public {
        bytes32 id = _listAlice();
        vm.expectRevert(
            abi.encodeWithSelector(
                IProviderRegistry.RegistryOutputPriceTooLarge.selector, type(uint96).max, MAX_OUT
            )
        );
        vm.prank(ALICE);
        registry.setPrice(id, 1, type(uint96).max);
        (, uint96 po,) = registry.quote(ALICE, id);
        assertEq(po, 20, "the price is unchanged");
    }

    function test_setPrice_changesTheQuote() public {
        bytes32 id = _listAlice();
        vm.expectEmit(address(registry));
        emit IProviderRegistry.PriceUpdated(ALICE, id, 7, 8);
        vm.prank(ALICE);
        registry.setPrice(id, 7, 8);
        (uint96 pi, uint96 po,) = registry.quote(ALICE, id);
        assertEq(pi, 7);
        assertEq(po, 8);
    }

    function test_setPrice_revertsForAModelNotListed() public {
        _registerAlice();
        bytes32 id = keccak256("nope");
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, ALICE, id));
        vm.prank(ALICE);
        registry.setPrice(id, 1, 1);
    }

    function test_setPrice_revertsForAnotherProvidersModel() public {
        bytes32 id = _listAlice();
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, BOB, id));
        vm.prank(BOB);
        registry.setPrice(id, 1, 1);
    }

    function test_delist_stopsQuotesButKeepsTheListing() public {
        bytes32 id = _listAlice();
        vm.expectEmit(address(registry));
        emit IProviderRegistry.ModelDelisted(ALICE, id);
        vm.prank(ALICE);
        registry.delist(id);
        assertFalse(registry.isListed(ALICE, id), "not listed");
        assertFalse(registry.getListing(ALICE, id).active, "inactive");
        assertEq(registry.modelsOf(ALICE).length, 1);
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, ALICE, id));
        registry.quote(ALICE, id);
    }

    function test_delist_revertsTheSecondTime() public {
        bytes32 id = _listAlice();
        vm.startPrank(ALICE);
        registry.delist(id);
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, ALICE, id));
        registry.delist(id);
        vm.stopPrank();
    }

    function test_providerAt_revertsPastTheEnd() public {
        _registerAlice();
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryIndexOutOfRange.selector, 1, 1));
        registry.providerAt(1);
    }

    function test_getProvider_ofAnUnregisteredAddressIsEmpty() public view {
        IProviderRegistry.Provider memory p = registry.getProvider(BOB);
        assertFalse(p.registered, "not registered");
        assertEq(bytes(p.endpoint).length, 0);
    }

    function test_getListing_revertsForAModelNeverListed() public {
        bytes32 id = keccak256("nope");
        vm.expectRevert(abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, ALICE, id));
        registry.getListing(ALICE, id);
    }

    function test_quote_revertsForAModelNeverListed() public {
        vm.expectRevert(
            abi.encodeWithSelector(IProviderRegistry.RegistryModelNotListed.selector, ALICE, bytes32(0))
        );
        registry.quote(ALICE, bytes32(0));
    }

    function testFuzz_listModel_anyNameIsListedUnderItsKeccak(string calldata name, uint96 pi, uint88 po) public {
        vm.assume(bytes(name).length > 0);
        _registerAlice();
        vm.prank(ALICE);
        bytes32 id = registry.listModel(name, pi, po, address(0), TOK, 1);
        assertEq(id, keccak256(bytes(name)));
        assertEq(bytes(registry.getListing(ALICE, id).name), bytes(name), "name");
    }
}
