// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";

/// @notice Providers, their endpoints and their priced model listings. See docs/protocol.md §7.1.
contract ProviderRegistry is IProviderRegistry {
    /// @dev Packed so that `quote` (called by every `TallyEscrow.open`) reads two slots.
    struct StoredListing {
        // slot 0
        uint96 inputPricePerM;
        address token;
        // slot 1
        uint96 outputPricePerM;
        uint32 contextLength; // > 0 once listed: marks the model as known to `modelsOf`
        bool active;
        // slot 2, 3, 4
        bytes32 tokenizerHash;
        string name;
        bytes32 modelHash; // the served weights (docs/protocol.md §10.1); zero = no claim
    }

    /// @dev TallyEscrow packs a channel's output price into a uint88 beside its status.
    uint96 private constant MAX_OUTPUT_PRICE_PER_M = type(uint88).max;

    mapping(address provider => Provider) private _providers;
    address[] private _providerList;
    mapping(address provider => bytes32[]) private _models;
    mapping(address provider => mapping(bytes32 modelId => StoredListing)) private _listings;

    modifier onlyRegistered() {
        if (!_providers[msg.sender].registered) revert RegistryNotRegistered(msg.sender);
        _;
    }

    function register(string calldata endpoint, string calldata metadata) external {
        Provider storage p = _providers[msg.sender];
        if (p.registered) revert RegistryAlreadyRegistered(msg.sender);
        if (bytes(endpoint).length == 0) revert RegistryEmptyEndpoint();
        p.endpoint = endpoint;
        p.metadata = metadata;
        p.registered = true;
        _providerList.push(msg.sender);
        emit ProviderRegistered(msg.sender, endpoint, metadata);
    }

    function updateEndpoint(string calldata endpoint) external onlyRegistered {
        if (bytes(endpoint).length == 0) revert RegistryEmptyEndpoint();
        _providers[msg.sender].endpoint = endpoint;
        emit EndpointUpdated(msg.sender, endpoint);
    }

    function updateMetadata(string calldata metadata) external onlyRegistered {
        _providers[msg.sender].metadata = metadata;
        emit MetadataUpdated(msg.sender, metadata);
    }

    function listModel(
        string calldata name,
        uint96 inputPricePerM,
        uint96 outputPricePerM,
        address token,
        bytes32 tokenizerHash,
        uint32 contextLength
    ) external onlyRegistered returns (bytes32 modelId) {
        if (bytes(name).length == 0) revert RegistryEmptyModelName();
        if (contextLength == 0) revert RegistryZeroContextLength();
        _checkOutputPrice(outputPricePerM);
        modelId = keccak256(bytes(name));
        StoredListing storage l = _listings[msg.sender][modelId];
        if (l.contextLength == 0) {
            _models[msg.sender].push(modelId);
            l.name = name; // the name is fixed by the id, so it is written once
        }
        l.inputPricePerM = inputPricePerM;
        l.token = token;
        l.outputPricePerM = outputPricePerM;
        l.contextLength = contextLength;
        l.active = true;
        l.tokenizerHash = tokenizerHash;
        l.modelHash = bytes32(0); // a re-listing may serve other weights: claim them again
        emit ModelListed(
            msg.sender, modelId, name, inputPricePerM, outputPricePerM, token, tokenizerHash, contextLength
        );
    }

    function setPrice(bytes32 modelId, uint96 inputPricePerM, uint96 outputPricePerM) external {
        StoredListing storage l = _activeListing(msg.sender, modelId);
        _checkOutputPrice(outputPricePerM);
        l.inputPricePerM = inputPricePerM;
        l.outputPricePerM = outputPricePerM;
        emit PriceUpdated(msg.sender, modelId, inputPricePerM, outputPricePerM);
    }

    function setModelHash(bytes32 modelId, bytes32 modelHash) external {
        _activeListing(msg.sender, modelId).modelHash = modelHash;
        emit ModelHashSet(msg.sender, modelId, modelHash);
    }

    /// @notice Anyone may publish a failed audit; clients re-check the report before acting on it.
    function reportAudit(address provider, bytes32 modelId, bytes32 reportHash, string calldata uri) external {
        emit AuditReported(msg.sender, provider, modelId, reportHash, uri);
    }

    function delist(bytes32 modelId) external {
        _activeListing(msg.sender, modelId).active = false;
        emit ModelDelisted(msg.sender, modelId);
    }

    function providerCount() external view returns (uint256) {
        return _providerList.length;
    }

    function providerAt(uint256 index) external view returns (address) {
        uint256 count = _providerList.length;
        if (index >= count) revert RegistryIndexOutOfRange(index, count);
        return _providerList[index];
    }

    /// @notice An unregistered address returns an empty Provider with `registered = false`.
    function getProvider(address provider) external view returns (Provider memory) {
        return _providers[provider];
    }

    /// @notice Every model the provider ever listed, delisted ones included (see `isListed`).
    function modelsOf(address provider) external view returns (bytes32[] memory) {
        return _models[provider];
    }

    /// @notice Reverts RegistryModelNotListed for a model never listed; a delisted one has `active = false`.
    function getListing(address provider, bytes32 modelId) external view returns (Listing memory) {
        StoredListing storage l = _listings[provider][modelId];
        if (l.contextLength == 0) revert RegistryModelNotListed(provider, modelId);
        return Listing({
            inputPricePerM: l.inputPricePerM,
            outputPricePerM: l.outputPricePerM,
            token: l.token,
            tokenizerHash: l.tokenizerHash,
            contextLength: l.contextLength,
            active: l.active,
            name: l.name,
            modelHash: l.modelHash
        });
    }

    function isListed(address provider, bytes32 modelId) external view returns (bool) {
        return _listings[provider][modelId].active;
    }

    function quote(address provider, bytes32 modelId)
        external
        view
        returns (uint96 inputPricePerM, uint96 outputPricePerM, address token)
    {
        StoredListing storage l = _activeListing(provider, modelId);
        return (l.inputPricePerM, l.outputPricePerM, l.token);
    }

    function _checkOutputPrice(uint96 outputPricePerM) private pure {
        if (outputPricePerM > MAX_OUTPUT_PRICE_PER_M) {
            revert RegistryOutputPriceTooLarge(outputPricePerM, MAX_OUTPUT_PRICE_PER_M);
        }
    }

    function _activeListing(address provider, bytes32 modelId) private view returns (StoredListing storage l) {
        l = _listings[provider][modelId];
        if (!l.active) revert RegistryModelNotListed(provider, modelId);
    }
}
