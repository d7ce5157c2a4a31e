"""Settings, keys, the ledger's durability and the settlement worker's decisions."""

from __future__ import annotations

import pytest
from eth_account import Account
from tallystick.node import ConfigError, KeyLoadError, SqliteLedger, load_account, load_settings
from tallystick.protocol import ChainUnavailable

from tests.kit.node_harness import ESCROW

pytestmark = pytest.mark.anyio

KEY = "0x" + "11" * 32
BASE = {"rpc": "http://x", "escrow": ESCROW, "registry": ESCROW}


def test_settings_precedence_cli_over_env_over_file(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\ncredit_requests = 3\nport = 9000\nrpc = "http://file"\n'
        f'escrow = "{ESCROW}"\nregistry = "{ESCROW}"\n'
    )
    env = {"TALLYSTICK_NODE_PORT": "9100", "TALLYSTICK_NODE_KEYSTORE_PASSWORD": "x"}
    s = load_settings({"port": 9200, "key": KEY}, config_file=config, env=env)
    assert (s.port, s.credit_requests, s.rpc) == (9200, 3, "http://file")
    assert load_settings({}, config_file=config, env=env).port == 9100


def test_missing_and_bad_values_are_clear_errors():
    with pytest.raises(ConfigError, match="--rpc is required"):
        load_settings({}, env={})
    with pytest.raises(ConfigError, match=r"--key: .*64 hex characters"):
        load_settings({**BASE, "key": "0x1234"}, env={})


def test_the_key_never_shows_in_repr_dump_or_errors():
    s = load_settings({**BASE, "key": KEY}, env={})
    assert "11" * 32 not in repr(s) and "11" * 32 not in str(s.model_dump())
    with pytest.raises(ConfigError) as exc:
        load_settings({**BASE, "key": "zz" + "11" * 31}, env={})
    assert "11" * 31 not in str(exc.value)
    assert load_account(s).address == Account.from_key(KEY).address


def test_keystore(tmp_path):
    import json

    path = tmp_path / "key.json"
    path.write_text(json.dumps(Account.encrypt(KEY, "pw")))
    s = load_settings({**BASE, "keystore": path}, env={})
    env = {"TALLYSTICK_NODE_KEYSTORE_PASSWORD": "pw"}
    assert load_account(s, env=env).address == Account.from_key(KEY).address
    with pytest.raises(KeyLoadError, match="wrong password"):
        load_account(s, env={"TALLYSTICK_NODE_KEYSTORE_PASSWORD": "nope"})
    assert load_account(s, env={}, prompt=lambda _: "pw").address == Account.from_key(KEY).address
    with pytest.raises(KeyLoadError, match="required"):
        load_account(load_settings(BASE, env={}))


