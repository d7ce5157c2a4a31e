"""Wallet secrecy, store restart semantics, the public surface and the CLI's one-line errors."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import tallystick.client as sdk
from click.testing import CliRunner
from tallystick.client import StoreError, Tallystick, Wallet, WalletError
from tallystick.client.cli import cli, main
from tallystick.protocol import Receipt, SignedUsageRecord, sign_receipt

from tests.kit.client import MODEL, FakeNode

MESSAGES = [{"role": "user", "content": "hello"}]


def test_public_api_is_exactly_all() -> None:
    public = {n for n in dir(sdk) if not n.startswith("_")} - {"annotations", "cli"}
    assert set(sdk.__all__) == public
    assert all(getattr(sdk, n) is not None for n in sdk.__all__)


def test_key_never_in_repr_errors_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = os.urandom(32).hex()
    wallet = Wallet.from_key(key)
    assert key not in repr(wallet) and key not in str(wallet) and wallet.address in repr(wallet)
    with pytest.raises(WalletError) as bad:
        Wallet.from_key(key[:-1] + "z")
    assert key[:-1] not in str(bad.value) and bad.value.__cause__ is None
    path = tmp_path / "k.json"
    Wallet.create_keystore(path, "pw", key)
    assert key not in path.read_text()
    assert Wallet.from_keystore(path, "pw").address == wallet.address
    with pytest.raises(WalletError, match="wrong password"):
        Wallet.from_keystore(path, "nope")
    with Tallystick(wallet, tmp_path / "s.db") as client:
        assert key not in repr(client)
    assert key not in caplog.text


def test_restarted_client_continues_and_refuses_lower_totals(
    wallet: Wallet, fake: FakeNode, tmp_path: Path
) -> None:
    store = tmp_path / "store.db"
    with Tallystick(wallet, store, transport=fake.transport) as first:
        first.store.add_channel(fake.channel_info())
        first.chat.completions.create(model=MODEL, messages=MESSAGES)
    with Tallystick(wallet, store, transport=fake.transport) as second:
        bill = second.chat.completions.create(model=MODEL, messages=MESSAGES).tally
        assert bill.record.record.seq == 2  # continued from the stored receipt
        tally = second.store.tally(fake.channel_id)
        assert fake.receipts[-1] == tally.receipt
        lower = sign_receipt(
            wallet.account,
            fake.domain,
            Receipt(fake.channel_id, tally.input_tokens - 1, tally.output_tokens, bytes(32)),
        )
        next_record = SignedUsageRecord(replace(bill.record.record, seq=3), bill.record.signature)
        with pytest.raises(StoreError, match="lower totals"):
            second.store.record_verified(next_record, lower, 0)
        with pytest.raises(StoreError, match="refusing seq 2"):
            second.store.record_verified(bill.record, tally.receipt, 0)  # a replayed seq
        assert second.store.tally(fake.channel_id) == tally


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "c.db")
    with pytest.raises(SystemExit) as exit_:
        main(["--key", "0x1234", "--store", store, "channel", "list"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "private key" in err and "Traceback" not in err
    key = os.urandom(32).hex()
    args = ["--key", key, "--store", store, "--rpc", "http://127.0.0.1:9"]
    args += ["--registry", "0x" + "11" * 20, "--escrow", "0x" + "22" * 20, "providers"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "cannot reach the chain" in err and key not in err
    with pytest.raises(SystemExit):
        main(["--key", key, "--store", store, "chat", "--model", "m", "-m", "hi"])
    assert "no open channel for model 'm'" in capsys.readouterr().err


def test_cli_bill_table(wallet: Wallet, fake: FakeNode, tmp_path: Path) -> None:
    store = tmp_path / "c.db"
    with Tallystick(wallet, store, transport=fake.transport) as c:
        c.store.add_channel(fake.channel_info())
        bill = c.chat.completions.create(model=MODEL, messages=MESSAGES).tally
    key = "0x" + wallet.account.key.hex().removeprefix("0x")
    result = CliRunner().invoke(cli, ["--key", key, "--store", str(store), "bill"])
    assert result.exit_code == 0, result.output
    # The fake channel is in ETH: the cost reads in ETH, exactly (no rounding).
    assert bill.cost == 60 and "0.00000000000000006 ETH" in result.output
    assert "total" in result.output
    # each line says when it was served (ISO 8601, UTC)
    import re

    assert "time (UTC)" in result.output
    assert re.search(r"│ 1 +│ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ │", result.output)


def test_cli_usage_by_model_provider_day(wallet: Wallet, fake: FakeNode, tmp_path: Path) -> None:
    import csv
    import datetime
    import io
    import json

    store = tmp_path / "c.db"
    with Tallystick(wallet, store, transport=fake.transport) as c:
        c.store.add_channel(fake.channel_info())
        costs = [c.chat.completions.create(model=MODEL, messages=MESSAGES).tally.cost for _ in "ab"]
    key = "0x" + wallet.account.key.hex().removeprefix("0x")
    run = lambda *a: CliRunner().invoke(cli, ["--key", key, "--store", str(store), "usage", *a])  # noqa: E731
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")

    (row,) = json.loads(run("--json").output)
    assert (row["model"], row["day"], row["requests"]) == (MODEL, today, 2)
    assert row["provider"] == fake.channel_info().provider and row["symbol"] == "ETH"
    assert row["cost"] == str(sum(costs)) and row["amount"].endswith(" ETH")
    (line,) = csv.DictReader(io.StringIO(run("--csv", "--by", "provider,hour").output))
    assert line["hour"].endswith(":00Z") and line["cost"] == str(sum(costs))
    table = run().output
    assert MODEL in table and today in table and "total" in table
    assert json.loads(run("--json", "--since", "2999-01-01").output) == []
    bad = run("--by", "colour")
    assert bad.exit_code == 2 and "choose from model, provider" in bad.output
    bad = run("--since", "tuesday")
    assert bad.exit_code == 2 and "duration" in bad.output


def test_channel_open_help_names_the_price_caps_and_the_snapshot() -> None:
    from click.testing import CliRunner
    from tallystick.client.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["channel", "open", "--help"]).output.split())
    assert "--max-input-price INTEGER only offers at most this per million input tokens" in text
    assert "--max-output-price INTEGER only offers at most this per million output tokens" in text
    assert "refused, and nothing deposited" in text and "snapshotted" in text


def test_channel_ids_by_unique_prefix(wallet: Wallet, fake: FakeNode, tmp_path: Path) -> None:
    """Issue 13: any unique prefix of a channel id works; an ambiguous or unknown one is a
    clear one-line error naming the candidates."""
    from dataclasses import replace

    from tallystick.client._errors import ChannelNotFound

    store = tmp_path / "c.db"
    base = fake.channel_info()
    a = replace(base, channel_id=bytes.fromhex("abcd01" + "00" * 29))
    b = replace(base, channel_id=bytes.fromhex("abcd02" + "00" * 29))
    with Tallystick(wallet, store, transport=fake.transport) as c:
        c.store.add_channel(a)
        c.store.add_channel(b)
        assert c.channel("0xabcd01").channel_id == a.channel_id
        assert c.channel("ABCD02").channel_id == b.channel_id
        assert c.channel(a.hex_id).channel_id == a.channel_id
        with pytest.raises(ChannelNotFound, match="ambiguous: it starts 2 channels"):
            c.channel("0xabcd")
        with pytest.raises(ChannelNotFound, match="no channel in the store"):
            c.channel("0xffff")
        with pytest.raises(ChannelNotFound, match="at least 4 hex digits"):
            c.channel("0xab")
    key = "0x" + wallet.account.key.hex().removeprefix("0x")
    result = CliRunner().invoke(cli, ["--key", key, "--store", str(store), "bill", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["channelId"] for r in rows} == {a.hex_id, b.hex_id}
    assert all(r["lines"] == [] and r["total"] == "0" for r in rows)
    result = CliRunner().invoke(
        cli, ["--key", key, "--store", str(store), "bill", "--channel", "0xabcd02"]
    )
    assert result.exit_code == 0 and b.hex_id in result.output and a.hex_id not in result.output
