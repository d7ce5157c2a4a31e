// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Test} from "./utils/Test.sol";
import {Vm} from "./utils/Vm.sol";
import {ProviderRegistry} from "../src/ProviderRegistry.sol";
import {TallyEscrow} from "../src/TallyEscrow.sol";
import {ITallyEscrow} from "../src/interfaces/ITallyEscrow.sol";
import {MockUSDC} from "../src/mocks/MockUSDC.sol";

/// @notice Drives the escrow with random actions by three clients and two providers, in ETH and MockUSDC,
/// and keeps ghost books of what each party signed, deposited, got back and withdrew. Every action only
/// calls the escrow when the call must succeed (so the ghost books follow the contract exactly), except
/// the forgery actions, which must fail: if one ever pays, `forgeryPaid` is set and an invariant fails.
contract EscrowHandler {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));
    address internal constant ETH = address(0);
    uint256 internal constant N_CLIENTS = 3;
    uint256 internal constant N_PROVIDERS = 2;

    struct Ghost {
        uint256 client; // index
        uint256 provider; // index
        uint256 currentKey; // private key of the channel's session key (0: none)
        uint256 signerKey; // private key that countersigned the latest receipt
        uint64 signedIn; // highest receipt the client countersigned
        uint64 signedOut;
        uint64 claimedIn; // highest receipt claimed (by claim, claimMany or closeCooperative)
        uint64 claimedOut;
        address token; // the payment token the client accepted at open
    }

    ProviderRegistry public immutable registry;
    TallyEscrow public immutable escrow;
    MockUSDC public immutable usdc;
    uint32 public immutable challenge;
    uint256[N_CLIENTS] internal clientKeys;
    uint256[N_PROVIDERS] internal providerKeys;
    bytes32[2][N_PROVIDERS] internal models; // [provider][0 = ETH, 1 = USDC]

    bytes32[] public channels;
    mapping(bytes32 => Ghost) public ghost;
    mapping(address client => mapping(address token => uint256)) public deposited;
    mapping(address client => mapping(address token => uint256)) public refunded;
    mapping(address provider => mapping(address token => uint256)) public withdrawn;
    uint256 internal salts;
    uint256 internal keyCount; // session keys are 0x5E0000 + n, one per authorisation
    mapping(bytes32 id => mapping(uint256 key => uint256 validUntil)) internal retiredUntil;
    bool public forgeryPaid;
    /// Set if anyone but the channel's provider moved its claimed totals.
    bool public nonProviderMovedTotals;
    /// Set if a receipt whose signer was valid (client, current key, retired key in grace) was refused.
    bool public validReceiptRefused;
    /// Set if a receipt signed by a retired key past its grace paid.
    bool public expiredKeyPaid;
    /// Set if an open went through in another token than the client accepted.
    bool public openedInAnotherToken;
    /// Set if an open went through although a price was above the client's limit.
    bool public openedAboveLimit;
    /// Set when a call the handler knew to be valid reverted (failOnRevert is off, so it is recorded here).
    string public unexpectedAction;
    bytes public unexpectedReason;
    mapping(bytes32 action => uint256) public calls;

    constructor(ProviderRegistry registry_, TallyEscrow escrow_, MockUSDC usdc_, uint32 challenge_) {
        registry = registry_;
        escrow = escrow_;
        usdc = usdc_;
        challenge = challenge_;
        for (uint256 c; c < N_CLIENTS; ++c) clientKeys[c] = 0xC0 + c;
        for (uint256 p; p < N_PROVIDERS; ++p) {
            providerKeys[p] = 0xF0 + p;
            address provider = vm.addr(providerKeys[p]);
            vm.startPrank(provider);
            registry_.register("https://node.example", "");
            // Prices chosen so that the deposits below run out within a run, exercising the cap.
            models[p][0] = registry_.listModel("eth-model", 1e12 * uint96(p + 1), 4e12, ETH, bytes32(0), 1);
            models[p][1] = registry_.listModel("usdc-model", 3e5, 9e5 * uint96(p + 1), address(usdc), bytes32(0), 1);
            vm.stopPrank();
        }
    }

    // ------------------------------------------------------------------ views for the invariants

    function channelCount() external view returns (uint256) {
        return channels.length;
    }

    function clientAt(uint256 i) public view returns (address) {
        return vm.addr(clientKeys[i]);
    }

    function providerAt(uint256 i) public view returns (address) {
        return vm.addr(providerKeys[i]);
    }

    // ------------------------------------------------------------------ actions

    function open(uint256 clientSeed, uint256 providerSeed, bool inUsdc, uint96 amount, bool withSessionKey)
        external
    {
        uint256 c = clientSeed % N_CLIENTS;
        uint256 p = providerSeed % N_PROVIDERS;
        address client = clientAt(c);
        address token = inUsdc ? address(usdc) : ETH;
        amount = uint96(_bound(amount, 1, inUsdc ? 1e13 : 100 ether));
        uint256 key = withSessionKey ? _newKey() : 0;
        address sessionKey = key == 0 ? address(0) : vm.addr(key);
        // The client's limits are the prices it was just quoted: the tightest limits that must pass.
        (uint96 maxIn, uint96 maxOut,) = registry.quote(providerAt(p), models[p][inUsdc ? 1 : 0]);
        bytes32 id;
        if (inUsdc) {
            usdc.mint(client, amount);
            vm.prank(client);
            usdc.approve(address(escrow), amount);
            vm.prank(client);
            try escrow.open(providerAt(p), models[p][1], token, amount, sessionKey, maxIn, maxOut, _salt()) returns (bytes32 opened) {
                id = opened;
            } catch (bytes memory reason) {
                return _unexpected("open", reason);
            }
        } else {
            vm.deal(client, client.balance + amount);
            vm.prank(client);
            try escrow.open{value: amount}(providerAt(p), models[p][0], token, amount, sessionKey, maxIn, maxOut, _salt()) returns (
                bytes32 opened
            ) {
                id = opened;
            } catch (bytes memory reason) {
                return _unexpected("open", reason);
            }
        }
        channels.push(id);
        ghost[id] = Ghost(c, p, key, clientKeys[c], 0, 0, 0, 0, token);
        deposited[client][token] += amount;
        ++calls["open"];
    }

    /// The provider raises a price between the client's quote and its open: the open must revert with
    /// EscrowPriceAboveLimit and leave every balance as it was. The raised price stays for later opens.
    function frontRunOpen(uint256 clientSeed, uint256 providerSeed, bool inUsdc, uint96 amount, uint64 raise)
        external
    {
        uint256 p = providerSeed % N_PROVIDERS;
        address client = clientAt(clientSeed % N_CLIENTS);
        bytes32 model = models[p][inUsdc ? 1 : 0];
        (uint96 maxIn, uint96 maxOut,) = registry.quote(providerAt(p), model);
        // Raise the input, the output or both (never neither), by at most 1e12 per step.
        uint96 newIn = maxIn + uint96(raise & 1 == 0 ? 0 : _bound(raise >> 2, 1, 1e12));
        uint96 newOut = maxOut + uint96(raise & 1 == 1 && raise & 2 == 0 ? 0 : _bound(raise >> 2, 1, 1e12));
        vm.prank(providerAt(p));
        registry.setPrice(model, newIn, newOut);
        amount = uint96(_bound(amount, 1, 1e13));
        if (inUsdc) {
            usdc.mint(client, amount);
            vm.prank(client);
            usdc.approve(address(escrow), amount);
        } else {
            vm.deal(client, client.balance + amount);
        }
        address token = inUsdc ? address(usdc) : ETH;
        (uint256 clientBefore, uint256 escrowBefore) = (_balance(token, client), _balance(token, address(escrow)));
        vm.prank(client);
        try escrow.open{value: inUsdc ? 0 : amount}(providerAt(p), model, token, amount, address(0), maxIn, maxOut, _salt()) {
            openedAboveLimit = true;
        } catch (bytes memory reason) {
            bytes memory expected =
                abi.encodeWithSelector(ITallyEscrow.EscrowPriceAboveLimit.selector, newIn, newOut, maxIn, maxOut);
            if (keccak256(reason) != keccak256(expected)) return _unexpected("frontRunOpen", reason);
        }
        if (_balance(token, client) != clientBefore || _balance(token, address(escrow)) != escrowBefore) {
            return _unexpected("frontRunOpen moved money", "");
        }
        ++calls["frontRunOpen"];
    }

    function topUp(uint256 chSeed, uint96 amount) external {
        (bytes32 id, ITallyEscrow.ChannelView memory ch) = _pick(chSeed);
        if (id == 0 || ch.status != ITallyEscrow.Status.Open) return;
        amount = uint96(_bound(amount, 1, ch.token == ETH ? 10 ether : 1e12));
        address client = ch.client;
        if (ch.token == ETH) {
            vm.deal(client, client.balance + amount);
            vm.prank(client);
            try escrow.topUp{value: amount}(id, amount) {}
            catch (bytes memory reason) {
                return _unexpected("topUp", reason);
            }
        } else {
            usdc.mint(client, amount);
            vm.prank(client);
            usdc.approve(address(escrow), amount);
            vm.prank(client);
            try escrow.topUp(id, amount) {}
            catch (bytes memory reason) {
                return _unexpected("topUp", reason);
            }
        }
        deposited[client][ch.token] += amount;
        ++calls["topUp"];
    }

    /// The client serves a request: it (or its current session key) countersigns new, higher totals.
    function countersign(uint256 chSeed, uint32 moreIn, uint32 moreOut, bool bySessionKey) external {
        (bytes32 id, ITallyEscrow.ChannelView memory ch) = _pick(chSeed);
        if (id == 0 || ch.status == ITallyEscrow.Status.Closed) return;
        Ghost storage g = ghost[id];
        g.signedIn += uint64(_bound(moreIn, 0, 5e6));
        g.signedOut += uint64(_bound(moreOut, 1, 2e6));
        g.signerKey = bySessionKey && g.currentKey != 0 ? g.currentKey : clientKeys[g.client];
        ++calls["countersign"];
    }

    /// The client replaces (or revokes) the session key; the old one is retired for one challenge period.
    function rotateKey(uint256 chSeed, bool revoke) external {
        (bytes32 id, ITallyEscrow.ChannelView memory ch) = _pick(chSeed);
        if (id == 0 || ch.status != ITallyEscrow.Status.Open) return;
        Ghost storage g = ghost[id];
        uint256 next = revoke ? 0 : _newKey();
        vm.prank(ch.client);
        try escrow.authorizeSessionKey(id, next == 0 ? address(0) : vm.addr(next)) {}
        catch (bytes memory reason) {
            return _unexpected("rotateKey", reason);
        }
        if (g.currentKey != 0) retiredUntil[id][g.currentKey] = block.timestamp + challenge;
        g.currentKey = next;
        ++calls["rotateKey"];
    }

    /// The provider claims the latest countersigned receipt: it pays when its signer is valid under §7.3, and
    /// is refused with EscrowInvalidSigner when the signer was retired longer than a challenge period ago.
    function claim(uint256 chSeed) external {
        (bytes32 id,) = _pick(chSeed);
        if (!_claimable(id, false)) return;
        Ghost storage g = ghost[id];
        ITallyEscrow.Receipt memory r = _receipt(id, g.signedIn, g.signedOut);
        bytes memory sig = _sign(g.signerKey, r);
        bool valid = _signerValid(id);
        vm.prank(providerAt(g.provider));
        try escrow.claim(r, sig) {
            if (!valid) expiredKeyPaid = true;
        } catch (bytes memory reason) {
            if (valid) {
                validReceiptRefused = true;
                return _unexpected("claim", reason);
            }
            bytes memory expected = abi.encodeWithSelector(
                ITallyEscrow.EscrowInvalidSigner.selector, vm.addr(g.signerKey), clientAt(g.client)
            );
            if (keccak256(reason) != keccak256(expected)) return _unexpected("claim (expired key)", reason);
            ++calls["claimExpired"];
            return;
        }
        (g.claimedIn, g.claimedOut) = (g.signedIn, g.signedOut);
        ++calls["claim"];
    }

    /// Anyone but the provider (the client itself, its session key, a stranger, the other provider) claims a
    /// receipt the client signed with input one token above the last claim: refused, the totals stay.
    function jamClaim(uint256 chSeed, uint256 callerSeed) external {
        (bytes32 id,) = _pick(chSeed);
        if (!_claimable(id, true)) return;
        Ghost storage g = ghost[id];
        ITallyEscrow.Receipt memory r = _receipt(id, g.claimedIn + 1, g.claimedOut);
        bytes memory sig = _sign(clientKeys[g.client], r);
        uint256 which = callerSeed % 4;
        address caller = which == 0
            ? clientAt(g.client)
            : which == 1 ? vm.addr(g.currentKey == 0 ? 0xBAD : g.currentKey) : which == 2 ? address(0xBAD) : providerAt((g.provider + 1) % N_PROVIDERS);
        bytes memory expected =
            abi.encodeWithSelector(ITallyEscrow.EscrowNotProvider.selector, caller, providerAt(g.provider));
        vm.prank(caller);
        if (callerSeed & 4 == 0) {
            try escrow.claim(r, sig) {
                nonProviderMovedTotals = true;
            } catch (bytes memory reason) {
                if (keccak256(reason) != keccak256(expected)) return _unexpected("jamClaim", reason);
            }
        } else {
            (ITallyEscrow.Receipt[] memory rs, bytes[] memory sigs) = (new ITallyEscrow.Receipt[](1), new bytes[](1));
            (rs[0], sigs[0]) = (r, sig);
            try escrow.claimMany(rs, sigs) returns (uint256 total) {
                if (total != 0) nonProviderMovedTotals = true;
            } catch (bytes memory reason) {
                return _unexpected("jamClaimMany", reason);
            }
        }
        ++calls["jamClaim"];
    }

    /// The provider re-lists a model in the other token right before a client's open: refused with
    /// EscrowTokenMismatch and nothing moves; the listing is then restored.
    function switchTokenOpen(uint256 clientSeed, uint256 providerSeed, bool inUsdc, uint96 amount) external {
        uint256 p = providerSeed % N_PROVIDERS;
        address client = clientAt(clientSeed % N_CLIENTS);
        bytes32 model = models[p][inUsdc ? 1 : 0];
        address accepted = inUsdc ? address(usdc) : ETH;
        address switched = inUsdc ? ETH : address(usdc);
        (uint96 maxIn, uint96 maxOut,) = registry.quote(providerAt(p), model);
        string memory name = inUsdc ? "usdc-model" : "eth-model";
        vm.prank(providerAt(p));
        registry.listModel(name, maxIn, maxOut, switched, bytes32(0), 1);
        amount = uint96(_bound(amount, 1, 1e13));
        usdc.mint(client, amount);
        vm.prank(client);
        usdc.approve(address(escrow), type(uint256).max); // a standing allowance: still not enough
        vm.deal(client, client.balance + amount);
        (uint256 usdcBefore, uint256 ethBefore) = (usdc.balanceOf(client), client.balance);
        vm.prank(client);
        try escrow.open{value: inUsdc ? 0 : amount}(providerAt(p), model, accepted, amount, address(0), maxIn, maxOut, _salt()) {
            openedInAnotherToken = true;
        } catch (bytes memory reason) {
            bytes memory expected =
                abi.encodeWithSelector(ITallyEscrow.EscrowTokenMismatch.selector, switched, accepted);
            if (keccak256(reason) != keccak256(expected)) return _unexpected("switchTokenOpen", reason);
        }
        if (usdc.balanceOf(client) != usdcBefore || client.balance != ethBefore) {
            return _unexpected("switchTokenOpen moved money", "");
        }
        vm.prank(client);
        usdc.approve(address(escrow), 0);
        vm.prank(providerAt(p));
        registry.listModel(name, maxIn, maxOut, accepted, bytes32(0), 1);
        ++calls["switchTokenOpen"];
    }

    /// A batch of the latest receipts of up to four channels, plus a forged one that must be skipped.
    function claimMany(uint256[4] calldata seeds, uint256 forgerSeed) external {
        ITallyEscrow.Receipt[] memory rs = new ITallyEscrow.Receipt[](5);
        bytes[] memory sigs = new bytes[](5);
        uint256 n;
        for (uint256 k; k < 4; ++k) {
            (bytes32 id,) = _pick(seeds[k]);
            if (!_claimable(id, false) || !_signerValid(id) || _inBatch(rs, n, id)) continue;
            Ghost storage g = ghost[id];
            if (n > 0 && g.provider != ghost[rs[0].channelId].provider) continue; // one provider's batch
            rs[n] = _receipt(id, g.signedIn, g.signedOut);
            sigs[n] = _sign(g.signerKey, rs[n]);
            ++n;
        }
        if (n == 0) return;
        (rs[n], sigs[n]) = _forgery(rs[0].channelId, forgerSeed);
        ++n;
        assembly ("memory-safe") {
            mstore(rs, n) // shrink to the n receipts built
            mstore(sigs, n)
        }
        vm.prank(providerAt(ghost[rs[0].channelId].provider));
        try escrow.claimMany(rs, sigs) {}
        catch (bytes memory reason) {
            return _unexpected("claimMany", reason);
        }
        // The forgery (last) targets the first channel with higher totals: the channel must hold the
        // legitimate totals, and every legitimate receipt must have been claimed.
        for (uint256 k; k + 1 < n; ++k) {
            Ghost storage g = ghost[rs[k].channelId];
            ITallyEscrow.ChannelView memory ch = escrow.getChannel(rs[k].channelId);
            if (ch.inputTokens > g.signedIn || ch.outputTokens > g.signedOut) forgeryPaid = true;
            if (ch.inputTokens != g.signedIn || ch.outputTokens != g.signedOut) {
                return _unexpected("claimMany skipped a valid receipt", "");
            }
            (g.claimedIn, g.claimedOut) = (g.signedIn, g.signedOut);
        }
        ++calls["claimMany"];
    }

    /// Someone other than the client or its session key signs higher totals: the claim must fail.
    function forgeClaim(uint256 chSeed, uint256 forgerSeed) external {
        (bytes32 id,) = _pick(chSeed);
        if (!_claimable(id, true)) return;
        (ITallyEscrow.Receipt memory r, bytes memory sig) = _forgery(id, forgerSeed);
        vm.prank(providerAt(ghost[id].provider));
        try escrow.claim(r, sig) {
            forgeryPaid = true;
        } catch {}
        ++calls["forgeClaim"];
    }

    function requestClose(uint256 chSeed) external {
        (bytes32 id, ITallyEscrow.ChannelView memory ch) = _pick(chSeed);
        if (id == 0 || ch.status != ITallyEscrow.Status.Open) return;
        vm.prank(ch.client);
        try escrow.requestClose(id) {}
        catch (bytes memory reason) {
            return _unexpected("requestClose", reason);
        }
        ++calls["requestClose"];
    }

    function warp(uint32 seconds_) external {
        vm.warp(block.timestamp + _bound(seconds_, 0, 2 * uint256(challenge)));
        ++calls["warp"];
    }

    function finalize(uint256 chSeed) external {
        (bytes32 id, ITallyEscrow.ChannelView memory ch) = _pick(chSeed);
        if (id == 0 || ch.status != ITallyEscrow.Status.Closing || block.timestamp < ch.closesAt) return;
        uint256 before = _balance(ch.token, ch.client);
        try escrow.finalize(id) {}
        catch (bytes memory reason) {
            return _unexpected("finalize", reason);
        }
        refunded[ch.client][ch.token] += _balance(ch.token, ch.client) - before;
        ++calls["finalize"];
    }

    function closeCooperative(uint256 chSeed, bool byClient) external {
        (bytes32 id, ITallyEscrow.ChannelView memory ch) = _pick(chSeed);
        if (!_claimable(id, true) || !_signerValid(id)) return;
        Ghost storage g = ghost[id];
        ITallyEscrow.Receipt memory r = _receipt(id, g.signedIn, g.signedOut);
        bytes memory clientSig = _sign(g.signerKey, r);
        bytes memory providerSig = _sign(providerKeys[g.provider], r);
        uint256 before = _balance(ch.token, ch.client);
        vm.prank(byClient ? ch.client : providerAt(g.provider)); // either party may send it
        try escrow.closeCooperative(r, clientSig, providerSig) {}
        catch (bytes memory reason) {
            return _unexpected("closeCooperative", reason);
        }
        refunded[ch.client][ch.token] += _balance(ch.token, ch.client) - before;
        (g.claimedIn, g.claimedOut) = (g.signedIn, g.signedOut);
        ++calls["closeCooperative"];
    }

    function withdraw(uint256 providerSeed, bool inUsdc) external {
        address provider = providerAt(providerSeed % N_PROVIDERS);
        address token = inUsdc ? address(usdc) : ETH;
        if (escrow.earnings(provider, token) == 0) return;
        address to = address(uint160(0xD00D0000 + providerSeed % N_PROVIDERS)); // a plain account per provider
        uint256 before = _balance(token, to);
        vm.prank(provider);
        try escrow.withdraw(token, to) {}
        catch (bytes memory reason) {
            return _unexpected("withdraw", reason);
        }
        withdrawn[provider][token] += _balance(token, to) - before;
        ++calls["withdraw"];
    }

    // ------------------------------------------------------------------ helpers

    function _salt() internal returns (bytes32) {
        return bytes32(++salts);
    }

    function _unexpected(string memory action, bytes memory reason) internal {
        if (bytes(unexpectedAction).length != 0) return; // keep the first one
        unexpectedAction = action;
        unexpectedReason = reason;
    }

    function _pick(uint256 seed) internal view returns (bytes32 id, ITallyEscrow.ChannelView memory ch) {
        if (channels.length == 0) return (0, ch);
        id = channels[seed % channels.length];
        ch = escrow.getChannel(id);
    }

    /// True when a claim of the latest countersigned receipt must succeed (`allowEqual`: closeCooperative).
    function _claimable(bytes32 id, bool allowEqual) internal view returns (bool) {
        if (id == 0) return false;
        ITallyEscrow.ChannelView memory ch = escrow.getChannel(id);
        if (ch.status == ITallyEscrow.Status.Closed) return false;
        if (ch.status == ITallyEscrow.Status.Closing && block.timestamp >= ch.closesAt) return false;
        Ghost storage g = ghost[id];
        bool newer = g.signedIn != g.claimedIn || g.signedOut != g.claimedOut;
        return allowEqual || newer;
    }

    function _inBatch(ITallyEscrow.Receipt[] memory rs, uint256 n, bytes32 id) internal pure returns (bool) {
        for (uint256 k; k < n; ++k) if (rs[k].channelId == id) return true;
        return false;
    }

    /// A receipt with more than the client signed, signed by the provider, another client, or another
    /// client's session key (the key of another channel).
    function _forgery(bytes32 id, uint256 forgerSeed)
        internal
        view
        returns (ITallyEscrow.Receipt memory r, bytes memory sig)
    {
        Ghost storage g = ghost[id];
        r = _receipt(id, g.signedIn + 1_000_000, g.signedOut + 1_000_000);
        uint256 other = (g.client + 1 + forgerSeed % (N_CLIENTS - 1)) % N_CLIENTS;
        uint256 which = forgerSeed % 3;
        // Keys are never shared between channels: a fresh one stands for another channel's key.
        uint256 key = which == 0 ? providerKeys[g.provider] : which == 1 ? clientKeys[other] : 0x5E0000 + keyCount + 1;
        sig = _sign(key, r);
    }

    /// §7.3: the latest receipt's signer is the client, the current key, or a key retired less than a
    /// challenge period ago.
    function _signerValid(bytes32 id) internal view returns (bool) {
        Ghost storage g = ghost[id];
        uint256 k = g.signerKey;
        return k == clientKeys[g.client] || k == g.currentKey || block.timestamp < retiredUntil[id][k];
    }

    function _newKey() internal returns (uint256) {
        return 0x5E0000 + ++keyCount;
    }

    function _receipt(bytes32 id, uint64 i, uint64 o) internal pure returns (ITallyEscrow.Receipt memory) {
        return ITallyEscrow.Receipt(id, i, o, keccak256(abi.encode(id, i, o)));
    }

    function _sign(uint256 key, ITallyEscrow.Receipt memory r) internal view returns (bytes memory) {
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(key, escrow.receiptDigest(r));
        return abi.encodePacked(rr, s, v);
    }

    function _balance(address token, address who) internal view returns (uint256) {
        return token == ETH ? who.balance : usdc.balanceOf(who);
    }

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        return min + (x % (max - min + 1));
    }
}

