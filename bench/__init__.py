"""``make bench``: Tallystick's figures side by side, in one run (``python -m bench``).

Sections (each also runs alone as ``python -m bench.<name>``):

- ``gas_per_request``: on-chain gas per request of ``claimMany`` vs per-request settlement.
- ``serving``: the bare engine, the metered node and ``transformers serve`` on the same model.
- ``protocol_costs``: signing, verification and the node's added time to first token.
- ``growth``: node memory and settlement time with 100 / 1,000 channels; verification cost
  against prompt length.

Each prints rich tables with its targets (PASS/MISS) and writes ``bench/results/<name>.json``.
``bench/gas.py`` (per-function gas) and ``bench/engine.py`` (bare engine) are their owners'.
"""

__all__ = ["gas_per_request", "growth", "protocol_costs", "serving"]
