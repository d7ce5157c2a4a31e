"""Every suite loads the one test kit, ``tests/kit/`` (see docs/internals.md, "Tests"):

- ``tests.kit.chain``: anvil, dev ``accounts``, ``deployment`` (snapshot/revert per test),
  ``market`` (a provider registered and listed), ``advance_time``, ``rpc_proxy``.
- ``tests.kit.node``: a real node in a thread (``serve_node``) or as a process
  (``start_node``, ``NodeProcess``), requests signed by hand.
- ``tests.kit.node_harness``: ``make_node``, the node app over an in-memory FakeChain.
- ``tests.kit.client``: ``FakeNode`` with ``wallet``/``fake``/``client``; ``make_client``.
- ``tests.kit.gateway``: provider node processes and ``tallystick gateway`` as a process.
- ``tests.kit.ledger``: ``postgres``, ``pg_url``, ``make_ledger``.
- ``tests.kit.model``: SmolLM2 (``model_dir``), ``llama_server_bin``, the tiny random Llama.
- ``tests.kit.browser``: ``chromium`` (headless, Playwright), ``screenshot``.
- ``tests.kit.net``: ``free_port``, ``wait_for``, ``wait_http``, ``ThreadServer``, ``TcpProxy``.
Helpers are imported from their module: ``from tests.kit.net import free_port``.
Options: ``--long`` runs the soak tests marked ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.kit")  # before the plugins import each other

pytest_plugins = [
    "tests.kit.browser",
    "tests.kit.chain",
    "tests.kit.client",
    "tests.kit.gateway",
    "tests.kit.ledger",
    "tests.kit.model",
    "tests.kit.node",
    "tests.kit.node_harness",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="also run slow soak tests")


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated so a run from another rootdir knows them.
    config.addinivalue_line("markers", "chain: needs a local chain (anvil)")
    config.addinivalue_line("markers", "model: needs the real SmolLM2-135M-Instruct weights")
    config.addinivalue_line("markers", "slow: long soak runs (run with --long)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --long")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def long_mode(request: pytest.FixtureRequest) -> bool:
    """True under ``--long`` (soak runs)."""
    return bool(request.config.getoption("--long"))


def pytest_report_header(config: pytest.Config) -> str:
    anvil = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "anvil"
    return f"tallystick: anvil={'yes' if anvil.exists() else 'missing'}, cpu={os.cpu_count()}"
