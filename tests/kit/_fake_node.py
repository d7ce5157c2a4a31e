"""``tallystick-node`` with FakeEngine in place of the model: a real node process for fault tests.

Everything but the model is the shipped code path: the click CLI, settings (flags and
``TALLYSTICK_NODE_*``), key or keystore loading, uvicorn, the SQLite ledger, the chain client
and the settlement worker. Only ``build_engine`` is replaced, because loading the real model
takes a minute on this CPU and a crash test restarts the node.

    python tests/reliability/_fake_node.py serve --rpc ... --model-name fake-model ...

``TALLY_FAKE_TOKEN_DELAY`` (seconds per generated id) slows generation so a kill lands mid-request;
``TALLY_FAKE_REPLY`` replaces the scripted reply.
"""

from __future__ import annotations

import os
from typing import Any


async def _fake_engine(settings: Any) -> Any:
    from tallystick.node.engines import FakeEngine
    from tallystick.node.engines._fake import DEFAULT_REPLY

    return FakeEngine(
        model_name=settings.model_name or "fake-model",
        reply=os.environ.get("TALLY_FAKE_REPLY") or DEFAULT_REPLY,
        token_delay=float(os.environ.get("TALLY_FAKE_TOKEN_DELAY", "0")),
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
    )


def main() -> None:
    from tallystick.node import _engine_factory
    from tallystick.node.cli import main as cli

    _engine_factory.build_engine = _fake_engine
    # serve's preflight checks the real engine's options (--model) first; FakeEngine needs none.
    _engine_factory.check_engine_settings = lambda settings: None
    cli()


if __name__ == "__main__":
    main()
