"""The ``tallystick-node`` entry point: a readable line when the node's extras are missing.

``tallystick.node`` imports FastAPI, uvicorn, prometheus-client (and torch for the engines) as
soon as it is imported. On a base install (``pip install tallystick``) that would be a
traceback before any of the node's code runs, so the script starts here, in the client package
every install has, and says what to install instead.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

NODE_EXTRAS = ("fastapi", "uvicorn", "prometheus_client", "pydantic", "torch", "transformers")
HINT = "pip install 'tallystick[node]'"


def main(argv: list[str] | None = None) -> None:
    """Run ``tallystick-node``, or exit 2 with one line when its extras are not installed."""
    try:
        from tallystick.node.cli import main as node_main
    except ImportError as exc:  # ModuleNotFoundError too
        missing = getattr(exc, "name", None) or str(exc)
        sys.stderr.write(
            f"error: tallystick-node needs the node extras ({missing} is not installed): {HINT}\n"
        )
        sys.exit(2)
    node_main(args=argv, prog_name="tallystick-node")
