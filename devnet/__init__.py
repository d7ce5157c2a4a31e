"""``tallystick.devnet``: a whole marketplace on a local chain, for the demo, the bench and tests.

    from tallystick.devnet import (Processes, start_anvil, deploy_market, funded_account,
                                   start_node, register_provider, list_model,
                                   served_tokenizer_hash)

    with Processes() as procs:                      # every child in its own process group
        chain = start_anvil(procs)                  # anvil on a free port
        market = deploy_market(chain.url)           # registry, escrow, MockUSDC
        provider = funded_account(market.w3)
        node = start_node(procs, rpc=chain.url, escrow=market.escrow.address,
                          registry=market.registry.address, db=path, key=provider.key.hex(),
                          args=["--model", str(find_model())])
        register_provider(market.deployment, provider, node.url)
        list_model(market.deployment, provider, MODEL_NAME, prices,
                   tokenizer_hash=served_tokenizer_hash(node.url, MODEL_NAME),
                   context_length=gguf_context_length(find_model()))

Modules: ``_processes`` (binaries, process groups, anvil, a node, health), ``_market``
(contracts, accounts, registering and listing), ``_demo`` (``tallystick demo``'s steps, with
``_audit_step`` and ``_gateway_step``), ``_report`` (the bill's tables and checks, ``--keep``).
Nothing here imports the node's heavy dependencies (torch, gguf) until a function that needs
them runs.
"""

from ._demo import DemoOptions, run_demo
from ._market import (
    Market,
    deploy_market,
    dev_account,
    funded_account,
    gguf_context_length,
    list_model,
    register_provider,
    send_eth,
    served_tokenizer_hash,
)
from ._processes import (
    CHAIN_ID,
    MNEMONIC,
    MODEL_FILE,
    MODEL_NAME,
    Anvil,
    DevnetError,
    Node,
    Proc,
    Processes,
    find_anvil,
    find_model,
    free_port,
    node_command,
    node_progress,
    spawn_node,
    start_anvil,
    start_node,
    stop_group,
    wait_http,
)

__all__ = [
    "CHAIN_ID",
    "MNEMONIC",
    "MODEL_FILE",
    "MODEL_NAME",
    "Anvil",
    "DemoOptions",
    "DevnetError",
    "Market",
    "Node",
    "Proc",
    "Processes",
    "deploy_market",
    "dev_account",
    "find_anvil",
    "find_model",
    "free_port",
    "funded_account",
    "gguf_context_length",
    "list_model",
    "node_command",
    "node_progress",
    "register_provider",
    "run_demo",
    "send_eth",
    "served_tokenizer_hash",
    "spawn_node",
    "start_anvil",
    "start_node",
    "stop_group",
    "wait_http",
]