/// @notice Money invariants under random sequences of open/frontRunOpen/switchTokenOpen/topUp/countersign/rotateKey/
/// claim/claimMany/forgery/jamClaim/requestClose/warp/finalize/closeCooperative/withdraw (runs and depth: test.solidity.invariant in
/// hardhat.config.js; TALLY_LONG=1 for the long campaign).
contract TallyEscrowInvariantTest is Test {
    uint32 internal constant CHALLENGE = 1 hours;
    address internal constant ETH = address(0);

    TallyEscrow internal escrow;
    MockUSDC internal usdc;
    EscrowHandler internal handler;

    function setUp() public {
        ProviderRegistry registry = new ProviderRegistry();
        escrow = new TallyEscrow(address(registry), CHALLENGE);
        usdc = new MockUSDC();
        handler = new EscrowHandler(registry, escrow, usdc, CHALLENGE);
        targetContract(address(handler));
    }

    /// The handler's actions really run (so the invariants below are not vacuous): a scripted sequence.
    function test_handler_everyActionSucceedsInAScriptedSequence() public {
        handler.open(0, 0, false, 1 ether, true); // channel 0: ETH, with a session key
        handler.open(1, 1, true, 5e9, false);
        handler.open(2, 0, true, 5e9, false);
        handler.countersign(0, 1000, 1000, true); // by the session key
        handler.countersign(1, 2000, 500, false);
        handler.countersign(2, 10, 10, false);
        handler.claim(0);
        handler.forgeClaim(1, 1);
        handler.forgeClaim(1, 2);
        handler.forgeClaim(0, 0);
        handler.jamClaim(0, 0); // the client
        handler.jamClaim(0, 1); // its session key
        handler.jamClaim(1, 2 | 4); // a stranger, with claimMany
        handler.jamClaim(2, 3); // the other provider
        uint256[4] memory seeds = [uint256(1), 2, 1, 0];
        handler.countersign(0, 5, 5, true);
        handler.claimMany(seeds, 2);
        handler.topUp(1, 1e6);
        handler.countersign(1, 1, 1, false);
        handler.closeCooperative(1, true); // sent by the client
        handler.countersign(0, 7, 7, true); // by key 1
        handler.rotateKey(0, false); // key 1 retired, key 2 current
        handler.claim(0); // key 1's receipt, within its grace: paid
        handler.countersign(0, 9, 9, true); // by key 2
        handler.rotateKey(0, true); // key 2 revoked
        handler.requestClose(2);
        handler.warp(uint32(CHALLENGE)); // key 2's grace is over, and channel 2's challenge period
        handler.claim(0); // refused: EscrowInvalidSigner
        handler.finalize(2);
        handler.withdraw(0, false);
        handler.withdraw(1, true);
        handler.switchTokenOpen(0, 0, true, 5e6);
        handler.switchTokenOpen(1, 1, false, 1 ether);
        handler.frontRunOpen(0, 1, true, 5e9, 0); // output raised
        handler.frontRunOpen(1, 0, false, 1 ether, 1); // input raised
        handler.frontRunOpen(2, 1, false, 1 ether, 3 | (7 << 2)); // both raised
        handler.open(1, 1, true, 5e9, false); // at the raised prices
        invariant_validCallsSucceedAndForgeriesNeverPay();
        bytes32[15] memory actions = [
            bytes32("open"), "countersign", "claim", "forgeClaim", "claimMany", "topUp", "closeCooperative",
            "requestClose", "finalize", "withdraw", "frontRunOpen", "rotateKey", "claimExpired", "jamClaim",
            "switchTokenOpen"
        ];
        for (uint256 k; k < actions.length; ++k) assertGe(handler.calls(actions[k]), 1, string(abi.encode(actions[k])));
        invariant_onlyTheProviderMovesClaimedTotals();
        invariant_aReceiptValidWhenCountersignedStaysClaimable();
        invariant_theChannelsTokenIsTheTokenItsClientAccepted();
        invariant_tokenConservation();
        invariant_providerNeverPaidMoreThanTheHighestClaimedReceipt();
        invariant_clientNeverLosesMoreThanItCountersigned();
    }

    /// (0) Every call the handler knew to be valid succeeded, and no forged receipt ever paid.
    function invariant_validCallsSucceedAndForgeriesNeverPay() public view {
        assertEq(bytes(handler.unexpectedAction()), bytes(""), "a valid call reverted");
        assertFalse(handler.forgeryPaid(), "a receipt not signed by the client or its session key paid");
        assertFalse(handler.openedAboveLimit(), "a channel opened at a price above the client's limit");
    }

    /// (4) Nobody but the channel's provider moves its claimed totals: they are always those of the last receipt
    /// the provider claimed (the jamming claims of the client, its keys, strangers, other providers all failed).
    function invariant_onlyTheProviderMovesClaimedTotals() public view {
        assertFalse(handler.nonProviderMovedTotals(), "someone else than the provider moved the claimed totals");
        for (uint256 k; k < handler.channelCount(); ++k) {
            bytes32 id = handler.channels(k);
            ITallyEscrow.ChannelView memory ch = escrow.getChannel(id);
            (,,,,,, uint64 claimedIn, uint64 claimedOut,) = handler.ghost(id);
            assertEq(ch.inputTokens, claimedIn, "input claimed only by the provider");
            assertEq(ch.outputTokens, claimedOut, "output claimed only by the provider");
        }
    }

    /// (5) A receipt valid when countersigned stays claimable as §7.3 says: signed by the client, the current
    /// key or a key retired less than a challenge period ago it pays; by a key retired longer ago it never does.
    function invariant_aReceiptValidWhenCountersignedStaysClaimable() public view {
        assertFalse(handler.validReceiptRefused(), "a receipt whose signer was valid was refused");
        assertFalse(handler.expiredKeyPaid(), "a key retired longer than a challenge period ago paid");
    }

    /// (6) The token a channel holds is the token its client accepted, even when the listing switched tokens.
    function invariant_theChannelsTokenIsTheTokenItsClientAccepted() public view {
        assertFalse(handler.openedInAnotherToken(), "an open went through in a token the client did not accept");
        for (uint256 k; k < handler.channelCount(); ++k) {
            bytes32 id = handler.channels(k);
            (,,,,,,,, address accepted) = handler.ghost(id);
            assertEq(escrow.getChannel(id).token, accepted, "the channel's token is the accepted one");
        }
    }

    /// (1) For every token: balance == sum over Open/Closing channels of (deposit - paid) + unwithdrawn earnings.
    function invariant_tokenConservation() public view {
        (uint256 eth, uint256 usd) = _escrowed();
        for (uint256 p; p < 2; ++p) {
            eth += escrow.earnings(handler.providerAt(p), ETH);
            usd += escrow.earnings(handler.providerAt(p), address(usdc));
        }
        assertEq(address(escrow).balance, eth, "ETH conservation");
        assertEq(usdc.balanceOf(address(escrow)), usd, "USDC conservation");
    }

    /// (2) A channel never pays more than min(cost of its highest claimed receipt, deposit), and what a
    /// provider earned (withdrawn + unwithdrawn) is exactly what its channels paid.
    function invariant_providerNeverPaidMoreThanTheHighestClaimedReceipt() public view {
        uint256[2][2] memory paidTo; // [provider][token]
        for (uint256 k; k < handler.channelCount(); ++k) {
            bytes32 id = handler.channels(k);
            ITallyEscrow.ChannelView memory ch = escrow.getChannel(id);
            (,,,,,, uint64 claimedIn, uint64 claimedOut,) = handler.ghost(id);
            uint256 cost = escrow.costOf(id, claimedIn, claimedOut);
            assertLe(ch.paid, cost < ch.deposit ? cost : ch.deposit, "paid <= min(cost(highest claimed), deposit)");
            (, uint256 p,,,,,,,) = handler.ghost(id);
            paidTo[p][ch.token == ETH ? 0 : 1] += ch.paid;
        }
        for (uint256 p; p < 2; ++p) {
            address provider = handler.providerAt(p);
            for (uint256 t; t < 2; ++t) {
                address token = t == 0 ? ETH : address(usdc);
                assertEq(
                    escrow.earnings(provider, token) + handler.withdrawn(provider, token),
                    paidTo[p][t],
                    "earned = sum of what the provider's channels paid"
                );
            }
        }
    }

    /// (3) A client never loses more than the cost of the highest receipt it countersigned, per channel
    /// and in its own books (deposited - refunded - still escrowed).
    function invariant_clientNeverLosesMoreThanItCountersigned() public view {
        uint256[2][3] memory escrowedOf; // [client][token]
        uint256[2][3] memory signedCost;
        for (uint256 k; k < handler.channelCount(); ++k) {
            bytes32 id = handler.channels(k);
            ITallyEscrow.ChannelView memory ch = escrow.getChannel(id);
            (uint256 c,,,, uint64 signedIn, uint64 signedOut,,,) = handler.ghost(id);
            uint256 cost = escrow.costOf(id, signedIn, signedOut);
            assertLe(ch.paid, cost, "paid <= cost(highest countersigned)");
            uint256 t = ch.token == ETH ? 0 : 1;
            signedCost[c][t] += cost;
            if (ch.status != ITallyEscrow.Status.Closed) escrowedOf[c][t] += ch.deposit - ch.paid;
        }
        for (uint256 c; c < 3; ++c) {
            address client = handler.clientAt(c);
            for (uint256 t; t < 2; ++t) {
                address token = t == 0 ? ETH : address(usdc);
                uint256 lost = handler.deposited(client, token) - handler.refunded(client, token) - escrowedOf[c][t];
                assertLe(lost, signedCost[c][t], "client loss <= cost of what it countersigned");
            }
        }
    }

    function _escrowed() internal view returns (uint256 eth, uint256 usd) {
        for (uint256 k; k < handler.channelCount(); ++k) {
            ITallyEscrow.ChannelView memory ch = escrow.getChannel(handler.channels(k));
            if (ch.status == ITallyEscrow.Status.Open || ch.status == ITallyEscrow.Status.Closing) {
                if (ch.token == ETH) eth += ch.deposit - ch.paid;
                else usd += ch.deposit - ch.paid;
            }
        }
    }
}
