// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @notice Providers, their endpoints and their priced model listings. See docs/protocol.md §7.1.
interface IProviderRegistry {
    struct Provider {
        string endpoint;
        string metadata;
        bool registered;
    }

    /// @dev Prices are per million tokens, in the payment token's base units; token 0 = ETH.
    struct Listing {
        uint96 inputPricePerM;
        uint96 outputPricePerM;
        address token;
        bytes32 tokenizerHash;
        uint32 contextLength;
        bool active;
        string name;
        bytes32 modelHash;
    }

    event ProviderRegistered(address indexed provider, string endpoint, string metadata);
    event EndpointUpdated(address indexed provider, string endpoint);
    event MetadataUpdated(address indexed provider, string metadata);
    event ModelListed(
        address indexed provider,
        bytes32 indexed modelId,
        string name,
        uint96 inputPricePerM,
        uint96 outputPricePerM,
        address token,
        bytes32 tokenizerHash,
        uint32 contextLength
    );
    event PriceUpdated(address indexed provider, bytes32 indexed modelId, uint96 inputPricePerM, uint96 outputPricePerM);
    event ModelDelisted(address indexed provider, bytes32 indexed modelId);
    event ModelHashSet(address indexed provider, bytes32 indexed modelId, bytes32 modelHash);
    /// @notice A failed audit (docs/protocol.md §10.4): `reportHash` = keccak256 of the report's
    /// JSON bytes, found at `uri`. Not verified on-chain: anyone may publish one.
    event AuditReported(
        address indexed reporter, address indexed provider, bytes32 indexed modelId, bytes32 reportHash, string uri
    );

    error RegistryAlreadyRegistered(address provider);
    error RegistryNotRegistered(address provider);
    error RegistryEmptyEndpoint();
    error RegistryEmptyModelName();
    error RegistryZeroContextLength();
    error RegistryModelNotListed(address provider, bytes32 modelId);
    error RegistryIndexOutOfRange(uint256 index, uint256 count);
    /// @dev An output price above uint88 (`max`) would not fit a TallyEscrow channel, so nobody could open one.
    error RegistryOutputPriceTooLarge(uint96 outputPricePerM, uint96 max);

    function register(string calldata endpoint, string calldata metadata) external;
    function updateEndpoint(string calldata endpoint) external;
    function updateMetadata(string calldata metadata) external;
    function listModel(
        string calldata name,
        uint96 inputPricePerM,
        uint96 outputPricePerM,
        address token,
        bytes32 tokenizerHash,
        uint32 contextLength
    ) external returns (bytes32 modelId);
    function setPrice(bytes32 modelId, uint96 inputPricePerM, uint96 outputPricePerM) external;
    function setModelHash(bytes32 modelId, bytes32 modelHash) external;
    function reportAudit(address provider, bytes32 modelId, bytes32 reportHash, string calldata uri) external;
    function delist(bytes32 modelId) external;

    function providerCount() external view returns (uint256);
    function providerAt(uint256 index) external view returns (address);
    function getProvider(address provider) external view returns (Provider memory);
    function modelsOf(address provider) external view returns (bytes32[] memory);
    function getListing(address provider, bytes32 modelId) external view returns (Listing memory);
    function isListed(address provider, bytes32 modelId) external view returns (bool);
    /// @notice What `TallyEscrow.open` snapshots: reverts RegistryModelNotListed unless active.
    function quote(address provider, bytes32 modelId)
        external
        view
        returns (uint96 inputPricePerM, uint96 outputPricePerM, address token);
}