def test_ledger_survives_reopening(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.db")
    ledger.set_meta("k", "v")
    ledger.close()
    again = SqliteLedger(tmp_path / "l.db")
    assert again.get_meta("k") == "v"
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


async def test_worker_claims_once_worth_it_and_retries_after_rpc_failure(make_node):
    async with make_node(claim_gas_multiple=2.0) as h:
        await h.paid_chat()
        worker = h.node.worker
        h.chain.gas_cost = 10**9  # far more than the receipt's value: wait
        assert await worker.settle(force=False) == []
        h.chain.gas_cost = 1
        h.chain.fail_claims = 1
        with pytest.raises(ChainUnavailable):
            await worker.settle(force=False)
        assert h.ledger.claims()[0].status == "failed"
        [outcome] = await worker.settle(force=False)
        assert outcome.amount > 0
        info = h.chain.channels[h.channel_id]
        receipt = h.ledger.last_receipt(h.channel_id).signed.receipt
        assert (info.claimed_input, info.claimed_output) == (
            receipt.input_tokens,
            receipt.output_tokens,
        )
        assert h.ledger.claims()[0].status == "confirmed"
        assert await worker.settle(force=True) == []  # idempotent: nothing newer


async def test_close_request_is_claimed_regardless_of_gas(make_node):
    async with make_node(claim_gas_multiple=1e9) as h:
        await h.paid_chat()
        h.chain.gas_cost = 10**9
        worker = h.node.worker
        assert await worker.settle(force=False) == []
        h.chain.request_close(h.channel_id)
        assert await worker.scan_close_requests() == 1
        [outcome] = await worker.settle(force=False)
        assert h.channel_id in outcome.claimed
        assert await worker.scan_close_requests() == 0  # the scan cursor moved on


USDC = "0x" + "ab" * 20


def test_min_claim_from_cli_env_and_file(tmp_path):
    s = load_settings({**BASE, "min_claim": (f"0x{USDC[2:].upper()}=5", "eth=7")})
    assert s.min_claim == {USDC: 5, "0x" + "00" * 20: 7}
    env = {"TALLYSTICK_NODE_MIN_CLAIM": f"{USDC}=1000000, ETH=2"}
    assert load_settings(BASE, env=env).min_claim == {USDC: 1_000_000, "0x" + "00" * 20: 2}
    config = tmp_path / "node.toml"
    config.write_text(f'[node.min_claim]\n"{USDC}" = 3\n')
    assert load_settings(BASE, config_file=config, env={}).min_claim == {USDC: 3}
    for bad, said in [
        ("USDC=5", "not a token address"),
        (f"{USDC}", "not TOKEN=AMOUNT"),
        (f"{USDC}=1.5", "whole number"),
        (f"{USDC}=-1", "whole number"),
    ]:
        with pytest.raises(ConfigError, match=said):
            load_settings({**BASE, "min_claim": (bad,)}, env={})


async def test_an_erc20_channel_is_claimed_at_its_min_claim_not_against_gas_in_wei(make_node):
    # The bug: unclaimed USDC base units were compared with the gas cost in wei, so the
    # worker waited forever. Gas is far above the value here; only the token's threshold counts.
    from dataclasses import replace

    async with make_node(claim_gas_multiple=5.0) as h:
        info = h.chain.channels[h.channel_id]
        h.chain.channels[h.channel_id] = replace(info, token=USDC)
        await h.paid_chat()
        h.chain.gas_cost = 10**15
        worker = h.node.worker
        value = (await worker.candidates())[0].value
        assert 0 < value < 10**6  # below the default: one whole token (6 decimals)
        assert await worker.settle(force=False) == []
        worker._min_claims[USDC] = value  # what --min-claim USDC=value sets
        [outcome] = await worker.settle(force=False)
        assert outcome.claimed[h.channel_id] == value


async def test_the_default_erc20_threshold_is_one_whole_token(make_node):
    from dataclasses import replace

    async with make_node() as h:
        h.chain.decimals = 0  # one whole token is 1 base unit: anything is worth claiming
        info = h.chain.channels[h.channel_id]
        h.chain.channels[h.channel_id] = replace(info, token=USDC)
        await h.paid_chat()
        h.chain.gas_cost = 10**15
        [outcome] = await h.node.worker.settle(force=False)
        assert outcome.amount > 0


async def test_a_retired_keys_receipt_is_claimed_before_its_grace_ends(make_node):
    """§7.3: the client replaces the key that signed the last receipt; the worker claims it
    at once (whatever the gas), and the node takes no new receipt from the old key."""
    async with make_node(claim_gas_multiple=1e9) as h:
        key = Account.from_key("0x" + "33" * 32)
        h.chain.authorize_session_key(h.channel_id, key.address)
        body = (await h.chat()).json()
        posted = await h.http.post("/v1/tally/receipts", json=h.countersign(body, key))
        assert posted.status_code == 200, posted.text
        h.chain.gas_cost = 10**9
        worker = h.node.worker
        assert await worker.settle(force=False) == []  # not worth its gas yet
        h.chain.authorize_session_key(h.channel_id, None)  # revoked
        assert await worker.scan_key_retirements() == 1  # also refreshes the gate's view
        late = (await h.chat()).json()
        refused = await h.http.post("/v1/tally/receipts", json=h.countersign(late, key))
        assert (refused.status_code, refused.json()["error"]["code"]) == (
            400,
            "receipt_signer_mismatch",
        )
        [candidate] = await worker.candidates()
        assert (candidate.urgent, candidate.deadline) == (True, h.chain.now + 3600)
        [outcome] = await worker.settle(force=False)
        assert h.channel_id in outcome.claimed and not outcome.skipped
        assert await worker.scan_key_retirements() == 0  # the scan cursor moved on


async def test_a_retired_keys_receipt_past_its_grace_is_not_claimed(make_node):
    async with make_node(claim_gas_multiple=1e9) as h:
        key = Account.from_key("0x" + "33" * 32)
        h.chain.authorize_session_key(h.channel_id, key.address)
        body = (await h.chat()).json()
        await h.http.post("/v1/tally/receipts", json=h.countersign(body, key))
        h.chain.authorize_session_key(h.channel_id, Account.create().address)  # replaced
        worker = h.node.worker
        assert await worker.scan_key_retirements() == 1
        h.chain.now += 3600  # the worker was down for the whole grace period
        assert await worker.candidates() == []  # the escrow would refuse it: no wasted gas
