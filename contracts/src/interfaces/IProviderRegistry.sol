// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/**
 * @dev Providers, their endpoints and their priced model listings (docs/protocol.md §7.1).
 *
 * Every write acts on `msg.sender`'s own record: a provider registers itself, then lists models under
 * `modelId = keccak256(bytes(name))`. `TallyEscrow.open` snapshots a listing through {quote}; a later price
 * change or delisting never touches an open channel.
 */
interface IProviderRegistry {
    /**
     * @dev A provider's record; `registered` is false for an address that never registered.
     */
    struct Provider {
        string endpoint;
        string metadata;
        bool registered;
    }

    /**
     * @dev A listing. Prices are per million tokens, in the payment token's base units; `token` zero is ETH.
     * `tokenizerHash` commits to the tokenizer and chat template (§6.1), `modelHash` to the weights (§10; zero
     * until set, cleared by a re-listing); `contextLength > 0` once listed.
     */
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

    /**
     * @dev Emitted when `provider` registers with `endpoint` and `metadata`.
     */
    event ProviderRegistered(address indexed provider, string endpoint, string metadata);

    /**
     * @dev Emitted when `provider` changes its endpoint to `endpoint`.
     */
    event EndpointUpdated(address indexed provider, string endpoint);

    /**
     * @dev Emitted when `provider` changes its metadata to `metadata`.
     */
    event MetadataUpdated(address indexed provider, string metadata);

    /**
     * @dev Emitted when `provider` lists or re-lists `modelId` (`keccak256(bytes(name))`) with these terms.
     */
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

    /**
     * @dev Emitted when `provider` changes the prices of `modelId` (new channels only).
     */
    event PriceUpdated(address indexed provider, bytes32 indexed modelId, uint96 inputPricePerM, uint96 outputPricePerM);

    /**
     * @dev Emitted when `provider` delists `modelId`: no new channels; open ones are unaffected.
     */
    event ModelDelisted(address indexed provider, bytes32 indexed modelId);

    /**
     * @dev Emitted when `provider` commits its listing of `modelId` to the weights `modelHash`.
     */
    event ModelHashSet(address indexed provider, bytes32 indexed modelId, bytes32 modelHash);

    /**
     * @dev A failed audit (docs/protocol.md §10.4): `reportHash` = keccak256 of the report's JSON bytes, found
     * at `uri`. Not verified on-chain: anyone may publish one.
     */
    event AuditReported(
        address indexed reporter, address indexed provider, bytes32 indexed modelId, bytes32 reportHash, string uri
    );

    /**
     * @dev `provider` is already registered.
     */
    error RegistryAlreadyRegistered(address provider);

    /**
     * @dev `provider` (the caller) is not registered.
     */
    error RegistryNotRegistered(address provider);

    /**
     * @dev An endpoint must not be empty.
     */
    error RegistryEmptyEndpoint();

    /**
     * @dev A model name must not be empty.
     */
    error RegistryEmptyModelName();

    /**
     * @dev A listing's context length must be positive.
     */
    error RegistryZeroContextLength();

    /**
     * @dev `provider` has no active listing of `modelId` (never listed, or delisted; also when the caller is
     * not the provider whose listing it would change).
     */
    error RegistryModelNotListed(address provider, bytes32 modelId);

    /**
     * @dev {providerAt} was asked for `index` of `count` providers.
     */
    error RegistryIndexOutOfRange(uint256 index, uint256 count);

    /**
     * @dev An output price above uint88 (`max`) would not fit a TallyEscrow channel, so nobody could open one.
     */
    error RegistryOutputPriceTooLarge(uint96 outputPricePerM, uint96 max);

    /**
     * @dev Registers the caller with `endpoint` (not empty) and `metadata`. Emits {ProviderRegistered}.
     */
    function register(string calldata endpoint, string calldata metadata) external;

    /**
     * @dev Replaces the caller's endpoint (not empty); only a registered provider. Emits {EndpointUpdated}.
     */
    function updateEndpoint(string calldata endpoint) external;

    /**
     * @dev Replaces the caller's metadata; only a registered provider. Emits {MetadataUpdated}.
     */
    function updateMetadata(string calldata metadata) external;

    /**
     * @dev Lists (or re-lists, replacing its terms) `name` for the caller and returns its `modelId`; only a
     * registered provider, with a non-empty name, `contextLength > 0` and `outputPricePerM <= type(uint88).max`.
     * Re-listing may change the payment token: clients pass the token they accepted to `TallyEscrow.open`, which
     * refuses a mismatch. Emits {ModelListed}.
     */
    function listModel(
        string calldata name,
        uint96 inputPricePerM,
        uint96 outputPricePerM,
        address token,
        bytes32 tokenizerHash,
        uint32 contextLength
    ) external returns (bytes32 modelId);

    /**
     * @dev Changes the prices of the caller's active listing of `modelId` (new channels only; clients open with
     * price limits). Emits {PriceUpdated}.
     */
    function setPrice(bytes32 modelId, uint96 inputPricePerM, uint96 outputPricePerM) external;

    /**
     * @dev Delists the caller's active listing of `modelId`. Emits {ModelDelisted}.
     */
    function delist(bytes32 modelId) external;

    /**
     * @dev Commits the caller's active listing of `modelId` to the weights `modelHash`. Emits {ModelHashSet}.
     */
    function setModelHash(bytes32 modelId, bytes32 modelHash) external;

    /**
     * @dev Publishes a failed audit of `provider`'s `modelId` by the caller (anyone; nothing is verified
     * on-chain). Emits {AuditReported}.
     */
    function reportAudit(address provider, bytes32 modelId, bytes32 reportHash, string calldata uri) external;

    /**
     * @dev The number of providers that ever registered.
     */
    function providerCount() external view returns (uint256);

    /**
     * @dev The provider registered `index`-th (from zero).
     */
    function providerAt(uint256 index) external view returns (address);

    /**
     * @dev The record of `provider`; an unregistered address returns an empty record with `registered = false`.
     */
    function getProvider(address provider) external view returns (Provider memory);

    /**
     * @dev Every model `provider` ever listed, delisted ones included (see {isListed}), without duplicates.
     */
    function modelsOf(address provider) external view returns (bytes32[] memory);

    /**
     * @dev The listing of `modelId` by `provider`; reverts {RegistryModelNotListed} for a model never listed and
     * returns a delisted one with `active = false`.
     */
    function getListing(address provider, bytes32 modelId) external view returns (Listing memory);

    /**
     * @dev True when `provider`'s listing of `modelId` is active.
     */
    function isListed(address provider, bytes32 modelId) external view returns (bool);

    /**
     * @dev What `TallyEscrow.open` snapshots: the prices and token of an active listing; reverts
     * {RegistryModelNotListed} unless active.
     */
    function quote(address provider, bytes32 modelId)
        external
        view
        returns (uint96 inputPricePerM, uint96 outputPricePerM, address token);
}
